//! Whole-store work of the PostgreSQL backend: visiting every entry a page at a time (backups,
//! the cache warm-up's names, re-sealing), restoring a backup, and re-sealing records with a
//! compare-and-swap on their bytes.

use sqlx::{PgPool, Row as _};

use super::PgStore;
use super::ops::{decode, version_of};
use super::pool::db;
use crate::store::{
    ConnectionRecord, DueEntry, DumpEntry, EntryVisit, RecordRewrite, Rewritten, SealedTree, StoreError, due_key,
};

/// Rows read per page when visiting a whole table.
const PAGE: i64 = 500;

/// The trees of a dump, in the order sled gives them.
pub(super) const TREES: [&str; 5] = ["meta", "profiles", "connections", "refresh_index", "consents"];

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

async fn due_page_owned(pool: PgPool, after: Option<(i64, String)>) -> Result<Vec<DueEntry>, StoreError> {
    due_page(&pool, after).await
}

impl PgStore {
    /// Visits the rows of one tree, a page at a time, until `visit` says stop; returns whether
    /// to go on.
    pub(super) fn visit_tree(&self, tree: &'static str, visit: &mut EntryVisit<'_>) -> Result<bool, StoreError> {
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

    /// [`crate::store::Store::restore`].
    pub(super) fn restore_entries(&self, entries: &[DumpEntry]) -> Result<(), StoreError> {
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

    /// [`crate::store::Store::for_each_connection_name`].
    pub(super) fn visit_connection_names(&self, visit: &mut dyn FnMut(&str) -> bool) -> Result<(), StoreError> {
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

    /// [`crate::store::Store::rewrite_records`].
    pub(super) fn rewrite_tree(
        &self,
        tree: SealedTree,
        rewrite: &mut RecordRewrite<'_>,
    ) -> Result<Rewritten, StoreError> {
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
}
