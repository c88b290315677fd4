//! The [`Store`] methods over SQL. Each method copies what it needs into a `'static` future that
//! runs on the store's runtime ([`PgStore::run`]). Connection writes are `UPDATE … WHERE version =
//! $n` in one transaction with their consent changes and a `pg_notify` that other replicas
//! receive after the commit; a commit is durable (the server is checked at start).

use prost::Message;
use sqlx::{PgPool, Postgres, Row as _, Transaction};

use super::PgStore;
use super::pool::db;
use crate::clock::UnixMillis;
use crate::store::{
    ChangeFeed, ConnectionRecord, ConnectionWrite, ConsentRecord, DueEntry, DumpEntry, EntryVisit, LeaseOutcome,
    ProfileRecord, RecordRewrite, Rewritten, SealedTree, Store, StoreError, due_key,
};

/// Where a change goes and who wrote it: (channel, this process's holder id).
type Channel = (String, String);

/// Rows read per page when visiting a whole table.
const PAGE: i64 = 500;

fn decode<M: Message + Default>(tree: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt { tree, detail: e.to_string() })
}

fn version_of(v: u64) -> i64 {
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

/// One page of a table's (key, value) rows after `after`, in key order.
async fn page(
    pool: &PgPool,
    tree: &'static str,
    after: Option<Vec<u8>>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let sql = match tree {
        "meta" => {
            "SELECT convert_to(key, 'UTF8') AS k, value AS v FROM meta WHERE $1::bytea IS NULL OR convert_to(key, 'UTF8') > $1 ORDER BY key LIMIT $2"
        }
        "profiles" => {
            "SELECT convert_to(name, 'UTF8') AS k, record AS v FROM profiles WHERE $1::bytea IS NULL OR convert_to(name, 'UTF8') > $1 ORDER BY name LIMIT $2"
        }
        "connections" => {
            "SELECT convert_to(name, 'UTF8') AS k, record AS v FROM connections WHERE $1::bytea IS NULL OR convert_to(name, 'UTF8') > $1 ORDER BY name LIMIT $2"
        }
        "consents" => {
            "SELECT key AS k, record AS v FROM consents WHERE $1::bytea IS NULL OR key > $1 ORDER BY key LIMIT $2"
        }
        _ => return Err(StoreError::Corrupt { tree: "backup", detail: format!("unknown tree {tree:?}") }),
    };
    let rows = sqlx::query(sql).bind(after).bind(PAGE).fetch_all(pool).await.map_err(db)?;
    rows.iter()
        .map(|r| Ok((r.try_get::<Vec<u8>, _>("k").map_err(db)?, r.try_get::<Vec<u8>, _>("v").map_err(db)?)))
        .collect()
}

/// One page of the refresh schedule after (`at`, `name`), as index entries.
async fn due_page(pool: &PgPool, after: Option<(i64, String)>) -> Result<Vec<DueEntry>, StoreError> {
    let (at, name) = after.unwrap_or((0, String::new()));
    let rows = sqlx::query(
        "SELECT next_refresh_at_ms, name FROM connections WHERE next_refresh_at_ms > 0 \
         AND (next_refresh_at_ms, name) > ($1, $2) ORDER BY next_refresh_at_ms, name LIMIT $3",
    )
    .bind(at)
    .bind(name)
    .bind(PAGE)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter().map(|r| Ok(DueEntry { at_ms: r.try_get(0).map_err(db)?, name: r.try_get(1).map_err(db)? })).collect()
}

impl PgStore {
    fn with_pool<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(PgPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let pool = self.pool()?.clone();
        self.run(what, f(pool))
    }

    /// Visits the rows of one tree, a page at a time, until `visit` says stop; returns whether
    /// to go on.
    fn visit_tree(&self, tree: &'static str, visit: &mut EntryVisit<'_>) -> Result<bool, StoreError> {
        if tree == "refresh_index" {
            let mut after = None;
            loop {
                let rows =
                    self.with_pool("reading the refresh schedule", |pool| due_page_owned(pool, after.clone()))?;
                for entry in &rows {
                    if !visit(tree, &due_key(entry.at_ms, &entry.name), &[]) {
                        return Ok(false);
                    }
                }
                match rows.last() {
                    Some(last) if rows.len() as i64 == PAGE => after = Some((last.at_ms, last.name.clone())),
                    _ => return Ok(true),
                }
            }
        }
        let mut after: Option<Vec<u8>> = None;
        loop {
            let from = after.clone();
            let rows = self.with_pool("reading a table", move |pool| async move { page(&pool, tree, from).await })?;
            for (key, value) in &rows {
                if !visit(tree, key, value) {
                    return Ok(false);
                }
            }
            match rows.last() {
                Some((key, _)) if rows.len() as i64 == PAGE => after = Some(key.clone()),
                _ => return Ok(true),
            }
        }
    }
}

async fn due_page_owned(pool: PgPool, after: Option<(i64, String)>) -> Result<Vec<DueEntry>, StoreError> {
    due_page(&pool, after).await
}

/// The trees of a dump, in the order sled gives them.
const TREES: [&str; 5] = ["meta", "profiles", "connections", "refresh_index", "consents"];

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

    fn due(&self, up_to: UnixMillis, limit: usize) -> Result<Vec<DueEntry>, StoreError> {
        let limit = limit_of(limit);
        let rows: Vec<(i64, String)> = self.with_pool("reading the refresh schedule", |pool| async move {
            sqlx::query_as(
                "SELECT next_refresh_at_ms, name FROM connections WHERE next_refresh_at_ms > 0 \
                 AND next_refresh_at_ms <= $1 ORDER BY next_refresh_at_ms, name LIMIT $2",
            )
            .bind(up_to)
            .bind(limit)
            .fetch_all(&pool)
            .await
            .map_err(db)
        })?;
        Ok(rows.into_iter().map(|(at_ms, name)| DueEntry { at_ms, name }).collect())
    }

    fn earliest_due(&self) -> Result<Option<DueEntry>, StoreError> {
        let row: Option<(i64, String)> = self.with_pool("reading the refresh schedule", |pool| async move {
            sqlx::query_as(
                "SELECT next_refresh_at_ms, name FROM connections WHERE next_refresh_at_ms > 0 \
                 ORDER BY next_refresh_at_ms, name LIMIT 1",
            )
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
        if let Some((unknown, _, _)) = entries.iter().find(|(t, _, _)| !TREES.contains(&t.as_str())) {
            return Err(StoreError::Corrupt { tree: "backup", detail: format!("unknown tree {unknown:?}") });
        }
        let mut connections = Vec::new();
        for (tree, key, value) in entries.iter().filter(|(t, _, _)| t == "connections") {
            let record: ConnectionRecord = decode("connections", value)?;
            let name = String::from_utf8(key.clone())
                .map_err(|_| StoreError::Corrupt { tree: "connections", detail: format!("non-UTF-8 key in {tree}") })?;
            connections.push((name, version_of(record.version), record.next_refresh_at_ms.max(0), value.clone()));
        }
        let text = |tree: &'static str, key: &[u8]| {
            String::from_utf8(key.to_vec()).map_err(|_| StoreError::Corrupt { tree, detail: "non-UTF-8 key".into() })
        };
        let pick = |name: &'static str| entries.iter().filter(move |(t, _, _)| t == name);
        let meta =
            pick("meta").map(|(_, k, v)| Ok((text("meta", k)?, v.clone()))).collect::<Result<Vec<_>, StoreError>>()?;
        let profiles = pick("profiles")
            .map(|(_, k, v)| Ok((text("profiles", k)?, v.clone())))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let consents: Vec<(Vec<u8>, Vec<u8>)> = pick("consents").map(|(_, k, v)| (k.clone(), v.clone())).collect();
        let channel = (self.channel.clone(), self.holder.clone());
        self.with_pool("restoring a backup", |pool| async move {
            let mut tx = pool.begin().await.map_err(db)?;
            let held: i64 =
                sqlx::query_scalar("SELECT count(*) FROM profiles").fetch_one(&mut *tx).await.map_err(db)?;
            if held > 0 {
                return Err(StoreError::Engine(
                    "the store already holds profiles; restore into an empty database schema".into(),
                ));
            }
            // Profiles go first: connections reference them.
            for (key, value) in meta {
                sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
                    .bind(key)
                    .bind(value)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
            for (name, record) in profiles {
                sqlx::query("INSERT INTO profiles (name, record) VALUES ($1, $2)")
                    .bind(name)
                    .bind(record)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
            }
            for (name, version, next, record) in connections {
                sqlx::query(
                    "INSERT INTO connections (name, version, next_refresh_at_ms, record) VALUES ($1, $2, $3, $4)",
                )
                .bind(name)
                .bind(version)
                .bind(next)
                .bind(record)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            for (key, record) in consents {
                sqlx::query(
                    "INSERT INTO consents (key, record) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = $2",
                )
                .bind(key)
                .bind(record)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&channel.0)
                .bind(super::notify::RESYNC_PAYLOAD)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)
        })?;
        self.check_record_schema()
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
        let mut after = String::new();
        loop {
            let from = after.clone();
            let names: Vec<String> = self.with_pool("listing connections", |pool| async move {
                sqlx::query_scalar("SELECT name FROM connections WHERE name > $1 ORDER BY name LIMIT $2")
                    .bind(from)
                    .bind(PAGE)
                    .fetch_all(&pool)
                    .await
                    .map_err(db)
            })?;
            for name in &names {
                if !visit(name) {
                    return Ok(());
                }
            }
            match names.last() {
                Some(last) if names.len() as i64 == PAGE => after = last.clone(),
                _ => return Ok(()),
            }
        }
    }

    fn rewrite_records(&self, tree: SealedTree, rewrite: &mut RecordRewrite<'_>) -> Result<Rewritten, StoreError> {
        let (name, update) = match tree {
            SealedTree::Profiles => {
                ("profiles", "UPDATE profiles SET record = $3 WHERE convert_to(name, 'UTF8') = $1 AND record = $2")
            }
            SealedTree::Connections => (
                "connections",
                "UPDATE connections SET record = $3 WHERE convert_to(name, 'UTF8') = $1 AND record = $2",
            ),
            SealedTree::Consents => ("consents", "UPDATE consents SET record = $3 WHERE key = $1 AND record = $2"),
        };
        let mut done = Rewritten::default();
        let mut failure = None;
        let mut offers = Vec::new();
        self.visit_tree(name, &mut |_, key, value| {
            offers.push((key.to_vec(), value.to_vec()));
            true
        })?;
        for (key, old) in offers {
            let new = match rewrite(&key, &old) {
                Ok(Some(new)) => new,
                Ok(None) => continue,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let replaced = self.with_pool("re-sealing a record", move |pool| async move {
                sqlx::query(update)
                    .bind(key)
                    .bind(old)
                    .bind(new)
                    .execute(&pool)
                    .await
                    .map_err(db)
                    .map(|r| r.rows_affected())
            })?;
            if replaced == 1 {
                done.replaced += 1;
            } else {
                done.raced += 1;
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    fn changes(&self) -> Option<ChangeFeed> {
        self.take_feed()
    }

    fn take_lease(&self, name: &str, version: u64, lease: std::time::Duration) -> Result<LeaseOutcome, StoreError> {
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

    fn release_lease(&self, name: &str) -> Result<(), StoreError> {
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

    fn healthy(&self) -> bool {
        let reachable = self
            .with_pool("checking the database", |pool| async move {
                sqlx::query("SELECT 1").execute(&pool).await.map_err(db).map(|_| ())
            })
            .is_ok();
        reachable && self.feed_connected()
    }
}
