//! Offline backup and restore of the store (the daemon must be stopped: sled locks its
//! directory). The backup is JSON lines, one entry per line (`tree`, `key`, `value` in base64);
//! secrets stay sealed, so the backup is only as readable as the key file kept apart from it.

use std::io::{BufRead, Write};

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

/// Writes every entry of the store in `config.data_dir` to `out`; returns how many.
pub fn export(config: &Config, out: &mut dyn Write) -> Result<usize, StartError> {
    let store = open_store(config)?;
    let entries = store.dump().map_err(|e| StartError::Data(e.to_string()))?;
    for (tree, key, value) in &entries {
        let line = Line { tree: tree.clone(), key: STANDARD.encode(key), value: STANDARD.encode(value) };
        let text = serde_json::to_string(&line).map_err(|e| StartError::Data(e.to_string()))?;
        writeln!(out, "{text}").map_err(|e| StartError::Data(format!("writing the backup: {e}")))?;
    }
    Ok(entries.len())
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
