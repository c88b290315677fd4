//! Group commit of flushes. Every rotated token set must be durable before any caller sees its
//! access token, and a flush per refresh made the flush a third of the engine's CPU. Here one
//! flush runs at a time; a writer waits for the first flush that *started* after its write
//! (that flush covers it), and every writer arriving while a flush runs shares the next one.
//! Durability is unchanged: nobody is told "durable" before a flush covering its write ended.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::store::{Store, StoreError};

/// Generations of flushes: requested, started, and the last one finished.
#[derive(Debug, Default)]
struct Generations {
    /// The highest generation a writer waits for.
    wanted: u64,
    /// The generation of the flush running or last run.
    started: u64,
    /// Whether a flush is running.
    running: bool,
}

/// The last finished flush: its generation and whether it failed.
#[derive(Debug, Clone, Default)]
struct Finished {
    generation: u64,
    error: Option<String>,
}

/// Shares flushes among concurrent writers.
pub struct GroupFlush {
    store: Arc<dyn Store>,
    generations: Mutex<Generations>,
    finished: watch::Sender<Finished>,
}

impl std::fmt::Debug for GroupFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupFlush").finish_non_exhaustive()
    }
}

impl GroupFlush {
    /// Flushes of `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            generations: Mutex::new(Generations::default()),
            finished: watch::channel(Finished::default()).0,
        })
    }

    /// Returns once every write made before this call is durable. The flush runs in a task of
    /// its own, so a caller that gives up cannot strand the writers sharing it.
    pub async fn flush(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut finished = self.finished.subscribe();
        let (target, lead) = {
            let Ok(mut generations) = self.generations.lock() else {
                return Err(StoreError::Engine("flush coordinator poisoned".into()));
            };
            // The next flush to start is the first that covers this caller's writes.
            let target = generations.started + 1;
            generations.wanted = generations.wanted.max(target);
            let lead = !generations.running;
            if lead {
                generations.running = true;
                generations.started = target;
            }
            (target, lead)
        };
        if lead {
            let this = Arc::clone(self);
            tokio::spawn(async move { this.run(target).await });
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

    /// Runs flushes, starting with `generation`, until no writer waits for a later one.
    async fn run(self: Arc<Self>, mut generation: u64) {
        loop {
            let store = Arc::clone(&self.store);
            let error = match tokio::task::spawn_blocking(move || store.flush()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("flush task: {e}")),
            };
            self.finished.send_replace(Finished { generation, error });
            let Ok(mut generations) = self.generations.lock() else { return };
            if generations.wanted > generation {
                generation += 1;
                generations.started = generation;
            } else {
                generations.running = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    /// Many concurrent writers share few flushes, and every one of them returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_share_flushes() {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        let group = GroupFlush::new(Arc::clone(&store));
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
        // A later writer still gets a flush of its own.
        group.flush().await.unwrap();
        assert_eq!(group.finished.borrow().generation, flushes + 1);
    }
}
