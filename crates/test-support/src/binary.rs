//! The checks every service binary must pass, shared by the services'
//! tests: `migrate` then `serve` on free ports (gRPC health SERVING for the
//! service, reflection listing it, `/metrics` and `/readyz` answering),
//! a clean exit on SIGTERM, and a bad setting refused with exit 78 and one
//! line naming the key, without the secret.

use std::process::{Command, Stdio};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::{TestAmqp, TestDb, TestRedis, eventually, http_get};

/// One service binary under test.
#[derive(Debug, Clone)]
pub struct ServiceBinary {
    /// `env!("CARGO_BIN_EXE_tenx-…")`.
    pub path: &'static str,
    /// Its settings' variable prefix, e.g. `TENX_BILLING`.
    pub env_prefix: &'static str,
    /// The gRPC service it serves, e.g. `tenx.billing.v1.BillingService`.
    pub service: &'static str,
}

/// A free TCP port on loopback (for a child process to bind).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ServiceBinary {
    /// The binary with the test's database, Redis prefix, AMQP prefix and ports.
    pub fn command(&self, db: &TestDb, redis: &TestRedis, amqp: &TestAmqp, grpc: u16, admin: u16) -> Command {
        let p = self.env_prefix;
        let mut command = Command::new(self.path);
        command
            .env(format!("{p}__DATABASE__PRIMARY_URL"), db.primary_url())
            .env(format!("{p}__DATABASE__REPLICA_URL"), db.replica_url())
            .env(format!("{p}__REDIS__KEY_PREFIX"), redis.prefix())
            .env(format!("{p}__AMQP__PREFIX"), amqp.prefix())
            .env(format!("{p}__SERVER__LISTEN"), format!("127.0.0.1:{grpc}"))
            .env(format!("{p}__SERVER__ADMIN_LISTEN"), format!("127.0.0.1:{admin}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// `migrate` (twice: the second is a no-op), then `serve` until it
    /// answers health, reflection, `/metrics` and `/readyz`, then SIGTERM.
    pub async fn migrates_serves_and_stops(
        &self,
        db: &TestDb,
        redis: &TestRedis,
        amqp: &TestAmqp,
    ) -> anyhow::Result<()> {
        self.migrates_serves_and_stops_with(db, redis, amqp, &[]).await
    }

    /// The same, with more settings (`(variable, value)`), e.g. where auth is.
    pub async fn migrates_serves_and_stops_with(
        &self,
        db: &TestDb,
        redis: &TestRedis,
        amqp: &TestAmqp,
        env: &[(String, String)],
    ) -> anyhow::Result<()> {
        let (grpc, admin) = (free_port()?, free_port()?);
        for _ in 0..2 {
            let migrated = self
                .command(db, redis, amqp, grpc, admin)
                .envs(env.iter().cloned())
                .arg("migrate")
                .output()?;
            anyhow::ensure!(
                migrated.status.success(),
                "migrate: {}",
                String::from_utf8_lossy(&migrated.stderr)
            );
        }
        let mut server =
            self.command(db, redis, amqp, grpc, admin).envs(env.iter().cloned()).arg("serve").spawn()?;
        let url = format!("http://127.0.0.1:{grpc}");
        eventually(Duration::from_secs(20), "the server to answer health checks", || {
            let (url, service) = (url.clone(), self.service.to_owned());
            async move {
                let Ok(channel) = tonic::transport::Channel::from_shared(url)?.connect().await else {
                    return Ok(false);
                };
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest { service })
                    .await?
                    .into_inner()
                    .status;
                Ok(status == 1)
            }
        })
        .await?;
        let channel = tonic::transport::Channel::from_shared(url)?.connect().await?;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(futures_util::stream::iter([request]))
            .await?
            .into_inner();
        let services = match answers.message().await?.and_then(|m| m.message_response) {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => anyhow::bail!("unexpected reflection answer {other:?}"),
        };
        anyhow::ensure!(services.iter().any(|s| s == self.service), "reflection lists {services:?}");
        let (_, metrics) = http_get(([127, 0, 0, 1], admin).into(), "/metrics").await?;
        anyhow::ensure!(metrics.contains("tenx_grpc_server_requests_total"), "{metrics}");
        eventually(Duration::from_secs(10), "/readyz to answer 200", || async move {
            let (status, ready) = http_get(([127, 0, 0, 1], admin).into(), "/readyz").await?;
            Ok(status == 200 && ready.contains("postgres: ok"))
        })
        .await?;

        let killed = Command::new("kill").args(["-TERM", &server.id().to_string()]).status()?;
        anyhow::ensure!(killed.success(), "kill -TERM failed");
        let waited = tokio::task::spawn_blocking(move || server.wait()).await??;
        anyhow::ensure!(waited.success(), "exit after SIGTERM: {waited:?}");
        Ok(())
    }

    /// A malformed database URL with a password: exit 78, one line naming
    /// the key and its variable, and the password nowhere.
    pub fn refuses_a_bad_setting_without_leaking_it(&self) -> anyhow::Result<()> {
        let variable = format!("{}__DATABASE__PRIMARY_URL", self.env_prefix);
        let output =
            Command::new(self.path).env(&variable, "mysql://root:hunter2@db").arg("serve").output()?;
        anyhow::ensure!(output.status.code() == Some(78), "exit {:?}", output.status.code());
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::ensure!(stderr.lines().count() == 1, "one line: {stderr}");
        anyhow::ensure!(stderr.contains("database.primary_url") && stderr.contains(&variable), "{stderr}");
        anyhow::ensure!(!stderr.contains("hunter2"), "the secret leaked: {stderr}");
        Ok(())
    }
}
