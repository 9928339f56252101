//! A test's own notification deployment, event publishing, and reading
//! back what the SMTP sink received.

use std::time::Duration;

use tenx_auth::testing::TestAuth;
use tenx_common::metrics::Metrics;
use tenx_common::queue::{Amqp, Outgoing, Publisher};
use tenx_common::shutdown::Shutdown;
use tenx_notification::settings::{RelaySettingsSmtp, SmtpTls};
use tenx_notification::{App, NotificationSettings, Running};
use tenx_proto::auth::v1 as auth;
use tenx_proto::events::v1::Envelope;
use tenx_proto::notification::v1::notification_service_client::NotificationServiceClient;
use tenx_test_support::{TestAmqp, TestDb, TestRedis};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client whose calls carry a credential unless the request has its own.
pub type Client = NotificationServiceClient<InterceptedService<Channel, Bearer>>;
pub type AdminClient = Client;

/// Adds `authorization: Bearer <token>` to calls that carry none.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0
            && !request.metadata().contains_key("authorization")
        {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub struct TestNotify {
    pub auth: TestAuth,
    pub db: TestDb,
    pub redis: TestRedis,
    pub amqp: TestAmqp,
    pub settings: NotificationSettings,
    pub shutdown: Shutdown,
    pub running: Option<Running>,
}

impl TestNotify {
    /// Settings with the test's own names; not started yet.
    pub async fn new() -> anyhow::Result<Self> {
        let db = TestDb::of_service::<tenx_notification::App>("notification").await?;
        let auth = TestAuth::start().await?;
        let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
        let mut settings = NotificationSettings::isolated(
            &db.primary_url(),
            &db.replica_url(),
            redis.prefix(),
            amqp.prefix(),
        )?;
        auth.configure("notification", &mut settings.upstreams.auth, &mut settings.authn);
        for topology in
            [tenx_notification::app::topology(&settings), tenx_notification::app::webhook_topology(&settings)]
        {
            amqp.track(topology.queue_names(), topology.exchange_names());
        }
        Ok(Self { auth, db, redis, amqp, settings, shutdown: Shutdown::new(), running: None })
    }

    /// Declares the queues, then starts the service.
    pub async fn start(mut self) -> anyhow::Result<Self> {
        let broker = Amqp::new(&self.settings.amqp, "test-declare");
        let channel = broker.channel().await?;
        tenx_notification::app::topology(&self.settings).declare(&channel).await?;
        tenx_notification::app::webhook_topology(&self.settings).declare(&channel).await?;
        let app = App::build(self.settings.clone(), Metrics::default()).await?;
        let authenticator = app.authenticator();
        self.running = Some(tenx_common::host::spawn(app.parts(), self.shutdown.child()).await?);
        // Tokens minted for tests name sessions only they know: call once
        // notification follows auth's revocations (else it would ask auth).
        authenticator.revocations().synced().await;
        Ok(self)
    }

    async fn client_with(&self, token: Option<String>) -> anyhow::Result<Client> {
        let addr =
            self.running.as_ref().map(|r| r.grpc_addr).ok_or_else(|| anyhow::anyhow!("not started"))?;
        let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
        let bearer = token.map(|t| format!("Bearer {t}").parse()).transpose()?;
        Ok(NotificationServiceClient::with_interceptor(channel, Bearer(bearer)))
    }

    /// A client that calls as the operator service client (an operator's
    /// backend sending its own notifications), unless a request carries a
    /// user's credential ([`as_user`]).
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_with(Some(self.auth.service_token("operator").await?)).await
    }

    /// A client with no credential of its own.
    pub async fn anonymous_client(&self) -> anyhow::Result<Client> {
        self.client_with(None).await
    }

    /// A client whose calls carry an operator's token (role `admin`).
    pub async fn admin_client(&self) -> anyhow::Result<AdminClient> {
        let admin = uuid::Uuid::now_v7();
        self.client_with(Some(tenx_auth::testing::user_token(admin, &["support", "admin"]))).await
    }

    /// A password-reset event as auth writes it: the code sealed with the
    /// key the two share.
    pub fn reset_event(&self, user: uuid::Uuid, email: &str, code: &str) -> auth::PasswordResetRequested {
        let key =
            tenx_common::sealed::SealKey::parse(self.settings.codes.seal_key.expose()).expect("the test key");
        auth::PasswordResetRequested {
            user_id: user.to_string(),
            email: email.to_owned(),
            expires_in_minutes: 30,
            sealed_code: key.seal(code.as_bytes(), format!("password_reset:{user}:{email}").as_bytes()),
            ..Default::default()
        }
    }

    /// Publishes an event as auth's relay would.
    pub async fn publish<M: prost::Message>(
        &self,
        id: &str,
        event_type: &str,
        payload: &M,
    ) -> anyhow::Result<()> {
        self.publish_all(&[(id, event_type, payload)]).await
    }

    /// Publishes events `(id, type, payload)` in one confirmed batch, so
    /// they reach the queue at once (a burst), in this order.
    pub async fn publish_all<M: prost::Message>(&self, events: &[(&str, &str, &M)]) -> anyhow::Result<()> {
        let envelopes: Vec<Envelope> = events
            .iter()
            .map(|(id, event_type, payload)| Envelope {
                id: (*id).to_owned(),
                r#type: (*event_type).to_owned(),
                aggregate_id: "test".into(),
                payload: payload.encode_to_vec(),
                ..Default::default()
            })
            .collect();
        let exchange = self.settings.amqp.exchange_name();
        let outgoing: Vec<_> =
            envelopes.iter().map(|envelope| Outgoing::event(&exchange, envelope)).collect();
        let amqp = Amqp::new(&self.settings.amqp, "test-publisher");
        Publisher::new(amqp).publish(&outgoing).await?;
        Ok(())
    }

    pub async fn sql(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.db.primary_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute("SET search_path TO notification").await?;
        Ok(client)
    }
}

impl Drop for TestNotify {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// `message` as a client of `user` sends it (their access token).
pub fn as_user<T>(user: &uuid::Uuid, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {}", tenx_auth::testing::user_token(*user, &[])).parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

pub fn unique_email() -> String {
    format!("n-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Every message the SMTP sink kept for `to`, raw.
pub fn mails_to(to: &str) -> anyhow::Result<Vec<String>> {
    Ok(tenx_test_support::mails()?.into_iter().filter(|m| m.to.contains(to)).map(|m| m.raw).collect())
}

/// Waits until `count` messages for `to` arrived, then a little longer to
/// catch duplicates; returns them.
pub async fn wait_for_mails(to: &str, count: usize) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while mails_to(to)?.len() < count {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} emails to {to}",
            mails_to(to)?.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    mails_to(to)
}

/// The decoded Subject header of a raw message.
pub fn subject(raw: &str) -> String {
    raw.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_owned()
}

pub use tenx_test_support::eventually;

/// One SMTP relay for a test.
pub fn relay(host: &str, port: u16, timeout_ms: u64, tls: SmtpTls) -> RelaySettingsSmtp {
    RelaySettingsSmtp { host: host.into(), port, timeout_ms, tls, username: None, password: None }
}

/// The CA of the STARTTLS sink on 2587 (made by deploy/local/deps.sh).
pub fn smtp_test_ca() -> std::path::PathBuf {
    std::env::var("TENX_SMTP_TLS_DIR")
        .unwrap_or_else(|_| "/tmp/tenx-smtp-sink/tls".into())
        .parse::<std::path::PathBuf>()
        .map(|dir| dir.join("ca.pem"))
        .unwrap_or_default()
}

pub use tenx_test_support::text_part;
