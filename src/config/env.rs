//! Which `TOKEND_*` environment variables are configuration. tokend shares the prefix with the
//! programs around it: `tokenctl` reads `TOKEND_ADDR`, `TOKEND_TOKEN` and `TOKEND_TOKEN_FILE`,
//! the example worker `TOKEND_TOKEN`, and tokend itself `TOKEND_CONFIG`, `TOKEND_KEY` and
//! `TOKEND_LOG` outside the configuration. An admin exports them in the shell that also starts
//! tokend, so configuration claims only two shapes:
//!
//! - `TOKEND_<SECTION>__<KEY>` (two underscores): a key in a section, e.g.
//!   `TOKEND_GRPC__LISTEN`. A misspelled one is still an error naming it.
//! - the top-level keys in [`TOP_LEVEL`], e.g. `TOKEND_DATA_DIR`.
//!
//! Everything else under the prefix is left to its owner.

use figment::providers::Env;

/// The environment variable prefix of configuration keys.
pub const PREFIX: &str = "TOKEND_";

/// Separates a section from its key (`TOKEND_GRPC__TLS__CERT_FILE` is `grpc.tls.cert_file`).
const SEPARATOR: &str = "__";

/// Top-level keys that are plain values, settable as `TOKEND_<KEY>`, after the prefix.
/// `callers` and `profiles` are lists of tables, set in the file only. A unit test keeps this
/// list in step with [`super::Config`].
pub const TOP_LEVEL: &[&str] = &["DATA_DIR", "PRUNE_PROFILES"];

/// Whether the variable named `PREFIX` + `rest` is configuration (see the module docs).
pub fn claims(rest: &str) -> bool {
    rest.contains(SEPARATOR) || TOP_LEVEL.iter().any(|name| name.eq_ignore_ascii_case(rest))
}

/// The figment source of the configuration variables.
pub(super) fn source() -> Env {
    Env::prefixed(PREFIX).filter(|rest| claims(rest.as_str())).split(SEPARATOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Variables of tokenctl, the example worker and tokend's own non-configuration variables
    /// are not claimed; section keys (misspelled ones too) and documented top-level keys are.
    #[test]
    fn claims_only_configuration() {
        for other in ["ADDR", "TOKEN", "TOKEN_FILE", "KEY", "CONFIG", "LOG", "DATADIR", "SOMETHING_ELSE"] {
            assert!(!claims(other), "TOKEND_{other}");
        }
        for config in ["GRPC__LISTEN", "GRPC__LISTNE", "GRCP__LISTEN", "GRPC__TLS__CERT_FILE", "DATA_DIR", "data_dir"] {
            assert!(claims(config), "TOKEND_{config}");
        }
        assert!(claims("PRUNE_PROFILES"));
    }

    /// Every top-level key that holds a plain value is in [`TOP_LEVEL`], and nothing else is:
    /// adding a top-level key without deciding on its variable fails here.
    #[test]
    fn top_level_names_follow_the_config() {
        let defaults = toml::Value::try_from(super::super::Config::default()).unwrap();
        let table = defaults.as_table().unwrap();
        let mut plain: Vec<String> = table
            .iter()
            .filter(|(_, value)| !value.is_table() && !value.is_array())
            .map(|(key, _)| key.to_ascii_uppercase())
            .collect();
        plain.sort();
        let mut listed: Vec<String> = TOP_LEVEL.iter().map(|n| (*n).to_owned()).collect();
        listed.sort();
        assert_eq!(plain, listed);
    }
}
