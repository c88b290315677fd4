//! Backup and restore of the store. The backup is JSON lines, one entry per line (`tree`, `key`,
//! `value` in base64); secrets stay sealed, so the backup is only as readable as the key file
//! kept apart from it. `tokend export`/`import` work on a stopped daemon's directory (sled locks
//! it); a running daemon streams the same format through the `Maintenance.Backup` RPC
//! ([`crate::store::backup`] holds the line format).

use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::StartError;
use super::bootstrap::{ensure_data_dir, open_store};
use crate::config::Config;

/// Writes every entry of the store in `config.data_dir` to `out`; returns how many.
pub fn export(config: &Config, out: &mut dyn Write) -> Result<usize, StartError> {
    let store = match open_store(config) {
        Err(StartError::Locked(why)) => {
            return Err(StartError::Locked(format!(
                "{why}; back up a running daemon with `tokenctl backup FILE` instead"
            )));
        }
        other => other?,
    };
    let mut count = 0;
    let mut failure = None;
    store
        .for_each_entry(&mut |tree, key, value| match out
            .write_all(crate::store::backup::encode_line(tree, key, value).as_bytes())
        {
            Ok(()) => {
                count += 1;
                true
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        })
        .map_err(|e| StartError::Data(e.to_string()))?;
    if let Some(e) = failure {
        return Err(StartError::Data(format!("writing the backup: {e}")));
    }
    out.flush().map_err(|e| StartError::Data(format!("writing the backup: {e}")))?;
    Ok(count)
}

/// `tokend export`: writes the backup of the store in `config.data_dir` to a new file `output`
/// (a [`BackupFile`]: never over an existing file, readable by its owner only), or to standard
/// output when there is none; returns how many entries.
pub fn export_file(config: &Config, output: Option<&Path>) -> Result<usize, StartError> {
    let Some(path) = output else {
        return export(config, &mut std::io::stdout().lock());
    };
    let mut file = BackupFile::create(path).map_err(|e| StartError::Data(e.to_string()))?;
    let count = export(config, &mut file)?;
    file.finish().map_err(|e| StartError::Data(e.to_string()))?;
    Ok(count)
}

/// `tokend import`: restores the backup in the file `input` into the (empty) store in
/// `config.data_dir`, as [`import`] does; returns how many entries.
pub fn import_file(config: &Config, input: &Path) -> Result<usize, StartError> {
    let file = std::fs::File::open(input).map_err(|e| StartError::Data(format!("{}: {e}", input.display())))?;
    import(config, &mut std::io::BufReader::new(file))
}

/// Loads a backup into the (empty) store in `config.data_dir`; returns how many entries. The
/// whole backup is read and checked before anything is written. The key the backup was sealed
/// with must be configured before the daemon starts on the restored store.
pub fn import(config: &Config, input: &mut dyn BufRead) -> Result<usize, StartError> {
    let mut entries = Vec::new();
    for (number, line) in input.lines().enumerate() {
        let line = line.map_err(|e| StartError::Data(format!("reading the backup: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| StartError::Data(format!("backup line {}: {what}", number + 1));
        let entry = crate::store::backup::decode_line(&line).map_err(|e| bad(&e.to_string()))?;
        entries.push(entry);
    }
    if !entries.iter().any(|(tree, _, _)| tree == "meta") {
        return Err(StartError::Data("the backup has no metadata; is it a tokend backup?".into()));
    }
    ensure_data_dir(&config.data_dir)?;
    let store = open_store(config)?;
    store.restore(&entries).map_err(|e| StartError::Data(e.to_string()))?;
    Ok(entries.len())
}

/// `tokend migrate`: applies the PostgreSQL schema migrations this binary knows; returns the
/// schema version now applied. Refused for the sled backend (it upgrades itself at start).
pub fn migrate(config: &Config) -> Result<i64, StartError> {
    if config.store.backend != crate::config::StoreBackend::Postgres {
        return Err(StartError::Config(
            "tokend migrate is for store.backend = \"postgres\"; the sled store upgrades itself at start".into(),
        ));
    }
    let options = super::bootstrap::postgres_options(config)?;
    crate::store::PgStore::migrate(&options).map_err(|e| match e {
        crate::store::StoreError::Unavailable(why) => StartError::Database(format!("cannot reach the database: {why}")),
        other => StartError::Data(other.to_string()),
    })
}

/// Why a backup file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BackupFileError {
    /// The file (or the partial file of an interrupted backup) exists: a backup never replaces
    /// a file, which may be an older good backup.
    #[error("{} exists; choose a new file (a backup never overwrites one)", .0.display())]
    Exists(PathBuf),
    /// Creating, writing or renaming failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A backup being written to a file, as `tokend export` and `tokenctl backup` do. The backup
/// holds sealed secrets and every profile's settings, so the file is created new with mode
/// 0600 (never over an existing file), and written under `<path>.partial` until
/// [`BackupFile::finish`] moves it into place, so a failed backup never looks like a good
/// one. Dropped unfinished, it removes the partial file.
#[derive(Debug)]
pub struct BackupFile {
    path: PathBuf,
    partial: PathBuf,
    /// `None` once finished (the partial file is then gone).
    writer: Option<BufWriter<File>>,
}

impl BackupFile {
    /// Creates `<path>.partial`; refuses when `path` or the partial file exists.
    pub fn create(path: &Path) -> Result<Self, BackupFileError> {
        if path.exists() {
            return Err(BackupFileError::Exists(path.to_owned()));
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = create_private(&partial).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => BackupFileError::Exists(partial.clone()),
            _ => BackupFileError::Io { path: partial.clone(), source },
        })?;
        Ok(Self { path: path.to_owned(), partial, writer: Some(BufWriter::new(file)) })
    }

    /// Flushes the backup to disk and gives it its name, still refusing to replace a file that
    /// appeared meanwhile (a hard link fails on an existing name, where a rename would not).
    pub fn finish(mut self) -> Result<(), BackupFileError> {
        if let Some(writer) = self.writer.take() {
            let file = writer.into_inner().map_err(|e| e.into_error()).map_err(io(&self.partial))?;
            file.sync_all().map_err(io(&self.partial))?;
        }
        match std::fs::hard_link(&self.partial, &self.path) {
            Ok(()) => std::fs::remove_file(&self.partial).map_err(io(&self.partial)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(BackupFileError::Exists(self.path.clone())),
            // A filesystem without hard links: rename, after looking once more.
            Err(_) if !self.path.exists() => std::fs::rename(&self.partial, &self.path).map_err(io(&self.path)),
            Err(source) => Err(BackupFileError::Io { path: self.path.clone(), source }),
        }
    }
}

impl Write for BackupFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.writer {
            Some(writer) => writer.write(buf),
            None => Err(std::io::Error::other("the backup file is finished")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl Drop for BackupFile {
    fn drop(&mut self) {
        // Unfinished, or finished without being moved into place: the partial file must not
        // linger looking like a backup.
        self.writer.take();
        let _ = std::fs::remove_file(&self.partial);
    }
}

/// How an I/O failure on `path` reads.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupFileError + '_ {
    move |source| BackupFileError::Io { path: path.to_owned(), source }
}

/// Creates a new file readable only by its owner.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A finished backup file has its name and mode 0600; the partial file is gone.
    #[test]
    fn backup_file_is_new_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.jsonl");
        let mut file = BackupFile::create(&path).unwrap();
        file.write_all(b"line\n").unwrap();
        file.finish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line\n");
        assert!(!dir.path().join("b.jsonl.partial").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(BackupFile::create(&path), Err(BackupFileError::Exists(p)) if p == path));
    }

    /// A backup dropped unfinished leaves nothing; one whose name appeared meanwhile does not
    /// replace it.
    #[test]
    fn backup_file_never_replaces_or_lingers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.jsonl");
        drop(BackupFile::create(&path).unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut file = BackupFile::create(&path).unwrap();
        file.write_all(b"new\n").unwrap();
        std::fs::write(&path, "old\n").unwrap();
        assert!(matches!(file.finish(), Err(BackupFileError::Exists(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        assert!(!dir.path().join("b.jsonl.partial").exists());
    }
}
