//! Per-user (category, channel) switches, read through the common cache.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tenx_common::cache::Cache;
use tenx_common::db::{Db, DbError, Prepared, WalPosition};
use tenx_proto::notification::v1::Channel;
use uuid::Uuid;

use crate::batch::Batcher;

/// A channel as preferences (and metrics) name it.
pub fn channel_label(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "email",
        Channel::InApp => "in_app",
        Channel::Unspecified => "unspecified",
    }
}

/// The switches a user turned off (everything else is on).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Preferences {
    /// (category, channel label, enabled)
    pub rows: Vec<(String, String, bool)>,
}

impl Preferences {
    pub fn enabled(&self, category: &str, channel: Channel) -> bool {
        let label = channel_label(channel);
        self.rows.iter().find(|(c, ch, _)| c == category && ch == label).is_none_or(|(_, _, on)| *on)
    }
}

/// Most users one preferences query reads.
const MAX_BATCH: usize = 256;

/// Reads preferences from the database, one query for every user whose
/// read is wanted at the same moment (see [`crate::batch`]): at a burst of
/// notifications to different users, one query each was most of what the
/// replica did.
#[derive(Debug, Clone)]
pub struct Reader {
    batcher: Batcher<(Uuid, Option<WalPosition>), Result<Preferences, String>>,
}

impl Reader {
    /// Starts the task that reads from `db` (needs a Tokio runtime).
    pub fn spawn(db: Arc<Db>) -> Self {
        let batcher = Batcher::spawn("preferences.read", MAX_BATCH, move |wanted| {
            let db = db.clone();
            async move { read_batch(&db, &wanted).await }
        });
        Self { batcher }
    }

    /// `user`'s preferences as of `after` at least.
    async fn read(&self, user: Uuid, after: Option<WalPosition>) -> Result<Preferences, String> {
        self.batcher
            .call((user, after))
            .await
            .unwrap_or_else(|| Err("the preferences read did not finish".into()))
    }
}

/// One query for all of `wanted`, on a server that has replayed the
/// latest position any of them must see (later is fresher, never wrong).
async fn read_batch(db: &Db, wanted: &[(Uuid, Option<WalPosition>)]) -> Vec<Result<Preferences, String>> {
    let after = wanted.iter().filter_map(|(_, after)| *after).max();
    let users: Vec<Uuid> = wanted.iter().map(|(user, _)| *user).collect();
    let rows = async {
        let conn = db.read(after).await?;
        conn.query_cached(
            "SELECT user_id, category, channel, enabled FROM preferences WHERE user_id = ANY($1)",
            &[&users],
        )
        .await
        .map_err(DbError::from)
    }
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return wanted.iter().map(|_| Err(e.to_string())).collect(),
    };
    let mut by_user: HashMap<Uuid, Preferences> = HashMap::with_capacity(users.len());
    for row in &rows {
        by_user.entry(row.get(0)).or_default().rows.push((row.get(1), row.get(2), row.get(3)));
    }
    users.iter().map(|user| Ok(by_user.get(user).cloned().unwrap_or_default())).collect()
}

pub async fn load(cache: &Cache<Preferences>, reader: &Reader, user: Uuid) -> Result<Preferences, String> {
    cache
        .get_or_load_fresh(&user.to_string(), None, |after| reader.read(user, after))
        .await
        .map_err(|e| e.to_string())
}
