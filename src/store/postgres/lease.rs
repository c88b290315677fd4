//! Refresh leases and health of the PostgreSQL backend: a lease is a compare-and-swap on the
//! connection's lease columns, by the database's clock, taken only over the version the caller
//! read (so the refresh token it holds is the current one).

use super::PgStore;
use super::ops::version_of;
use super::pool::db;
use crate::store::{LeaseOutcome, StoreError};

impl PgStore {
    /// [`crate::store::Store::take_lease`].
    pub(super) fn lease_take(
        &self,
        name: &str,
        version: u64,
        lease: std::time::Duration,
    ) -> Result<LeaseOutcome, StoreError> {
        let (name, holder) = (name.to_owned(), self.holder.clone());
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let version = version_of(version);
        self.with_pool("taking a refresh lease", |pool| async move {
            // The database's clock decides, so replicas with skewed clocks agree on expiry.
            let taken: Option<i64> = sqlx::query_scalar(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms) \
                 UPDATE connections SET lease_holder = $2, lease_until_ms = (SELECT ms FROM now) + $4 \
                 WHERE name = $1 AND version = $3 \
                 AND (lease_holder = '' OR lease_holder = $2 OR lease_until_ms <= (SELECT ms FROM now)) \
                 RETURNING version",
            )
            .bind(&name)
            .bind(&holder)
            .bind(version)
            .bind(lease_ms)
            .fetch_optional(&pool)
            .await
            .map_err(db)?;
            if taken.is_some() {
                return Ok(LeaseOutcome::Granted);
            }
            let row: Option<(i64, i64)> = sqlx::query_as(
                "SELECT version, lease_until_ms - (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
                 FROM connections WHERE name = $1",
            )
            .bind(&name)
            .fetch_optional(&pool)
            .await
            .map_err(db)?;
            Ok(match row {
                None => return Err(StoreError::NotFound(name)),
                Some((current, _)) if current != version => LeaseOutcome::Moved,
                Some((_, remaining_ms)) => LeaseOutcome::HeldElsewhere { remaining_ms: remaining_ms.max(0) },
            })
        })
    }

    /// [`crate::store::Store::release_lease`].
    pub(super) fn lease_release(&self, name: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_owned(), self.holder.clone());
        self.with_pool("releasing a refresh lease", |pool| async move {
            sqlx::query(
                "UPDATE connections SET lease_holder = '', lease_until_ms = 0 WHERE name = $1 AND lease_holder = $2",
            )
            .bind(name)
            .bind(holder)
            .execute(&pool)
            .await
            .map_err(db)
            .map(|_| ())
        })
    }

    /// [`crate::store::Store::healthy`]: the database answers and the change feed listens.
    pub(super) fn reachable_and_listening(&self) -> bool {
        let reachable = self
            .with_pool("checking the database", |pool| async move {
                sqlx::query("SELECT 1").execute(&pool).await.map_err(db).map(|_| ())
            })
            .is_ok();
        reachable && self.feed_connected()
    }
}
