//! The embedded store: sled 0.34, one data directory, five trees.
//!
//! Longer than our modules usually are (about 480 lines): it is the whole sled backend, every
//! `Store` method with its multi-tree transaction, and the transaction helpers they share; split,
//! a reader would have to hold two files to check one transaction. The backend-neutral rules it
//! keeps are tested in `contract.rs`.

use std::path::Path;

use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};

use super::{
    ConnectionRecord, ConnectionWrite, ConsentRecord, DueEntry, DumpEntry, EntryVisit, ProfileRecord, RecordRewrite,
    Rewritten, SealedTree, Store, StoreError, due_key, parse_due_key,
};
use crate::clock::UnixMillis;

/// How to open the sled store.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// sled's page cache, in bytes. sled treats it as a soft limit; its 1 GiB default is far more
    /// than tokend needs.
    pub cache_capacity: u64,
    /// How often sled flushes in the background, in milliseconds. Writes that must be durable
    /// (rotated refresh tokens) are flushed explicitly regardless.
    pub flush_every_ms: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        Self { cache_capacity: 32 * 1024 * 1024, flush_every_ms: 500 }
    }
}

/// The sled-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    profiles: Tree,
    connections: Tree,
    refresh_index: Tree,
    consents: Tree,
    meta: Tree,
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn decode<M: Message + Default>(tree: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt { tree, detail: e.to_string() })
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn flatten(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => engine(e),
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Fails with `Locked` when another process has it,
    /// and with `TooNew` when a newer tokend wrote it.
    pub fn open(dir: &Path, options: &SledOptions) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(Some(options.flush_every_ms))
            .open()
            .map_err(|e| open_error(dir, e))?;
        Self::from_db(db)
    }

    /// A throwaway store that lives in memory and a temporary file; for tests and benchmarks.
    pub fn temporary() -> Result<Self, StoreError> {
        let db = sled::Config::new().temporary(true).open().map_err(engine)?;
        Self::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        let tree = |name: &str| db.open_tree(name).map_err(engine);
        let store = Self {
            profiles: tree("profiles")?,
            connections: tree("connections")?,
            refresh_index: tree("refresh_index")?,
            consents: tree("consents")?,
            meta: tree("meta")?,
            db,
        };
        super::check_record_schema(&store)?;
        Ok(store)
    }
}

fn open_error(dir: &Path, e: sled::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("could not acquire lock") || text.contains("WouldBlock") {
        StoreError::Locked(dir.display().to_string())
    } else {
        StoreError::Engine(format!("opening {}: {text}", dir.display()))
    }
}

/// Moves a connection's refresh index entry from the old record's time to the new one's.
fn move_index_entry(
    index: &TransactionalTree,
    name: &str,
    old: &ConnectionRecord,
    new: &ConnectionRecord,
) -> TxResult<()> {
    if old.next_refresh_at_ms == new.next_refresh_at_ms {
        return Ok(());
    }
    if old.next_refresh_at_ms > 0 {
        index.remove(due_key(old.next_refresh_at_ms, name))?;
    }
    if new.next_refresh_at_ms > 0 {
        index.insert(due_key(new.next_refresh_at_ms, name), &entry_value(new))?;
    }
    Ok(())
}

/// The value of a refresh index entry: the version of the connection record it was written for
/// (big-endian). Entries written by earlier tokend versions hold no value: they read as version 0.
fn entry_value(record: &ConnectionRecord) -> [u8; 8] {
    record.version.to_be_bytes()
}

fn entry_version(value: &[u8]) -> u64 {
    value.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// What a refresh index entry is worth, held against its connection record.
#[derive(Debug, PartialEq, Eq)]
enum EntryState {
    /// The record is due at the entry's time.
    Due,
    /// Written ahead of its record: a write between its steps (or stopped there by a crash).
    /// Not due, not removed: the write may yet make it live (and wakes the scheduler if it is
    /// sooner); once the record moves past its version it is stale.
    Pending,
    /// Left over: the record is gone, or a write at or after the entry's version moved it.
    Stale,
}

fn entry_state(entry: &DueEntry, value: &[u8], record: Option<&ConnectionRecord>) -> EntryState {
    match record {
        None => EntryState::Stale,
        Some(r) if r.next_refresh_at_ms == entry.at_ms => EntryState::Due,
        Some(r) if r.version < entry_version(value) => EntryState::Pending,
        Some(_) => EntryState::Stale,
    }
}

fn tx_connection(tx: &TransactionalTree, name: &str) -> TxResult<Option<ConnectionRecord>> {
    match tx.get(name)? {
        None => Ok(None),
        Some(bytes) => decode("connections", &bytes).map(Some).or_else(abort),
    }
}

impl Store for SledStore {
    fn profile(&self, name: &str) -> Result<Option<ProfileRecord>, StoreError> {
        self.profiles.get(name).map_err(engine)?.map(|b| decode("profiles", &b)).transpose()
    }

    fn connection(&self, name: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        self.connections.get(name).map_err(engine)?.map(|b| decode("connections", &b)).transpose()
    }

    fn profiles_after(&self, after: &str, limit: usize) -> Result<Vec<(ProfileRecord, ConnectionRecord)>, StoreError> {
        use std::ops::Bound;
        let range = (Bound::Excluded(after.as_bytes().to_vec()), Bound::Unbounded);
        let mut out = Vec::new();
        for item in self.profiles.range(range).take(limit) {
            let (key, bytes) = item.map_err(engine)?;
            let profile: ProfileRecord = decode("profiles", &bytes)?;
            let connection = match self.connections.get(&key).map_err(engine)? {
                Some(b) => decode("connections", &b)?,
                None => ConnectionRecord::default(),
            };
            out.push((profile, connection));
        }
        Ok(out)
    }

    fn connections(&self) -> Result<Vec<(String, ConnectionRecord)>, StoreError> {
        self.connections
            .iter()
            .map(|item| {
                let (key, bytes) = item.map_err(engine)?;
                let name = String::from_utf8(key.to_vec())
                    .map_err(|_| StoreError::Corrupt { tree: "connections", detail: "non-UTF-8 key".into() })?;
                Ok((name, decode("connections", &bytes)?))
            })
            .collect()
    }

    fn insert_profile(&self, profile: &ProfileRecord, connection: &ConnectionRecord) -> Result<(), StoreError> {
        let name = profile.name.as_str();
        (&self.profiles, &self.connections)
            .transaction(|(profiles, connections)| {
                if profiles.get(name)?.is_some() {
                    return abort(StoreError::AlreadyExists(name.to_owned()));
                }
                profiles.insert(name, profile.encode_to_vec())?;
                connections.insert(name, connection.encode_to_vec())?;
                Ok(())
            })
            .map_err(flatten)
    }

    fn replace_profile(&self, profile: &ProfileRecord) -> Result<(), StoreError> {
        let name = profile.name.as_str();
        self.profiles
            .transaction(|profiles| {
                if profiles.get(name)?.is_none() {
                    return abort(StoreError::NotFound(name.to_owned()));
                }
                profiles.insert(name, profile.encode_to_vec())?;
                Ok(())
            })
            .map_err(flatten)
    }

    fn remove_profile(&self, name: &str) -> Result<(), StoreError> {
        (&self.profiles, &self.connections, &self.refresh_index, &self.consents)
            .transaction(|(profiles, connections, index, consents)| {
                if profiles.remove(name)?.is_none() {
                    return abort(StoreError::NotFound(name.to_owned()));
                }
                if let Some(old) = tx_connection(connections, name)? {
                    if old.next_refresh_at_ms > 0 {
                        index.remove(due_key(old.next_refresh_at_ms, name))?;
                    }
                    if !old.pending_consent.is_empty() {
                        consents.remove(old.pending_consent.as_slice())?;
                    }
                }
                connections.remove(name)?;
                Ok(())
            })
            .map_err(flatten)
    }

    fn write_connection(&self, write: ConnectionWrite) -> Result<ConnectionRecord, StoreError> {
        let mut record = write.record.clone();
        record.version = write.expected_version + 1;
        let encoded = record.encode_to_vec();
        // A refresh touches neither consents nor the profile: no transaction at all (see
        // `write_connection_only`). Every profile has a connection record (both are written
        // and removed together), so a connection that is there proves the profile is; one that
        // is not falls back to the full transaction, which tells why.
        if write.put_consent.is_none() && write.remove_consent.is_none() {
            match self.write_connection_only(&write, &record, &encoded) {
                Err(StoreError::NotFound(_)) => {}
                done => return done.map(|()| record),
            }
        }
        self.write_connection_with_consents(&write, &record, &encoded)?;
        Ok(record)
    }

    fn consent(&self, key: &[u8]) -> Result<Option<ConsentRecord>, StoreError> {
        self.consents.get(key).map_err(engine)?.map(|b| decode("consents", &b)).transpose()
    }

    fn consents(&self) -> Result<Vec<(Vec<u8>, ConsentRecord)>, StoreError> {
        self.consents
            .iter()
            .map(|item| {
                let (key, bytes) = item.map_err(engine)?;
                Ok((key.to_vec(), decode("consents", &bytes)?))
            })
            .collect()
    }

    fn due(&self, up_to: UnixMillis, limit: usize) -> Result<Vec<DueEntry>, StoreError> {
        let end = (up_to.max(0) as u64).saturating_add(1).to_be_bytes();
        let mut due = Vec::new();
        for item in self.refresh_index.range(..end.to_vec()) {
            if due.len() == limit {
                break;
            }
            let (key, value) = item.map_err(engine)?;
            if let Some(entry) = self.live_entry(&key, &value)? {
                due.push(entry);
            }
        }
        Ok(due)
    }

    fn earliest_due(&self) -> Result<Option<DueEntry>, StoreError> {
        for item in self.refresh_index.iter() {
            let (key, value) = item.map_err(engine)?;
            if let Some(entry) = self.live_entry(&key, &value)? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value).map_err(engine).map(|_| ())
    }

    fn compare_and_swap_meta(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, StoreError> {
        Ok(self.meta.compare_and_swap(key, expected, Some(value)).map_err(engine)?.is_ok())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine).map(|_| ())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(engine)
    }

    fn dump(&self) -> Result<Vec<DumpEntry>, StoreError> {
        let mut out = Vec::new();
        self.for_each_entry(&mut |tree, key, value| {
            out.push((tree.to_owned(), key.to_vec(), value.to_vec()));
            true
        })?;
        Ok(out)
    }

    fn restore(&self, entries: &[DumpEntry]) -> Result<(), StoreError> {
        if self.profiles.iter().next().is_some() {
            return Err(StoreError::Engine(
                "the store already holds profiles; restore into an empty data directory".into(),
            ));
        }
        let trees = self.trees();
        for (name, tree) in &trees {
            let mut batch = sled::Batch::default();
            for (_, key, value) in entries.iter().filter(|(t, _, _)| t == name) {
                batch.insert(key.as_slice(), value.as_slice());
            }
            tree.apply_batch(batch).map_err(engine)?;
        }
        if let Some((unknown, _, _)) = entries.iter().find(|(t, _, _)| !trees.iter().any(|(n, _)| n == t)) {
            return Err(StoreError::Corrupt { tree: "backup", detail: format!("unknown tree {unknown:?}") });
        }
        self.rebuild_refresh_index()?;
        super::check_record_schema(self)?;
        self.flush()
    }

    fn for_each_entry(&self, visit: &mut EntryVisit<'_>) -> Result<(), StoreError> {
        for (name, tree) in self.trees() {
            for item in tree.iter() {
                let (key, value) = item.map_err(engine)?;
                let shown = if name == "refresh_index" {
                    // Derived data, written out as every backend writes it: the entries the
                    // records say are due (none left over or ahead of its record), no value.
                    let Some(entry) = parse_due_key(&key) else { continue };
                    if entry_state(&entry, &value, self.connection(&entry.name)?.as_ref()) != EntryState::Due {
                        continue;
                    }
                    visit(name, &key, &[])
                } else {
                    visit(name, &key, &value)
                };
                if !shown {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn for_each_connection_name(&self, visit: &mut dyn FnMut(&str) -> bool) -> Result<(), StoreError> {
        for key in self.connections.iter().keys() {
            let key = key.map_err(engine)?;
            let name = std::str::from_utf8(&key)
                .map_err(|_| StoreError::Corrupt { tree: "connections", detail: "non-UTF-8 key".into() })?;
            if !visit(name) {
                break;
            }
        }
        Ok(())
    }

    fn rewrite_records(&self, tree: SealedTree, rewrite: &mut RecordRewrite<'_>) -> Result<Rewritten, StoreError> {
        let tree = self.sealed_tree(tree);
        let mut done = Rewritten::default();
        for item in tree.iter() {
            let (key, old) = item.map_err(engine)?;
            let Some(new) = rewrite(&key, &old)? else { continue };
            match tree.compare_and_swap(&key, Some(&old), Some(new)).map_err(engine)? {
                Ok(()) => done.replaced += 1,
                Err(_) => done.raced += 1,
            }
        }
        Ok(done)
    }
}

impl SledStore {
    /// Rebuilds the refresh index from the connections (the index is derived data; a backup of
    /// a running daemon may hold an index entry from a moment before or after its connection).
    fn rebuild_refresh_index(&self) -> Result<(), StoreError> {
        self.refresh_index.clear().map_err(engine)?;
        let mut batch = sled::Batch::default();
        for item in self.connections.iter() {
            let (key, bytes) = item.map_err(engine)?;
            let record: ConnectionRecord = decode("connections", &bytes)?;
            let name = std::str::from_utf8(&key)
                .map_err(|_| StoreError::Corrupt { tree: "connections", detail: "non-UTF-8 key".into() })?;
            if record.next_refresh_at_ms > 0 {
                batch.insert(due_key(record.next_refresh_at_ms, name), &entry_value(&record));
            }
        }
        self.refresh_index.apply_batch(batch).map_err(engine)
    }

    fn sealed_tree(&self, tree: SealedTree) -> &Tree {
        match tree {
            SealedTree::Profiles => &self.profiles,
            SealedTree::Connections => &self.connections,
            SealedTree::Consents => &self.consents,
        }
    }

    /// The version-guarded write of a connection and its index entry, when no consent changes
    /// (every refresh). `NotFound` when there is no connection record (the caller falls back).
    ///
    /// No sled transaction: sled writes its log buffer to disk at the start of every
    /// transaction (twice), which made a refresh cost two writes and two syncs on sled's IO
    /// threads however its flushes were grouped. Instead the record is swapped in by
    /// compare-and-swap on the bytes read, and the index entry moves around it in an order that
    /// never loses one: the new entry before the record, the old one after it. An entry left
    /// over (a lost race, a crash between the steps) is told apart from a live one by the
    /// record version it carries, and dropped when read ([`SledStore::live_entry`]).
    fn write_connection_only(
        &self,
        write: &ConnectionWrite,
        record: &ConnectionRecord,
        encoded: &[u8],
    ) -> Result<(), StoreError> {
        let name = write.name.as_str();
        let Some(old_bytes) = self.connections.get(name).map_err(engine)? else {
            return Err(StoreError::NotFound(name.to_owned()));
        };
        let old: ConnectionRecord = decode("connections", &old_bytes)?;
        if old.version != write.expected_version {
            return Err(StoreError::Conflict { name: name.to_owned(), current: old.version });
        }
        let moved = old.next_refresh_at_ms != record.next_refresh_at_ms;
        if moved && record.next_refresh_at_ms > 0 {
            self.refresh_index
                .insert(due_key(record.next_refresh_at_ms, name), &entry_value(record))
                .map_err(engine)?;
        }
        let swapped = self.connections.compare_and_swap(name, Some(&old_bytes), Some(encoded)).map_err(engine)?;
        if let Err(lost) = swapped {
            // Another writer got there first. The entry written above, if any, is left to the
            // readers: it may be that writer's own (same time), so it is not ours to remove.
            return Err(match lost.current {
                None => StoreError::NotFound(name.to_owned()),
                Some(bytes) => {
                    let current: ConnectionRecord = decode("connections", &bytes)?;
                    StoreError::Conflict { name: name.to_owned(), current: current.version }
                }
            });
        }
        if moved && old.next_refresh_at_ms > 0 {
            // Only the entry written for the old record: the same key may since hold another's.
            let key = due_key(old.next_refresh_at_ms, name);
            let value = entry_value(&old);
            let legacy: &[u8] = &[];
            for expected in [&value[..], legacy] {
                if self.refresh_index.compare_and_swap(&key, Some(expected), None::<&[u8]>).map_err(engine)?.is_ok() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The refresh index entry `key` (with `value`) if it is due now; a stale one is removed
    /// (unless a writer has just put a new entry under the same key).
    fn live_entry(&self, key: &[u8], value: &[u8]) -> Result<Option<DueEntry>, StoreError> {
        let entry =
            parse_due_key(key).ok_or(StoreError::Corrupt { tree: "refresh_index", detail: "malformed key".into() })?;
        let record = self.connection(&entry.name)?;
        match entry_state(&entry, value, record.as_ref()) {
            EntryState::Due => Ok(Some(entry)),
            EntryState::Pending => Ok(None),
            EntryState::Stale => {
                let _ = self.refresh_index.compare_and_swap(key, Some(value), None::<&[u8]>).map_err(engine)?;
                Ok(None)
            }
        }
    }

    /// The version-guarded write of a connection with its index entry and consent changes,
    /// checking that the profile exists.
    fn write_connection_with_consents(
        &self,
        write: &ConnectionWrite,
        record: &ConnectionRecord,
        encoded: &[u8],
    ) -> Result<(), StoreError> {
        let name = write.name.as_str();
        (&self.profiles, &self.connections, &self.refresh_index, &self.consents)
            .transaction(|(profiles, connections, index, consents)| {
                if profiles.get(name)?.is_none() {
                    return abort(StoreError::NotFound(name.to_owned()));
                }
                let old = tx_connection(connections, name)?.unwrap_or_default();
                if old.version != write.expected_version {
                    return abort(StoreError::Conflict { name: name.to_owned(), current: old.version });
                }
                move_index_entry(index, name, &old, record)?;
                if let Some(key) = &write.remove_consent {
                    consents.remove(key.as_slice())?;
                }
                if let Some((key, consent)) = &write.put_consent {
                    consents.insert(key.as_slice(), consent.encode_to_vec())?;
                }
                connections.insert(name, encoded)?;
                Ok(())
            })
            .map_err(flatten)
    }

    fn trees(&self) -> [(&'static str, &Tree); 5] {
        [
            ("meta", &self.meta),
            ("profiles", &self.profiles),
            ("connections", &self.connections),
            ("refresh_index", &self.refresh_index),
            ("consents", &self.consents),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    super::super::contract::store_contract_tests!(|| SledStore::temporary().unwrap());

    fn scheduled(store: &SledStore, name: &str, expected: u64, next: i64) -> ConnectionRecord {
        let before = ConnectionRecord { version: expected, ..Default::default() };
        let record = ConnectionRecord { next_refresh_at_ms: next, ..Default::default() };
        store.write_connection(ConnectionWrite::replacing(name, &before, record)).unwrap()
    }

    fn store_with_profile_a() -> SledStore {
        let store = SledStore::temporary().unwrap();
        let profile = ProfileRecord { name: "a".into(), ..Default::default() };
        store.insert_profile(&profile, &ConnectionRecord::default()).unwrap();
        store
    }

    fn index_keys(store: &SledStore) -> Vec<DueEntry> {
        store.refresh_index.iter().keys().map(|k| parse_due_key(&k.unwrap()).unwrap()).collect()
    }

    /// Entries left over by a lost race or a crash between the steps of a write (the record
    /// moved on, or is gone, or the entry predates versioned entries) are never due: readers
    /// drop them, and the scheduler's "earliest" skips them.
    #[test]
    fn leftover_index_entries_are_dropped() {
        let store = store_with_profile_a();
        let a = scheduled(&store, "a", 0, 500);
        store.refresh_index.insert(due_key(300, "a"), &entry_value(&a)).unwrap();
        store.refresh_index.insert(due_key(350, "a"), &[]).unwrap();
        store.refresh_index.insert(due_key(200, "gone"), &7u64.to_be_bytes()).unwrap();
        store.refresh_index.insert(due_key(250, "a"), &(a.version + 1).to_be_bytes()).unwrap();
        // A backup holds the index as the records say it is, without sled's version values.
        let index: Vec<_> = store.dump().unwrap().into_iter().filter(|(tree, _, _)| tree == "refresh_index").collect();
        assert_eq!(index, vec![("refresh_index".to_owned(), due_key(500, "a"), Vec::new())]);
        store.refresh_index.remove(due_key(250, "a")).unwrap();
        assert_eq!(store.earliest_due().unwrap(), Some(DueEntry { at_ms: 500, name: "a".into() }));
        assert_eq!(store.due(1000, 10).unwrap(), vec![DueEntry { at_ms: 500, name: "a".into() }]);
        assert_eq!(index_keys(&store), vec![DueEntry { at_ms: 500, name: "a".into() }], "leftovers removed");

        // Unscheduled, with only leftovers in the index: nothing is due, and nothing remains.
        scheduled(&store, "a", a.version, 0);
        store.refresh_index.insert(due_key(100, "a"), &[]).unwrap();
        assert_eq!(store.earliest_due().unwrap(), None);
        assert!(index_keys(&store).is_empty());
    }

    /// An entry written ahead of its record (a write between its steps, or stopped there by a
    /// crash) is neither due nor removed (the write may yet make it live), until the record
    /// moves past its version: then it is stale and dropped.
    #[test]
    fn an_entry_ahead_of_its_record_waits_until_the_record_passes_it() {
        let store = store_with_profile_a();
        let a = scheduled(&store, "a", 0, 500);
        store.refresh_index.insert(due_key(300, "a"), &(a.version + 1).to_be_bytes()).unwrap();
        let live = DueEntry { at_ms: 500, name: "a".into() };
        assert_eq!(store.due(1000, 10).unwrap(), vec![live.clone()]);
        assert_eq!(store.earliest_due().unwrap(), Some(live.clone()));
        assert_eq!(index_keys(&store), vec![DueEntry { at_ms: 300, name: "a".into() }, live], "kept");
        // The next write of the record passes its version.
        scheduled(&store, "a", a.version, 5000);
        assert_eq!(store.due(1000, 10).unwrap(), vec![]);
        assert_eq!(index_keys(&store), vec![DueEntry { at_ms: 5000, name: "a".into() }]);
    }

    /// Writers racing on one connection (version-guarded, each moving its time) leave exactly
    /// one entry, at the time of the record that won the last write.
    #[test]
    fn racing_writers_leave_one_entry_at_the_record_time() {
        let store = store_with_profile_a();
        std::thread::scope(|scope| {
            for writer in 0..4i64 {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..300i64 {
                        let current = store.connection("a").unwrap().unwrap();
                        let next = 1 + (i * 4 + writer) % 50;
                        let record = ConnectionRecord { next_refresh_at_ms: next, ..current.clone() };
                        let write = ConnectionWrite::replacing("a", &current, record);
                        match store.write_connection(write) {
                            Ok(_) | Err(StoreError::Conflict { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                });
            }
        });
        let record = store.connection("a").unwrap().unwrap();
        assert_eq!(
            store.due(i64::MAX, 100).unwrap(),
            vec![DueEntry { at_ms: record.next_refresh_at_ms, name: "a".into() }]
        );
        assert_eq!(index_keys(&store), vec![DueEntry { at_ms: record.next_refresh_at_ms, name: "a".into() }]);
    }

    /// A second opener of the same directory gets `Locked`; a newer schema is refused.
    #[test]
    fn lock_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), &SledOptions::default()).unwrap();
        assert!(matches!(SledStore::open(dir.path(), &SledOptions::default()), Err(StoreError::Locked(_))));
        store.set_meta(crate::store::SCHEMA_KEY, &(crate::store::SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
        store.flush().unwrap();
        drop(store);
        assert!(matches!(SledStore::open(dir.path(), &SledOptions::default()), Err(StoreError::TooNew { .. })));
    }
}
