//! Store upgrades: a newer tokend brings an older store up to its schema version at start,
//! after writing a backup of the whole store (the `tokend export` format) into the data
//! directory. An older tokend refuses a newer store (see [`crate::store::StoreError::TooNew`]).
//!
//! Each step migrates schema `n` to `n + 1` and records `n + 1` only once it has finished, so a
//! crash in the middle runs that step again at the next start: steps must be idempotent.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::StartError;
use crate::clock::UnixMillis;
use crate::store::Store;
use crate::store::backup::encode_line;

/// The `meta` entry holding the schema version (big-endian `u32`).
const SCHEMA_META_KEY: &str = "schema_version";

/// One migration step: from schema `from` to `from + 1`.
pub struct Migration {
    /// The schema version this step starts from.
    pub from: u32,
    /// What it changes, for the log.
    pub what: &'static str,
    /// The step itself (idempotent).
    pub apply: fn(&dyn Store) -> Result<(), crate::store::StoreError>,
}

/// The steps this tokend knows, in order. Schema 1 is the first one released; no step yet.
pub const MIGRATIONS: &[Migration] = &[];

/// What an upgrade did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// The version found.
    pub from: u32,
    /// The version now recorded.
    pub to: u32,
    /// The backup written before the first step.
    pub backup: PathBuf,
}

fn data(e: impl std::fmt::Display) -> StartError {
    StartError::Data(e.to_string())
}

/// The store's schema version.
pub fn schema_version(store: &dyn Store) -> Result<u32, StartError> {
    let bytes =
        store.meta(SCHEMA_META_KEY).map_err(data)?.ok_or_else(|| data("the store records no schema version"))?;
    <[u8; 4]>::try_from(bytes.as_slice())
        .map(u32::from_be_bytes)
        .map_err(|_| data("the store's schema version is malformed"))
}

/// Brings `store` from its schema version up to `target` with `steps`, after backing it up into
/// `backup_dir`. Returns `None` when the store is current. Nothing is written (not even the
/// backup) unless every step needed is known.
pub fn upgrade(
    store: &dyn Store,
    target: u32,
    steps: &[Migration],
    backup_dir: &Path,
    now: UnixMillis,
) -> Result<Option<Upgraded>, StartError> {
    let from = schema_version(store)?;
    if from >= target {
        return Ok(None);
    }
    let plan: Vec<&Migration> = (from..target)
        .map(|version| {
            steps.iter().find(|s| s.from == version).ok_or_else(|| {
                data(format!(
                    "no migration from store schema {version}; upgrade through an intermediate tokend release"
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let backup = backup_dir.join(format!("backup-schema-{from}-{now}.jsonl"));
    write_backup(store, &backup)?;
    tracing::info!(from, to = target, backup = %backup.display(), "upgrading the store; backup written");
    for step in plan {
        (step.apply)(store).map_err(|e| {
            data(format!(
                "migrating store schema {} → {} ({}): {e}; the store is left at schema {}, a backup is in {}",
                step.from,
                step.from + 1,
                step.what,
                step.from,
                backup.display()
            ))
        })?;
        store.set_meta(SCHEMA_META_KEY, &(step.from + 1).to_be_bytes()).map_err(data)?;
        store.flush().map_err(data)?;
        tracing::info!(to = step.from + 1, what = step.what, "store migration step done");
    }
    Ok(Some(Upgraded { from, to: target, backup }))
}

/// Writes every entry of `store` to a new file (mode 0600), synced before it returns.
fn write_backup(store: &dyn Store, path: &Path) -> Result<(), StartError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let file =
        options.open(path).map_err(|e| data(format!("creating the pre-upgrade backup {}: {e}", path.display())))?;
    let mut out = std::io::BufWriter::new(file);
    let mut failure = None;
    store
        .for_each_entry(&mut |tree, key, value| match out.write_all(encode_line(tree, key, value).as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        })
        .map_err(data)?;
    if let Some(e) = failure {
        return Err(data(format!("writing the pre-upgrade backup {}: {e}", path.display())));
    }
    let file = out.into_inner().map_err(|e| data(format!("writing {}: {e}", path.display())))?;
    file.sync_all().map_err(|e| data(format!("syncing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConnectionRecord, ProfileRecord, SledStore, StoreError};

    fn store_at(version: u32) -> SledStore {
        let store = SledStore::temporary().unwrap();
        let profile = ProfileRecord { name: "p".into(), description: "old".into(), ..Default::default() };
        store.insert_profile(&profile, &ConnectionRecord::default()).unwrap();
        store.set_meta(SCHEMA_META_KEY, &version.to_be_bytes()).unwrap();
        store
    }

    fn describe(store: &dyn Store) -> Result<(), StoreError> {
        let mut profile = store.profile("p")?.ok_or(StoreError::NotFound("p".into()))?;
        profile.description = "migrated".into();
        store.replace_profile(&profile)
    }

    fn broken(_: &dyn Store) -> Result<(), StoreError> {
        Err(StoreError::Engine("disk full".into()))
    }

    const STEP: Migration = Migration { from: 1, what: "descriptions", apply: describe };

    /// An older store is backed up, migrated and marked with the new version.
    #[test]
    fn older_store_is_backed_up_then_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(1);
        let done = upgrade(&store, 2, &[STEP], dir.path(), 42).unwrap().unwrap();
        assert_eq!((done.from, done.to), (1, 2));
        assert_eq!(schema_version(&store).unwrap(), 2);
        assert_eq!(store.profile("p").unwrap().unwrap().description, "migrated");
        let backup = std::fs::read_to_string(&done.backup).unwrap();
        assert!(backup.lines().count() >= 3 && backup.contains("\"profiles\""), "{backup}");
        // A current store is left alone.
        assert_eq!(upgrade(&store, 2, &[STEP], dir.path(), 43).unwrap(), None);
    }

    /// A missing step writes nothing; a failing step leaves the version, keeps the backup.
    #[test]
    fn missing_or_failing_steps_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_at(1);
        let err = upgrade(&store, 3, &[STEP], dir.path(), 1).unwrap_err();
        assert!(err.to_string().contains("no migration from store schema 2"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no backup without a full plan");
        assert_eq!(schema_version(&store).unwrap(), 1);

        let failing = Migration { from: 1, what: "breaks", apply: broken };
        let err = upgrade(&store, 2, &[failing], dir.path(), 2).unwrap_err();
        assert!(err.to_string().contains("left at schema 1"), "{err}");
        assert_eq!(schema_version(&store).unwrap(), 1);
        assert_eq!(store.profile("p").unwrap().unwrap().description, "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the backup stays");
    }
}
