//! Starting auth instances for a test, and calling them.

use prost::Message as _;
use tenx_auth::{App, AuthSettings, Running};
use tenx_common::metrics::Metrics;
use tenx_common::queue::Topology;
use tenx_common::shutdown::Shutdown;
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_test_support::{TestAmqp, TestDb, TestRedis};
use tonic::transport::Channel;

pub type Client = AuthServiceClient<Channel>;

/// A test's own auth deployment: database, Redis prefix, AMQP names, and
/// any number of instances sharing them.
pub struct TestAuth {
    pub db: TestDb,
    /// Keeps the Redis keys until the test ends, then deletes them.
    _redis: TestRedis,
    pub amqp: TestAmqp,
    pub settings: AuthSettings,
    pub shutdown: Shutdown,
    pub instances: Vec<Running>,
}

impl TestAuth {
    /// One running instance.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// One running instance, with `tune` applied to the settings first
    /// (the instances started later share them).
    pub async fn start_with(tune: impl FnOnce(&mut AuthSettings)) -> anyhow::Result<Self> {
        let db = TestDb::of_service::<tenx_auth::App>("auth").await?;
        let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
        let mut settings =
            AuthSettings::isolated(&db.primary_url(), &db.replica_url(), redis.prefix(), amqp.prefix())?;
        settings.service_clients.insert("billing".into(), SERVICE_SECRET.to_owned().into());
        tune(&mut settings);
        let topology = Topology::for_group(&settings.amqp, tenx_auth::avatar::GROUP, &[]);
        amqp.track(topology.queue_names(), topology.exchange_names());
        let mut auth =
            Self { db, _redis: redis, amqp, settings, shutdown: Shutdown::new(), instances: Vec::new() };
        auth.start_instance().await?;
        Ok(auth)
    }

    /// Starts one more instance; returns its index.
    pub async fn start_instance(&mut self) -> anyhow::Result<usize> {
        self.start_instance_with(self.settings.clone()).await
    }

    pub async fn start_instance_with(&mut self, settings: AuthSettings) -> anyhow::Result<usize> {
        let app = App::build(settings, Metrics::default()).await?;
        self.instances.push(tenx_common::host::spawn(app.parts(), self.shutdown.child()).await?);
        Ok(self.instances.len() - 1)
    }

    /// A client of instance `i`.
    pub async fn client(&self, i: usize) -> anyhow::Result<Client> {
        let url = format!("http://{}", self.instances[i].grpc_addr);
        Ok(AuthServiceClient::new(Channel::from_shared(url)?.connect().await?))
    }

    /// A service token for `billing` (a configured service client).
    pub async fn service_token(&self) -> anyhow::Result<String> {
        let request =
            pb::IssueServiceTokenRequest { service: "billing".into(), secret: SERVICE_SECRET.into() };
        Ok(self.client(0).await?.issue_service_token(request).await?.into_inner().access_token)
    }

    /// A raw connection to the test database's primary.
    pub async fn sql(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.db.primary_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute("SET search_path TO auth").await?;
        Ok(client)
    }

    /// The newest outbox event of `event_type`, as stored.
    pub async fn last_payload(&self, event_type: &str) -> anyhow::Result<Vec<u8>> {
        let row = self
            .sql()
            .await?
            .query_one(
                "SELECT payload FROM tenx_outbox WHERE event_type = $1 ORDER BY seq DESC LIMIT 1",
                &[&event_type],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The newest outbox event of `event_type`, decoded.
    pub async fn last_event<M: prost::Message + Default>(&self, event_type: &str) -> anyhow::Result<M> {
        Ok(M::decode(self.last_payload(event_type).await?.as_slice())?)
    }

    /// The code in the newest `event_type` event (reset or verification),
    /// opened as notification opens it; and that it is nowhere in the
    /// stored event in plaintext.
    pub async fn last_code(&self, event_type: &str) -> anyhow::Result<String> {
        let payload = self.last_payload(event_type).await?;
        let (user_id, email, sealed, purpose) = match event_type {
            "auth.password_reset_requested" => {
                let e = pb::PasswordResetRequested::decode(payload.as_slice())?;
                (e.user_id, e.email, e.sealed_code, "password_reset")
            }
            _ => {
                let e = pb::EmailVerificationRequested::decode(payload.as_slice())?;
                (e.user_id, e.email, e.sealed_code, "verify_email")
            }
        };
        let key = tenx_common::sealed::SealKey::parse(self.settings.codes.seal_key.expose())
            .map_err(anyhow::Error::msg)?;
        let code = key
            .open(&sealed, format!("{purpose}:{user_id}:{email}").as_bytes())
            .ok_or_else(|| anyhow::anyhow!("the sealed code does not open"))?;
        anyhow::ensure!(
            !payload.windows(code.len()).any(|w| w == code.as_slice()),
            "the code is in plaintext"
        );
        Ok(String::from_utf8(code)?)
    }

    /// The token in the newest invitation event, opened as notification
    /// opens it; and that it is nowhere in the stored event in plaintext.
    pub async fn invitation_token(&self) -> anyhow::Result<String> {
        let payload = self.last_payload("auth.org.member_invited").await?;
        let e = <pb::OrgMemberInvited as prost::Message>::decode(payload.as_slice())?;
        let key = tenx_common::sealed::SealKey::parse(self.settings.codes.seal_key.expose())
            .map_err(anyhow::Error::msg)?;
        let token = key
            .open(&e.sealed_token, format!("org_invitation:{}:{}", e.invitation_id, e.email).as_bytes())
            .ok_or_else(|| anyhow::anyhow!("the sealed token does not open"))?;
        anyhow::ensure!(
            !payload.windows(token.len()).any(|w| w == token.as_slice()),
            "the token is in plaintext"
        );
        Ok(String::from_utf8(token)?)
    }

    /// Rows in `table` (to show a bad request changed nothing).
    pub async fn count(&self, table: &str) -> anyhow::Result<i64> {
        Ok(self.sql().await?.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0))
    }
}

impl Drop for TestAuth {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub const PASSWORD: &str = "correct horse battery";

/// The client secret of the `billing` service client in these tests.
pub const SERVICE_SECRET: &str = "auth-tests-billing-client-secret-0123456789";

/// Signs up `email`; returns the response.
pub async fn sign_up(client: &mut Client, email: &str) -> anyhow::Result<pb::SignUpResponse> {
    let request = pb::SignUpRequest {
        email: email.to_owned(),
        password: PASSWORD.to_owned(),
        display_name: "Ada".to_owned(),
        device_name: "laptop".to_owned(),
    };
    Ok(client.sign_up(request).await?.into_inner())
}

/// `message` with `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

pub fn access(signed_up: &pb::SignUpResponse) -> String {
    signed_up.tokens.as_ref().map(|t| t.access_token.clone()).unwrap_or_default()
}

pub fn refresh(tokens: &Option<pb::Tokens>) -> String {
    tokens.as_ref().map(|t| t.refresh_token.clone()).unwrap_or_default()
}

/// The claims of an access token, unverified (the test reads what auth wrote).
pub fn claims(token: &str) -> anyhow::Result<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or_else(|| anyhow::anyhow!("not a JWT"))?;
    Ok(serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?)
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

pub use tenx_test_support::eventually;
