//! Streams bound to their caller: a watch stream checks its caller once when it opens, and
//! ends when a reload removes the caller (`UNAUTHENTICATED`) or changes it so that it may no
//! longer have what the stream sends (`PERMISSION_DENIED`), or when the daemon shuts down.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::auth::{Caller, CallerWatch, changed, removed};

/// A boxed stream of replies, as the services return them.
pub type Replies<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a stream's caller must still be allowed after a reload.
pub type Allowed = Box<dyn Fn(&Caller) -> Result<(), Status> + Send + Sync>;

/// The state of a bound stream between two items.
struct Bound<T> {
    inner: Replies<T>,
    watch: CallerWatch,
    allowed: Allowed,
    shutdown: CancellationToken,
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
                () = self.shutdown.cancelled() => return None,
                reloaded = self.watch.reloaded() => match reloaded {
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
    let state = Bound { inner, watch, allowed, shutdown, ended: false };
    Box::pin(futures::stream::unfold(state, |mut state| async move { state.next().await.map(|item| (item, state)) }))
}
