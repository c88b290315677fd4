//! The refresh engine's clock work: one task sleeps until the earliest due refresh (or until a
//! write announces an earlier one) and runs what is due; a tokio-cron-scheduler job runs the
//! same sweep as a safety net. Both are idempotent: the sweep refreshes what the index says is
//! due, and joins refreshes already in flight.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::Engine;

/// Most index entries one sweep pass takes.
const SWEEP_BATCH: usize = 1024;
/// The longest the timer task sleeps without looking (a wall-clock jump is caught by then).
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Work that runs after every cron sweep (e.g. dropping expired consents), handed in by the
/// parts that own it so the engine needs to know nothing about them.
pub type Chore = Arc<dyn Fn() + Send + Sync>;

/// The cron scheduler could not start (a bad `refresh.sweep_cron` expression, mostly).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SchedulerError(#[from] tokio_cron_scheduler::JobSchedulerError);

/// The running scheduler; dropping it does not stop it, [`Scheduler::shutdown`] does.
pub struct Scheduler {
    cron: JobScheduler,
    timer: tokio::task::JoinHandle<()>,
    /// Set after every completed sweep: unix milliseconds.
    pub last_sweep_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Starts the timer task and the cron safety net (`cron` has six fields, seconds first).
    /// Cron, not a repeated job: tokio-cron-scheduler's repeated jobs stall for good after a
    /// pause (mvniekerk/tokio-cron-scheduler#113); cron jobs recompute from now.
    pub async fn start(
        engine: Arc<Engine>,
        cron: &str,
        chores: Vec<Chore>,
        shutdown: CancellationToken,
    ) -> Result<Self, SchedulerError> {
        let last_sweep_ms = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let sweep_lock = Arc::new(tokio::sync::Mutex::new(()));
        let scheduler = JobScheduler::new().await?;
        {
            // Weak: the scheduler library may keep the job after shutdown; it must not keep the
            // engine (and with it the store's directory lock) alive.
            let (engine, lock, last, stop) =
                (Arc::downgrade(&engine), Arc::clone(&sweep_lock), Arc::clone(&last_sweep_ms), shutdown.clone());
            let chores: Arc<[Chore]> = chores.into();
            scheduler
                .add(Job::new_async(cron, move |_, _| {
                    let (engine, lock, last, stop, chores) =
                        (engine.clone(), Arc::clone(&lock), Arc::clone(&last), stop.clone(), Arc::clone(&chores));
                    Box::pin(async move {
                        let Some(engine) = engine.upgrade() else { return };
                        // Never overlaps itself or the timer task: skip if a sweep is running.
                        if let Ok(_guard) = lock.try_lock()
                            && !stop.is_cancelled()
                        {
                            sweep(&engine, &last).await;
                            for chore in chores.iter() {
                                chore();
                            }
                        }
                    })
                })?)
                .await?;
        }
        scheduler.start().await?;
        let timer = tokio::spawn(timer_loop(engine, sweep_lock, Arc::clone(&last_sweep_ms), shutdown));
        Ok(Self { cron: scheduler, timer, last_sweep_ms })
    }

    /// Stops both; refreshes already running finish in their own tasks.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.cron.shutdown().await {
            tracing::warn!(error = %e, "stopping the cron scheduler failed");
        }
        self.timer.abort();
        let _ = (&mut self.timer).await;
    }
}

async fn timer_loop(
    engine: Arc<Engine>,
    sweep_lock: Arc<tokio::sync::Mutex<()>>,
    last: Arc<std::sync::atomic::AtomicI64>,
    shutdown: CancellationToken,
) {
    loop {
        {
            let _guard = sweep_lock.lock().await;
            sweep(&engine, &last).await;
        }
        let sleep = match engine.store.earliest_due() {
            Ok(Some(entry)) => {
                let wait = entry.at_ms - engine.clock.now_ms();
                Duration::from_millis(wait.max(0) as u64).min(MAX_SLEEP)
            }
            Ok(None) => MAX_SLEEP,
            Err(e) => {
                tracing::error!(error = %e, "reading the refresh index failed");
                MAX_SLEEP
            }
        };
        if sleep.is_zero() {
            // Everything due is in a failed/backing-off state that did not move: yield briefly.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = engine.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Refreshes every connection due now, a bounded number at a time, until none is due.
pub(super) async fn sweep(engine: &Arc<Engine>, last: &std::sync::atomic::AtomicI64) {
    loop {
        let now = engine.clock.now_ms();
        let due = match engine.store.due(now, SWEEP_BATCH) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading the refresh index failed");
                break;
            }
        };
        let count = due.len();
        futures::stream::iter(due)
            .for_each_concurrent(engine.settings.max_concurrent_refreshes, |entry| {
                let engine = Arc::clone(engine);
                async move {
                    // Outcomes are recorded on the connection; failures were logged.
                    let _ = engine.refresh_shared(&entry.name).await;
                }
            })
            .await;
        if count < SWEEP_BATCH {
            break;
        }
    }
    last.store(engine.clock.now_ms(), std::sync::atomic::Ordering::Relaxed);
}
