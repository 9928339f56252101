//! Writing in-app items in groups (see [`crate::batch`]): every delivery
//! that reaches the write at the same moment shares one INSERT and one
//! commit, since at a burst each item's own synchronous commit (a WAL
//! flush), not its row, is what limits the inbox.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tenx_common::db::{Db, Prepared};
use uuid::Uuid;

use crate::batch::Batcher;

/// Most items one INSERT carries; more wait for the next one.
pub const MAX_BATCH: usize = 256;

/// One in-app item to write, keyed by its job's dedupe key.
#[derive(Debug, Clone)]
pub struct Item {
    pub user_id: Uuid,
    pub category: String,
    pub title: String,
    pub body: String,
    /// The same key is written once, however often it is asked for.
    pub dedupe_key: String,
}

/// Writes in-app items; cheap to clone.
#[derive(Debug, Clone)]
pub struct InAppWriter {
    batcher: Batcher<Item, Result<bool, Failed>>,
}

impl InAppWriter {
    /// Starts the task that writes to `db` (needs a Tokio runtime).
    pub fn spawn(db: Arc<Db>) -> Self {
        let batcher = Batcher::spawn("in_app.write", MAX_BATCH, move |items| {
            let db = db.clone();
            async move { write_batch(&db, &items).await }
        });
        Self { batcher }
    }

    /// Writes `item` unless its key is already there; `true` when this call
    /// wrote it. Returns once the row is committed (or known to exist), so
    /// the caller may acknowledge its message.
    pub async fn write(&self, item: Item) -> Result<bool, WriteError> {
        match self.batcher.call(item).await {
            Some(Ok(written)) => Ok(written),
            Some(Err(Failed { reason, row_at_fault: true })) => Err(WriteError::Refused(reason)),
            Some(Err(Failed { reason, row_at_fault: false })) => Err(WriteError::Unavailable(reason)),
            None => Err(WriteError::Unavailable("the in-app write did not finish".into())),
        }
    }
}

/// Why an item was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database refused the item itself (e.g. a NUL character): it
    /// never will be written.
    #[error("{0}")]
    Refused(String),
    /// The database could not be reached or failed: may work later.
    #[error("{0}")]
    Unavailable(String),
}

/// One INSERT for the whole batch, then each caller told whether its own
/// item was the one written. A key asked for twice in one batch is written
/// (and reported written) once; every asker of a key that failed is told.
async fn write_batch(db: &Db, batch: &[Item]) -> Vec<Result<bool, Failed>> {
    let mut seen = HashSet::with_capacity(batch.len());
    let unique: Vec<&Item> = batch.iter().filter(|item| seen.insert(item.dedupe_key.as_str())).collect();
    let keys = unique.iter().map(|item| item.dedupe_key.as_str());
    let outcomes: HashMap<&str, Result<bool, Failed>> = keys.zip(write(db, &unique).await).collect();
    // Only the first asker of a key written now is told it wrote it.
    let mut told = HashSet::with_capacity(unique.len());
    batch
        .iter()
        .map(|item| {
            let key = item.dedupe_key.as_str();
            outcomes[key].clone().map(|written| written && told.insert(key))
        })
        .collect()
}

/// Writes `items` (distinct keys); for each, whether it was written now.
async fn write(db: &Db, items: &[&Item]) -> Vec<Result<bool, Failed>> {
    match insert(db, items).await {
        Ok(written) => {
            let written: HashSet<String> = written.into_iter().collect();
            items.iter().map(|item| Ok(written.contains(&item.dedupe_key))).collect()
        }
        // One bad row (a NUL in a title) fails the whole statement: write
        // each alone, so only its own delivery fails (and is dead-lettered).
        Err(Failed { row_at_fault: true, .. }) if items.len() > 1 => {
            let mut outcomes = Vec::with_capacity(items.len());
            for item in items {
                let alone = insert(db, std::slice::from_ref(item)).await;
                outcomes.push(alone.map(|written| !written.is_empty()));
            }
            outcomes
        }
        Err(failed) => items.iter().map(|_| Err(failed.clone())).collect(),
    }
}

/// Why an INSERT failed, and whether a row's content (not the database)
/// is to blame (then it never will be written).
#[derive(Debug, Clone)]
struct Failed {
    reason: String,
    row_at_fault: bool,
}

async fn insert(db: &Db, items: &[&Item]) -> Result<Vec<String>, Failed> {
    let ids: Vec<Uuid> = items.iter().map(|_| Uuid::now_v7()).collect();
    let users: Vec<Uuid> = items.iter().map(|i| i.user_id).collect();
    let categories: Vec<&str> = items.iter().map(|i| i.category.as_str()).collect();
    let titles: Vec<&str> = items.iter().map(|i| i.title.as_str()).collect();
    let bodies: Vec<&str> = items.iter().map(|i| i.body.as_str()).collect();
    let keys: Vec<&str> = items.iter().map(|i| i.dedupe_key.as_str()).collect();
    let conn = db.write().await.map_err(|e| Failed { reason: e.to_string(), row_at_fault: false })?;
    let rows = conn
        .query_cached(
            "INSERT INTO notifications (id, user_id, category, title, body, dedupe_key) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[]) \
             ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key",
            &[&ids, &users, &categories, &titles, &bodies, &keys],
        )
        .await
        .map_err(|e| Failed {
            // Class 22 (data exception) and 23 (integrity): the rows, not
            // the database, are what failed.
            row_at_fault: e.code().is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
            reason: e.to_string(),
        })?;
    Ok(rows.into_iter().map(|row| row.get(0)).collect())
}
