//! A personal account is an organization of one: every account has one,
//! with its own id, including the accounts that existed before
//! organizations did (a migration gives them theirs).

use tenx_auth::{App, AuthSettings};
use tenx_test_support::TestDb;
use uuid::Uuid;

/// The last migration before personal organizations.
const BEFORE: i32 = 7;

#[tokio::test]
async fn accounts_from_before_organizations_get_a_personal_one_when_migrated() -> anyhow::Result<()> {
    let db = TestDb::of_service_at::<App>("auth", BEFORE).await?;
    let (sql, conn) = tokio_postgres::connect(&db.primary_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    sql.batch_execute("SET search_path TO auth").await?;
    // Two accounts from before; one already founded an organization.
    let (ada, bob, acme) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for (id, email) in [(ada, "ada@example.com"), (bob, "bob@example.com")] {
        sql.execute("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')", &[&id, &email])
            .await?;
    }
    sql.execute("INSERT INTO organizations (id, name, created_by) VALUES ($1, 'Acme', $2)", &[&acme, &ada])
        .await?;
    sql.execute("INSERT INTO org_members (org_id, user_id, role) VALUES ($1, $2, 'owner')", &[&acme, &ada])
        .await?;

    let settings = AuthSettings::isolated(&db.primary_url(), &db.primary_url(), "t:", "t.")?;
    tenx_common::host::migrate::<App>(&settings).await?;
    // The migration itself only adds the column (short locks); each
    // instance's start gives accounts from before theirs, in batches.
    let none: i64 = sql.query_one("SELECT count(*) FROM organizations WHERE personal", &[]).await?.get(0);
    assert_eq!(none, 0);
    let pool =
        tenx_common::db::Db::connect(&settings.database, "test", &tenx_common::metrics::Metrics::default())?;
    assert_eq!(tenx_auth::personal::backfill(&pool).await?, 2);
    assert_eq!(tenx_auth::personal::backfill(&pool).await?, 0, "done once, then skipped");

    for user in [ada, bob] {
        let row = sql
            .query_one(
                "SELECT o.personal, o.name, m.role FROM organizations o JOIN org_members m ON m.org_id = o.id \
                 WHERE o.id = $1 AND m.user_id = $1",
                &[&user],
            )
            .await?;
        let (personal, name, role): (bool, String, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((personal, name.as_str(), role.as_str()), (true, "Personal", "owner"));
        let members: i64 =
            sql.query_one("SELECT count(*) FROM org_members WHERE org_id = $1", &[&user]).await?.get(0);
        assert_eq!(members, 1, "an organization of one");
    }
    let acme_row = sql.query_one("SELECT personal FROM organizations WHERE id = $1", &[&acme]).await?;
    assert!(!acme_row.get::<_, bool>(0), "an organization from before stays as it was");

    // Whatever writes to the database (the previous version during a
    // rollout knows nothing of personal organizations): one is never
    // deleted and never gets a second member.
    let deleted = sql.execute("DELETE FROM organizations WHERE id = $1", &[&ada]).await;
    assert!(deleted.is_err_and(|e| {
        e.as_db_error().is_some_and(|d| d.message().contains("lasts as long as its account"))
    }));
    let join = "INSERT INTO org_members (org_id, user_id, role) VALUES ($1, $2, 'member')";
    let joined = sql.execute(join, &[&ada, &bob]).await;
    assert!(joined.is_err_and(|e| e.as_db_error().is_some_and(|d| d.message().contains("one member"))));
    sql.execute("DELETE FROM organizations WHERE id = $1", &[&acme]).await?;
    Ok(())
}
