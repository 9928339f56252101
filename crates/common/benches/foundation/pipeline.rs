//! The job pipeline end to end (#17): events committed to the outbox,
//! published by the relay (woken by the commit), consumed and acked —
//! beside the same broker and consumer fed by a bare publisher with
//! confirms, the reference. Each figure counts to the consumer's handler.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tenx_common::db::Db;
use tenx_common::metrics::Metrics;
use tenx_common::outbox::{self, NewEvent, Relay, RelaySettings};
use tenx_common::queue::{Amqp, Consumer, Handler, HandlerError, Message, Outgoing, Publisher, Topology};
use tenx_common::shutdown::Shutdown;
use tenx_proto::events::v1::Envelope;
use tenx_test_support::TestAmqp;
use tenx_test_support::bench::{Figure, Profile, busy_cpu_us, percentile};

/// Events per throughput figure, sent in batches (raw) or transactions
/// (outbox) of [`BATCH`].
const EVENTS: usize = 20_000;
const BATCH: usize = 100;
/// The latency figure: one event per transaction at [`RATE`] a second.
const PACED_EVENTS: usize = 5_000;
const RATE: u32 = 1_000;
/// Each part's events have a type of their own, bound only to its
/// consumer's queue (and outside the other figures' `bench.#`): the broker
/// does each part's work alone.
const RAW_TYPE: &str = "pipeline.raw";
const OUTBOX_TYPE: &str = "pipeline.outbox";
const PACED_TYPE: &str = "pipeline.paced";

pub const RAW: &str = "pipeline: raw publish (confirms, batches of 100) -> ack, events/s";
pub const OUTBOX: &str = "pipeline: outbox (transactions of 100) -> relay -> ack, events/s";
pub const RATIO: &str = "pipeline: outbox / raw, events/s";
pub const PACED_P99: &str = "pipeline: commit -> handler at 1000/s, p99";
const PACED_P50: &str = "pipeline: commit -> handler at 1000/s, p50";
const RAW_CPU: &str = "pipeline: machine CPU per event, raw (µs)";
const OUTBOX_CPU: &str = "pipeline: machine CPU per event, outbox (µs)";
const PACED_CPU: &str = "pipeline: machine CPU per event at 1000/s (µs)";

/// When each event (its index is its payload) first reached the handler.
struct Arrivals {
    at: Mutex<Vec<Option<Instant>>>,
    count: AtomicUsize,
    all: tokio::sync::Notify,
}

impl Arrivals {
    fn new(events: usize) -> Arc<Self> {
        Arc::new(Self {
            at: Mutex::new(vec![None; events]),
            count: AtomicUsize::new(0),
            all: Default::default(),
        })
    }

    async fn wait_for_all(&self, within: Duration) -> anyhow::Result<()> {
        let expected = self.at.lock().expect("arrivals").len();
        tokio::time::timeout(within, async {
            while self.count.load(Ordering::Acquire) < expected {
                let notified = self.all.notified();
                if self.count.load(Ordering::Acquire) >= expected {
                    break;
                }
                notified.await;
            }
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!("only {} of {expected} events acked", self.count.load(Ordering::Acquire))
        })
    }
}

struct Counting(Arc<Arrivals>);

impl Handler for Counting {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let index: [u8; 8] = message.envelope.payload[..8].try_into().map_err(|_| reject())?;
        let index = u64::from_le_bytes(index) as usize;
        let now = Instant::now();
        let mut at = self.0.at.lock().expect("arrivals");
        let slot = at.get_mut(index).ok_or_else(reject)?;
        if slot.is_none() {
            *slot = Some(now);
            let count = self.0.count.fetch_add(1, Ordering::AcqRel) + 1;
            if count == at.len() {
                self.0.all.notify_one();
            }
        }
        Ok(())
    }
}

fn reject() -> HandlerError {
    HandlerError::Reject("not a bench event".into())
}

/// An event whose payload starts with its index (256 bytes in all, as
/// the other figures).
fn payload(index: usize) -> Vec<u8> {
    let mut payload = vec![7; 256];
    payload[..8].copy_from_slice(&(index as u64).to_le_bytes());
    payload
}

/// A consumer group of its own, for events of `event_type`, acking into
/// `arrivals` until `shutdown`.
fn consume(test_amqp: &TestAmqp, event_type: &str, arrivals: &Arc<Arrivals>, shutdown: &Shutdown) {
    let settings = super::amqp_for(test_amqp);
    let group = event_type;
    let topology = Topology::for_group(&settings, group, &[event_type]);
    test_amqp.track(topology.queue_names(), topology.exchange_names());
    let consumer =
        Consumer::new(Amqp::new(&settings, group), topology, Counting(arrivals.clone()), &Metrics::default());
    tokio::spawn(consumer.run(shutdown.child()));
}

/// Waits until the consumer consumes (it declares and binds its queue
/// first), so nothing is published unrouted or timed before it is ready.
async fn bound(test_amqp: &TestAmqp, event_type: &str) -> anyhow::Result<()> {
    let settings = super::amqp_for(test_amqp);
    let queue = Topology::for_group(&settings, event_type, &[event_type]).queue;
    let amqp = Amqp::new(&settings, "bench-probe");
    for _ in 0..200 {
        let channel = amqp.channel().await?;
        if let Ok(declared) = tenx_common::queue::inspect(&channel, &queue).await
            && declared.consumer_count() >= 1
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the consumer of {event_type} never declared its queue")
}

fn relay(db: &Db, test_amqp: &TestAmqp, shutdown: &Shutdown) {
    let amqp = Amqp::new(&super::amqp_for(test_amqp), "bench-pipeline-relay");
    tokio::spawn(Relay::new(db, amqp, RelaySettings::default(), &Metrics::default()).run(shutdown.child()));
}

pub async fn figures(
    db: &Arc<Db>,
    test_amqp: &TestAmqp,
    out: &mut BTreeMap<&'static str, Figure>,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    let settings = super::amqp_for(test_amqp);
    let exchange = settings.exchange_name();

    // The reference: batches of 100 published with confirms, one at a time.
    let arrivals = Arrivals::new(EVENTS);
    consume(test_amqp, RAW_TYPE, &arrivals, &shutdown);
    bound(test_amqp, RAW_TYPE).await?;
    let publisher = Publisher::new(Amqp::new(&settings, "bench-raw-publisher"));
    let profile = Profile::start(RAW)?;
    let (started, cpu) = (Instant::now(), busy_cpu_us());
    for batch in 0..EVENTS / BATCH {
        let messages: Vec<Outgoing> = (batch * BATCH..(batch + 1) * BATCH)
            .map(|i| {
                let envelope = Envelope {
                    id: format!("raw-{i}"),
                    r#type: RAW_TYPE.into(),
                    payload: payload(i),
                    ..Default::default()
                };
                Outgoing::event(&exchange, &envelope)
            })
            .collect();
        publisher.publish(&messages).await?;
    }
    arrivals.wait_for_all(Duration::from_secs(300)).await?;
    out.insert(RAW, Figure::per_second(EVENTS, started.elapsed()));
    out.insert(RAW_CPU, cpu_per(busy_cpu_us() - cpu, EVENTS));
    drop(profile);

    // The outbox: transactions of 100, one at a time, each relayed as soon
    // as it commits.
    let arrivals = Arrivals::new(EVENTS);
    consume(test_amqp, OUTBOX_TYPE, &arrivals, &shutdown);
    bound(test_amqp, OUTBOX_TYPE).await?;
    relay(db, test_amqp, &shutdown);
    let profile = Profile::start(OUTBOX)?;
    let (started, cpu) = (Instant::now(), busy_cpu_us());
    for batch in 0..EVENTS / BATCH {
        let events: Vec<NewEvent> =
            (batch * BATCH..(batch + 1) * BATCH).map(|i| event(OUTBOX_TYPE, i)).collect();
        let mut conn = db.write().await?;
        let tx = conn.transaction().await?;
        outbox::enqueue_all(&tx, &events).await?;
        tx.commit().await?;
    }
    arrivals.wait_for_all(Duration::from_secs(300)).await?;
    out.insert(OUTBOX, Figure::per_second(EVENTS, started.elapsed()));
    out.insert(OUTBOX_CPU, cpu_per(busy_cpu_us() - cpu, EVENTS));
    drop(profile);
    let ratio = out[OUTBOX].value / out[RAW].value;
    out.insert(RATIO, Figure { value: ratio, unit: "x", higher_is_better: true });

    // Latency: one event per transaction at 1,000 a second, open loop
    // (each write starts on time whatever the earlier ones do), from the
    // commit's return to the handler.
    let arrivals = Arrivals::new(PACED_EVENTS);
    consume(test_amqp, PACED_TYPE, &arrivals, &shutdown);
    bound(test_amqp, PACED_TYPE).await?;
    let committed = Arc::new(Mutex::new(vec![None::<Instant>; PACED_EVENTS]));
    let profile = Profile::start(PACED_P99)?;
    let (start, cpu) = (tokio::time::Instant::now(), busy_cpu_us());
    let mut writes = Vec::with_capacity(PACED_EVENTS);
    for i in 0..PACED_EVENTS {
        tokio::time::sleep_until(start + Duration::from_secs(1) * i as u32 / RATE).await;
        let (db, committed) = (db.clone(), committed.clone());
        writes.push(tokio::spawn(async move {
            // One statement, committed on its own: the writer's share of
            // the machine stays small beside the pipeline's.
            let conn = db.write().await?;
            outbox::enqueue(&*conn, &event(PACED_TYPE, i)).await?;
            drop(conn);
            committed.lock().expect("committed")[i] = Some(Instant::now());
            anyhow::Ok(())
        }));
    }
    for write in writes {
        write.await??;
    }
    arrivals.wait_for_all(Duration::from_secs(60)).await?;
    out.insert(PACED_CPU, cpu_per(busy_cpu_us() - cpu, PACED_EVENTS));
    drop(profile);
    let at = arrivals.at.lock().expect("arrivals");
    let committed = committed.lock().expect("committed");
    // A handler can run before its writer's task saw the commit return:
    // that counts as no wait.
    let mut waits: Vec<Duration> = at
        .iter()
        .zip(committed.iter())
        .filter_map(|(got, done)| Some(got.as_ref()?.saturating_duration_since(*done.as_ref()?)))
        .collect();
    out.insert(PACED_P50, Figure::ms(percentile(&mut waits, 50.0)));
    out.insert(PACED_P99, Figure::ms(percentile(&mut waits, 99.0)));
    shutdown.trigger();
    Ok(())
}

fn event(event_type: &str, index: usize) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        aggregate_id: format!("agg-{}", index % 500),
        payload: payload(index),
        payload_type: "bench".into(),
    }
}

fn cpu_per(busy_us: u64, events: usize) -> Figure {
    Figure { value: busy_us as f64 / events as f64, unit: "µs", higher_is_better: false }
}
