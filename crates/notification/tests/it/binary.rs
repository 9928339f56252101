//! The `tenx-notification` binary: migrate, serve (health, reflection, /metrics,
//! SIGTERM), and a clear exit on bad configuration.

use std::process::{Command, Stdio};
use std::time::Duration;

use tenx_test_support::{TestAmqp, TestDb, TestRedis, http_get};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::support::eventually;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn service(db: &TestDb, redis: &TestRedis, amqp: &TestAmqp, grpc: u16, admin: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenx-notification"));
    command
        .env("TENX_NOTIFICATION__DATABASE__PRIMARY_URL", db.primary_url())
        .env("TENX_NOTIFICATION__DATABASE__REPLICA_URL", db.replica_url())
        .env("TENX_NOTIFICATION__REDIS__KEY_PREFIX", redis.prefix())
        .env("TENX_NOTIFICATION__AMQP__PREFIX", amqp.prefix())
        .env("TENX_NOTIFICATION__SERVER__LISTEN", format!("127.0.0.1:{grpc}"))
        .env("TENX_NOTIFICATION__SERVER__ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[tokio::test]
async fn the_binary_migrates_serves_health_reflection_and_metrics_and_stops_on_sigterm() -> anyhow::Result<()>
{
    let db = TestDb::from_template("empty", "v1", |_| async { Ok(()) }).await?;
    let (redis, amqp) = (TestRedis::new(), TestAmqp::new());
    let settings = tenx_notification::NotificationSettings::isolated(
        &db.primary_url(),
        &db.replica_url(),
        redis.prefix(),
        amqp.prefix(),
    )?;
    for topology in
        [tenx_notification::app::topology(&settings), tenx_notification::app::webhook_topology(&settings)]
    {
        amqp.track(topology.queue_names(), topology.exchange_names());
    }
    let (grpc, admin) = (free_port()?, free_port()?);

    let migrated = service(&db, &redis, &amqp, grpc, admin).arg("migrate").output()?;
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));

    let mut server = service(&db, &redis, &amqp, grpc, admin).arg("serve").spawn()?;
    let url = format!("http://127.0.0.1:{grpc}");
    eventually(Duration::from_secs(20), "the server to answer health checks", || {
        let url = url.clone();
        async move {
            let Ok(channel) = tonic::transport::Channel::from_shared(url)?.connect().await else {
                return Ok(false);
            };
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest { service: "tenx.notification.v1.NotificationService".into() })
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
    assert!(services.contains(&"tenx.notification.v1.NotificationService".to_owned()), "{services:?}");
    let (_, metrics) = http_get(([127, 0, 0, 1], admin).into(), "/metrics").await?;
    assert!(metrics.contains("tenx_grpc_server_requests_total"), "{metrics}");
    assert!(http_get(([127, 0, 0, 1], admin).into(), "/readyz").await?.1.contains("postgres: ok"));

    let killed = Command::new("kill").args(["-TERM", &server.id().to_string()]).status()?;
    assert!(killed.success());
    let waited = tokio::task::spawn_blocking(move || server.wait()).await??;
    assert!(waited.success(), "exit after SIGTERM: {waited:?}");
    Ok(())
}

#[test]
fn a_bad_setting_stops_startup_with_one_line_naming_it_and_no_secret() -> anyhow::Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_tenx-notification"))
        .env("TENX_NOTIFICATION__DATABASE__PRIMARY_URL", "mysql://root:hunter2@db")
        .arg("serve")
        .output()?;
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("database.primary_url")
            && stderr.contains("TENX_NOTIFICATION__DATABASE__PRIMARY_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    Ok(())
}
