//! The contract every [`Store`] backend keeps, as one test suite a backend runs unchanged:
//! `store_contract_tests!(make)` expands to one `#[test]` per rule below, each on a fresh, empty
//! store from `make()`. sled runs it in `sled_store.rs`; a second backend adds one line.
//!
//! What the engine and administration rely on, and so what is checked here: names are unique;
//! every connection write is a compare-and-swap on its version; the refresh index follows the
//! connection in the same write; removing a profile removes everything of it; pages and
//! visits come in name order; a rewrite never overwrites a concurrent change; a backup restores
//! to an equal store.

use prost::Message as _;

use super::{
    ConnectionRecord, ConnectionWrite, ConsentRecord, DueEntry, ProfileRecord, Rewritten, SealedTree, Store, StoreError,
};

/// One `#[test]` per contract rule, each on a fresh store from `$make` (an expression of type
/// `impl Fn() -> S` where `S` is a [`Store`]).
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store::contract::store_contract_tests!(@each $make;
            names_are_unique, writes_are_versioned, index_follows_the_connection, removal_takes_everything,
            writes_after_removal_are_refused, consents_travel_with_writes, pages_in_name_order,
            due_entries_oldest_first, visits_in_order_and_stop, rewrite_is_compare_and_swap,
            backup_restores_an_equal_store, metadata_round_trips, metadata_compare_and_swap);
    };
    (@each $make:expr; $($rule:ident),* $(,)?) => {
        $(
            /// See the rule of the same name in `store::contract`.
            #[test]
            fn $rule() {
                let make = $make;
                let store = make();
                $crate::store::contract::$rule(&store);
            }
        )*
    };
}
pub(crate) use store_contract_tests;

fn profile(name: &str) -> ProfileRecord {
    ProfileRecord { name: name.into(), ..Default::default() }
}

fn insert(store: &dyn Store, name: &str) {
    store.insert_profile(&profile(name), &ConnectionRecord::default()).unwrap();
}

/// A write of a connection due at `next` (0: not scheduled), over version `expected`.
fn write(name: &str, expected: u64, next: i64) -> ConnectionWrite {
    let before = ConnectionRecord { version: expected, ..Default::default() };
    ConnectionWrite::replacing(name, &before, ConnectionRecord { next_refresh_at_ms: next, ..Default::default() })
}

/// A duplicate name is refused and leaves the first profile as it was; replacing a profile that
/// does not exist is refused.
pub(crate) fn names_are_unique(store: &dyn Store) {
    let first = ProfileRecord { description: "first".into(), ..profile("a") };
    store.insert_profile(&first, &ConnectionRecord::default()).unwrap();
    let second = ProfileRecord { description: "second".into(), ..profile("a") };
    assert!(matches!(store.insert_profile(&second, &ConnectionRecord::default()), Err(StoreError::AlreadyExists(_))));
    assert_eq!(store.profile("a").unwrap().unwrap().description, "first");
    assert!(matches!(store.replace_profile(&profile("b")), Err(StoreError::NotFound(_))));
    store.replace_profile(&second).unwrap();
    assert_eq!(store.profile("a").unwrap().unwrap().description, "second");
    assert!(store.profile("b").unwrap().is_none());
}

/// Each write bumps the version by one; a writer holding an older version loses with the
/// current version named, and changes nothing.
pub(crate) fn writes_are_versioned(store: &dyn Store) {
    insert(store, "a");
    let stored = store.write_connection(write("a", 0, 500)).unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(store.connection("a").unwrap().unwrap(), stored);
    assert!(matches!(store.write_connection(write("a", 0, 900)), Err(StoreError::Conflict { current: 1, .. })));
    assert_eq!(store.connection("a").unwrap().unwrap().next_refresh_at_ms, 500);
    assert_eq!(store.write_connection(write("a", 1, 900)).unwrap().version, 2);
}

/// The refresh index holds one entry per scheduled connection, at its refresh time, moved or
/// dropped by the write that changes it.
pub(crate) fn index_follows_the_connection(store: &dyn Store) {
    insert(store, "a");
    assert!(store.earliest_due().unwrap().is_none(), "a new profile is not scheduled");
    store.write_connection(write("a", 0, 500)).unwrap();
    assert_eq!(store.due(1000, 10).unwrap(), vec![DueEntry { at_ms: 500, name: "a".into() }]);
    store.write_connection(write("a", 1, 2000)).unwrap();
    assert!(store.due(1000, 10).unwrap().is_empty(), "moved, not copied");
    assert_eq!(store.earliest_due().unwrap(), Some(DueEntry { at_ms: 2000, name: "a".into() }));
    store.write_connection(write("a", 2, 0)).unwrap();
    assert!(store.earliest_due().unwrap().is_none(), "unscheduled");
}

/// Removing a profile removes its connection, its index entry and the consent its connection
/// names as pending; removing it again is `NotFound`.
pub(crate) fn removal_takes_everything(store: &dyn Store) {
    insert(store, "a");
    insert(store, "b");
    let consent = ConsentRecord { profile: "a".into(), ..Default::default() };
    let mut pending = write("a", 0, 500).putting_consent(b"key-a".to_vec(), consent);
    pending.record.pending_consent = b"key-a".to_vec();
    store.write_connection(pending).unwrap();
    store.remove_profile("a").unwrap();
    assert!(store.profile("a").unwrap().is_none());
    assert!(store.connection("a").unwrap().is_none());
    assert!(store.earliest_due().unwrap().is_none());
    assert!(store.consent(b"key-a").unwrap().is_none());
    assert!(store.profile("b").unwrap().is_some(), "others stay");
    assert!(matches!(store.remove_profile("a"), Err(StoreError::NotFound(_))));
}

/// A write after the profile was removed is refused whichever path it takes (with or without a
/// consent change), and nothing of it is left behind.
pub(crate) fn writes_after_removal_are_refused(store: &dyn Store) {
    insert(store, "a");
    store.write_connection(write("a", 0, 500)).unwrap();
    store.remove_profile("a").unwrap();
    assert!(matches!(store.write_connection(write("a", 1, 900)), Err(StoreError::NotFound(_))));
    let with_consent = write("a", 0, 900).removing_consent(Some(b"state".to_vec()));
    assert!(matches!(store.write_connection(with_consent), Err(StoreError::NotFound(_))));
    assert!(store.connection("a").unwrap().is_none());
    assert!(store.earliest_due().unwrap().is_none());
}

/// A consent is stored and deleted by the connection write that goes with it, all or nothing:
/// a write that loses its version race stores no consent.
pub(crate) fn consents_travel_with_writes(store: &dyn Store) {
    insert(store, "a");
    let consent = ConsentRecord { profile: "a".into(), expires_at_ms: 99, ..Default::default() };
    store.write_connection(write("a", 0, 0).putting_consent(b"k1".to_vec(), consent.clone())).unwrap();
    assert_eq!(store.consent(b"k1").unwrap(), Some(consent.clone()));
    assert_eq!(store.consents().unwrap(), vec![(b"k1".to_vec(), consent.clone())]);
    let stale = write("a", 0, 0).putting_consent(b"k2".to_vec(), consent.clone());
    assert!(matches!(store.write_connection(stale), Err(StoreError::Conflict { .. })));
    assert!(store.consent(b"k2").unwrap().is_none(), "a lost write stores nothing");
    let replace =
        write("a", 1, 0).putting_consent(b"k2".to_vec(), consent.clone()).removing_consent(Some(b"k1".to_vec()));
    store.write_connection(replace).unwrap();
    assert!(store.consent(b"k1").unwrap().is_none());
    assert_eq!(store.consent(b"k2").unwrap(), Some(consent));
}

/// Pages come in name order, continue strictly after the given name, carry the connection, and
/// hold at most `limit` rows.
pub(crate) fn pages_in_name_order(store: &dyn Store) {
    for name in ["c", "a", "b"] {
        insert(store, name);
    }
    store.write_connection(write("b", 0, 7)).unwrap();
    let names = |v: Vec<(ProfileRecord, ConnectionRecord)>| v.into_iter().map(|(p, _)| p.name).collect::<Vec<_>>();
    assert_eq!(names(store.profiles_after("", 2).unwrap()), ["a", "b"]);
    assert_eq!(names(store.profiles_after("b", 2).unwrap()), ["c"]);
    assert!(store.profiles_after("c", 2).unwrap().is_empty());
    let page = store.profiles_after("a", 1).unwrap();
    assert_eq!(page[0].1.next_refresh_at_ms, 7, "the row carries its connection");
    let mut all: Vec<String> = store.connections().unwrap().into_iter().map(|(n, _)| n).collect();
    all.sort();
    assert_eq!(all, ["a", "b", "c"]);
}

/// `due` returns entries at or before the time, oldest first, at most `limit`; ties are broken
/// by name.
pub(crate) fn due_entries_oldest_first(store: &dyn Store) {
    for (name, at) in [("a", 300), ("b", 100), ("c", 200), ("d", 100), ("e", 900)] {
        insert(store, name);
        store.write_connection(write(name, 0, at)).unwrap();
    }
    let due = |up_to, limit| store.due(up_to, limit).unwrap().into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(due(300, 10), ["b", "d", "c", "a"]);
    assert_eq!(due(300, 2), ["b", "d"]);
    assert_eq!(due(99, 10), Vec::<String>::new());
    assert_eq!(store.earliest_due().unwrap(), Some(DueEntry { at_ms: 100, name: "b".into() }));
}

/// Visits see every entry (or every connection name, in name order) until told to stop.
pub(crate) fn visits_in_order_and_stop(store: &dyn Store) {
    for name in ["b", "a", "c"] {
        insert(store, name);
    }
    let mut names = Vec::new();
    store
        .for_each_connection_name(&mut |name| {
            names.push(name.to_owned());
            true
        })
        .unwrap();
    assert_eq!(names, ["a", "b", "c"]);
    let mut first = Vec::new();
    store
        .for_each_connection_name(&mut |name| {
            first.push(name.to_owned());
            false
        })
        .unwrap();
    assert_eq!(first, ["a"]);
    let mut entries = 0;
    store
        .for_each_entry(&mut |_, _, _| {
            entries += 1;
            true
        })
        .unwrap();
    assert_eq!(entries, store.dump().unwrap().len());
    let mut seen = 0;
    store
        .for_each_entry(&mut |_, _, _| {
            seen += 1;
            seen < 2
        })
        .unwrap();
    assert_eq!(seen, 2);
}

/// A rewrite replaces what it returns bytes for, and never a record that changed meanwhile.
pub(crate) fn rewrite_is_compare_and_swap(store: &dyn Store) {
    for name in ["a", "b", "c"] {
        insert(store, name);
    }
    let done = store
        .rewrite_records(SealedTree::Profiles, &mut |key, bytes| {
            let mut record = ProfileRecord::decode(bytes)
                .map_err(|e| StoreError::Corrupt { tree: "profiles", detail: e.to_string() })?;
            if key == b"b" {
                // A concurrent admin update lands between the read and the write.
                store.replace_profile(&ProfileRecord { description: "admin".into(), ..profile("b") })?;
            }
            if key == b"c" {
                return Ok(None);
            }
            record.description = "rewritten".into();
            Ok(Some(record.encode_to_vec()))
        })
        .unwrap();
    assert_eq!(done, Rewritten { replaced: 1, raced: 1 });
    assert_eq!(store.profile("a").unwrap().unwrap().description, "rewritten");
    assert_eq!(store.profile("b").unwrap().unwrap().description, "admin");
    assert_eq!(store.profile("c").unwrap().unwrap().description, "");
}

/// A backup restored into an empty store of the same backend gives back every profile,
/// connection, consent and index entry; a store holding profiles refuses a restore.
pub(crate) fn backup_restores_an_equal_store(store: &dyn Store) {
    insert(store, "a");
    insert(store, "b");
    let consent = ConsentRecord { profile: "a".into(), ..Default::default() };
    store.write_connection(write("a", 0, 500).putting_consent(b"k".to_vec(), consent)).unwrap();
    store.set_meta("schema_version", &super::SCHEMA_VERSION.to_be_bytes()).unwrap();
    let backup = store.dump().unwrap();
    assert!(store.restore(&backup).is_err(), "a store holding profiles refuses a restore");
    for name in ["a", "b"] {
        store.remove_profile(name).unwrap();
    }
    store.restore(&backup).unwrap();
    let mut again = store.dump().unwrap();
    let mut expected = backup;
    again.sort();
    expected.sort();
    assert_eq!(again, expected);
    assert_eq!(store.earliest_due().unwrap(), Some(DueEntry { at_ms: 500, name: "a".into() }));
    assert!(store.consent(b"k").unwrap().is_some());
}

/// Metadata values read back as written; flush and size report no error.
pub(crate) fn metadata_round_trips(store: &dyn Store) {
    assert_eq!(store.meta("k").unwrap(), None);
    store.set_meta("k", b"v1").unwrap();
    store.set_meta("k", b"v2").unwrap();
    assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v2"[..]));
    store.flush().unwrap();
    store.size_on_disk().unwrap();
}

/// A metadata compare-and-swap writes only over the value it names (absent included), and
/// reports whether it did; a refused one changes nothing.
pub(crate) fn metadata_compare_and_swap(store: &dyn Store) {
    assert!(store.compare_and_swap_meta("k", None, b"v1").unwrap());
    assert!(!store.compare_and_swap_meta("k", None, b"lost").unwrap(), "absent, but k is set");
    assert!(!store.compare_and_swap_meta("k", Some(b"v0"), b"lost").unwrap(), "k is not v0");
    assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(store.compare_and_swap_meta("k", Some(b"v1"), b"v2").unwrap());
    assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v2"[..]));
    assert!(!store.compare_and_swap_meta("other", Some(b"v2"), b"lost").unwrap(), "other is absent");
    assert_eq!(store.meta("other").unwrap(), None);
}
