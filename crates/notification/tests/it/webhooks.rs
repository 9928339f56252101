//! Signed webhooks: retries with growing delays, dead letters, redrive.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tenx_proto::auth::v1 as auth;
use tenx_proto::notification::v1 as pb;
use tonic::Code;
use uuid::Uuid;

use crate::support::{TestNotify, unique_email};

/// A webhook receiver: answers with the next status of `script` (the last
/// one repeats) and records every request.
#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<Vec<u16>>>,
    seen: Arc<Mutex<Vec<(Instant, HeaderMap, String)>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    r.seen.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), headers, body));
    let mut script = r.script.lock().unwrap_or_else(|p| p.into_inner());
    let code = if script.len() > 1 { script.remove(0) } else { script.first().copied().unwrap_or(200) };
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn start_receiver(script: Vec<u16>) -> anyhow::Result<(Receiver, String)> {
    let receiver = Receiver { script: Arc::new(Mutex::new(script)), ..Default::default() };
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((receiver, url))
}

/// The same receiver behind TLS, with a certificate for `localhost` from
/// a CA made for this test; returns the receiver, its `https://` URL and
/// the CA's PEM file (removed when dropped).
async fn start_tls_receiver(script: Vec<u16>) -> anyhow::Result<(Receiver, String, TempFile)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tenx webhook test CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&leaf_key, &issuer)?;
    let ca_file = TempFile(std::env::temp_dir().join(format!("tenx-webhook-ca-{}.pem", Uuid::new_v4())));
    std::fs::write(&ca_file.0, ca_cert.pem())?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let receiver = Receiver { script: Arc::new(Mutex::new(script)), ..Default::default() };
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://localhost:{}/hook", listener.local_addr()?.port());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok((receiver, url, ca_file))
}

/// A file removed when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Verifies a Standard Webhooks signature independently of the service.
fn signed_by(secret: &str, headers: &HeaderMap, body: &str) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else { return false };
    mac.update(format!("{}.{}.{}", header("webhook-id"), header("webhook-timestamp"), body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header("webhook-signature").split(' ').any(|s| s == expected)
}

async fn wait_until<F: Fn() -> bool>(what: &str, check: F) -> anyhow::Result<()> {
    crate::support::eventually(Duration::from_secs(15), what, || std::future::ready(Ok(check()))).await
}

async fn signed_up(notify: &TestNotify) -> anyhow::Result<()> {
    let event = auth::UserSignedUp {
        user_id: Uuid::now_v7().to_string(),
        email: unique_email(),
        display_name: "Ada".into(),
    };
    notify.publish(&Uuid::now_v7().to_string(), "auth.user.signed_up", &event).await
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_three_signed_attempts_with_growing_delays() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let mut client = notify.admin_client().await?;
    let (receiver, url) = start_receiver(vec![500, 500, 200]).await?;
    let created = client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url,
            event_types: vec!["auth.user.signed_up".into()],
            description: "crm".into(),
        })
        .await?
        .into_inner();
    signed_up(&notify).await?;

    wait_until("three attempts", || receiver.seen.lock().map(|s| s.len() >= 3).unwrap_or(false)).await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let seen = receiver.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(seen.len(), 3, "no attempt after the success");
    for (_, headers, body) in &seen {
        assert!(signed_by(&created.secret, headers, body), "bad signature on {body}");
        let json: serde_json::Value = serde_json::from_str(body)?;
        assert_eq!(json["type"], "auth.user.signed_up");
        assert_eq!(json["data"]["display_name"], "Ada");
    }
    let ids: Vec<_> = seen.iter().map(|(_, h, _)| h.get("webhook-id").cloned()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one webhook-id across retries");
    let (first_gap, second_gap) = (seen[1].0 - seen[0].0, seen[2].0 - seen[1].0);
    // Tiers of 100 and 300 ms with equal jitter: 50-100 ms, then 150-300 ms.
    assert!(
        first_gap >= Duration::from_millis(50) && second_gap >= Duration::from_millis(150),
        "{first_gap:?} {second_gap:?}"
    );
    assert!(second_gap > first_gap);

    let endpoint_id = created.endpoint.map(|e| e.id).unwrap_or_default();
    let attempts = client
        .list_deliveries(pb::ListDeliveriesRequest { endpoint_id, limit: 0 })
        .await?
        .into_inner()
        .attempts;
    let codes: Vec<(u32, bool)> = attempts.iter().rev().map(|a| (a.status_code, a.succeeded)).collect();
    assert_eq!(codes, vec![(500, false), (500, false), (200, true)]);
    Ok(())
}

#[tokio::test]
async fn an_https_receiver_gets_signed_deliveries_and_an_untrusted_certificate_gets_none()
-> anyhow::Result<()> {
    let (receiver, url, ca_file) = start_tls_receiver(vec![200]).await?;
    let trusting = {
        let mut notify = TestNotify::new().await?;
        notify.settings.webhooks.ca_file = Some(ca_file.0.clone());
        notify.start().await?
    };
    let mut client = trusting.admin_client().await?;
    let created = client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url: url.clone(),
            event_types: vec!["auth.user.signed_up".into()],
            description: String::new(),
        })
        .await?
        .into_inner();
    signed_up(&trusting).await?;
    wait_until("an https delivery", || receiver.seen.lock().map(|s| !s.is_empty()).unwrap_or(false)).await?;
    let (_, headers, body) = receiver.seen.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
    assert!(signed_by(&created.secret, &headers, &body));

    // Another deployment that does not trust the test CA: the attempt
    // fails on the certificate and the receiver never sees the payload.
    let untrusting = TestNotify::new().await?.start().await?;
    let mut client = untrusting.admin_client().await?;
    let endpoint_id = client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url,
            event_types: vec!["auth.user.signed_up".into()],
            description: String::new(),
        })
        .await?
        .into_inner()
        .endpoint
        .map(|e| e.id)
        .unwrap_or_default();
    signed_up(&untrusting).await?;
    let attempts = || {
        let (mut client, endpoint_id) = (client.clone(), endpoint_id.clone());
        async move {
            let request = pb::ListDeliveriesRequest { endpoint_id, limit: 0 };
            Ok::<_, anyhow::Error>(client.list_deliveries(request).await?.into_inner().attempts)
        }
    };
    crate::support::eventually(Duration::from_secs(15), "a failed attempt", || async {
        Ok(!attempts().await?.is_empty())
    })
    .await?;
    let first = attempts().await?.pop().ok_or_else(|| anyhow::anyhow!("no attempt"))?;
    assert!(!first.succeeded);
    assert!(first.error.to_ascii_lowercase().contains("certificate"), "{}", first.error);
    assert_eq!(receiver.seen.lock().map(|s| s.len()).unwrap_or(0), 1, "only the trusted delivery arrived");
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_always_fails_gets_a_dead_letter_that_redrives_once_it_recovers() -> anyhow::Result<()>
{
    let notify = TestNotify::new().await?.start().await?;
    let mut client = notify.admin_client().await?;
    let (receiver, url) = start_receiver(vec![503]).await?;
    let created = client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url,
            event_types: vec!["*".into()],
            description: String::new(),
        })
        .await?
        .into_inner();
    signed_up(&notify).await?;

    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while dead.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
        dead =
            client.list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner().dead_letters;
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error, "HTTP 503");
    assert_eq!(receiver.seen.lock().map(|s| s.len()).unwrap_or(0), 3);

    *receiver.script.lock().unwrap_or_else(|p| p.into_inner()) = vec![200];
    client
        .redrive_dead_letter(pb::RedriveDeadLetterRequest { message_id: dead[0].message_id.clone() })
        .await?;
    wait_until("the redriven delivery", || receiver.seen.lock().map(|s| s.len() >= 4).unwrap_or(false))
        .await?;
    let last = receiver
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("none"))?;
    assert!(signed_by(&created.secret, &last.1, &last.2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin =
        notify.running.as_ref().map(|r| r.admin_addr).ok_or_else(|| anyhow::anyhow!("not running"))?;
    let (_, metrics) = tenx_test_support::http_get(admin, "/metrics").await?;
    for line in [
        "tenx_notification_failed_total{channel=\"webhook\"} 3",
        "tenx_notification_retried_total{channel=\"webhook\"} 2",
        "tenx_notification_dead_lettered_total{channel=\"webhook\"} 1",
        "tenx_notification_sent_total{channel=\"webhook\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing from\n{metrics}");
    }
    assert!(
        client
            .list_dead_letters(pb::ListDeadLettersRequest::default())
            .await?
            .into_inner()
            .dead_letters
            .is_empty()
    );
    let again = client
        .redrive_dead_letter(pb::RedriveDeadLetterRequest { message_id: dead[0].message_id.clone() })
        .await;
    assert_eq!(again.expect_err("not dead any more").code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_and_bad_endpoint_input_is_refused() -> anyhow::Result<()> {
    let notify = TestNotify::new().await?.start().await?;
    let mut client = notify.admin_client().await?;
    let (receiver, url) = start_receiver(vec![200]).await?;
    let created = client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url: url.clone(),
            event_types: vec!["auth.#".into(), "*".into()],
            description: String::new(),
        })
        .await;
    assert_eq!(created.expect_err("bad event type").code(), Code::InvalidArgument);
    for bad in ["", "ftp://x/y", "https://", "http://", "javascript:alert(1)"] {
        let r = client
            .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                url: bad.into(),
                event_types: vec!["*".into()],
                description: String::new(),
            })
            .await;
        assert_eq!(r.expect_err(bad).code(), Code::InvalidArgument, "{bad}");
    }
    let created = client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url,
            event_types: vec!["*".into()],
            description: String::new(),
        })
        .await?
        .into_inner();
    let endpoint_id = created.endpoint.as_ref().map(|e| e.id.clone()).unwrap_or_default();
    let rotated = client
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest { endpoint_id: endpoint_id.clone() })
        .await?
        .into_inner();
    signed_up(&notify).await?;
    wait_until("a delivery", || receiver.seen.lock().map(|s| !s.is_empty()).unwrap_or(false)).await?;
    let (_, headers, body) = receiver.seen.lock().unwrap_or_else(|p| p.into_inner())[0].clone();
    assert!(signed_by(&rotated.secret, &headers, &body) && signed_by(&created.secret, &headers, &body));

    let listed =
        client.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {}).await?.into_inner().endpoints;
    assert_eq!(listed.len(), 1);
    client
        .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest { endpoint_id: endpoint_id.clone() })
        .await?;
    assert!(
        client
            .list_webhook_endpoints(pb::ListWebhookEndpointsRequest {})
            .await?
            .into_inner()
            .endpoints
            .is_empty()
    );
    for bad in ["", "nope"] {
        let r = client
            .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest { endpoint_id: bad.into() })
            .await;
        assert_eq!(r.expect_err(bad).code(), Code::InvalidArgument);
        let r = client.list_deliveries(pb::ListDeliveriesRequest { endpoint_id: bad.into(), limit: 0 }).await;
        assert_eq!(r.expect_err(bad).code(), Code::InvalidArgument);
        let r = client.redrive_dead_letter(pb::RedriveDeadLetterRequest { message_id: bad.into() }).await;
        assert_eq!(r.expect_err(bad).code(), Code::InvalidArgument);
    }
    let missing = client
        .delete_webhook_endpoint(pb::DeleteWebhookEndpointRequest { endpoint_id: endpoint_id.clone() })
        .await;
    assert_eq!(missing.expect_err("deleted").code(), Code::NotFound);
    let r = client.list_deliveries(pb::ListDeliveriesRequest { endpoint_id, limit: 1000 }).await;
    assert_eq!(r.expect_err("limit").code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn an_endpoint_failing_longer_than_allowed_is_disabled_and_says_why() -> anyhow::Result<()> {
    let mut notify = TestNotify::new().await?;
    notify.settings.webhooks.disable_after_seconds = 0;
    let notify = notify.start().await?;
    let mut client = notify.admin_client().await?;
    let (receiver, url) = start_receiver(vec![500]).await?;
    client
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url,
            event_types: vec!["*".into()],
            description: String::new(),
        })
        .await?;
    signed_up(&notify).await?;
    let mut disabled = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while disabled.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "never disabled");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let endpoints =
            client.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {}).await?.into_inner().endpoints;
        disabled = endpoints.into_iter().find(|e| e.disabled_at.is_some());
    }
    let reason = disabled.map(|e| e.disabled_reason).unwrap_or_default();
    assert!(reason.contains("failing for longer than 0 s") && reason.contains("HTTP 500"), "{reason}");
    // No attempt is made to a disabled endpoint: the message is dead at once.
    let mut dead = Vec::new();
    while dead.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
        dead =
            client.list_dead_letters(pb::ListDeadLettersRequest::default()).await?.into_inner().dead_letters;
    }
    assert_eq!(dead[0].last_error, "endpoint disabled or deleted");
    assert_eq!(receiver.seen.lock().map(|s| s.len()).unwrap_or(0), 2);
    Ok(())
}

#[tokio::test]
async fn webhook_administration_needs_the_admin_role_and_refuses_internal_addresses() -> anyhow::Result<()> {
    let mut notify = TestNotify::new().await?;
    notify.settings.webhooks.allow_private_networks = false;
    let notify = notify.start().await?;
    let request = |url: &str| pb::CreateWebhookEndpointRequest {
        url: url.into(),
        event_types: vec!["*".into()],
        description: String::new(),
    };
    let mut user = notify.anonymous_client().await?;
    let anonymous = user.create_webhook_endpoint(request("http://crm.example.com/hook")).await;
    assert_eq!(anonymous.expect_err("no identity").code(), Code::Unauthenticated);
    let not_admin = user
        .list_dead_letters(crate::support::as_user(&Uuid::now_v7(), pb::ListDeadLettersRequest::default()))
        .await;
    assert_eq!(not_admin.expect_err("no role").code(), Code::PermissionDenied);

    let mut admin = notify.admin_client().await?;
    for internal in [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://localhost.:8080/x",
        "https://127.0.0.1/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://192.168.0.10/x",
    ] {
        let refused = admin.create_webhook_endpoint(request(internal)).await;
        assert_eq!(refused.expect_err(internal).code(), Code::InvalidArgument, "{internal}");
    }
    admin.create_webhook_endpoint(request("http://crm.example.com/hook")).await?;
    admin.create_webhook_endpoint(request("https://crm.example.com/hook")).await?;
    Ok(())
}
