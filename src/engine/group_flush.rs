//! Group commit of flushes. Every rotated token set must be durable before any caller sees its
//! access token, and a flush per refresh made the flush a third of the engine's CPU. Here one
//! flush runs at a time; a writer waits for the first flush that *begins* after its write (that
//! flush covers it), and every writer arriving before that flush begins shares it.
//!
//! A flush does not begin the moment its first writer arrives when other refreshes are running:
//! they will want a flush within a moment, so it gathers them first, for at most
//! [`GATHER_AT_MOST`] (a commit delay, as databases call it). Alone, a writer is flushed at
//! once. Durability is unchanged: nobody is told "durable" before a flush covering its write
//! ended.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};

use super::EngineMetrics;
use crate::store::{Store, StoreError};

/// The longest a flush waits for running refreshes to join it. Short next to a provider's round
/// trip (what a caller waiting on a refresh waits for anyway), long next to the time between
/// two refreshes' writes when many run.
pub const GATHER_AT_MOST: Duration = Duration::from_millis(1);

/// Generations of flushes: requested, begun, and who waits for the next.
#[derive(Debug, Default)]
struct Generations {
    /// The highest generation a writer waits for.
    wanted: u64,
    /// The generation of the flush begun last (running or done).
    begun: u64,
    /// A flush task exists (gathering writers or flushing).
    running: bool,
    /// Writers waiting for the flush not yet begun (generation `begun + 1`).
    gathered: usize,
}

/// The last finished flush: its generation and whether it failed.
#[derive(Debug, Clone, Default)]
struct Finished {
    generation: u64,
    error: Option<String>,
}

/// The refreshes that may soon want a flush: those holding one of the engine's refresh permits.
#[derive(Debug)]
pub struct RunningRefreshes {
    /// The engine's refresh permits.
    pub permits: Arc<Semaphore>,
    /// How many permits there are in all.
    pub total: usize,
}

impl RunningRefreshes {
    fn count(&self) -> usize {
        self.total.saturating_sub(self.permits.available_permits())
    }
}

/// Shares flushes among concurrent writers.
pub struct GroupFlush {
    store: Arc<dyn Store>,
    generations: Mutex<Generations>,
    finished: watch::Sender<Finished>,
    /// Wakes a gathering flush when a writer joins it.
    joined: Notify,
    running: RunningRefreshes,
    metrics: EngineMetrics,
}

impl std::fmt::Debug for GroupFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupFlush").finish_non_exhaustive()
    }
}

impl GroupFlush {
    /// Flushes of `store`, gathering the writes of `running` refreshes, counted in `metrics`.
    pub fn new(store: Arc<dyn Store>, running: RunningRefreshes, metrics: EngineMetrics) -> Arc<Self> {
        Arc::new(Self {
            store,
            generations: Mutex::new(Generations::default()),
            finished: watch::channel(Finished::default()).0,
            joined: Notify::new(),
            running,
            metrics,
        })
    }

    /// Returns once every write made before this call is durable. The flush runs in a task of
    /// its own, so a caller that gives up cannot strand the writers sharing it.
    pub async fn flush(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut finished = self.finished.subscribe();
        self.metrics.store_flush_waits.inc();
        let (target, lead) = {
            let Ok(mut generations) = self.generations.lock() else {
                return Err(StoreError::Engine("flush coordinator poisoned".into()));
            };
            // The next flush to begin is the first that covers this caller's writes.
            let target = generations.begun + 1;
            generations.wanted = generations.wanted.max(target);
            generations.gathered += 1;
            let lead = !generations.running;
            generations.running = true;
            (target, lead)
        };
        if lead {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.run().await });
        } else {
            self.joined.notify_one();
        }
        let done = finished
            .wait_for(|f| f.generation >= target)
            .await
            .map_err(|_| StoreError::Engine("flush coordinator stopped".into()))?;
        match &done.error {
            None => Ok(()),
            Some(e) => Err(StoreError::Engine(e.clone())),
        }
    }

    /// Runs flushes until no writer waits for a later one.
    async fn run(self: Arc<Self>) {
        loop {
            self.gather().await;
            let generation = {
                let Ok(mut generations) = self.generations.lock() else { return };
                generations.begun += 1;
                generations.gathered = 0;
                generations.begun
            };
            let store = Arc::clone(&self.store);
            let started = std::time::Instant::now();
            let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
            self.metrics.store_flushes.inc();
            self.metrics.store_flush_seconds.observe(started.elapsed().as_secs_f64());
            let error = match flushed {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("flush task: {e}")),
            };
            self.finished.send_replace(Finished { generation, error });
            let Ok(mut generations) = self.generations.lock() else { return };
            if generations.wanted <= generations.begun {
                generations.running = false;
                return;
            }
        }
    }

    /// Waits, at most [`GATHER_AT_MOST`], until every running refresh waits for the next flush.
    async fn gather(&self) {
        let deadline = tokio::time::Instant::now() + GATHER_AT_MOST;
        loop {
            let joined = self.joined.notified();
            tokio::pin!(joined);
            joined.as_mut().enable();
            let gathered = self.generations.lock().map(|g| g.gathered).unwrap_or(usize::MAX);
            if gathered >= self.running.count() {
                return;
            }
            tokio::select! {
                () = joined => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn group(store: &Arc<dyn Store>, running: usize) -> (Arc<GroupFlush>, EngineMetrics) {
        let metrics = EngineMetrics::default();
        let running = RunningRefreshes { permits: Arc::new(Semaphore::new(16 - running)), total: 16 };
        (GroupFlush::new(Arc::clone(store), running, metrics.clone()), metrics)
    }

    /// Many concurrent writers share few flushes, and every one of them returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_share_flushes() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let (group, metrics) = group(&store, 0);
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let (group, store) = (Arc::clone(&group), Arc::clone(&store));
            tasks.push(tokio::spawn(async move {
                store.set_meta(&format!("k{i}"), b"v").unwrap();
                group.flush().await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let flushes = group.finished.borrow().generation;
        assert!((1..200).contains(&flushes), "{flushes} flushes for 200 writers");
        assert_eq!(metrics.store_flushes.get(), flushes);
        assert_eq!(metrics.store_flush_waits.get(), 200);
        // A later writer still gets a flush of its own.
        group.flush().await.unwrap();
        assert_eq!(group.finished.borrow().generation, flushes + 1);
    }

    /// While refreshes run, a flush waits for them to join, up to its limit; a writer alone is
    /// flushed at once.
    #[tokio::test(start_paused = true)]
    async fn a_flush_gathers_running_refreshes() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        // Nothing else running: no wait at all (paused time would show any).
        let (alone, _) = group(&store, 0);
        let started = tokio::time::Instant::now();
        alone.flush().await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);

        // Three refreshes running: the first writer's flush waits for the other two.
        let (shared, metrics) = group(&store, 3);
        let first = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move { shared.flush().await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!first.is_finished(), "the flush waits for the running refreshes");
        let (second, third) = tokio::join!(shared.flush(), shared.flush());
        second.unwrap();
        third.unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(metrics.store_flushes.get(), 1, "one flush for the three writers");

        // Two running, one writes: its flush begins after the limit, without the other.
        let (bounded, _) = group(&store, 2);
        let started = tokio::time::Instant::now();
        bounded.flush().await.unwrap();
        assert!(started.elapsed() >= GATHER_AT_MOST, "waited {:?}", started.elapsed());
        assert!(started.elapsed() < GATHER_AT_MOST * 3, "waited {:?}", started.elapsed());
    }
}
