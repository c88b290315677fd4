//! Opening the data directory: the store, the key ring (generated only for a store that holds
//! no sealed value yet), the key canary that tells a wrong key at start, and the generated admin
//! token for a daemon with no callers configured.

use std::path::Path;

use zeroize::Zeroizing;

use super::StartError;
use crate::config::{Config, StoreBackend};
use crate::crypto::{self, KeyRing, Purpose};
use crate::store::{PgOptions, PgStore, SledOptions, SledStore, Store, StoreError};

use crypto::{CANARY_META_KEY as CANARY_KEY, CANARY_TEXT};

/// Creates the data directory (mode 0700) if missing.
pub fn ensure_data_dir(dir: &Path) -> Result<(), StartError> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| StartError::Data(format!("creating data directory {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StartError::Data(format!("setting mode of {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Checks that the data directory, the key file (unless the key comes from `TOKEND_KEY`) and
/// `admin.token` are not open to group or others: files an operator created or loosened (tokend
/// creates them 0700/0600) would hand the key to the store's secrets, or the admin's bearer
/// token, to other local users. Refuses with a message naming the file and the `chmod` that
/// fixes it, or, with `security.refuse_open_permissions = false`, only warns.
pub fn check_permissions(config: &Config, key_from_env: bool) -> Result<(), StartError> {
    /// A path that must stay private: whether it is a directory, and the error it gives.
    type Private = (std::path::PathBuf, bool, fn(String) -> StartError);
    let mut private: Vec<Private> = vec![
        (config.data_dir.clone(), true, StartError::Data),
        (config.data_dir.join("admin.token"), false, StartError::Data),
    ];
    if !key_from_env {
        private.push((config.key_file(), false, StartError::Key));
    }
    for (path, is_dir, error) in private {
        let Some(problem) = open_permissions(&path, is_dir) else { continue };
        if config.security.refuse_open_permissions {
            return Err(error(format!("{problem} (or set security.refuse_open_permissions = false to start anyway)")));
        }
        tracing::warn!(path = %path.display(), "{problem}; starting anyway (security.refuse_open_permissions = false)");
    }
    Ok(())
}

/// What is wrong with `path`'s mode, and the fix, if group or others have any access to it;
/// `None` for a private or missing path.
fn open_permissions(path: &Path, is_dir: bool) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    // `metadata` follows symlinks: what counts is the mode of the file read (a Kubernetes
    // Secret's key file is a symlink).
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return None;
    }
    let (what, private) = if is_dir { ("data directory", "700") } else { ("file", "600") };
    Some(format!(
        "{what} {} has mode {mode:04o}: group or others can get at key material; run `chmod {private} {}`",
        path.display(),
        path.display()
    ))
}

/// How often, and how far apart, opening a locked store is tried again (about 1 s in all).
const LOCK_RETRIES: usize = 20;
const LOCK_PAUSE_MS: u64 = 50;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(LOCK_PAUSE_MS);

/// Opens the configured store: sled in the data directory, or the PostgreSQL database.
pub fn open_store(config: &Config) -> Result<Box<dyn Store>, StartError> {
    match config.store.backend {
        StoreBackend::Sled => Ok(Box::new(open_sled(config)?)),
        StoreBackend::Postgres => Ok(Box::new(open_postgres(config)?)),
    }
}

/// The PostgreSQL options of `store.postgres` (the password file read now).
pub fn postgres_options(config: &Config) -> Result<PgOptions, StartError> {
    let pg = &config.store.postgres;
    let mut options = PgOptions::new(pg.url.clone());
    if !pg.password_file.as_os_str().is_empty() {
        let text = Zeroizing::new(std::fs::read_to_string(&pg.password_file).map_err(|e| {
            StartError::Config(format!("store.postgres.password_file {}: {e}", pg.password_file.display()))
        })?);
        options.password = Some(text.trim_end_matches(['\r', '\n']).to_owned());
    }
    options.pool_size = pg.pool_size;
    options.connect_timeout = std::time::Duration::from_secs(pg.connect_timeout_secs);
    options.statement_timeout = std::time::Duration::from_secs(pg.statement_timeout_secs);
    options.ca_file = Some(pg.ca_file.clone()).filter(|p| !p.as_os_str().is_empty());
    options.schema = pg.schema.clone();
    Ok(options)
}

/// Opens the PostgreSQL store (migrating its schema); an unreachable database is
/// [`StartError::Database`] (retry), a schema newer than this binary [`StartError::Data`].
pub fn open_postgres(config: &Config) -> Result<PgStore, StartError> {
    PgStore::open(&postgres_options(config)?).map_err(|e| match e {
        StoreError::Unavailable(why) => StartError::Database(format!("cannot reach the database: {why}")),
        other => StartError::Data(format!("opening the database store: {other}")),
    })
}

/// Opens the sled store in the data directory.
pub fn open_sled(config: &Config) -> Result<SledStore, StartError> {
    let options = SledOptions {
        cache_capacity: config.store.cache_capacity_mb * 1024 * 1024,
        flush_every_ms: config.store.flush_every_ms,
    };
    let dir = config.data_dir.join("store");
    // A store closed a moment ago (a restart, an export or import just before) may hold its
    // file lock while sled's I/O threads finish their last writes: wait a little before saying
    // another process has it.
    let mut opened = SledStore::open(&dir, &options);
    for _ in 0..LOCK_RETRIES {
        if !matches!(opened, Err(StoreError::Locked(_))) {
            break;
        }
        std::thread::sleep(LOCK_RETRY_PAUSE);
        opened = SledStore::open(&dir, &options);
    }
    opened.map_err(|e| match e {
        StoreError::Locked(dir) => StartError::Locked(format!(
            "data directory {dir} is in use by another process (is another tokend running on it?)"
        )),
        other => StartError::Data(format!("opening the store: {other}")),
    })
}

/// Loads the key ring: `TOKEND_KEY` (the key itself), else the key file; generates a key file
/// only when the store holds no sealed value yet. Then checks the canary.
pub fn open_keys(
    config: &Config,
    store: &dyn Store,
    env_key: Option<Zeroizing<String>>,
) -> Result<KeyRing, StartError> {
    let canary = store.meta(CANARY_KEY).map_err(|e| StartError::Data(e.to_string()))?;
    let key_file = config.key_file();
    let active = match env_key {
        Some(text) => crypto::decode_key(&text).map_err(|e| StartError::Key(format!("TOKEND_KEY: {e}")))?,
        None if key_file.exists() => crypto::read_key_file(&key_file).map_err(|e| StartError::Key(e.to_string()))?,
        None if canary.is_some() => {
            return Err(StartError::Key(format!(
                "key file {} is missing, but the store holds secrets sealed with a key; restore the key file \
                 (or set TOKEND_KEY) — no data was touched",
                key_file.display()
            )));
        }
        None => {
            let text = crypto::generate_key_text();
            if let Some(parent) = key_file.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StartError::Key(format!("{}: {e}", parent.display())))?;
            }
            crypto::write_private_file(&key_file, format!("{}\n", text.as_str()).as_bytes())
                .map_err(|e| StartError::Key(format!("writing key file {}: {e}", key_file.display())))?;
            tracing::info!(path = %key_file.display(), "generated a new encryption key (back it up: without it the store's secrets are lost)");
            crypto::decode_key(&text).map_err(|e| StartError::Key(e.to_string()))?
        }
    };
    let mut keys = vec![active];
    for file in &config.keys.previous_key_files {
        keys.push(crypto::read_key_file(file).map_err(|e| StartError::Key(e.to_string()))?);
    }
    let ring = KeyRing::from_keys(&keys).map_err(|e| StartError::Key(e.to_string()))?;
    match canary {
        Some(sealed) => {
            let opened = ring.open(Purpose::Canary, "", &sealed).map_err(|e| {
                StartError::Key(format!(
                    "the configured key does not open this store's secrets ({e}); use the key the store was \
                     created with — no data was touched"
                ))
            })?;
            if opened.as_slice() != CANARY_TEXT {
                return Err(StartError::Key("the store's key canary is corrupt".into()));
            }
            if crypto::KeyRing::sealed_key_id(&sealed) != Some(ring.active_id()) {
                // Re-seal the canary under the active key so the old key can be retired later.
                let canary = ring.seal(Purpose::Canary, "", CANARY_TEXT).map_err(|e| StartError::Key(e.to_string()))?;
                store.set_meta(CANARY_KEY, &canary).map_err(|e| StartError::Data(e.to_string()))?;
            }
        }
        None => {
            let canary = ring.seal(Purpose::Canary, "", CANARY_TEXT).map_err(|e| StartError::Key(e.to_string()))?;
            store.set_meta(CANARY_KEY, &canary).map_err(|e| StartError::Data(e.to_string()))?;
            store.flush().map_err(|e| StartError::Data(e.to_string()))?;
        }
    }
    Ok(ring)
}

/// Loads the key ring a running daemon switches to on reload: `TOKEND_KEY` (as given at start)
/// or the key file as active, then the previous key files. Nothing is generated here.
pub fn reload_keys(config: &Config, env_key: Option<&Zeroizing<String>>) -> Result<KeyRing, StartError> {
    let active = match env_key {
        Some(text) => crypto::decode_key(text).map_err(|e| StartError::Key(format!("TOKEND_KEY: {e}")))?,
        None => crypto::read_key_file(&config.key_file()).map_err(|e| StartError::Key(e.to_string()))?,
    };
    let mut keys = vec![active];
    for file in &config.keys.previous_key_files {
        keys.push(crypto::read_key_file(file).map_err(|e| StartError::Key(e.to_string()))?);
    }
    KeyRing::from_keys(&keys).map_err(|e| StartError::Key(e.to_string()))
}

/// The bearer token of the generated admin, used only while no callers are configured: read
/// from `<data_dir>/admin.token`, or generated there (mode 0600). Returns its SHA-256 (hex).
pub fn generated_admin(config: &Config) -> Result<String, StartError> {
    let path = config.data_dir.join("admin.token");
    let token = if path.exists() {
        Zeroizing::new(
            std::fs::read_to_string(&path)
                .map_err(|e| StartError::Data(format!("reading {}: {e}", path.display())))?
                .trim()
                .to_owned(),
        )
    } else {
        let token = Zeroizing::new(crate::crypto::random_token());
        crypto::write_private_file(&path, format!("{}\n", token.as_str()).as_bytes())
            .map_err(|e| StartError::Data(format!("writing {}: {e}", path.display())))?;
        token
    };
    if token.is_empty() {
        return Err(StartError::Data(format!("{} is empty; delete it to generate a new one", path.display())));
    }
    tracing::info!(path = %path.display(), "no callers configured: the admin bearer token is in this file");
    Ok(crate::access::hash_token(&token))
}
