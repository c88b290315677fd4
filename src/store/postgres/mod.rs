//! The PostgreSQL backend: several tokend replicas share one database (issue #16).
//!
//! # Why a synchronous store over an async client
//! [`crate::store::Store`] is synchronous: the engine and administration call it from async tasks
//! (sled answers from memory or its page cache). Making the trait async would touch every caller
//! in the engine and administration at once; instead [`PgStore`] runs each query on a small
//! runtime of its own (two `tokend-pg` threads that own the pool, its sockets and the listener)
//! and waits for the answer. On a worker of the daemon's multi-thread runtime it waits inside
//! `tokio::task::block_in_place`, so the runtime moves its other tasks to another thread instead
//! of starving them; outside any runtime (the contract tests, `tokend export`) it simply blocks.
//! Because the pool lives on its own runtime, it never depends on which runtime (or none) the
//! caller is on. Every call is bounded by a short timeout (connect and statement), so an
//! unreachable database fails fast with [`StoreError::Unavailable`] (gRPC `UNAVAILABLE`) instead
//! of holding workers. Hand-outs never reach the store (they read the engine's cache), so they
//! keep serving while the database is down. The cost, a thread hop per query, is small next to a
//! network round trip; an async trait remains the cleaner end state.
//!
//! One job per file: [`pool`] (options, connecting, TLS, redaction), [`schema`] (migrations and
//! start checks), `ops` (the [`Store`] methods), `bulk` (whole-store visits, restore, re-seal),
//! `lease` (refresh leases, health), [`notify`] (the change feed).

mod bulk;
mod lease;
pub mod notify;
mod ops;
pub mod pool;
pub mod schema;

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;
use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

pub use pool::PgOptions;

use super::{ChangeFeed, StoreError};

/// The PostgreSQL-backed [`crate::store::Store`].
pub struct PgStore {
    /// The pool; `None` only while dropping (it is dropped inside the runtime's context).
    pool: Option<PgPool>,
    /// The store's own runtime; `None` only while dropping.
    runtime: Option<Runtime>,
    handle: Handle,
    /// Bound on one call, connect included.
    timeout: Duration,
    /// The `LISTEN/NOTIFY` channel of this schema.
    channel: String,
    /// Who this process is in the lease column (unique per process).
    holder: String,
    /// The listener behind the change feed, started by [`PgStore::open`].
    feed: Mutex<Option<notify::FeedState>>,
    /// The change feed's receiving end, until the engine takes it.
    receiver: Mutex<Option<ChangeFeed>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("channel", &self.channel).field("holder", &self.holder).finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, refuses an unsafe server (`synchronous_commit = off`) or a schema newer than
    /// this binary, applies pending migrations under the migration advisory lock, and checks the
    /// store's record schema version. Fails with [`StoreError::Unavailable`] when the database
    /// cannot be reached within the connect timeout.
    pub fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let store = Self::connect(options)?;
        let pool = store.pool()?.clone();
        let schema = options.schema.clone();
        store.run("migrating the schema", async move { schema::prepare(&pool, &schema).await })?;
        store.check_record_schema()?;
        store.start_feed(options.connect_timeout);
        Ok(store)
    }

    /// Connects without touching the schema (for `tokend migrate`, which applies it).
    pub fn connect(options: &PgOptions) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tokend-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Engine(format!("starting the database runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let connect = {
            let options = options.clone();
            async move { pool::connect(&options).await }
        };
        let pool = match block_on_store(&handle, options.connect_timeout, connect) {
            Ok(pool) => pool,
            Err(e) => {
                // Dropping a runtime blocks, which is not allowed on an async worker.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        Ok(Self {
            pool: Some(pool),
            runtime: Some(runtime),
            handle,
            timeout: options.statement_timeout,
            channel: format!("tokend_{}", options.schema),
            holder: notify::holder_id(),
            feed: Mutex::new(None),
            receiver: Mutex::new(None),
        })
    }

    /// Applies the migrations this binary knows (`tokend migrate`); returns the schema version
    /// now applied.
    pub fn migrate(options: &PgOptions) -> Result<i64, StoreError> {
        let store = Self::connect(options)?;
        let pool = store.pool()?.clone();
        let schema = options.schema.clone();
        store.run("migrating the schema", async move { schema::prepare(&pool, &schema).await })
    }

    fn pool(&self) -> Result<&PgPool, StoreError> {
        self.pool.as_ref().ok_or_else(|| StoreError::Engine("the store is closing".into()))
    }

    /// Runs `future` on the store's runtime and waits for it, at most the statement timeout (see
    /// the module docs for why this does not starve the daemon's runtime).
    fn run<T, F>(&self, what: &'static str, future: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        block_on_store(&self.handle, self.timeout, future).map_err(|e| match e {
            StoreError::Unavailable(detail) => StoreError::Unavailable(format!("{what}: {detail}")),
            other => other,
        })
    }

    /// The record schema version in `meta`: written when missing, refused when newer.
    fn check_record_schema(&self) -> Result<(), StoreError> {
        super::check_record_schema(self)
    }

    /// Starts the change feed and waits (at most `wait`) until it listens, so that nothing
    /// written after `open` returns goes unheard; if it is not connected by then it goes on
    /// trying, and says `Resync` once it is.
    fn start_feed(&self, wait: Duration) {
        let Some(pool) = self.pool.as_ref().cloned() else { return };
        let (state, receiver) = notify::start(&self.handle, pool, self.channel.clone(), self.holder.clone());
        let deadline = std::time::Instant::now() + wait;
        while !state.connected() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Ok(mut feed) = self.feed.lock() {
            *feed = Some(state);
        }
        if let Ok(mut slot) = self.receiver.lock() {
            *slot = Some(receiver);
        }
    }

    /// Hands out the change feed, once.
    fn take_feed(&self) -> Option<ChangeFeed> {
        self.receiver.lock().ok()?.take()
    }

    /// Whether the change feed (if started) is connected.
    fn feed_connected(&self) -> bool {
        match self.feed.lock() {
            Ok(feed) => feed.as_ref().is_none_or(notify::FeedState::connected),
            Err(_) => false,
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            {
                // The pool's connections close in tasks of the runtime they were opened on.
                let _context = runtime.enter();
                if let Ok(mut feed) = self.feed.lock()
                    && let Some(feed) = feed.take()
                {
                    feed.stop();
                }
                drop(self.pool.take());
            }
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `handle` (the store's runtime, whose timer bounds it by `timeout`) and
/// blocks until it ends; on a worker of a multi-thread runtime, inside `block_in_place` so the
/// runtime's other tasks move to another thread meanwhile.
fn block_on_store<T, F>(handle: &Handle, timeout: Duration, future: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let task = handle.spawn(async move {
        tokio::time::timeout(timeout, future)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("no answer within {} ms", timeout.as_millis()))))
    });
    let wait = || futures::executor::block_on(task);
    let joined = match Handle::try_current() {
        Ok(current) if current.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(wait),
        _ => wait(),
    };
    joined.unwrap_or_else(|e| Err(StoreError::Engine(format!("database task failed: {e}"))))
}

/// A fresh store in a schema of its own, on the test server `scripts/test.sh` starts
/// (`TOKEND_TEST_POSTGRES_URL`). Without the variable the test fails, saying how to run it: the
/// PostgreSQL tests never skip silently.
#[cfg(test)]
pub(crate) fn test_store() -> PgStore {
    PgStore::open(&test_options()).expect("opening the test store")
}

/// Options for a new schema on the test server (see [`test_store`]).
#[cfg(test)]
pub(crate) fn test_options() -> PgOptions {
    let url = std::env::var("TOKEND_TEST_POSTGRES_URL").unwrap_or_default();
    assert!(
        !url.is_empty(),
        "TOKEND_TEST_POSTGRES_URL is not set: the PostgreSQL tests need a server. Run scripts/test.sh, or \
         `eval \"$(scripts/pg-test-server.sh start)\"` and then cargo test"
    );
    let mut options = PgOptions::new(url);
    options.schema = format!("t_{:016x}", rand::random::<u64>());
    options.pool_size = 4;
    options
}

#[cfg(test)]
mod tests;
