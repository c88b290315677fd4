//! Connecting: the options (from `store.postgres.*`), the pool, TLS with rustls, and keeping the
//! password out of every log line, error and `Debug` output.

use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions as _, PgPool};

use crate::store::StoreError;

/// How to reach the database. `Debug` never shows the URL (it may hold a password).
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=…]` (a Unix socket directory as
    /// `?host=/dir`). Secret: it may carry the password.
    pub url: String,
    /// The password, when it comes from a file rather than the URL (wins over the URL's).
    pub password: Option<String>,
    /// Connections in the pool (the change feed holds one of them; at least 2).
    pub pool_size: u32,
    /// Bound on opening a connection (and on taking one from the pool).
    pub connect_timeout: Duration,
    /// Bound on one store call; also the server-side `statement_timeout`.
    pub statement_timeout: Duration,
    /// A CA file: TLS is then required and the server's certificate and name are verified
    /// (`sslmode=verify-full`), with rustls.
    pub ca_file: Option<PathBuf>,
    /// The schema holding tokend's tables (several tokend deployments, or tests, can share one
    /// database in different schemas). Letters, digits and `_` only.
    pub schema: String,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ca_file", &self.ca_file)
            .field("schema", &self.schema)
            .finish()
    }
}

impl PgOptions {
    /// Options for `url` with the defaults of `store.postgres`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password: None,
            pool_size: 10,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            ca_file: None,
            schema: "public".into(),
        }
    }
}

/// The URL with its password (and any `password=` parameter) replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("redacted"));
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") { "redacted".into() } else { v.into_owned() };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable database URL>".into(),
    }
}

/// Whether `schema` is a plain identifier (it is put into SQL text).
pub fn valid_schema(schema: &str) -> bool {
    !schema.is_empty()
        && schema.len() <= 40
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit()
}

/// The connect options: the URL, then the password file, TLS, the schema and timeouts.
pub fn connect_options(options: &PgOptions) -> Result<PgConnectOptions, StoreError> {
    if !valid_schema(&options.schema) {
        return Err(StoreError::Engine(format!(
            "store.postgres.schema {:?}: use lowercase letters, digits and _",
            options.schema
        )));
    }
    // sqlx's parse errors may quote the URL: say only that it is malformed.
    let mut connect = PgConnectOptions::from_str(&options.url).map_err(|_| {
        StoreError::Engine(format!("store.postgres.url is not a valid PostgreSQL URL ({})", redact_url(&options.url)))
    })?;
    if let Some(password) = &options.password {
        connect = connect.password(password);
    }
    if let Some(ca) = &options.ca_file {
        connect = connect.ssl_mode(PgSslMode::VerifyFull).ssl_root_cert(ca);
    }
    let statement_ms = options.statement_timeout.as_millis().to_string();
    connect = connect
        .application_name("tokend")
        .options([("search_path", options.schema.as_str()), ("statement_timeout", statement_ms.as_str())])
        // Statement logging would print every query; failures come back as errors.
        .disable_statement_logging();
    Ok(connect)
}

/// Opens the pool (one connection now, to fail fast) and creates the schema if missing.
pub async fn connect(options: &PgOptions) -> Result<PgPool, StoreError> {
    let connect = connect_options(options)?;
    let pool = PgPoolOptions::new()
        .max_connections(options.pool_size.max(2))
        .acquire_timeout(options.connect_timeout)
        .connect_with(connect)
        .await
        .map_err(db)?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", options.schema)))
        .execute(&pool)
        .await
        .map_err(db)?;
    Ok(pool)
}

/// A database error as a store error: anything that says the server cannot be reached or the
/// connection broke is [`StoreError::Unavailable`] (retry later); the rest is
/// [`StoreError::Engine`]. Messages come from the server or the socket, never with the URL.
pub fn db(e: sqlx::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("certificate") {
        // A server certificate that does not verify is a configuration problem (the CA file, the
        // host name), not an outage: retrying will not fix it.
        return StoreError::Engine(format!("TLS to the database: {text}"));
    }
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            // 08: connection exception; 57P0x: the server is shutting down or starting;
            // 57014: statement timeout; 53: insufficient resources.
            if code.starts_with("08") || code.starts_with("57P") || code == "57014" || code.starts_with("53") {
                StoreError::Unavailable(d.message().to_owned())
            } else {
                StoreError::Engine(format!("database: {} ({code})", d.message()))
            }
        }
        _ => StoreError::Engine(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A password in the URL or its query never reaches `Debug` or a message.
    #[test]
    fn url_secrets_are_redacted() {
        let mut options =
            PgOptions::new("postgres://tokend:hunter2@db:5432/tokend?password=also-secret&sslmode=require");
        options.password = Some("from-file".into());
        let shown = format!("{options:?}");
        for secret in ["hunter2", "also-secret", "from-file"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("db:5432"));
        options.url = "postgres://tokend:hunter2@db:5432/tokend?sslmode=nonsense".into();
        let error = connect_options(&options).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!error.contains("hunter2") && error.contains("not a valid"), "{error}");
    }

    /// Only plain identifiers are taken as schema names.
    #[test]
    fn schema_names_are_identifiers() {
        assert!(valid_schema("public") && valid_schema("tokend_t1"));
        for bad in ["", "1a", "a\"b", "A", "a;drop"] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}
