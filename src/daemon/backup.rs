//! Backup and restore of the store. The backup is JSON lines, one entry per line (`tree`, `key`,
//! `value` in base64); secrets stay sealed, so the backup is only as readable as the key file
//! kept apart from it. `tokend export`/`import` work on a stopped daemon's directory (sled locks
//! it); a running daemon streams the same format through the `Maintenance.Backup` RPC
//! ([`encode_line`]).

use std::io::{BufRead, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::StartError;
use super::bootstrap::{ensure_data_dir, open_store};
use crate::config::Config;
use crate::store::Store as _;

#[derive(Serialize, Deserialize)]
struct Line {
    tree: String,
    key: String,
    value: String,
}

/// One backup line (with its newline) for a store entry.
pub fn encode_line(tree: &str, key: &[u8], value: &[u8]) -> String {
    let line = Line { tree: tree.to_owned(), key: STANDARD.encode(key), value: STANDARD.encode(value) };
    // Serializing three strings cannot fail.
    let mut text = serde_json::to_string(&line).unwrap_or_default();
    text.push('\n');
    text
}

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
        .for_each_entry(&mut |tree, key, value| match out.write_all(encode_line(tree, key, value).as_bytes()) {
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

/// `tokend export`: writes the backup of the store in `config.data_dir` to the file `output`,
/// or to standard output when there is none; returns how many entries.
pub fn export_file(config: &Config, output: Option<&Path>) -> Result<usize, StartError> {
    match output {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| StartError::Data(format!("{}: {e}", path.display())))?;
            export(config, &mut std::io::BufWriter::new(file))
        }
        None => export(config, &mut std::io::stdout().lock()),
    }
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
        let parsed: Line = serde_json::from_str(&line).map_err(|_| bad("not a backup entry"))?;
        let key = STANDARD.decode(&parsed.key).map_err(|_| bad("key is not base64"))?;
        let value = STANDARD.decode(&parsed.value).map_err(|_| bad("value is not base64"))?;
        entries.push((parsed.tree, key, value));
    }
    if !entries.iter().any(|(tree, _, _)| tree == "meta") {
        return Err(StartError::Data("the backup has no metadata; is it a tokend backup?".into()));
    }
    ensure_data_dir(&config.data_dir)?;
    let store = open_store(config)?;
    store.restore(&entries).map_err(|e| StartError::Data(e.to_string()))?;
    Ok(entries.len())
}
