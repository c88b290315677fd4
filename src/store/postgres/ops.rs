//! The [`Store`] methods over SQL. Each method copies what it needs into a `'static` future that
//! runs on the store's runtime ([`PgStore::run`]). Connection writes are `UPDATE … WHERE version =
//! $n` in one transaction with their consent changes and a `pg_notify` that other replicas
//! receive after the commit; a commit is durable (the server is checked at start).

use prost::Message;
use sqlx::{PgPool, Postgres, Transaction};

use super::PgStore;
use super::bulk::TREES;
use super::pool::db;
use crate::clock::UnixMillis;
use crate::store::{
    ChangeFeed, ConnectionRecord, ConnectionWrite, ConsentRecord, DueEntry, DumpEntry, EntryVisit, LeaseOutcome,
    ProfileRecord, RecordRewrite, Rewritten, SealedTree, Store, StoreError,
};

/// The refresh schedule's filter: no unexpired lease of another process (parameter `$n` is this
/// process's holder id). Fixed text: nothing from outside reaches it.
fn not_leased_elsewhere(n: u8) -> String {
    format!(
        "(lease_holder = '' OR lease_holder = ${n} \
         OR lease_until_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint)"
    )
}

/// Where a change goes and who wrote it: (channel, this process's holder id).
type Channel = (String, String);

pub(super) fn decode<M: Message + Default>(tree: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt { tree, detail: e.to_string() })
}

pub(super) fn version_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Tells other replicas that `name` changed (delivered at commit, dropped on rollback).
async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    to: &Channel,
    name: &str,
    version: Option<u64>,
) -> Result<(), StoreError> {
    let (channel, origin) = to;
    let payload = super::notify::payload(origin, name, version);
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&mut **tx).await.map_err(db)?;
    Ok(())
}

impl PgStore {
    pub(super) fn with_pool<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let pool = self.pool()?.clone();
        self.run(what, f(pool))
    }
}

impl Store for PgStore {
    fn profile(&self, name: &str) -> Result<Option<ProfileRecord>, StoreError> {
        let name = name.to_owned();
        let bytes: Option<Vec<u8>> = self.with_pool("reading a profile", |pool| async move {
            sqlx::query_scalar("SELECT record FROM profiles WHERE name = $1")
                .bind(name)
                .fetch_optional(&pool)
                .await
                .map_err(db)
        })?;
        bytes.map(|b| decode("profiles", &b)).transpose()
    }

    fn connection(&self, name: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        let name = name.to_owned();
        let bytes: Option<Vec<u8>> = self.with_pool("reading a connection", |pool| async move {
            sqlx::query_scalar("SELECT record FROM connections WHERE name = $1")
                .bind(name)
                .fetch_optional(&pool)
                .await
                .map_err(db)
        })?;
        bytes.map(|b| decode("connections", &b)).transpose()
    }

    fn profiles_after(&self, after: &str, limit: usize) -> Result<Vec<(ProfileRecord, ConnectionRecord)>, StoreError> {
        let (after, limit) = (after.to_owned(), limit_of(limit));
        let rows: Vec<(Vec<u8>, Option<Vec<u8>>)> = self.with_pool("listing profiles", |pool| async move {
            sqlx::query_as(
                "SELECT p.record, c.record FROM profiles p LEFT JOIN connections c ON c.name = p.name \
                 WHERE p.name > $1 ORDER BY p.name LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(&pool)
            .await
            .map_err(db)
        })?;
        rows.into_iter()
            .map(|(p, c)| {
                let connection = match c {
                    Some(c) => decode("connections", &c)?,
                    None => ConnectionRecord::default(),
                };
                Ok((decode("profiles", &p)?, connection))
            })
            .collect()
    }

    fn connections(&self) -> Result<Vec<(String, ConnectionRecord)>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> = self.with_pool("reading connections", |pool| async move {
            sqlx::query_as("SELECT name, record FROM connections ORDER BY name").fetch_all(&pool).await.map_err(db)
        })?;
        rows.into_iter().map(|(n, b)| Ok((n, decode("connections", &b)?))).collect()
    }

    fn insert_profile(&self, profile: &ProfileRecord, connection: &ConnectionRecord) -> Result<(), StoreError> {
        let (name, record, conn, channel) = (
            profile.name.clone(),
            profile.encode_to_vec(),
            connection.clone(),
            (self.channel.clone(), self.holder.clone()),
        );
        self.with_pool("creating a profile", |pool| async move {
            let mut tx = pool.begin().await.map_err(db)?;
            let inserted = sqlx::query("INSERT INTO profiles (name, record) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(&name)
                .bind(record)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            if inserted.rows_affected() == 0 {
                return Err(StoreError::AlreadyExists(name));
            }
            sqlx::query("INSERT INTO connections (name, version, next_refresh_at_ms, record) VALUES ($1, $2, $3, $4)")
                .bind(&name)
                .bind(version_of(conn.version))
                .bind(conn.next_refresh_at_ms.max(0))
                .bind(conn.encode_to_vec())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            notify(&mut tx, &channel, &name, Some(conn.version)).await?;
            tx.commit().await.map_err(db)
        })
    }

    fn replace_profile(&self, profile: &ProfileRecord) -> Result<(), StoreError> {
        let (name, record, channel) =
            (profile.name.clone(), profile.encode_to_vec(), (self.channel.clone(), self.holder.clone()));
        self.with_pool("updating a profile", |pool| async move {
            let mut tx = pool.begin().await.map_err(db)?;
            let updated = sqlx::query("UPDATE profiles SET record = $2 WHERE name = $1")
                .bind(&name)
                .bind(record)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound(name));
            }
            notify(&mut tx, &channel, &name, None).await?;
            tx.commit().await.map_err(db)
        })
    }

    fn remove_profile(&self, name: &str) -> Result<(), StoreError> {
        let (name, channel) = (name.to_owned(), (self.channel.clone(), self.holder.clone()));
        self.with_pool("deleting a profile", |pool| async move {
            let mut tx = pool.begin().await.map_err(db)?;
            let connection: Option<Vec<u8>> =
                sqlx::query_scalar("DELETE FROM connections WHERE name = $1 RETURNING record")
                    .bind(&name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
            let removed =
                sqlx::query("DELETE FROM profiles WHERE name = $1").bind(&name).execute(&mut *tx).await.map_err(db)?;
            if removed.rows_affected() == 0 {
                return Err(StoreError::NotFound(name));
            }
            if let Some(bytes) = connection {
                let old: ConnectionRecord = decode("connections", &bytes)?;
                if !old.pending_consent.is_empty() {
                    sqlx::query("DELETE FROM consents WHERE key = $1")
                        .bind(old.pending_consent)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
            }
            notify(&mut tx, &channel, &name, None).await?;
            tx.commit().await.map_err(db)
        })
    }

    fn write_connection(&self, write: ConnectionWrite) -> Result<ConnectionRecord, StoreError> {
        let mut record = write.record.clone();
        record.version = write.expected_version + 1;
        let stored = record.clone();
        let channel = (self.channel.clone(), self.holder.clone());
        self.with_pool("writing a connection", |pool| async move {
            let mut tx = pool.begin().await.map_err(db)?;
            let updated = sqlx::query(
                "UPDATE connections SET version = $3, next_refresh_at_ms = $4, record = $5 \
                 WHERE name = $1 AND version = $2",
            )
            .bind(&write.name)
            .bind(version_of(write.expected_version))
            .bind(version_of(record.version))
            .bind(record.next_refresh_at_ms.max(0))
            .bind(record.encode_to_vec())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if updated.rows_affected() == 0 {
                let current: Option<i64> = sqlx::query_scalar("SELECT version FROM connections WHERE name = $1")
                    .bind(&write.name)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
                return Err(match current {
                    None => StoreError::NotFound(write.name),
                    Some(v) => StoreError::Conflict { name: write.name, current: u64::try_from(v).unwrap_or(0) },
                });
            }
            if let Some(key) = &write.remove_consent {
                sqlx::query("DELETE FROM consents WHERE key = $1").bind(key).execute(&mut *tx).await.map_err(db)?;
            }
            if let Some((key, consent)) = &write.put_consent {
                sqlx::query(
                    "INSERT INTO consents (key, record) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = $2",
                )
                .bind(key)
                .bind(consent.encode_to_vec())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            notify(&mut tx, &channel, &write.name, Some(record.version)).await?;
            tx.commit().await.map_err(db)
        })?;
        Ok(stored)
    }

    fn consent(&self, key: &[u8]) -> Result<Option<ConsentRecord>, StoreError> {
        let key = key.to_vec();
        let bytes: Option<Vec<u8>> = self.with_pool("reading a consent", |pool| async move {
            sqlx::query_scalar("SELECT record FROM consents WHERE key = $1")
                .bind(key)
                .fetch_optional(&pool)
                .await
                .map_err(db)
        })?;
        bytes.map(|b| decode("consents", &b)).transpose()
    }

    fn consents(&self) -> Result<Vec<(Vec<u8>, ConsentRecord)>, StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self.with_pool("reading consents", |pool| async move {
            sqlx::query_as("SELECT key, record FROM consents ORDER BY key").fetch_all(&pool).await.map_err(db)
        })?;
        rows.into_iter().map(|(k, b)| Ok((k, decode("consents", &b)?))).collect()
    }

    /// Due connections that no other replica is refreshing now (an unexpired lease held by
    /// another process): those are the holder's to finish, and its write reschedules them here
    /// through the change feed. A lapsed lease (a holder that died) makes its entry due again.
    fn due(&self, up_to: UnixMillis, limit: usize) -> Result<Vec<DueEntry>, StoreError> {
        let (limit, holder) = (limit_of(limit), self.holder.clone());
        let rows: Vec<(i64, String)> = self.with_pool("reading the refresh schedule", |pool| async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT next_refresh_at_ms, name FROM connections WHERE next_refresh_at_ms > 0 \
                 AND next_refresh_at_ms <= $1 AND {} ORDER BY next_refresh_at_ms, name LIMIT $2",
                not_leased_elsewhere(3)
            )))
            .bind(up_to)
            .bind(limit)
            .bind(holder)
            .fetch_all(&pool)
            .await
            .map_err(db)
        })?;
        Ok(rows.into_iter().map(|(at_ms, name)| DueEntry { at_ms, name }).collect())
    }

    /// The earliest entry [`Store::due`] would return (leased elsewhere ones left out).
    fn earliest_due(&self) -> Result<Option<DueEntry>, StoreError> {
        let holder = self.holder.clone();
        let row: Option<(i64, String)> = self.with_pool("reading the refresh schedule", |pool| async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT next_refresh_at_ms, name FROM connections WHERE next_refresh_at_ms > 0 \
                 AND {} ORDER BY next_refresh_at_ms, name LIMIT 1",
                not_leased_elsewhere(1)
            )))
            .bind(holder)
            .fetch_optional(&pool)
            .await
            .map_err(db)
        })?;
        Ok(row.map(|(at_ms, name)| DueEntry { at_ms, name }))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.with_pool("reading metadata", |pool| async move {
            sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
                .bind(key)
                .fetch_optional(&pool)
                .await
                .map_err(db)
        })
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        self.with_pool("writing metadata", |pool| async move {
            sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
                .bind(key)
                .bind(value)
                .execute(&pool)
                .await
                .map_err(db)
                .map(|_| ())
        })
    }

    fn compare_and_swap_meta(&self, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, StoreError> {
        let (key, expected, value) = (key.to_owned(), expected.map(<[u8]>::to_vec), value.to_vec());
        self.with_pool("writing metadata", |pool| async move {
            let query = match expected {
                // Absent: only the first of several inserting replicas gets the row.
                None => sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                    .bind(key)
                    .bind(value),
                Some(expected) => sqlx::query("UPDATE meta SET value = $2 WHERE key = $1 AND value = $3")
                    .bind(key)
                    .bind(value)
                    .bind(expected),
            };
            query.execute(&pool).await.map_err(db).map(|done| done.rows_affected() == 1)
        })
    }

    /// Every write is durable when its transaction commits: nothing to flush.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let bytes: i64 = self.with_pool("measuring the tables", |pool| async move {
            sqlx::query_scalar(
                "SELECT (pg_total_relation_size('meta') + pg_total_relation_size('profiles') \
                 + pg_total_relation_size('connections') + pg_total_relation_size('consents'))::bigint",
            )
            .fetch_one(&pool)
            .await
            .map_err(db)
        })?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }

    fn dump(&self) -> Result<Vec<DumpEntry>, StoreError> {
        let mut out = Vec::new();
        self.for_each_entry(&mut |tree, key, value| {
            out.push((tree.to_owned(), key.to_vec(), value.to_vec()));
            true
        })?;
        Ok(out)
    }

    fn restore(&self, entries: &[DumpEntry]) -> Result<(), StoreError> {
        self.restore_entries(entries)
    }

    fn for_each_entry(&self, visit: &mut EntryVisit<'_>) -> Result<(), StoreError> {
        for tree in TREES {
            if !self.visit_tree(tree, visit)? {
                break;
            }
        }
        Ok(())
    }

    fn for_each_connection_name(&self, visit: &mut dyn FnMut(&str) -> bool) -> Result<(), StoreError> {
        self.visit_connection_names(visit)
    }

    fn rewrite_records(&self, tree: SealedTree, rewrite: &mut RecordRewrite<'_>) -> Result<Rewritten, StoreError> {
        self.rewrite_tree(tree, rewrite)
    }

    fn changes(&self) -> Option<ChangeFeed> {
        self.take_feed()
    }

    fn take_lease(&self, name: &str, version: u64, lease: std::time::Duration) -> Result<LeaseOutcome, StoreError> {
        self.lease_take(name, version, lease)
    }

    fn release_lease(&self, name: &str) -> Result<(), StoreError> {
        self.lease_release(name)
    }

    fn healthy(&self) -> bool {
        self.reachable_and_listening()
    }
}
