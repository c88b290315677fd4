//! Streams bound to their caller: a watch stream checks its caller once when it opens, and
//! ends when a reload removes the caller (`UNAUTHENTICATED`) or changes it so that it may no
//! longer have what the stream sends (`PERMISSION_DENIED`), or when the daemon shuts down.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
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

/// The waker a bound stream's two side waits (shutdown, reloads) are polled with: it notes that
/// one of them was woken, then wakes the stream's task. Until it is woken the side waits are not
/// polled again: both stay registered from their last poll, and polling them costs two locks of
/// lists every open stream shares (#17: a refresh delivered to 10,000 streams polled them 40,000
/// times).
#[derive(Debug)]
struct SideWake {
    /// A side wait was woken (or was never polled) since it was last polled.
    woken: AtomicBool,
    /// The stream's task.
    task: AtomicWaker,
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A stream bound to its caller (see [`bound_to_caller`]). Both side waits live as long as the
/// stream: a fresh wait per item would register with, and leave, a waiter list that every open
/// stream shares, once per item.
struct Bound<T> {
    inner: Replies<T>,
    reloads: Reloads,
    allowed: Allowed,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    side: Arc<SideWake>,
    /// `side` as a waker, made once.
    side_waker: Waker,
    /// The task waker last handed to `side` (registering it again costs two atomic swaps per
    /// poll; a stream's task keeps its waker).
    registered: Option<Waker>,
    /// An error was sent, or the daemon is shutting down: nothing more.
    ended: bool,
}

impl<T> Bound<T> {
    /// Polls the side waits (one was woken): `Some` ends the stream (`None` inside: shutdown,
    /// an error: the reload that removed or changed the caller).
    fn poll_side(&mut self) -> Option<Option<Status>> {
        let mut side = Context::from_waker(&self.side_waker);
        if self.shutdown.as_mut().poll(&mut side).is_ready() {
            return Some(None);
        }
        while let Poll::Ready(Some(reloaded)) = self.reloads.poll_next_unpin(&mut side) {
            match reloaded {
                Err(gone) => return Some(Some(removed(&gone))),
                Ok(caller) => {
                    if let Err(refusal) = (self.allowed)(&caller) {
                        return Some(Some(changed(&caller, refusal)));
                    }
                }
            }
        }
        None
    }
}

impl<T> Stream for Bound<T> {
    type Item = Result<T, Status>;

    /// The side waits first (a reload that refuses the caller ends the stream before any item
    /// it may no longer have), then the inner stream's next item.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // `side` gives its waker away when it wakes the task, and sets `woken` first: then (or
        // for a new task waker) register again, before polling the side waits.
        let woken = this.side.woken.load(Ordering::Acquire) && this.side.woken.swap(false, Ordering::AcqRel);
        if woken || !this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.side.task.register(cx.waker());
            this.registered = Some(cx.waker().clone());
        }
        let item = match woken.then(|| this.poll_side()).flatten() {
            Some(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Some(Some(refusal)) => Some(Err(refusal)),
            None => match this.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(item) => item,
            },
        };
        if let Some(Err(status)) = &item {
            this.ended = true;
            tracing::info!(code = ?status.code(), message = status.message(), "watch stream ended");
        }
        Poll::Ready(item)
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
    Box::pin(bind(inner, Box::pin(reloads), allowed, &shutdown))
}

/// `inner` bound to the caller whose `reloads` are given.
fn bind<T>(inner: Replies<T>, reloads: Reloads, allowed: Allowed, shutdown: &CancellationToken) -> Bound<T> {
    let side = Arc::new(SideWake { woken: AtomicBool::new(true), task: AtomicWaker::new() });
    Bound {
        inner,
        reloads,
        allowed,
        shutdown: Box::pin(shutdown.clone().cancelled_owned()),
        side_waker: Waker::from(Arc::clone(&side)),
        side,
        registered: None,
        ended: false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::atomic::AtomicUsize;

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

    /// Where a test sends reloads.
    type ReloadSender = tokio::sync::mpsc::UnboundedSender<Result<Arc<Caller>, CallerGone>>;

    /// A bound stream of the items sent on the first sender, with the reloads sent on the
    /// second; the counter counts the polls of the reload wait.
    fn counted() -> (tokio::sync::mpsc::Sender<u32>, ReloadSender, Arc<AtomicUsize>, Bound<u32>) {
        let (items, receiver) = tokio::sync::mpsc::channel(4);
        let inner: Replies<u32> = Box::pin(ReceiverStream::new(receiver).map(Ok));
        let (reloads, mut reload_receiver) = tokio::sync::mpsc::unbounded_channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&polls);
        let reload_stream = futures::stream::poll_fn(move |cx| {
            counter.fetch_add(1, Ordering::Relaxed);
            reload_receiver.poll_recv(cx)
        });
        let stream = bind(inner, Box::pin(reload_stream), Box::new(|_| Ok(())), &CancellationToken::new());
        (items, reloads, polls, stream)
    }

    /// The side waits are polled when they are woken, not once per item: a refresh delivered
    /// to 10,000 streams must not poll 10,000 reload waits (#17). They are still woken: a
    /// reload after many items ends the stream.
    #[tokio::test]
    async fn items_do_not_poll_the_side_waits() {
        let (items, reloads, polls, mut stream) = counted();
        for i in 0..100 {
            items.send(i).await.unwrap();
            assert_eq!(stream.next().await.unwrap().unwrap(), i);
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, to register");
        // A reload that keeps the caller wakes the side waits once; the next one is still seen.
        let callers = Callers::new(&[consumer(&["mail-*"])]);
        let caller = CallerWatch::new(&callers, Credential::of_token("t"), "worker").unwrap().current().load_full();
        reloads.send(Ok(caller)).unwrap();
        for i in 100..110 {
            items.send(i).await.unwrap();
            assert_eq!(stream.next().await.unwrap().unwrap(), i);
        }
        assert_eq!(polls.load(Ordering::Relaxed), 3, "polled again when woken: the reload, then pending");
        reloads.send(Err(CallerGone("worker".into()))).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    }

    /// A reload that refuses the caller ends the stream before an item it may no longer have,
    /// even when the item was ready first.
    #[tokio::test]
    async fn a_refusing_reload_goes_before_a_ready_item() {
        let (items, reloads, _, mut stream) = counted();
        items.send(1).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        items.send(2).await.unwrap();
        reloads.send(Err(CallerGone("worker".into()))).unwrap();
        let ended = stream.next().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
        assert!(stream.next().await.is_none(), "nothing after the error");
    }
}
