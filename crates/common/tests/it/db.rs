//! Read/write routing, replica fallback and read-your-writes.

use tenx_common::db::{Intent, Role};
use tenx_common::metrics::Metrics;
use tenx_test_support::{ChaosProxy, addr_of, pg_url};

use crate::support::{connect, metric, test_db};

async fn served_by_recovery(conn: &tenx_common::db::Conn) -> anyhow::Result<bool> {
    Ok(conn.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0))
}

#[tokio::test]
async fn read_intent_is_served_by_the_replica_and_write_by_the_primary() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    tdb.wait_for_replica().await?;
    let db = connect(&tdb, None, &Metrics::default())?;

    let read = db.get(Intent::READ).await?;
    assert_eq!(read.role(), Role::Replica);
    assert!(served_by_recovery(&read).await?, "read intent must run on a server in recovery");

    let write = db.get(Intent::Write).await?;
    assert_eq!(write.role(), Role::Primary);
    assert!(!served_by_recovery(&write).await?);
    Ok(())
}

#[tokio::test]
async fn reads_fall_back_to_the_primary_when_the_replica_is_down() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    tdb.wait_for_replica().await?;
    let proxy = ChaosProxy::start(addr_of(&pg_url(true, "postgres"))?).await?;
    let metrics = Metrics::default();
    let db = connect(&tdb, Some(&tdb.url_via(proxy.port())), &metrics)?;

    let before = db.get(Intent::READ).await?;
    assert!(served_by_recovery(&before).await?);
    drop(before);

    proxy.cut();
    // The pooled replica connection is dead too: recycling notices it.
    let during = db.get(Intent::READ).await?;
    assert_eq!(during.role(), Role::Primary);
    assert!(!served_by_recovery(&during).await?, "with the replica down the read runs on the primary");
    let row = during.query_one("SELECT count(*) FROM tenx_outbox", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 0);
    assert!(
        metric(
            &metrics,
            "tenx_db_replica_fallbacks_total{pool=\"tenx-common-tests\",reason=\"unavailable\"}"
        ) >= 1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_read_carrying_a_write_position_sees_the_write_while_replay_is_paused() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    tdb.wait_for_replica().await?;
    let metrics = Metrics::default();
    let db = connect(&tdb, None, &metrics)?;
    let setup = db.write().await?;
    setup.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)").await?;
    let created = setup.commit_position().await?;
    drop(setup);
    // Wait until the replica has the table, so only the row is missing later.
    let mut waited = 0;
    while db.read(Some(created)).await?.role() != Role::Replica {
        waited += 1;
        anyhow::ensure!(waited < 500, "replica never caught up with the table creation");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let _paused = PausedReplay::pause().await?;

    let mut writer = db.write().await?;
    let tx = writer.transaction().await?;
    tx.execute("INSERT INTO notes VALUES (1, 'hello')", &[]).await?;
    tx.commit().await?;
    let position = writer.commit_position().await?;
    drop(writer);

    let fresh = db.read(Some(position)).await?;
    assert_eq!(
        fresh.role(),
        Role::Primary,
        "the replica has not replayed the write, so the primary serves it"
    );
    let body: String = fresh.query_one("SELECT body FROM notes WHERE id = 1", &[]).await?.get(0);
    assert_eq!(body, "hello");
    assert!(
        metric(&metrics, "tenx_db_replica_fallbacks_total{pool=\"tenx-common-tests\",reason=\"lagging\"}")
            >= 1.0
    );

    let stale = db.read(None).await?;
    assert_eq!(stale.role(), Role::Replica);
    assert!(served_by_recovery(&stale).await?);
    let rows = stale.query("SELECT body FROM notes WHERE id = 1", &[]).await?;
    assert!(rows.is_empty(), "paused replica must not have the row yet");
    Ok(())
}

#[tokio::test]
async fn a_shared_commit_position_is_past_every_write_it_is_handed_to() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    tdb.wait_for_replica().await?;
    let db = std::sync::Arc::new(connect(&tdb, None, &Metrics::default())?);
    db.write().await?.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)").await?;

    // A position read before a write is never handed out for it: the WAL
    // written inside the transaction is below the position given after.
    let earlier = db.position_after_commit().await?;
    let mut writer = db.write().await?;
    let tx = writer.transaction().await?;
    tx.execute("INSERT INTO notes VALUES (0, 'first')", &[]).await?;
    let inside: String = tx.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
    let inside: tenx_common::db::WalPosition = inside.parse()?;
    tx.commit().await?;
    drop(writer);
    let after = db.position_after_commit().await?;
    assert!(inside > earlier, "the write moved the WAL on");
    assert!(after >= inside, "{after} is not past the write at {inside}");

    // Thirty-two writers at once share reads; each reads its row back
    // through the position it was given (the replica, once it has it).
    let writers = (1..=32).map(|i: i32| {
        let db = db.clone();
        tokio::spawn(async move {
            let mut writer = db.write().await?;
            let tx = writer.transaction().await?;
            tx.execute("INSERT INTO notes VALUES ($1, 'mine')", &[&i]).await?;
            tx.commit().await?;
            drop(writer);
            let position = db.position_after_commit().await?;
            let reader = db.read(Some(position)).await?;
            let found = reader.query_opt("SELECT 1 FROM notes WHERE id = $1", &[&i]).await?;
            anyhow::ensure!(found.is_some(), "writer {i}: not visible at {position} ({:?})", reader.role());
            anyhow::Ok(())
        })
    });
    for writer in futures_util::future::join_all(writers).await {
        writer??;
    }
    Ok(())
}

/// Pauses WAL replay on the shared replica; resumes it on drop, even when
/// the test fails, so other tests are not left with a frozen replica.
struct PausedReplay;

impl PausedReplay {
    async fn pause() -> anyhow::Result<Self> {
        let (client, conn) =
            tokio_postgres::connect(&pg_url(true, "postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.execute("SELECT pg_wal_replay_pause()", &[]).await?;
        Ok(Self)
    }
}

impl Drop for PausedReplay {
    fn drop(&mut self) {
        let resumed = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let (client, conn) =
                    tokio_postgres::connect(&pg_url(true, "postgres"), tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.execute("SELECT pg_wal_replay_resume()", &[]).await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(resumed, Ok(Ok(()))) {
            eprintln!("could not resume WAL replay on the replica; run `make deps`");
        }
    }
}

#[tokio::test]
async fn a_connection_lost_under_a_call_is_unavailable_and_a_bad_statement_internal() -> anyhow::Result<()> {
    use tenx_common::db::{DbError, Prepared};
    use tenx_common::grpc::ApiError;
    let tdb = test_db().await?;
    let proxy = ChaosProxy::start(addr_of(&pg_url(false, "postgres"))?).await?;
    let metrics = Metrics::default();
    let mut settings =
        tenx_common::db::DbSettings::new(&tdb.url_via(proxy.port()), None, crate::support::SCHEMA);
    settings.max_connections = 1;
    let db = tenx_common::db::Db::connect(&settings, "tenx-common-tests", &metrics)?;
    let conn = db.write().await?;
    // The connection dies under a call (a pooler or the server went away):
    // the caller may try again.
    let call = conn.query_one_cached("SELECT pg_sleep(5)::text", &[]);
    let cut = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        proxy.kill_connections();
    };
    let (lost, ()) = tokio::join!(call, cut);
    let lost = ApiError::from(DbError::Postgres(lost.expect_err("the connection was cut")));
    assert!(matches!(lost, ApiError::Unavailable(_)), "{lost:?}");
    // A statement that is wrong is our bug, not an outage.
    drop(conn);
    let conn = db.write().await?;
    let wrong =
        conn.query_one_cached("SELECT no_such_column FROM tenx_outbox", &[]).await.expect_err("no column");
    let wrong = ApiError::from(DbError::Postgres(wrong));
    assert!(!matches!(wrong, ApiError::Unavailable(_)), "{wrong:?}");
    Ok(())
}

#[tokio::test]
async fn a_statement_stuck_behind_a_lock_is_cancelled_as_unavailable_and_changes_nothing()
-> anyhow::Result<()> {
    use tenx_common::db::DbError;
    use tenx_common::grpc::ApiError;
    let tdb = test_db().await?;
    let (holder, connection) = tokio_postgres::connect(&tdb.primary_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    holder
        .batch_execute(
            "CREATE TABLE svc.held (id int PRIMARY KEY, v int NOT NULL); INSERT INTO svc.held VALUES (1, 0); \
             CREATE TABLE svc.written (id int PRIMARY KEY)",
        )
        .await?;
    let mut settings = tenx_common::db::DbSettings::new(&tdb.primary_url(), None, crate::support::SCHEMA);
    settings.statement_timeout_ms = 1_000;
    let db = tenx_common::db::Db::connect(&settings, "tenx-common-tests", &Metrics::default())?;

    // Another session holds the row (a long transaction, a stuck worker).
    holder.batch_execute("BEGIN; SELECT * FROM svc.held WHERE id = 1 FOR UPDATE").await?;
    let mut conn = db.write().await?;
    let tx = conn.transaction().await?;
    tx.execute("INSERT INTO written VALUES (1)", &[]).await?;
    let update = tx.execute("UPDATE held SET v = 1 WHERE id = 1", &[]);
    let stuck = tokio::time::timeout(std::time::Duration::from_secs(10), update)
        .await
        .expect("given up at the statement timeout, not left waiting for the lock")
        .expect_err("cancelled");
    drop(tx);
    let error = ApiError::from(DbError::Postgres(stuck));
    assert!(
        matches!(&error, ApiError::Unavailable(m) if m.contains("did not answer in time")),
        "a retryable answer: {error:?}"
    );
    // Its transaction rolled back, and the connection serves the next call.
    let written: i64 = conn.query_one("SELECT count(*) FROM written", &[]).await?.get(0);
    assert_eq!(written, 0, "the cancelled transaction's insert is gone");
    holder.batch_execute("COMMIT").await?;
    let v: i32 = conn.query_one("SELECT v FROM held WHERE id = 1", &[]).await?.get(0);
    assert_eq!(v, 0, "nothing changed the row");

    // The setting as the server holds it; 0: no timeout at all.
    let shown: String = conn.query_one("SHOW statement_timeout", &[]).await?.get(0);
    assert_eq!(shown, "1s");
    let mut unbounded = settings.clone();
    unbounded.statement_timeout_ms = 0;
    let db = tenx_common::db::Db::connect(&unbounded, "tenx-common-tests", &Metrics::default())?;
    let shown: String = db.write().await?.query_one("SHOW statement_timeout", &[]).await?.get(0);
    assert_eq!(shown, "0");
    Ok(())
}
