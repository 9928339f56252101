//! A transaction whose BEGIN and COMMIT ride with its first and last
//! statements: all of it or none of it is kept, whatever fails where.

use tenx_common::db::{Db, DbSettings, Pipelined, Prepared};
use tenx_common::metrics::Metrics;
use tokio_postgres::error::SqlState;

use tenx_test_support::TestDb;

use crate::support::{SCHEMA, test_db};

/// One connection, so a statement after a transaction runs on the very
/// connection the transaction used; and a table whose uniqueness is only
/// checked at COMMIT.
async fn one_connection(tdb: &TestDb) -> anyhow::Result<Db> {
    let mut settings = DbSettings::new(&tdb.primary_url(), None, SCHEMA);
    settings.max_connections = 1;
    let db = Db::connect(&settings, "tenx-common-tests", &Metrics::default())?;
    db.write()
        .await?
        .batch_execute(
            "CREATE TABLE pipelined (k int, CONSTRAINT pipelined_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)",
        )
        .await?;
    Ok(db)
}

/// The keys kept, read on a fresh connection of the server (so only
/// what was committed).
async fn kept(tdb: &TestDb) -> anyhow::Result<Vec<i32>> {
    let (client, connection) = tokio_postgres::connect(&tdb.primary_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = client.query(&format!("SELECT k FROM {SCHEMA}.pipelined ORDER BY k"), &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

const FIRST: &str = "INSERT INTO pipelined (k) VALUES ($1)";

#[tokio::test]
async fn the_first_and_last_statements_commit_together_whether_or_not_the_last_was_prepared_before()
-> anyhow::Result<()> {
    let tdb = test_db().await?;
    let db = one_connection(&tdb).await?;
    let conn = db.write().await?;
    // Each last statement's text is new to the connection the first time
    // (prepared just before it is sent), then known.
    for (round, last) in
        ["INSERT INTO pipelined VALUES ($1)", "INSERT INTO pipelined SELECT $1"].iter().enumerate()
    {
        for again in [0, 10] {
            let k = (round as i32) * 100 + again;
            let (tx, inserted) = Pipelined::begin_with(&conn, conn.execute_cached(FIRST, &[&k])).await?;
            assert_eq!(inserted, 1);
            assert_eq!(
                tx.client().execute_cached("UPDATE pipelined SET k = k WHERE k = $1", &[&k]).await?,
                1
            );
            assert_eq!(tx.commit_with(last, &[&(k + 1)]).await?, 1);
        }
    }
    assert_eq!(kept(&tdb).await?, [0, 1, 10, 11, 100, 101, 110, 111]);
    Ok(())
}

#[tokio::test]
async fn a_commit_that_fails_keeps_neither_statement() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    let db = one_connection(&tdb).await?;
    let conn = db.write().await?;
    // Both insert 7: only COMMIT checks the deferred uniqueness. Had the
    // COMMIT gone out ahead of the last statement, the first 7 would be
    // kept and the last refused alone.
    // The last statement is new to the connection the first time, then
    // prepared already.
    for _ in 0..2 {
        let (tx, _) = Pipelined::begin_with(&conn, conn.execute_cached(FIRST, &[&7i32])).await?;
        let refused = tx
            .commit_with("INSERT INTO pipelined VALUES ($1 + 0)", &[&7i32])
            .await
            .expect_err("a duplicate at commit");
        assert_eq!(refused.code(), Some(&SqlState::UNIQUE_VIOLATION), "{refused}");
    }
    assert!(kept(&tdb).await?.is_empty());
    // The connection is out of any transaction: this one commits alone.
    conn.execute_cached(FIRST, &[&8i32]).await?;
    assert_eq!(kept(&tdb).await?, [8]);
    Ok(())
}

#[tokio::test]
async fn a_last_statement_that_fails_or_cannot_be_sent_keeps_nothing() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    let db = one_connection(&tdb).await?;
    {
        let conn = db.write().await?;
        // Refused by the server: its COMMIT then rolls the transaction back.
        let (tx, _) = Pipelined::begin_with(&conn, conn.execute_cached(FIRST, &[&1i32])).await?;
        let refused =
            tx.commit_with("INSERT INTO pipelined VALUES ($1 / 0)", &[&1i32]).await.expect_err("/ 0");
        assert_eq!(refused.code(), Some(&SqlState::DIVISION_BY_ZERO), "{refused}");
        // A parameter that does not encode: nothing is sent, no COMMIT
        // either, and the dropped transaction rolls back.
        let (tx, _) = Pipelined::begin_with(&conn, conn.execute_cached(FIRST, &[&2i32])).await?;
        let unsent = tx.commit_with(FIRST, &[&"two"]).await.expect_err("text for an int");
        assert!(unsent.code().is_none(), "{unsent}");
    }
    assert!(kept(&tdb).await?.is_empty());
    // The pool's one connection came back out of any transaction.
    db.write().await?.execute_cached(FIRST, &[&3i32]).await?;
    assert_eq!(kept(&tdb).await?, [3]);
    Ok(())
}

#[tokio::test]
async fn a_transaction_dropped_before_its_commit_rolls_back() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    let db = one_connection(&tdb).await?;
    {
        let conn = db.write().await?;
        let (tx, _) = Pipelined::begin_with(&conn, conn.execute_cached(FIRST, &[&1i32])).await?;
        tx.client().execute_cached(FIRST, &[&2i32]).await?;
        drop(tx);
        // A first step that fails rolls back what it did before failing.
        let failed = Pipelined::begin_with(&conn, async {
            conn.execute_cached(FIRST, &[&3i32]).await?;
            conn.execute_cached("INSERT INTO pipelined VALUES ($1 / 0)", &[&3i32]).await
        })
        .await;
        assert_eq!(failed.expect_err("/ 0").code(), Some(&SqlState::DIVISION_BY_ZERO));
    }
    db.write().await?.execute_cached(FIRST, &[&4i32]).await?;
    assert_eq!(kept(&tdb).await?, [4]);
    Ok(())
}
