//! A service's own database for a test, migrated as the service's
//! `migrate` command does it.

use tenx_common::host::{self, Service};

use crate::TestDb;

impl TestDb {
    /// A database of service `S`'s own: its `schema` with `common`'s and
    /// `S`'s migrations, cloned from a template built once per migration
    /// set.
    pub async fn of_service<S: Service>(schema: &str) -> anyhow::Result<Self> {
        let in_schema = schema.to_owned();
        Self::from_template(schema, &host::migrations_fingerprint::<S>(), |url| async move {
            tenx_common::db::migrate(&url, &in_schema, S::migrations()).await?;
            Ok(())
        })
        .await
    }
}
