//! A transaction whose BEGIN and COMMIT ride with its first and last
//! statements: all of it or none of it is kept, whatever fails where.

use deadpool_postgres::Client;
use tenx_common::db::{Db, DbSettings, Pipelined, Pooling, Prepared};
use tenx_common::metrics::Metrics;
use tokio_postgres::error::SqlState;

use tenx_test_support::TestDb;

use crate::support::{SCHEMA, test_db};

/// One connection, so a statement after a transaction runs on the very
/// connection the transaction used; and a table whose uniqueness is only
/// checked at COMMIT, each row marked with the transaction that wrote it.
async fn one_connection(tdb: &TestDb) -> anyhow::Result<Db> {
    let mut settings = DbSettings::new(&tdb.primary_url(), None, SCHEMA);
    settings.max_connections = 1;
    connect_with(settings).await
}

async fn connect_with(settings: DbSettings) -> anyhow::Result<Db> {
    let db = Db::connect(&settings, "tenx-common-tests", &Metrics::default())?;
    db.write()
        .await?
        .batch_execute(
            "CREATE TABLE pipelined (k int, xact bigint NOT NULL DEFAULT pg_current_xact_id()::text::bigint, \
               CONSTRAINT pipelined_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)",
        )
        .await?;
    Ok(db)
}

/// The rows kept, read on a fresh connection of the server (so only what
/// was committed): each key with the transaction that wrote it.
async fn written(tdb: &TestDb) -> anyhow::Result<Vec<(i32, i64)>> {
    let (client, connection) = tokio_postgres::connect(&tdb.primary_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = client.query(&format!("SELECT k, xact FROM {SCHEMA}.pipelined ORDER BY k"), &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The keys kept.
async fn kept(tdb: &TestDb) -> anyhow::Result<Vec<i32>> {
    Ok(written(tdb).await?.into_iter().map(|(k, _)| k).collect())
}

/// Keys kept in pairs (`k`, `k + 1`), each pair by one transaction of its
/// own.
fn in_pairs_of_one_transaction(rows: &[(i32, i64)]) {
    for pair in rows.chunks(2) {
        let [(first, one), (last, other)] = pair else { panic!("{rows:?}: not in pairs") };
        assert_eq!((*last, other), (first + 1, one), "{rows:?}: a pair is one transaction");
    }
    let mut transactions: Vec<i64> = rows.iter().map(|(_, xact)| *xact).collect();
    transactions.dedup();
    assert_eq!(transactions.len(), rows.len() / 2, "{rows:?}: one transaction per pair");
}

const FIRST: &str = "INSERT INTO pipelined (k) VALUES ($1)";

/// Twice, the last statement new to the connection and then prepared: a
/// first and a last statement that both insert 7, which only COMMIT
/// refuses (the uniqueness is deferred). Had the COMMIT gone out ahead of
/// the last statement, the first 7 would be kept and the last refused
/// alone.
async fn duplicates_refused_at_commit(conn: &Client) -> anyhow::Result<()> {
    for _ in 0..2 {
        let (tx, _) = Pipelined::begin_with(conn, |c| c.execute_cached(FIRST, &[&7i32])).await?;
        let refused = tx
            .commit_with("INSERT INTO pipelined VALUES ($1 + 0)", &[&7i32])
            .await
            .expect_err("a duplicate at commit");
        assert_eq!(refused.code(), Some(&SqlState::UNIQUE_VIOLATION), "{refused}");
    }
    Ok(())
}

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
            let (tx, inserted) =
                Pipelined::begin_with(&conn, |c| async move { c.execute_cached(FIRST, &[&k]).await }).await?;
            assert_eq!(inserted, 1);
            assert_eq!(
                tx.client().execute_cached("UPDATE pipelined SET k = k WHERE k = $1", &[&k]).await?,
                1
            );
            assert_eq!(tx.commit_with(last, &[&(k + 1)]).await?, 1);
        }
    }
    let rows = written(&tdb).await?;
    assert_eq!(rows.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [0, 1, 10, 11, 100, 101, 110, 111]);
    in_pairs_of_one_transaction(&rows);
    // Committed with nothing more to run: the same.
    let (tx, _) = Pipelined::begin_with(&conn, |c| c.execute_cached(FIRST, &[&200i32])).await?;
    tx.client().execute_cached(FIRST, &[&201i32]).await?;
    tx.commit().await?;
    in_pairs_of_one_transaction(&written(&tdb).await?);
    Ok(())
}

/// Behind a transaction pooler every statement is sent unnamed, its
/// parameter types learned by a query of its own first: that query, too,
/// runs inside the transaction, ahead of the last statement and its
/// COMMIT. (Straight to Postgres here, its connections put in the schema
/// as a pooler would put them.)
#[tokio::test]
async fn unnamed_statements_keep_the_same_order() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    let url = format!("{}?options=-c%20search_path%3D{SCHEMA}", tdb.primary_url());
    let mut settings = DbSettings::new(&url, None, SCHEMA);
    settings.max_connections = 1;
    settings.pooling = Pooling::Transaction;
    let db = connect_with(settings).await?;
    assert!(tenx_common::db::sends_unnamed());
    let conn = db.write().await?;
    for k in [0, 10] {
        let (tx, _) =
            Pipelined::begin_with(&conn, |c| async move { c.execute_cached(FIRST, &[&k]).await }).await?;
        tx.commit_with("INSERT INTO pipelined VALUES ($1)", &[&(k + 1)]).await?;
    }
    in_pairs_of_one_transaction(&written(&tdb).await?);
    duplicates_refused_at_commit(&conn).await?;
    assert_eq!(kept(&tdb).await?, [0, 1, 10, 11]);
    Ok(())
}

#[tokio::test]
async fn a_commit_that_fails_keeps_neither_statement() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    let db = one_connection(&tdb).await?;
    let conn = db.write().await?;
    duplicates_refused_at_commit(&conn).await?;
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
        let (tx, _) = Pipelined::begin_with(&conn, |c| c.execute_cached(FIRST, &[&1i32])).await?;
        let refused =
            tx.commit_with("INSERT INTO pipelined VALUES ($1 / 0)", &[&1i32]).await.expect_err("/ 0");
        assert_eq!(refused.code(), Some(&SqlState::DIVISION_BY_ZERO), "{refused}");
        // A parameter that does not encode: nothing is sent, no COMMIT
        // either, and the dropped transaction rolls back.
        let (tx, _) = Pipelined::begin_with(&conn, |c| c.execute_cached(FIRST, &[&2i32])).await?;
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
        let (tx, _) = Pipelined::begin_with(&conn, |c| c.execute_cached(FIRST, &[&1i32])).await?;
        tx.client().execute_cached(FIRST, &[&2i32]).await?;
        drop(tx);
        // A first step that fails rolls back what it did before failing.
        let failed = Pipelined::begin_with(&conn, |c| async move {
            c.execute_cached(FIRST, &[&3i32]).await?;
            c.execute_cached("INSERT INTO pipelined VALUES ($1 / 0)", &[&3i32]).await
        })
        .await;
        assert_eq!(failed.expect_err("/ 0").code(), Some(&SqlState::DIVISION_BY_ZERO));
    }
    db.write().await?.execute_cached(FIRST, &[&4i32]).await?;
    assert_eq!(kept(&tdb).await?, [4]);
    Ok(())
}
