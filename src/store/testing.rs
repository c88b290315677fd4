//! A store for tests that drive interleavings deterministically ([`GatedStore`]): the engine's
//! write step held before its flush, leases held elsewhere, replicas writing between another's
//! read and write.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{
    ConnectionRecord, ConnectionWrite, ConsentRecord, DueEntry, DumpEntry, EntryVisit, LeaseOutcome, ProfileRecord,
    RecordRewrite, Rewritten, SealedTree, SledStore, Store, StoreError,
};
use crate::clock::UnixMillis;

/// A temporary sled store with gates a test opens and closes, to hold a caller between two of
/// its steps: `flush` waits while the flush gate is closed (the window between a write and its
/// publish); leases can be held by "another replica"; another replica's write can run between
/// a read of a metadata key and the write that follows it.
pub(crate) struct GatedStore {
    inner: SledStore,
    gate: Arc<(Mutex<bool>, Condvar)>,
    /// When set, every refresh lease is held by "another replica" (sled would always grant it).
    pub(crate) lease_elsewhere: AtomicBool,
    /// How many times a lease was asked for.
    pub(crate) lease_asks: AtomicUsize,
    /// Run once, right after the next read of this metadata key and before its value is returned.
    after_meta_read: Mutex<Option<(String, OtherReplica)>>,
}

/// Another replica's write, run against the shared store.
pub(crate) type OtherReplica = Box<dyn FnOnce(&SledStore) + Send>;

impl GatedStore {
    /// A new store, and the gate of its flush (open).
    pub(crate) fn new() -> (Arc<Self>, Gate) {
        let gate = Arc::new((Mutex::new(true), Condvar::new()));
        let store = Self {
            inner: SledStore::temporary().unwrap(),
            gate: Arc::clone(&gate),
            lease_elsewhere: AtomicBool::new(false),
            lease_asks: AtomicUsize::new(0),
            after_meta_read: Mutex::new(None),
        };
        (Arc::new(store), Gate(gate))
    }

    /// Runs `write` once, right after the next read of metadata `key` (the reader then gets the
    /// value from before `write`).
    pub(crate) fn after_next_meta_read(&self, key: &str, write: OtherReplica) {
        *self.after_meta_read.lock().unwrap() = Some((key.to_owned(), write));
    }
}

/// Opens and closes a [`GatedStore`]'s flush gate.
pub(crate) struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// Opens (`true`) or closes the gate; a flush waiting at it goes on when it opens.
    pub(crate) fn set(&self, open: bool) {
        *self.0.0.lock().unwrap() = open;
        self.0.1.notify_all();
    }
}

impl Store for GatedStore {
    fn profile(&self, name: &str) -> Result<Option<ProfileRecord>, StoreError> {
        self.inner.profile(name)
    }
    fn connection(&self, name: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        self.inner.connection(name)
    }
    fn profiles_after(&self, after: &str, limit: usize) -> Result<Vec<(ProfileRecord, ConnectionRecord)>, StoreError> {
        self.inner.profiles_after(after, limit)
    }
    fn connections(&self) -> Result<Vec<(String, ConnectionRecord)>, StoreError> {
        self.inner.connections()
    }
    fn insert_profile(&self, profile: &ProfileRecord, connection: &ConnectionRecord) -> Result<(), StoreError> {
        self.inner.insert_profile(profile, connection)
    }
    fn replace_profile(&self, profile: &ProfileRecord) -> Result<(), StoreError> {
        self.inner.replace_profile(profile)
    }
    fn remove_profile(&self, name: &str) -> Result<(), StoreError> {
        self.inner.remove_profile(name)
    }
    fn write_connection(&self, write: ConnectionWrite) -> Result<ConnectionRecord, StoreError> {
        self.inner.write_connection(write)
    }
    fn consent(&self, key: &[u8]) -> Result<Option<ConsentRecord>, StoreError> {
        self.inner.consent(key)
    }
    fn consents(&self) -> Result<Vec<(Vec<u8>, ConsentRecord)>, StoreError> {
        self.inner.consents()
    }
    fn due(&self, up_to: UnixMillis, limit: usize) -> Result<Vec<DueEntry>, StoreError> {
        self.inner.due(up_to, limit)
    }
    fn earliest_due(&self) -> Result<Option<DueEntry>, StoreError> {
        self.inner.earliest_due()
    }
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.inner.meta(key)?;
        let mut hook = self.after_meta_read.lock().unwrap();
        if hook.as_ref().is_some_and(|(hooked, _)| hooked == key)
            && let Some((_, write)) = hook.take()
        {
            drop(hook);
            write(&self.inner);
        }
        Ok(value)
    }
    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.set_meta(key, value)
    }
    fn compare_and_swap_meta(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, StoreError> {
        self.inner.compare_and_swap_meta(key, expected, value)
    }
    fn flush(&self) -> Result<(), StoreError> {
        let (open, changed) = &*self.gate;
        let mut guard = open.lock().unwrap();
        while !*guard {
            guard = changed.wait(guard).unwrap();
        }
        self.inner.flush()
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.size_on_disk()
    }
    fn dump(&self) -> Result<Vec<DumpEntry>, StoreError> {
        self.inner.dump()
    }
    fn restore(&self, entries: &[DumpEntry]) -> Result<(), StoreError> {
        self.inner.restore(entries)
    }
    fn for_each_entry(&self, visit: &mut EntryVisit<'_>) -> Result<(), StoreError> {
        self.inner.for_each_entry(visit)
    }
    fn for_each_connection_name(&self, visit: &mut dyn FnMut(&str) -> bool) -> Result<(), StoreError> {
        self.inner.for_each_connection_name(visit)
    }
    fn rewrite_records(&self, tree: SealedTree, rewrite: &mut RecordRewrite<'_>) -> Result<Rewritten, StoreError> {
        self.inner.rewrite_records(tree, rewrite)
    }
    fn take_lease(&self, name: &str, version: u64, lease: Duration) -> Result<LeaseOutcome, StoreError> {
        self.lease_asks.fetch_add(1, Ordering::SeqCst);
        if self.lease_elsewhere.load(Ordering::SeqCst) {
            return Ok(LeaseOutcome::HeldElsewhere { remaining_ms: 10_000 });
        }
        self.inner.take_lease(name, version, lease)
    }
}
