//! Storage behind a narrow trait, the seam for a second backend: the engine and administration
//! reach storage only through [`Store`] (no sled type leaves this module), and every backend
//! runs the same contract test suite (`contract.rs`). sled is the embedded default
//! ([`SledStore`]); [`backup`] is the backend-neutral backup format.
//!
//! The store keeps sealed bytes only: sealing and opening happen above it ([`crate::crypto`]).
//! Every connection write is a compare-and-swap on the record's `version`, and the refresh index
//! (big-endian refresh time, then name) changes in the same transaction as the connection.

pub mod backup;
mod changes;
#[cfg(test)]
pub(crate) mod contract;
pub mod postgres;
mod records;
mod sled_store;
#[cfg(test)]
pub(crate) mod testing;

pub use changes::{ChangeFeed, LeaseOutcome, StoreChange};
pub use postgres::{PgOptions, PgStore};

pub use records::{
    ConnectionRecord, ConsentRecord, DiscoveredRecord, ProfileRecord, RefreshPolicyRecord, SCHEMA_VERSION,
};
pub use sled_store::{SledOptions, SledStore};

use crate::clock::UnixMillis;

/// What went wrong in the store. Callers match on `AlreadyExists`, `NotFound` and `Conflict`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A profile of that name exists.
    #[error("profile {0:?} already exists")]
    AlreadyExists(String),
    /// No profile of that name.
    #[error("profile {0:?} not found")]
    NotFound(String),
    /// The connection changed since it was read: its version is now `current`.
    #[error("connection {name:?} changed concurrently (now version {current})")]
    Conflict {
        /// The profile name.
        name: String,
        /// The version now stored.
        current: u64,
    },
    /// Another process holds the data directory.
    #[error("data directory {0} is locked by another process (is another tokend running?)")]
    Locked(String),
    /// A record does not decode.
    #[error("corrupt record in tree {tree}: {detail}")]
    Corrupt {
        /// The tree holding it.
        tree: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The store was written by a newer tokend.
    #[error("store schema version {found} is newer than this tokend supports ({supported}); upgrade tokend")]
    TooNew {
        /// The version found.
        found: u32,
        /// The version this binary writes.
        supported: u32,
    },
    /// The underlying engine failed.
    #[error("storage engine: {0}")]
    Engine(String),
    /// The database cannot be reached now (connection refused or lost, a timeout): nothing was
    /// written; retry later. Only a networked backend (PostgreSQL) returns it; callers answer
    /// `UNAVAILABLE` and keep serving cached tokens.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

/// One entry of a backup: (tree, key, value).
pub type DumpEntry = (String, Vec<u8>, Vec<u8>);

/// One write of a connection, guarded by the version it was read at, with the consent changes
/// that go with it (all or nothing).
#[derive(Debug, Clone)]
pub struct ConnectionWrite {
    /// The profile name.
    pub name: String,
    /// The version the writer read; the write fails with `Conflict` if the store has another.
    pub expected_version: u64,
    /// The new record; its `version` is set to `expected_version + 1` by the store.
    pub record: ConnectionRecord,
    /// A consent to store (key, record).
    pub put_consent: Option<(Vec<u8>, ConsentRecord)>,
    /// A consent to delete.
    pub remove_consent: Option<Vec<u8>>,
}

impl ConnectionWrite {
    /// Replaces the connection read as `before` with `record`, guarded by `before`'s version;
    /// no consent changes.
    pub fn replacing(name: &str, before: &ConnectionRecord, record: ConnectionRecord) -> Self {
        Self {
            name: name.to_owned(),
            expected_version: before.version,
            record,
            put_consent: None,
            remove_consent: None,
        }
    }

    /// The same write, also deleting the consent stored under `key` (if any).
    pub fn removing_consent(mut self, key: Option<Vec<u8>>) -> Self {
        self.remove_consent = key;
        self
    }

    /// The same write, also storing `consent` under `key`.
    pub fn putting_consent(mut self, key: Vec<u8>, consent: ConsentRecord) -> Self {
        self.put_consent = Some((key, consent));
        self
    }
}

/// The trees whose records hold sealed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedTree {
    /// Profiles (the client secret).
    Profiles,
    /// Connections (access and refresh tokens).
    Connections,
    /// Pending consents (PKCE verifiers).
    Consents,
}

/// What [`Store::rewrite_records`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// Records replaced by their rewritten bytes.
    pub replaced: u64,
    /// Records that changed between the read and the write, so they were left to the writer that
    /// changed them (offer them again in a later pass).
    pub raced: u64,
}

/// A rewrite of one record: given its key and bytes, the new bytes, or `None` to leave it.
pub type RecordRewrite<'a> = dyn FnMut(&[u8], &[u8]) -> Result<Option<Vec<u8>>, StoreError> + 'a;

/// A visitor of store entries: (tree, key, value); returns whether to go on.
pub type EntryVisit<'a> = dyn FnMut(&str, &[u8], &[u8]) -> bool + 'a;

/// A refresh index entry: when, and which profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEntry {
    /// The refresh time.
    pub at_ms: UnixMillis,
    /// The profile name.
    pub name: String,
}

/// The storage the daemon needs, and no more.
pub trait Store: Send + Sync + 'static {
    /// One profile.
    fn profile(&self, name: &str) -> Result<Option<ProfileRecord>, StoreError>;
    /// One connection.
    fn connection(&self, name: &str) -> Result<Option<ConnectionRecord>, StoreError>;
    /// Profiles with their connections, in name order, strictly after `after`, at most `limit`.
    fn profiles_after(&self, after: &str, limit: usize) -> Result<Vec<(ProfileRecord, ConnectionRecord)>, StoreError>;
    /// Every connection, for warming the in-memory token cache at start.
    fn connections(&self) -> Result<Vec<(String, ConnectionRecord)>, StoreError>;
    /// Creates a profile with its (not connected) connection. `AlreadyExists` if taken.
    fn insert_profile(&self, profile: &ProfileRecord, connection: &ConnectionRecord) -> Result<(), StoreError>;
    /// Replaces an existing profile. `NotFound` if absent.
    fn replace_profile(&self, profile: &ProfileRecord) -> Result<(), StoreError>;
    /// Deletes a profile, its connection, its index entry and its pending consent.
    fn remove_profile(&self, name: &str) -> Result<(), StoreError>;
    /// Writes a connection if its version is still `expected_version`; returns the stored record.
    fn write_connection(&self, write: ConnectionWrite) -> Result<ConnectionRecord, StoreError>;
    /// A pending consent.
    fn consent(&self, key: &[u8]) -> Result<Option<ConsentRecord>, StoreError>;
    /// Every pending consent (key, record), for dropping expired ones.
    fn consents(&self) -> Result<Vec<(Vec<u8>, ConsentRecord)>, StoreError>;
    /// Refresh index entries due at or before `up_to`, oldest first, at most `limit`.
    fn due(&self, up_to: UnixMillis, limit: usize) -> Result<Vec<DueEntry>, StoreError>;
    /// The earliest refresh index entry.
    fn earliest_due(&self) -> Result<Option<DueEntry>, StoreError>;
    /// A metadata value.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets a metadata value.
    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Sets a metadata value only if it is still `expected` (`None`: absent); `false` when it
    /// was not. For values several replicas read, change and write back (the signed-out
    /// sessions), where a plain `set_meta` would drop another replica's change made in between.
    fn compare_and_swap_meta(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, StoreError>;
    /// Makes every write so far durable. Blocks on disk I/O: call from a blocking context.
    fn flush(&self) -> Result<(), StoreError>;
    /// Bytes used on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// Every entry of every tree, for a backup: (tree, key, value). Values stay sealed.
    fn dump(&self) -> Result<Vec<DumpEntry>, StoreError>;
    /// Loads a backup into an empty store (refused if it holds any profile), in one batch per
    /// tree, then flushes.
    fn restore(&self, entries: &[DumpEntry]) -> Result<(), StoreError>;
    /// Calls `visit` with every entry of every tree (tree name, key, value), in tree order, until
    /// it returns `false`; for backups of a running daemon, which must not hold the whole store
    /// in memory. Each entry is read atomically; entries of different trees may be from
    /// slightly different moments (a restore rebuilds the derived refresh index).
    fn for_each_entry(&self, visit: &mut EntryVisit<'_>) -> Result<(), StoreError>;
    /// Calls `visit` with the name of every stored connection, in name order, until it returns
    /// `false` (the cache warm-up streams names instead of holding every record at once).
    fn for_each_connection_name(&self, visit: &mut dyn FnMut(&str) -> bool) -> Result<(), StoreError>;
    /// Offers every record of `tree` to `rewrite`; where it returns new bytes, replaces the record
    /// only if it still holds the bytes offered (compare-and-swap), so a concurrent writer always
    /// wins and nothing it wrote is lost. Used to re-seal secrets under a new key.
    fn rewrite_records(&self, tree: SealedTree, rewrite: &mut RecordRewrite<'_>) -> Result<Rewritten, StoreError>;

    /// Changes written by other processes sharing this store, for keeping an in-memory cache
    /// coherent (the engine subscribes once, at start). `None` (the default, and sled's answer):
    /// this process is the only writer, so nothing changes behind its back.
    fn changes(&self) -> Option<ChangeFeed> {
        None
    }

    /// Takes the refresh lease of `name` for `lease`, if the connection is still at `version`
    /// and no other process holds an unexpired lease on it: the one process that holds it may
    /// call the provider for that connection. The default (sled: one process) always grants.
    fn take_lease(&self, name: &str, version: u64, lease: std::time::Duration) -> Result<LeaseOutcome, StoreError> {
        let _ = (name, version, lease);
        Ok(LeaseOutcome::Granted)
    }

    /// Gives back a lease taken with [`Store::take_lease`] (a no-op when not held).
    fn release_lease(&self, name: &str) -> Result<(), StoreError> {
        let _ = name;
        Ok(())
    }

    /// Whether the store can serve reads and writes now and (for a shared store) its change feed
    /// is connected, so the cache built from it can be trusted; `/readyz` reports it.
    fn healthy(&self) -> bool {
        self.earliest_due().is_ok()
    }
}

/// The `meta` key holding the record schema version.
pub(crate) const SCHEMA_KEY: &str = "schema_version";

/// Checks the record schema version a store holds in `meta`: writes ours when there is none,
/// refuses a newer one (a newer tokend wrote records this one may not read). Every backend runs
/// it when it opens.
pub(crate) fn check_record_schema(store: &dyn Store) -> Result<(), StoreError> {
    match store.meta(SCHEMA_KEY)? {
        None => store.set_meta(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes()),
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Corrupt { tree: "meta", detail: SCHEMA_KEY.into() })?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew { found, supported: SCHEMA_VERSION });
            }
            Ok(())
        }
    }
}

/// The refresh index key: big-endian time (so keys sort by time), then the name.
pub fn due_key(at_ms: UnixMillis, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len());
    // Times before the epoch do not occur; clamp so the cast cannot wrap.
    key.extend_from_slice(&(at_ms.max(0) as u64).to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

/// Splits a refresh index key back into its parts.
pub fn parse_due_key(key: &[u8]) -> Option<DueEntry> {
    let (time, name) = key.split_at_checked(8)?;
    let at = u64::from_be_bytes(time.try_into().ok()?);
    Some(DueEntry { at_ms: i64::try_from(at).ok()?, name: std::str::from_utf8(name).ok()?.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Index keys sort like their times, and parse back to what went in.
        #[test]
        fn due_keys_sort_by_time(a in 0i64..i64::MAX, b in 0i64..i64::MAX, n in "[a-z0-9]{1,20}", m in "[a-z0-9]{1,20}") {
            let (ka, kb) = (due_key(a, &n), due_key(b, &m));
            if a < b { prop_assert!(ka < kb); }
            prop_assert_eq!(parse_due_key(&ka), Some(DueEntry { at_ms: a, name: n }));
        }
    }
}
