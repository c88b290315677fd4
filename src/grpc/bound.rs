//! Streams bound to their caller: a watch stream checks its caller once when it opens, and
//! ends when a reload removes the caller (`UNAUTHENTICATED`) or changes it so that it may no
//! longer have what the stream sends (`PERMISSION_DENIED`), or when the daemon shuts down.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use super::auth::{Caller, CallerGone, CallerWatch, changed, removed};

/// A boxed stream of replies, as the services return them.
pub type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a stream's caller must still be allowed after a reload.
pub type Allowed = Box<dyn Fn(&Caller) -> Result<(), Status> + Send + Sync>;

/// The reloads of the caller table, each the caller as the new table has it.
type Reloads = Pin<Box<dyn Stream<Item = Result<Arc<Caller>, CallerGone>> + Send>>;

/// The state of a bound stream between two items. Both waits (the shutdown token, the caller
/// table's reloads) live as long as the stream: a fresh wait per item would register with, and
/// leave, a waiter list that every open stream shares, once per item (#17: a refresh delivered
/// to 10,000 streams did that 20,000 times).
struct Bound<T> {
    inner: Replies<T>,
    reloads: Reloads,
    allowed: Allowed,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// An error was sent: the stream ends after it.
    ended: bool,
}

impl<T> Bound<T> {
    /// The next item: the inner stream's, or the error that ends the stream because a reload
    /// removed or changed the caller; `None` at shutdown or when the inner stream ends.
    async fn next(&mut self) -> Option<Result<T, Status>> {
        if self.ended {
            return None;
        }
        let item = loop {
            tokio::select! {
                biased;
                () = &mut self.shutdown => return None,
                Some(reloaded) = self.reloads.next() => match reloaded {
                    Err(gone) => break Err(removed(&gone)),
                    Ok(caller) => match (self.allowed)(&caller) {
                        Ok(()) => continue,
                        Err(refusal) => break Err(changed(&caller, refusal)),
                    },
                },
                item = self.inner.next() => break item?,
            }
        };
        if let Err(status) = &item {
            self.ended = true;
            tracing::info!(code = ?status.code(), message = status.message(), "watch stream ended");
        }
        Some(item)
    }
}

/// `inner`, ended at shutdown or when a reload removes its caller or changes it so that
/// `allowed` refuses it (see the module documentation). Ends within moments of the reload:
/// the stream waits on the caller table's changes, it does not poll.
pub fn bound_to_caller<T: Send + 'static>(
    inner: Replies<T>,
    watch: CallerWatch,
    allowed: Allowed,
    shutdown: CancellationToken,
) -> Replies<T> {
    // `reloaded` is cancel-safe, and the stream keeps the one wait in progress between items.
    let reloads = futures::stream::unfold(watch, |mut watch| async move { Some((watch.reloaded().await, watch)) });
    let state = Bound {
        inner,
        reloads: Box::pin(reloads),
        allowed,
        shutdown: Box::pin(shutdown.cancelled_owned()),
        ended: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move { state.next().await.map(|item| (item, state)) }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::access::{Callers, Credential, hash_token};
    use crate::config::CallerConfig;

    fn consumer(profiles: &[&str]) -> CallerConfig {
        CallerConfig {
            name: "worker".into(),
            role: "consumer".parse().unwrap(),
            token_sha256: hash_token("t"),
            cert_dns_name: String::new(),
            unix_uid: None,
            profiles: profiles.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// A stream of the items sent on the returned sender, bound to the caller of token `t`,
    /// which must stay allowed `mail-in`.
    fn bound(callers: &Callers, shutdown: &CancellationToken) -> (tokio::sync::mpsc::Sender<u32>, Replies<u32>) {
        let (items, receiver) = tokio::sync::mpsc::channel(4);
        let inner: Replies<u32> = Box::pin(ReceiverStream::new(receiver).map(Ok));
        let watch = CallerWatch::new(callers, Credential::of_token("t"), "worker").unwrap();
        let allowed: Allowed = Box::new(|caller| Ok(caller.require_token("mail-in")?));
        (items, bound_to_caller(inner, watch, allowed, shutdown.clone()))
    }

    async fn next(stream: &mut Replies<u32>) -> Option<Result<u32, Status>> {
        tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("the stream answers")
    }

    /// The waits outlive each item: after items went by, a reload that keeps the caller lets
    /// the stream go on, the next one that removes it ends the stream, and shutdown ends a
    /// stream waiting for its next item.
    #[tokio::test]
    async fn reloads_and_shutdown_are_seen_between_and_after_items() {
        let callers = Callers::new(&[consumer(&["mail-*"])]);
        let shutdown = CancellationToken::new();
        let (items, mut stream) = bound(&callers, &shutdown);
        for i in 0..3 {
            items.send(i).await.unwrap();
            assert_eq!(next(&mut stream).await.unwrap().unwrap(), i);
        }
        callers.replace(&[consumer(&["mail-in", "files-*"])]);
        items.send(3).await.unwrap();
        assert_eq!(next(&mut stream).await.unwrap().unwrap(), 3, "a reload that keeps the caller allowed");
        callers.replace(&[consumer(&["files-*"])]);
        let ended = next(&mut stream).await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");
        assert!(next(&mut stream).await.is_none(), "nothing after the error");

        let (items, mut stream) = bound(&Callers::new(&[consumer(&["mail-*"])]), &shutdown);
        for i in 0..3 {
            items.send(i).await.unwrap();
            assert_eq!(next(&mut stream).await.unwrap().unwrap(), i);
        }
        shutdown.cancel();
        assert!(next(&mut stream).await.is_none(), "shutdown ends a stream waiting for an item");
    }
}
