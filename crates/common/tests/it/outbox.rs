//! The outbox relay: exactly once with two relays, in per-aggregate
//! order; nothing lost when the broker connection dies mid-relay.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tenx_common::db::Db;
use tenx_common::metrics::Metrics;
use tenx_common::outbox::{self, NewEvent, Relay, RelaySettings};
use tenx_common::queue::{Amqp, AmqpSettings, Topology};
use tenx_common::shutdown::Shutdown;
use tenx_proto::events::v1::Envelope;
use tenx_test_support::{ChaosProxy, TestAmqp, TestDb, addr_of};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::support::{amqp_settings, connect, declare, observe, test_db};

const AGGREGATES: usize = 100;

/// Writes `transactions` transactions of `per_tx` events from `writers`
/// concurrent tasks (half by [`outbox::enqueue`], half by
/// [`outbox::enqueue_all`]). Each aggregate has one writer, so its events are
/// written in order; payload = `"<aggregate>:<n>"` with n counting up.
async fn write_events(
    db: &Arc<Db>,
    writers: usize,
    transactions: usize,
    per_tx: usize,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mine: Vec<usize> = (0..AGGREGATES).filter(|a| a % writers == writer).collect();
            let mut next = vec![0usize; AGGREGATES];
            let mut conn = db.write().await?;
            for t in 0..transactions / writers {
                let tx = conn.transaction().await?;
                let events: Vec<_> = (0..per_tx)
                    .map(|e| {
                        let aggregate = mine[(t * per_tx + e) % mine.len()];
                        let n = next[aggregate];
                        next[aggregate] += 1;
                        event(&format!("agg-{aggregate}"), &format!("agg-{aggregate}:{n}"))
                    })
                    .collect();
                // Half the transactions one statement per event, half one
                // statement for all: both keep the order they were given.
                if t % 2 == 0 {
                    for event in &events {
                        outbox::enqueue(&tx, event).await?;
                    }
                } else {
                    assert_eq!(outbox::enqueue_all(&tx, &events).await?.len(), events.len());
                }
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn start_relay(db: &Db, amqp: Amqp, shutdown: &Shutdown) -> tokio::task::JoinHandle<()> {
    let settings = RelaySettings { batch_size: 200, partitions_per_batch: 4, ..RelaySettings::default() };
    tokio::spawn(Relay::new(db, amqp, settings, &Metrics::default()).run(shutdown.child()))
}

/// Receives until `expected` distinct ids arrived, then a little longer
/// to catch duplicates. Returns everything received, in order.
async fn collect(
    rx: &mut UnboundedReceiver<Envelope>,
    expected: usize,
    within: Duration,
) -> anyhow::Result<Vec<Envelope>> {
    let mut received = Vec::new();
    let mut ids = HashSet::new();
    let deadline = tokio::time::Instant::now() + within;
    while ids.len() < expected {
        let envelope = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of {expected} events arrived", ids.len()))?
            .ok_or_else(|| anyhow::anyhow!("observer stopped"))?;
        ids.insert(envelope.id.clone());
        received.push(envelope);
    }
    while let Ok(Some(envelope)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        received.push(envelope);
    }
    Ok(received)
}

/// An outbox database, a broker namespace, and an observer receiving
/// every `test.#` event. A test binds every field (the database and the
/// broker's names are removed when theirs drop), the receiver last.
struct Outbox {
    test_amqp: TestAmqp,
    _tdb: TestDb,
    db: Arc<Db>,
    settings: AmqpSettings,
    _observer: Amqp,
    rx: UnboundedReceiver<Envelope>,
}

impl Outbox {
    async fn start() -> anyhow::Result<Self> {
        let test_amqp = TestAmqp::new();
        let tdb = test_db().await?;
        let db = Arc::new(connect(&tdb, None, &Metrics::default())?);
        let settings = amqp_settings(&test_amqp);
        let observer = Amqp::new(&settings, "observer");
        let topology = Topology::for_group(&settings, "observer", &["test.#"]);
        declare(&test_amqp, &observer, &topology).await?;
        let rx = observe(&observer, &topology.queue).await?;
        Ok(Self { test_amqp, _tdb: tdb, db, settings, _observer: observer, rx })
    }
}

async fn pending(db: &Db) -> anyhow::Result<i64> {
    Ok(db.write().await?.query_one("SELECT count(*) FROM tenx_outbox_pending", &[]).await?.get(0))
}

#[tokio::test]
async fn two_relays_publish_ten_thousand_events_exactly_once_in_per_aggregate_order() -> anyhow::Result<()> {
    let Outbox { test_amqp: _amqp, _tdb, db, settings, _observer, mut rx } = Outbox::start().await?;

    let shutdown = Shutdown::new();
    let relays = [
        start_relay(&db, Amqp::new(&settings, "relay-a"), &shutdown),
        start_relay(&db, Amqp::new(&settings, "relay-b"), &shutdown),
    ];
    write_events(&db, 4, 1_000, 10).await?;

    let received = collect(&mut rx, 10_000, Duration::from_secs(120)).await?;
    shutdown.trigger();
    for relay in relays {
        relay.await?;
    }

    assert_eq!(received.len(), 10_000, "each event published exactly once");
    let mut last: HashMap<String, i64> = HashMap::new();
    for envelope in &received {
        let text = String::from_utf8(envelope.payload.clone())?;
        let (aggregate, n) = text.split_once(':').ok_or_else(|| anyhow::anyhow!("bad payload {text}"))?;
        let n: i64 = n.parse()?;
        let previous = last.insert(aggregate.to_owned(), n).unwrap_or(-1);
        assert_eq!(n, previous + 1, "{aggregate}: event {n} arrived after {previous}");
        assert_eq!(envelope.aggregate_id, aggregate);
    }
    assert_eq!(last.len(), AGGREGATES);
    assert_eq!(pending(&db).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_broker_connection_killed_mid_relay_still_delivers_every_event() -> anyhow::Result<()> {
    let Outbox { test_amqp, _tdb, db, settings, _observer, mut rx } = Outbox::start().await?;

    let proxy = ChaosProxy::start(addr_of(test_amqp.url())?).await?;
    let mut proxied = settings.clone();
    proxied.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port()).into();
    write_events(&db, 2, 400, 10).await?;

    let shutdown = Shutdown::new();
    let relay = start_relay(&db, Amqp::new(&proxied, "relay"), &shutdown);

    let mut ids = HashSet::new();
    while ids.len() < 500 {
        let envelope = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("observer stopped"))?;
        ids.insert(envelope.id);
    }
    proxy.kill_connections();
    // Then a short outage: the relay must wait it out, not drop anything.
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pending(&db).await? > 0, "the outage hit mid-relay");
    proxy.restore();

    let rest = collect(&mut rx, 4_000 - ids.len(), Duration::from_secs(60)).await;
    shutdown.trigger();
    relay.await?;
    ids.extend(rest?.into_iter().map(|e| e.id));
    assert_eq!(ids.len(), 4_000, "every event delivered at least once");
    assert_eq!(pending(&db).await?, 0);
    Ok(())
}

/// One event of `aggregate`, its payload `text`.
fn event(aggregate: &str, text: &str) -> NewEvent {
    NewEvent {
        event_type: "test.counted".into(),
        aggregate_id: aggregate.into(),
        payload: text.as_bytes().to_vec(),
        payload_type: "test".into(),
    }
}

/// The relay reads each partition above a floor of published rows; a
/// transaction that took a lower seq and commits after later events of its
/// partition went out must still see its event published, not skipped.
#[tokio::test]
async fn an_event_committed_after_later_ones_were_published_is_still_published() -> anyhow::Result<()> {
    let Outbox { test_amqp: _amqp, _tdb, db, settings, _observer, mut rx } = Outbox::start().await?;
    let shutdown = Shutdown::new();
    let relay = start_relay(&db, Amqp::new(&settings, "relay"), &shutdown);

    // The slow transaction takes its seq first and stays open.
    let mut slow_conn = db.write().await?;
    let slow = slow_conn.transaction().await?;
    outbox::enqueue(&slow, &event("agg-late", "late")).await?;

    // Later events of the same partition (same aggregate), in batches that
    // the relay publishes while the slow one is open.
    let conn = db.write().await?;
    for round in 0..5 {
        for n in 0..20 {
            outbox::enqueue(&*conn, &event("agg-late", &format!("{round}:{n}"))).await?;
        }
        let arrived = collect(&mut rx, 20, Duration::from_secs(30)).await?;
        assert!(arrived.iter().all(|e| e.payload != b"late"), "published before its commit");
    }
    assert_eq!(pending(&db).await?, 0, "everything committed so far is published");

    slow.commit().await?;
    let arrived = collect(&mut rx, 1, Duration::from_secs(10)).await?;
    shutdown.trigger();
    relay.await?;
    assert_eq!(arrived.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>(), [b"late".as_slice()]);
    assert_eq!(pending(&db).await?, 0);
    Ok(())
}

/// A row written without `enqueue` (by an older build of a service during
/// a rolling upgrade, or by a repair script under another `search_path`)
/// still gets its pending marker, from the trigger, and is published; a
/// pending row deleted by hand (an event dropped on purpose) is not
/// published and leaves no marker behind.
#[tokio::test]
async fn outbox_rows_inserted_by_hand_are_published_and_one_deleted_by_hand_is_forgotten()
-> anyhow::Result<()> {
    let Outbox { test_amqp: _amqp, _tdb, db, settings, _observer, mut rx } = Outbox::start().await?;
    let conn = db.write().await?;
    let schema: String = conn.query_one("SELECT current_schema()", &[]).await?.get(0);
    conn.batch_execute(&format!(
        "SET search_path TO public; \
         INSERT INTO {schema}.tenx_outbox (id, event_type, aggregate_id, partition, payload) \
           SELECT gen_random_uuid(), 'test.by_hand', 'agg-' || i, (hashtext('agg-' || i) & 15)::smallint, \
                  convert_to('by hand ' || i, 'UTF8') FROM generate_series(1, 4) i; \
         SET search_path TO {schema}"
    ))
    .await?;
    assert_eq!(pending(&db).await?, 4, "each row has its marker");
    conn.execute("DELETE FROM tenx_outbox WHERE payload = convert_to('by hand 4', 'UTF8')", &[]).await?;
    drop(conn);

    let shutdown = Shutdown::new();
    let relay = start_relay(&db, Amqp::new(&settings, "relay"), &shutdown);
    let arrived = collect(&mut rx, 3, Duration::from_secs(30)).await?;
    shutdown.trigger();
    relay.await?;
    let mut payloads: Vec<String> =
        arrived.iter().map(|e| String::from_utf8_lossy(&e.payload).into_owned()).collect();
    payloads.sort();
    assert_eq!(payloads, ["by hand 1", "by hand 2", "by hand 3"], "each published once, not the deleted one");
    assert_eq!(pending(&db).await?, 0, "the deleted row's marker went too");
    Ok(())
}

/// An event committed in this process goes out at once, not at the
/// relay's next poll: the connection that wrote it wakes the relay when it
/// goes back to the pool. A wake that comes before the commit (another
/// connection went back meanwhile) only makes the relay look early; the
/// writer's own connection wakes it again.
#[tokio::test]
async fn a_commit_wakes_the_relay_long_before_its_next_poll() -> anyhow::Result<()> {
    let Outbox { test_amqp: _amqp, _tdb, db, settings, _observer, mut rx } = Outbox::start().await?;
    let shutdown = Shutdown::new();
    // Polls a minute apart: within the test, only a wake delivers.
    let relay_settings =
        RelaySettings { poll_interval_ms: 60_000, wake_spacing_ms: 0, ..RelaySettings::default() };
    let relay = Relay::new(&db, Amqp::new(&settings, "relay"), relay_settings, &Metrics::default());
    let relay = tokio::spawn(relay.run(shutdown.child()));
    // Its first look finds nothing; then it sleeps.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for n in 0..3 {
        let mut conn = db.write().await?;
        let bystander = db.write().await?;
        let tx = conn.transaction().await?;
        outbox::enqueue(&tx, &event("agg-woken", &format!("woken:{n}"))).await?;
        if n == 1 {
            // Back to the pool before the commit: the relay looks and finds nothing yet.
            drop(bystander);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tx.commit().await?;
        drop(conn);
        // Ten seconds: well before the next poll.
        let arrived = collect(&mut rx, 1, Duration::from_secs(10)).await?;
        assert_eq!(arrived.len(), 1, "published once: {arrived:?}");
        assert_eq!(arrived[0].payload, format!("woken:{n}").into_bytes());
    }
    shutdown.trigger();
    relay.await?;
    assert_eq!(pending(&db).await?, 0);
    Ok(())
}

/// A replay sends published events again as the same messages, in write
/// order, page by page; a pending event is left to the relay.
#[tokio::test]
async fn a_replay_resends_published_events_with_their_ids_page_by_page_and_skips_pending_ones()
-> anyhow::Result<()> {
    use std::time::SystemTime;
    use tenx_common::outbox::{ReplayWindow, Replayer};
    let Outbox { test_amqp: _amqp, _tdb, db, settings, _observer, mut rx } = Outbox::start().await?;
    let from = SystemTime::now() - Duration::from_secs(60);
    let shutdown = Shutdown::new();
    let relay = start_relay(&db, Amqp::new(&settings, "relay"), &shutdown);
    let conn = db.write().await?;
    for n in 0..5 {
        outbox::enqueue(&*conn, &event(&format!("agg-{n}"), &n.to_string())).await?;
    }
    let first: Vec<String> =
        collect(&mut rx, 5, Duration::from_secs(30)).await?.into_iter().map(|e| e.id).collect();
    shutdown.trigger();
    relay.await?;
    outbox::enqueue(&*conn, &event("agg-pending", "pending")).await?;

    let replayer = Replayer::new(&db, Amqp::new(&settings, "replayer"));
    let window = |after_seq| ReplayWindow {
        from,
        to: SystemTime::now() + Duration::from_secs(60),
        event_type: None,
        after_seq,
        limit: 2,
    };
    let (mut pages, mut after) = (Vec::new(), 0);
    loop {
        let page = replayer.replay(&window(after)).await?;
        pages.push(page.count);
        assert!(page.oldest_retained.is_some_and(|t| t >= from));
        match page.next_after {
            Some(seq) => after = seq,
            None => break,
        }
    }
    assert_eq!(pages, [2, 2, 1], "pages of two until a short one");
    let again: Vec<String> =
        collect(&mut rx, 5, Duration::from_secs(30)).await?.into_iter().map(|e| e.id).collect();
    assert_eq!(again, first, "the same messages, in the same order, the pending one not among them");

    let other = ReplayWindow { event_type: Some("test.other".into()), ..window(0) };
    assert_eq!(replayer.replay(&other).await?.count, 0, "only the type asked for");
    let before = ReplayWindow { to: from, from: from - Duration::from_secs(60), ..window(0) };
    assert_eq!(replayer.replay(&before).await?.count, 0, "only the window asked for");
    assert_eq!(pending(&db).await?, 1);
    Ok(())
}

/// Events written with a companion write (`enqueue_all_with`, one
/// statement) are there, in order and pending, exactly when the
/// companion's write is: a companion that fails writes no event, and one
/// without events still runs.
#[tokio::test]
async fn events_written_with_a_companion_write_stand_or_fall_with_it() -> anyhow::Result<()> {
    let tdb = test_db().await?;
    let db = connect(&tdb, None, &Metrics::default())?;
    let mut conn = db.write().await?;
    conn.batch_execute(
        "CREATE TABLE companion (id int PRIMARY KEY, n int NOT NULL CHECK (n < 10)); \
         INSERT INTO companion VALUES (1, 0)",
    )
    .await?;
    const BUMP: &str = "bumped AS (UPDATE companion SET n = n + $8 WHERE id = 1)";
    let events = [event("agg-1", "first"), event("agg-1", "second")];

    let tx = conn.transaction().await?;
    let ids = outbox::enqueue_all_with(&tx, &events, BUMP, &[&1i32]).await?;
    tx.commit().await?;
    let tx = conn.transaction().await?;
    let refused = outbox::enqueue_all_with(&tx, &[event("agg-1", "third")], BUMP, &[&100i32]).await;
    assert!(refused.is_err(), "the companion's CHECK fails the statement");
    drop(tx);
    let tx = conn.transaction().await?;
    assert!(outbox::enqueue_all_with(&tx, &[], BUMP, &[&1i32]).await?.is_empty());
    tx.commit().await?;

    let written: Vec<(uuid::Uuid, Vec<u8>)> = conn
        .query("SELECT id, payload FROM tenx_outbox ORDER BY seq", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(written, vec![(ids[0], b"first".to_vec()), (ids[1], b"second".to_vec())]);
    assert_eq!(pending(&db).await?, 2, "both wait for the relay");
    let n: i32 = conn.query_one("SELECT n FROM companion", &[]).await?.get(0);
    assert_eq!(n, 2, "the companion ran with the events and without them, not when it failed");
    Ok(())
}
