//! `rotate-keys` and `backup`: store-wide chores the running daemon does for an admin.

use std::io::Write as _;
use std::path::Path;

use serde_json::json;
use tokend::api::pb;
use tokend::daemon::backup::{BackupFile, BackupFileError};

use crate::cli::Output;
use crate::client::Client;
use crate::failure::{Failure, Outcome, Reply as _};
use crate::render::print_table;

impl Client {
    /// `rotate-keys`: re-seal under the active key, then show which keys seal what.
    pub(crate) async fn rotate_keys(&mut self, dry_run: bool) -> Outcome {
        let what = if dry_run { "reading key usage" } else { "re-sealing secrets" };
        let reply = self.maintenance.rotate_keys(pb::RotateKeysRequest { dry_run }).await.or_fail(&self.hints, what)?;
        let retired: Vec<&str> = reply
            .keys
            .iter()
            .filter(|k| !k.active && k.loaded && k.sealed_values == 0)
            .map(|k| k.key_id.as_str())
            .collect();
        let still_used: Vec<&pb::KeyUsage> = reply.keys.iter().filter(|k| !k.active && k.sealed_values > 0).collect();
        match self.output {
            Output::Json => self.json(&json!({
                "active_key_id": reply.active_key_id,
                "resealed": reply.resealed,
                "unreadable": reply.unreadable,
                "keys": reply.keys.iter().map(|k| json!({
                    "key_id": k.key_id, "sealed_values": k.sealed_values, "active": k.active, "loaded": k.loaded,
                })).collect::<Vec<_>>(),
            })),
            Output::Table => {
                let yes = |b: bool| if b { "yes" } else { "" }.to_owned();
                let rows: Vec<Vec<String>> = reply
                    .keys
                    .iter()
                    .map(|k| vec![k.key_id.clone(), yes(k.active), yes(k.loaded), k.sealed_values.to_string()])
                    .collect();
                print_table(&["KEY ID", "ACTIVE", "LOADED", "SEALED VALUES"], &rows);
                if !dry_run {
                    println!("re-sealed {} record(s) under key {}", reply.resealed, reply.active_key_id);
                }
                if !retired.is_empty() {
                    println!(
                        "no value is sealed under {}: remove it from keys.previous_key_files and reload (SIGHUP)",
                        retired.join(", ")
                    );
                }
            }
        }
        if reply.unreadable > 0 {
            return Err(Failure::new(
                1,
                format!("{} stored value(s) open with no loaded key", reply.unreadable),
                Some("add the key they were sealed with to keys.previous_key_files and reload".to_owned()),
            ));
        }
        if !dry_run && !still_used.is_empty() {
            let ids: Vec<&str> = still_used.iter().map(|k| k.key_id.as_str()).collect();
            return Err(Failure::new(
                1,
                format!("values are still sealed under {} (concurrent writes)", ids.join(", ")),
                Some("run `tokenctl rotate-keys` again".to_owned()),
            ));
        }
        Ok(())
    }

    /// `backup`: stream the store into `output`, a new file of mode 0600 written under a
    /// temporary name and moved into place only when complete, so a failed backup never looks
    /// like a good one ([`BackupFile`], as `tokend export` writes it); `-` is standard output.
    pub(crate) async fn backup(&mut self, output: &Path) -> Outcome {
        let mut stream =
            self.maintenance.backup(pb::BackupRequest {}).await.or_fail(&self.hints, "starting the backup")?;
        let to_stdout = output == Path::new("-");
        let mut file = match to_stdout {
            true => None,
            false => Some(BackupFile::create(output).map_err(backup_failure)?),
        };
        let mut sink: Box<dyn std::io::Write + '_> = match &mut file {
            Some(file) => Box::new(file),
            None => Box::new(std::io::stdout().lock()),
        };
        let (mut entries, mut bytes) = (0u64, 0u64);
        let result: Outcome = async {
            while let Some(chunk) = stream.message().await.map_err(|s| self.hints.fail("reading the backup", &s))? {
                sink.write_all(&chunk.data).map_err(|e| Failure::new(1, format!("writing the backup: {e}"), None))?;
                entries += chunk.entries;
                bytes += chunk.data.len() as u64;
            }
            sink.flush().map_err(|e| Failure::new(1, format!("writing the backup: {e}"), None))
        }
        .await;
        drop(sink);
        // On failure the unfinished file removes itself when dropped.
        result?;
        if let Some(file) = file {
            file.finish().map_err(backup_failure)?;
        }
        let place = if to_stdout { "stdout".to_owned() } else { output.display().to_string() };
        eprintln!(
            "backup: {entries} entries, {bytes} bytes written to {place}; restore with `tokend import --input FILE` \
             into an empty data directory (with the same key)"
        );
        Ok(())
    }
}

/// An existing file is the admin's to resolve (exit 2, as a usage error); anything else exit 1.
fn backup_failure(error: BackupFileError) -> Failure {
    match error {
        BackupFileError::Exists(_) => Failure::new(2, error.to_string(), Some("choose a new file".into())),
        BackupFileError::Io { .. } => Failure::new(1, error.to_string(), None),
    }
}
