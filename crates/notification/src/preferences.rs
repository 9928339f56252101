//! Per-user (category, channel) switches, read through the common cache.

use serde::{Deserialize, Serialize};
use tenx_common::cache::Cache;
use tenx_common::db::{Db, Prepared};
use tenx_proto::notification::v1::Channel;
use uuid::Uuid;

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

pub async fn load(cache: &Cache<Preferences>, db: &Db, user: Uuid) -> Result<Preferences, String> {
    cache
        .get_or_load_fresh(&user.to_string(), None, |after| async move {
            let conn = db.read(after).await?;
            let rows = conn
                .query_cached(
                    "SELECT category, channel, enabled FROM preferences WHERE user_id = $1",
                    &[&user],
                )
                .await
                .map_err(tenx_common::db::DbError::from)?;
            Ok::<_, tenx_common::db::DbError>(Preferences {
                rows: rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect(),
            })
        })
        .await
        .map_err(|e| e.to_string())
}
