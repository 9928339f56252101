//! A test's own billing deployment (with a real auth beside it, whose keys
//! sign the callers' tokens), a clock it controls, and calls made as the
//! gateway makes them: the caller's own credential in `authorization`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tenx_auth::testing::TestAuth;
use tenx_billing::clock::ManualClock;
use tenx_billing::{App, BillingSettings, Running};
use tenx_common::metrics::Metrics;
use tenx_common::queue::{Amqp, Outgoing, Publisher};
use tenx_common::shutdown::Shutdown;
use tenx_proto::billing::v1 as pb;
use tenx_proto::billing::v1::billing_service_client::BillingServiceClient;
use tenx_proto::events::v1::Envelope;
use tenx_test_support::{TestAmqp, TestDb, TestRedis};
use tonic::transport::Channel;
use uuid::Uuid;

pub use tenx_test_support::eventually;

pub type Client = BillingServiceClient<Channel>;

pub struct TestBilling {
    /// Holds the service's pools: declared (so dropped) before `db`, whose
    /// drop ends every connection still open to the test database.
    pub scheduler: Arc<tenx_billing::scheduler::Scheduler>,
    /// The auth whose keys sign the callers' tokens; runs as long as billing.
    _auth: TestAuth,
    pub db: TestDb,
    _redis: TestRedis,
    _amqp: TestAmqp,
    pub settings: BillingSettings,
    pub clock: ManualClock,
    pub shutdown: Shutdown,
    pub running: Running,
    /// The service's metrics (its pools count reads by the server).
    pub metrics: Metrics,
}

impl TestBilling {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts with the settings changed by `tune` first.
    ///
    /// Reads go to the primary here: these tests call the gRPC API as a
    /// client that does not carry `x-tenx-wal-position` from one call to
    /// the next, and a read right after a write could otherwise see the
    /// replica a moment behind. `start_on_replica` serves reads from the
    /// real streaming replica (the read-your-writes tests).
    pub async fn start_with(tune: impl FnOnce(&mut BillingSettings)) -> anyhow::Result<Self> {
        Self::start_full(false, tune).await
    }

    /// Reads from the streaming replica, as deployed.
    pub async fn start_on_replica() -> anyhow::Result<Self> {
        Self::start_full(true, |_| {}).await
    }

    async fn start_full(replica: bool, tune: impl FnOnce(&mut BillingSettings)) -> anyhow::Result<Self> {
        // Logs of the service under test, shown by the runner when a test fails.
        let logs = tenx_common::telemetry::TelemetrySettings {
            log_format: tenx_common::telemetry::LogFormat::Pretty,
            log_filter: "warn,tenx_billing=info".into(),
            ..Default::default()
        };
        if let Ok(guard) = tenx_common::telemetry::init("tenx-billing-test", &logs) {
            std::mem::forget(guard);
        }
        let db = TestDb::of_service::<tenx_billing::App>("billing").await?;
        let auth = TestAuth::start().await?;
        let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
        let replica_url = if replica { db.replica_url() } else { db.primary_url() };
        let mut settings =
            BillingSettings::isolated(&db.primary_url(), &replica_url, redis.prefix(), amqp.prefix())?;
        auth.configure("billing", &mut settings.upstreams.auth, &mut settings.authn);
        let topology = tenx_billing::app::customers_topology(&settings);
        amqp.track(topology.queue_names(), topology.exchange_names());
        let broker = Amqp::new(&settings.amqp, "test-declare");
        topology.declare(&broker.channel().await?).await?;
        // 2026-01-01T00:00:00Z: the catalog's own creation time.
        let clock = ManualClock::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600));
        let shutdown = Shutdown::new();
        // Tests run due jobs themselves, after moving the clock.
        settings.scheduler.enabled = false;
        tune(&mut settings);
        let metrics = Metrics::default();
        let app = App::build_with_clock(settings.clone(), metrics.clone(), Arc::new(clock.clone())).await?;
        let scheduler = app.scheduler();
        let authenticator = app.authenticator();
        let running = tenx_common::host::spawn(app.parts(), shutdown.child()).await?;
        // Calls made before billing follows auth's revocations would ask
        // auth about sessions that exist only in these tests' tokens.
        authenticator.revocations().synced().await;
        Ok(Self {
            _auth: auth,
            db,
            _redis: redis,
            _amqp: amqp,
            settings,
            clock,
            shutdown,
            running,
            scheduler,
            metrics,
        })
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        let url = format!("http://{}", self.running.grpc_addr);
        Ok(BillingServiceClient::new(Channel::from_shared(url)?.connect().await?))
    }

    /// Publishes an event as another service's relay would.
    pub async fn publish<M: prost::Message>(&self, event_type: &str, payload: &M) -> anyhow::Result<String> {
        let id = Uuid::now_v7().to_string();
        let envelope = Envelope {
            id: id.clone(),
            r#type: event_type.to_owned(),
            aggregate_id: "test".into(),
            payload: payload.encode_to_vec(),
            ..Default::default()
        };
        let amqp = Amqp::new(&self.settings.amqp, "test-publisher");
        Publisher::new(amqp)
            .publish(&[Outgoing::event(&self.settings.amqp.exchange_name(), &envelope)])
            .await?;
        Ok(id)
    }

    pub async fn sql(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.db.primary_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute("SET search_path TO billing").await?;
        Ok(client)
    }

    /// Moves the clock forward and runs every job due by then.
    pub async fn advance(&self, by: Duration) -> anyhow::Result<usize> {
        self.clock.advance(by);
        Ok(self.scheduler.run_due().await?)
    }

    /// The value of the first metric line starting with `prefix` (0 if none).
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// How many rows `table` has.
    pub async fn count(&self, table: &str) -> anyhow::Result<i64> {
        Ok(self.sql().await?.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0))
    }

    /// Stops billing and its auth and waits until both have closed their
    /// connections ([`tenx_test_support::stopped`]); a plain drop only
    /// signals the stop.
    #[allow(dead_code, reason = "the bench's teardown: a test's drop is enough")]
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tenx_test_support::stopped(&mut self.running).await?;
        self._auth.stop().await
    }
}

impl Drop for TestBilling {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// `message` with `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

/// `message` as a client of `user` sends it (their access token).
pub fn as_user<T>(user: Uuid, message: T) -> tonic::Request<T> {
    bearer(&tenx_auth::testing::user_token(user, &[]), message)
}

/// `message` as sent for `user` with an idempotency key.
pub fn keyed<T>(user: Uuid, key: &str, message: T) -> tonic::Request<T> {
    let mut request = as_user(user, message);
    if let Ok(v) = key.parse() {
        request.metadata_mut().insert("idempotency-key", v);
    }
    request
}

/// `message` for an operator: a user whose token carries the admin role.
pub fn as_admin<T>(user: Uuid, message: T) -> tonic::Request<T> {
    bearer(&tenx_auth::testing::user_token(user, &["support", "admin"]), message)
}

/// Adds a card of simulator `token` as `user`'s default; its id.
pub async fn add_card(client: &mut Client, user: Uuid, token: &str) -> anyhow::Result<String> {
    let request = tenx_proto::billing::v1::AddPaymentMethodRequest { token: token.into(), set_default: true };
    let key = format!("card-{}", Uuid::new_v4());
    Ok(client
        .add_payment_method(keyed(user, &key, request))
        .await?
        .into_inner()
        .payment_method
        .map(|m| m.id)
        .unwrap_or_default())
}

/// The ErrorInfo reason of a refused call.
/// A subscription whose first charge was declined: its open invoice.
pub async fn open_invoice(client: &mut Client, user: Uuid) -> anyhow::Result<pb::Invoice> {
    add_card(client, user, "tok_declined").await?;
    let request =
        pb::CreateSubscriptionRequest { price_id: prices::BUSINESS_MONTHLY_USD.into(), ..Default::default() };
    let created = client.create_subscription(keyed(user, "sub", request)).await?.into_inner();
    created.invoice.ok_or_else(|| anyhow::anyhow!("no invoice"))
}

pub fn reason(status: &tonic::Status) -> String {
    tonic_types::StatusExt::get_details_error_info(status).map(|i| i.reason).unwrap_or_default()
}

/// The ledger's invariants, checked after a test: every transaction and
/// the whole ledger sum to zero per currency, and each customer's
/// receivable equals what their open invoices still owe.
pub async fn assert_ledger_invariants(billing: &TestBilling) -> anyhow::Result<()> {
    let sql = billing.sql().await?;
    let unbalanced = sql
        .query(
            "SELECT transaction_id, currency, sum(amount_minor) FROM ledger_entries \
             GROUP BY transaction_id, currency HAVING sum(amount_minor) <> 0",
            &[],
        )
        .await?;
    anyhow::ensure!(unbalanced.is_empty(), "{} unbalanced ledger transactions", unbalanced.len());
    let mismatched = sql
        .query(
            "SELECT c.id FROM customers c \
             WHERE COALESCE((SELECT sum(amount_minor) FROM ledger_entries e \
                             WHERE e.customer_id = c.id AND e.account = 'accounts_receivable'), 0) \
                <> COALESCE((SELECT sum(amount_due_minor - amount_paid_minor) FROM invoices i \
                             WHERE i.customer_id = c.id AND i.status = 'open'), 0)",
            &[],
        )
        .await?;
    anyhow::ensure!(mismatched.is_empty(), "receivable ≠ open invoices for {} customers", mismatched.len());
    Ok(())
}

/// Events of `event_type` in the outbox.
pub async fn events(billing: &TestBilling, event_type: &str) -> anyhow::Result<i64> {
    Ok(billing
        .sql()
        .await?
        .query_one("SELECT count(*) FROM tenx_outbox WHERE event_type = $1", &[&event_type])
        .await?
        .get(0))
}

/// Fixed catalog ids (crates/billing/migrations/V1__billing.sql).
pub mod prices {
    pub const FREE_MONTHLY_USD: &str = "20000000-0000-4000-8000-000000000001";
    pub const PRO_MONTHLY_USD: &str = "20000000-0000-4000-8000-000000000002";
    pub const PRO_YEARLY_USD: &str = "20000000-0000-4000-8000-000000000003";
    pub const BUSINESS_MONTHLY_USD: &str = "20000000-0000-4000-8000-000000000004";
    pub const BUSINESS_MONTHLY_JPY: &str = "20000000-0000-4000-8000-000000000007";
    pub const BUSINESS_MONTHLY_CLP: &str = "20000000-0000-4000-8000-000000000009";
}

/// `records` as an operator's backend reports them.
pub fn usage(
    billing: &TestBilling,
    subscription: &str,
    records: &[(&str, i64)],
) -> tonic::Request<tenx_proto::billing::v1::RecordUsageRequest> {
    let at: prost_types::Timestamp = tenx_billing::clock::Clock::now(&billing.clock).into();
    let records = records
        .iter()
        .map(|(event, quantity)| tenx_proto::billing::v1::UsageRecord {
            subscription_id: subscription.into(),
            event_id: (*event).into(),
            quantity: *quantity,
            timestamp: Some(at),
        })
        .collect();
    as_admin(Uuid::now_v7(), tenx_proto::billing::v1::RecordUsageRequest { records })
}

/// localstripe (a stateful Stripe emulator, started by `make deps` on
/// 127.0.0.1:8420): its API as Stripe.js and the dashboard call it, and a
/// billing that takes payments through it.
pub mod localstripe {
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::TestBilling;

    /// `make deps`'s localstripe.
    pub const LOCALSTRIPE: &str = "127.0.0.1:8420";
    pub const SECRET_KEY: &str = "sk_test_tenx_billing_tests";

    static ADDRESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

    /// Where localstripe listens: `make deps`'s, unless [`Fresh::start`]
    /// started one of this process's own.
    pub fn address() -> &'static str {
        ADDRESS.get().map_or(LOCALSTRIPE, String::as_str)
    }

    /// A localstripe of one's own, empty, on a free port, stopped on drop.
    /// For figures: the shared one keeps everything every earlier run made
    /// (and rewrites it all on each change), so what a call costs there
    /// grows from run to run. (Both rewrite /tmp/localstripe.pickle, which
    /// only a start without `--from-scratch` would read; `make deps` never
    /// starts one that way.)
    #[allow(dead_code)] // the benchmark's; the tests share `make deps`'s
    pub struct Fresh(std::process::Child);

    #[allow(dead_code)]
    impl Fresh {
        pub async fn start() -> anyhow::Result<Self> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let program = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.tools/venv/bin/localstripe");
            let child = std::process::Command::new(program)
                .args(["--port", &port.to_string(), "--from-scratch"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| anyhow::anyhow!("{program} (run `make deps`): {e}"))?;
            let fresh = Self(child);
            ADDRESS
                .set(format!("127.0.0.1:{port}"))
                .map_err(|_| anyhow::anyhow!("this process chose its localstripe already"))?;
            for _ in 0..300 {
                if stripe_api("GET", "/v1/balance", &[]).await.is_ok_and(|(status, _)| status == 200) {
                    return Ok(fresh);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            anyhow::bail!("localstripe on port {port} did not answer within 30 s")
        }
    }

    impl Drop for Fresh {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// One call to localstripe's API, as Stripe.js or the dashboard would make
    /// it; the JSON answer and its status.
    pub async fn stripe_api(method: &str, path: &str, form: &[(&str, &str)]) -> anyhow::Result<(u16, Value)> {
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let at = address();
        let mut stream = TcpStream::connect(at)
            .await
            .map_err(|e| anyhow::anyhow!("localstripe on {at} (run `make deps`): {e}"))?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {at}\r\nAuthorization: Bearer {SECRET_KEY}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let answer = String::from_utf8(answer)?;
        let (head, json) = answer.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP answer"))?;
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((status, serde_json::from_str(json).unwrap_or(Value::Null)))
    }

    /// A PaymentMethod as Stripe.js creates it in the customer's browser.
    pub async fn card(number: &str) -> anyhow::Result<String> {
        let form = [
            ("type", "card"),
            ("card[number]", number),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2034"),
            ("card[cvc]", "123"),
        ];
        pm(stripe_api("POST", "/v1/payment_methods", &form).await?)
    }

    /// A SEPA debit PaymentMethod: its charges settle later.
    pub async fn sepa(iban: &str) -> anyhow::Result<String> {
        let form = [("type", "sepa_debit"), ("sepa_debit[iban]", iban)];
        pm(stripe_api("POST", "/v1/payment_methods", &form).await?)
    }

    fn pm((status, body): (u16, Value)) -> anyhow::Result<String> {
        anyhow::ensure!(status == 200, "localstripe refused the payment method: {body}");
        Ok(body["id"].as_str().unwrap_or_default().to_owned())
    }

    /// A billing that takes payments through localstripe.
    pub async fn with_stripe(webhook_secret: &str) -> anyhow::Result<TestBilling> {
        let secret = webhook_secret.to_owned();
        TestBilling::start_with(move |s| {
            s.provider.kind = "stripe".into();
            s.provider.stripe_api_base = format!("http://{}", address());
            s.provider.stripe_secret_key = SECRET_KEY.to_owned().into();
            s.provider.stripe_webhook_secret = secret.into();
        })
        .await
    }
}
