//! Live updates: `GET /events` streams a server-sent event per profile change, fed by the same
//! engine events as `WatchProfiles`. An event names the profile only; the script then fetches
//! the page's live part again, so the browser renders what the server renders and the status
//! rules stay on the server. The stream ends at shutdown, and at once when a reload (SIGHUP)
//! removes the caller or takes its viewer role.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::{Web, WebError};
use crate::access::{CallerWatch, Credential};

/// `GET /events`.
pub async fn events(State(web): State<Web>, headers: HeaderMap) -> Result<Response, WebError> {
    let signed = web.signed(&headers)?;
    let hash = super::auth::parse_hash(&signed.claims.token_sha256).ok_or(WebError::SignIn)?;
    let watch = CallerWatch::new(&web.inner.callers, Credential::Token(hash), &signed.caller.name)
        .map_err(|_| WebError::SignIn)?;
    let stream = changes(web.clone(), watch);
    Ok(signed.reply(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))))
}

/// The events until shutdown or until the caller may no longer look.
fn changes(web: Web, mut watch: CallerWatch) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut receiver = web.admin().engine().subscribe();
    let shutdown = web.inner.shutdown.clone();
    async_stream(move |sender| async move {
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                () = sender.closed() => return,
                reloaded = watch.reloaded() => match reloaded {
                    Ok(caller) if caller.require_viewer().is_ok() => continue,
                    _ => return,
                },
                change = receiver.recv() => match change {
                    Ok(change) => Event::default().event("profile").data(change.name),
                    // Missed some: the page reloads its live part anyway.
                    Err(RecvError::Lagged(_)) => Event::default().event("profile").data(""),
                    Err(RecvError::Closed) => return,
                },
            };
            if sender.send(Ok(event)).await.is_err() {
                return;
            }
        }
    })
}

/// A stream fed by a task; the task stops when the stream is dropped (the browser went away).
fn async_stream<F, Fut>(body: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(sender));
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}
