//! The schema: versioned migrations embedded in the binary (`migrations/`), applied at start and
//! by `tokend migrate` under sqlx's migration advisory lock (replicas starting together wait for
//! each other instead of racing); a schema newer than this binary knows is refused before
//! anything is touched; a server that would lose committed rotations is refused.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use super::pool::db;
use crate::store::StoreError;

/// The migrations this binary knows, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("src/store/postgres/migrations");

/// The newest schema version this binary knows.
pub fn known_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Checks the server and the schema, then applies pending migrations; returns the version
/// applied.
pub async fn prepare(pool: &PgPool, schema: &str) -> Result<i64, StoreError> {
    check_durability(pool).await?;
    let applied = applied_version(pool).await?;
    let known = known_version();
    if applied > known {
        return Err(StoreError::TooNew {
            found: u32::try_from(applied).unwrap_or(u32::MAX),
            supported: u32::try_from(known).unwrap_or(u32::MAX),
        });
    }
    if applied < known {
        tracing::info!(schema, from = applied, to = known, "applying database migrations");
    }
    MIGRATOR.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(e) => db(e),
        other => StoreError::Engine(format!("migrating schema {schema:?}: {other}")),
    })?;
    Ok(known)
}

/// The newest migration applied in the current schema (0: none).
async fn applied_version(pool: &PgPool) -> Result<i64, StoreError> {
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text").fetch_one(pool).await.map_err(db)?;
    if exists.is_none() {
        return Ok(0);
    }
    let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(db)?;
    Ok(version.unwrap_or(0))
}

/// A rotated refresh token counts as stored when its transaction commits; with
/// `synchronous_commit = off` a server crash can lose commits already acknowledged, and with them
/// the only valid refresh token. Refused rather than risked.
async fn check_durability(pool: &PgPool) -> Result<(), StoreError> {
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(pool).await.map_err(db)?;
    if setting.eq_ignore_ascii_case("off") {
        return Err(StoreError::Engine(
            "the database has synchronous_commit = off: a crash could lose a committed refresh-token rotation, \
             and with it the connection; set synchronous_commit to on (or local/remote_write/remote_apply) for \
             tokend's role or database"
                .into(),
        ));
    }
    Ok(())
}
