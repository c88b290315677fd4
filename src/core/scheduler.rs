//! The refresh engine's clock work: one task sleeps until the earliest due refresh (or until a
//! write announces an earlier one) and runs what is due; a tokio-cron-scheduler job runs the
//! same sweep as a safety net. Both are idempotent: the sweep refreshes what the index says is
//! due, and joins refreshes already in flight.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use super::Core;

/// Most index entries one sweep pass takes.
const SWEEP_BATCH: usize = 1024;
/// The longest the timer task sleeps without looking (a wall-clock jump is caught by then).
const MAX_SLEEP: Duration = Duration::from_secs(30);

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
    pub async fn start(core: Arc<Core>, cron: &str, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let last_sweep_ms = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let sweep_lock = Arc::new(tokio::sync::Mutex::new(()));
        let scheduler = JobScheduler::new().await?;
        {
            // Weak: the scheduler library may keep the job after shutdown; it must not keep the
            // core (and with it the store's directory lock) alive.
            let (core, lock, last, stop) =
                (Arc::downgrade(&core), Arc::clone(&sweep_lock), Arc::clone(&last_sweep_ms), shutdown.clone());
            scheduler
                .add(Job::new_async(cron, move |_, _| {
                    let (core, lock, last, stop) = (core.clone(), Arc::clone(&lock), Arc::clone(&last), stop.clone());
                    Box::pin(async move {
                        let Some(core) = core.upgrade() else { return };
                        // Never overlaps itself or the timer task: skip if a sweep is running.
                        if let Ok(_guard) = lock.try_lock()
                            && !stop.is_cancelled()
                        {
                            sweep(&core, &last).await;
                            if let Err(e) = core.expire_consents() {
                                tracing::warn!(error = %e, "dropping expired consents failed");
                            }
                        }
                    })
                })?)
                .await?;
        }
        scheduler.start().await?;
        let timer = tokio::spawn(timer_loop(core, sweep_lock, Arc::clone(&last_sweep_ms), shutdown));
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
    core: Arc<Core>,
    sweep_lock: Arc<tokio::sync::Mutex<()>>,
    last: Arc<std::sync::atomic::AtomicI64>,
    shutdown: CancellationToken,
) {
    loop {
        {
            let _guard = sweep_lock.lock().await;
            sweep(&core, &last).await;
        }
        let sleep = match core.store.earliest_due() {
            Ok(Some(entry)) => {
                let wait = entry.at_ms - core.clock.now_ms();
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
            _ = core.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Refreshes every connection due now, a bounded number at a time, until none is due.
pub(super) async fn sweep(core: &Arc<Core>, last: &std::sync::atomic::AtomicI64) {
    loop {
        let now = core.clock.now_ms();
        let due = match core.store.due(now, SWEEP_BATCH) {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "reading the refresh index failed");
                break;
            }
        };
        let count = due.len();
        futures::stream::iter(due)
            .for_each_concurrent(core.settings.max_concurrent_refreshes, |entry| {
                let core = Arc::clone(core);
                async move {
                    // Outcomes are recorded on the connection; failures were logged.
                    let _ = core.refresh_shared(&entry.name).await;
                }
            })
            .await;
        if count < SWEEP_BATCH {
            break;
        }
    }
    last.store(core.clock.now_ms(), std::sync::atomic::Ordering::Relaxed);
}
