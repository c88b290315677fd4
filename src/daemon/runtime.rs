//! The tokio runtime the daemon runs on, built in one place so the `tokend` binary and the
//! benchmarks' daemons schedule the same way.

use std::io;

/// Builds the daemon's multi-thread runtime: `workers` worker threads (tokio's default, one per
/// CPU, when `None`), IO and time drivers on.
///
/// When built with `--cfg tokio_unstable` (the repository's `.cargo/config.toml` sets it), the
/// workers' LIFO slot is turned off. With the slot, a task woken by the running task runs next on
/// that worker; when a token refresh wakes the thousands of `WatchAccessToken` streams sharing a
/// few HTTP/2 connections, each stream's task hands one frame to h2 and wakes its connection's
/// task, which then runs at once and writes that one frame: one `writev` per stream delivered.
/// Without the slot the connection's task runs after the woken streams and writes their frames
/// together; under load the same goes for `GetAccessToken` replies, several to a write.
/// docs/performance.md ("tokio's LIFO slot off") has the figures for both settings. A build
/// without the cfg (other `RUSTFLAGS`) keeps tokio's default, which is correct, only slower.
pub fn build_runtime(workers: Option<usize>) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = workers {
        builder.worker_threads(workers.max(1));
    }
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Whether the runtime [`build_runtime`] makes runs without the LIFO slot (this build has the
/// `tokio_unstable` cfg); the benchmarks print it with their figures.
pub const LIFO_SLOT_DISABLED: bool = cfg!(tokio_unstable);

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Two tasks spawned one after the other by a task on the runtime's one worker: with the
    /// LIFO slot the second runs first (it takes the slot, the first goes to the queue), without
    /// it they run in the order they were woken, which is what lets a connection's task run
    /// after all the streams a refresh woke.
    #[test]
    fn woken_tasks_run_in_the_order_they_were_woken() {
        let runtime = build_runtime(Some(1)).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&order);
        runtime.block_on(async move {
            tokio::spawn(async move {
                let first = Arc::clone(&recorded);
                let second = Arc::clone(&recorded);
                let a = tokio::spawn(async move { first.lock().unwrap().push("first") });
                let b = tokio::spawn(async move { second.lock().unwrap().push("second") });
                a.await.unwrap();
                b.await.unwrap();
            })
            .await
            .unwrap();
        });
        let order = order.lock().unwrap().clone();
        let expected = if LIFO_SLOT_DISABLED { ["first", "second"] } else { ["second", "first"] };
        assert_eq!(order, expected, "the runtime does not schedule as LIFO_SLOT_DISABLED says");
        // The repository's builds have the cfg (.cargo/config.toml); only RUSTFLAGS set in the
        // environment (a coverage or sanitizer run) replaces it.
        if option_env!("RUSTFLAGS").is_none() {
            assert_eq!(
                order,
                ["first", "second"],
                "built without --cfg tokio_unstable: is .cargo/config.toml in place?"
            );
        }
    }
}
