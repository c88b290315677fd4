//! Why a configuration cannot be used. Every error names the key (`grpc.listen`,
//! `callers[2].role`) and the reason, and says where the value came from when that is known
//! (the file, the environment variable), so an operator can fix it without reading code.

use std::fmt;
use std::path::PathBuf;

use figment::error::Kind;

/// A configuration that cannot be used. Variants let callers (tests, tools) tell a misspelled
/// key from a bad value; the `Display` form is what `tokend` prints before exiting
/// [`ConfigError::EXIT_CODE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file named by `--config` or `TOKEND_CONFIG` cannot be read or is not
    /// TOML.
    #[error("configuration file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A key tokend does not know: usually a misspelling, which must not pass silently.
    #[error("configuration: {key}: unknown key{}; expected one of: {}", Origin(origin), expected.join(", "))]
    UnknownKey {
        /// The key as written (`grpc.listne`).
        key: String,
        /// Where it was written, when known.
        origin: Option<String>,
        /// The keys allowed at that place.
        expected: Vec<String>,
    },
    /// A setting with a fixed set of values got another one.
    #[error("configuration: {key}: unknown value {value:?}{}; expected one of: {}", Origin(origin), expected.join(", "))]
    UnknownValue {
        /// The key (`log.format`).
        key: String,
        /// The value given.
        value: String,
        /// Where it was given, when known.
        origin: Option<String>,
        /// The accepted values, spelled as in the file.
        expected: Vec<String>,
    },
    /// A value that does not read as its type (`grpc.listen = "nope"`), or a required key
    /// that is missing.
    #[error("configuration: {key}: {reason}{}", Origin(origin))]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
        /// Where it was given, when known.
        origin: Option<String>,
    },
    /// A value that reads but is out of range or contradicts another key (checked by
    /// [`super::Config::validate`]).
    #[error("configuration: {key}: {reason}")]
    Rejected {
        /// The key, or the first of the keys that disagree.
        key: String,
        /// Why, naming the other keys involved.
        reason: String,
    },
    /// Several of the above: the file and the environment are read in one pass, and every
    /// problem found is reported at once.
    #[error("{}", several(.0))]
    Several(Vec<ConfigError>),
}

impl ConfigError {
    /// The exit code of a process stopped by bad configuration (`EX_CONFIG` in sysexits.h), so
    /// systemd and scripts can tell "fix the configuration" from "retry".
    pub const EXIT_CODE: u8 = 78;

    /// A value rejected by validation.
    pub fn rejected(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Rejected { key: key.into(), reason: reason.into() }
    }

    /// The key the error is about (the first one, for [`ConfigError::Several`]); `None` for
    /// a file that cannot be read.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::File { .. } => None,
            Self::UnknownKey { key, .. }
            | Self::UnknownValue { key, .. }
            | Self::Invalid { key, .. }
            | Self::Rejected { key, .. } => Some(key),
            Self::Several(all) => all.first().and_then(Self::key),
        }
    }

    /// Converts figment's errors (one per problem found) into ours.
    pub(super) fn from_figment(error: figment::Error) -> Self {
        let mut all: Vec<Self> = error.into_iter().map(Self::from_one).collect();
        match all.len() {
            1 => all.remove(0),
            _ => Self::Several(all),
        }
    }

    fn from_one(error: figment::Error) -> Self {
        let mut path = error.path.clone();
        // serde names an unknown field apart from the path of the table holding it.
        if let Kind::UnknownField(field, _) = &error.kind
            && path.last() != Some(field)
        {
            path.push(field.clone());
        }
        let key = key_name(&path);
        let origin = origin(&error).map(|o| env_variable(&o, &key).unwrap_or(o));
        let file = file_of(&error);
        let expected = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
        match error.kind {
            Kind::UnknownField(_, names) => Self::UnknownKey { key, origin, expected: expected(names) },
            Kind::UnknownVariant(value, names) => Self::UnknownValue { key, value, origin, expected: expected(names) },
            // A file that does not parse has no key; its origin names the file.
            Kind::Message(reason) if path.is_empty() => match file {
                Some(path) => Self::File { path, reason },
                None => Self::Invalid { key: "(top level)".into(), reason, origin },
            },
            kind => Self::Invalid { key, reason: kind.to_string(), origin },
        }
    }
}

/// A key path as people write it: `grpc.tls.cert_file`, `callers[2].role`.
fn key_name<S: AsRef<str>>(path: &[S]) -> String {
    let mut key = String::new();
    for part in path {
        let part = part.as_ref();
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// Figment's name for the environment provider; see [`env_variable`].
const ENV_ORIGIN: &str = "environment variable";

/// Where a value came from: the file, or the environment.
fn origin(error: &figment::Error) -> Option<String> {
    let metadata = error.metadata.as_ref()?;
    Some(match (&metadata.source, metadata.name.contains(ENV_ORIGIN)) {
        (Some(figment::Source::File(path)), _) => path.display().to_string(),
        (_, true) => ENV_ORIGIN.to_owned(),
        _ => metadata.name.to_string(),
    })
}

/// The environment variable that set `key`, rebuilt from it (`grpc.listne` →
/// `TOKEND_GRPC__LISTNE`), when the value came from the environment.
fn env_variable(origin: &str, key: &str) -> Option<String> {
    (origin == ENV_ORIGIN).then(|| format!("{ENV_ORIGIN} TOKEND_{}", key.replace('.', "__").to_ascii_uppercase()))
}

fn file_of(error: &figment::Error) -> Option<PathBuf> {
    match error.metadata.as_ref()?.source.as_ref()? {
        figment::Source::File(path) => Some(path.clone()),
        _ => None,
    }
}

/// ` (from X)` when the origin is known.
struct Origin<'a>(&'a Option<String>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(origin) => write!(f, " (from {origin})"),
            None => Ok(()),
        }
    }
}

fn several(all: &[ConfigError]) -> String {
    all.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Array indices read as in the README: `callers[2].role`.
    #[test]
    fn key_names() {
        assert_eq!(key_name(&["grpc", "tls", "cert_file"]), "grpc.tls.cert_file");
        assert_eq!(key_name(&["callers", "2", "role"]), "callers[2].role");
        assert_eq!(key_name(&["profiles", "0"]), "profiles[0]");
        assert_eq!(key_name::<&str>(&[]), "");
    }

    /// An unknown key from the environment names the variable an operator has to unset.
    #[test]
    fn env_origin_names_the_variable() {
        assert_eq!(
            env_variable(ENV_ORIGIN, "grpc.listne").as_deref(),
            Some("environment variable TOKEND_GRPC__LISTNE")
        );
        assert_eq!(env_variable("/etc/tokend.toml", "grpc.listne"), None);
    }
}
