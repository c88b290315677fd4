//! The backup format, shared by `tokend export`/`import` (a stopped daemon's store) and the
//! `Maintenance.Backup` RPC (a running one): JSON lines, one store entry per line (`tree`, `key`,
//! `value` in base64). Values stay sealed, so a backup is only as readable as the key file kept
//! apart from it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::DumpEntry;

#[derive(Serialize, Deserialize)]
struct Line {
    tree: String,
    key: String,
    value: String,
}

/// Why a backup line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    /// Not a JSON object with `tree`, `key` and `value`.
    #[error("not a backup entry")]
    NotAnEntry,
    /// The key is not base64.
    #[error("key is not base64")]
    Key,
    /// The value is not base64.
    #[error("value is not base64")]
    Value,
}

/// One backup line (with its newline) for a store entry.
pub fn encode_line(tree: &str, key: &[u8], value: &[u8]) -> String {
    let line = Line { tree: tree.to_owned(), key: STANDARD.encode(key), value: STANDARD.encode(value) };
    // Serializing three strings cannot fail.
    let mut text = serde_json::to_string(&line).unwrap_or_default();
    text.push('\n');
    text
}

/// The store entry of one backup line (without its newline).
pub fn decode_line(line: &str) -> Result<DumpEntry, BadLine> {
    let parsed: Line = serde_json::from_str(line).map_err(|_| BadLine::NotAnEntry)?;
    let key = STANDARD.decode(&parsed.key).map_err(|_| BadLine::Key)?;
    let value = STANDARD.decode(&parsed.value).map_err(|_| BadLine::Value)?;
    Ok((parsed.tree, key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line decodes to the entry it encodes; damaged lines say what is wrong.
    #[test]
    fn round_trip() {
        let line = encode_line("connections", b"mail\x00", &[0, 159, 255]);
        assert!(line.ends_with('\n'));
        assert_eq!(decode_line(line.trim_end()), Ok(("connections".into(), b"mail\x00".to_vec(), vec![0, 159, 255])));
        assert_eq!(decode_line("{}"), Err(BadLine::NotAnEntry));
        assert_eq!(decode_line(r#"{"tree":"meta","key":"!","value":""}"#), Err(BadLine::Key));
        assert_eq!(decode_line(r#"{"tree":"meta","key":"","value":"%"}"#), Err(BadLine::Value));
    }
}
