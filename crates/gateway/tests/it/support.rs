//! The test platform (`tenx-test-platform`: auth, notification and
//! billing, gateways in front of it) and an HTTP client that returns
//! everything.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

pub use tenx_test_platform::Platform;

/// For a test that counts one allowance shared through Redis: on a loaded
/// machine a Redis answer can take longer than the default 250 ms, and a
/// check then goes to the instance's own limiter (as it should: the
/// fallback has its own test), which counts apart; so such a test waits
/// longer for Redis.
pub fn wait_for_redis(settings: &mut tenx_gateway::settings::GatewaySettings) {
    settings.redis.response_timeout_ms = 5_000;
}

/// An HTTP answer, whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub text: String,
    pub json: Value,
    /// The body as received (an image).
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code of the one error shape; fails the test when the
    /// body is not that shape.
    pub fn error_code(&self) -> String {
        let e = &self.json["error"];
        assert!(
            e["code"].is_string() && e["message"].is_string() && e["details"].is_array(),
            "not the error shape: {} {}",
            self.status,
            self.text
        );
        e["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// Sends one request; `body` is sent as is (JSON unless said otherwise).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<Reply> {
    let mut all = headers.to_vec();
    if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        all.insert(0, ("content-type", "application/json"));
    }
    send_bytes(addr, method, path, &all, body.unwrap_or_default().as_bytes().to_vec()).await
}

/// Sends one request with a body of any bytes, with exactly `headers`.
pub async fn send_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> anyhow::Result<Reply> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut builder = http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Reply { status, headers, text, json, body: bytes })
}

pub fn unique_email() -> String {
    format!("g-{}@example.com", uuid::Uuid::new_v4().simple())
}

pub const PASSWORD: &str = "correct horse battery";

/// Signs up over HTTP; returns `(access token, refresh token, user id)`.
pub async fn sign_up(addr: SocketAddr, email: &str) -> anyhow::Result<(String, String, String)> {
    let body = serde_json::json!({ "email": email, "password": PASSWORD, "display_name": "Ada" }).to_string();
    let reply = send(addr, "POST", "/v1/auth/signup", &[], Some(&body)).await?;
    anyhow::ensure!(reply.status == 201, "signup: {} {}", reply.status, reply.text);
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok((
        s(&reply.json["tokens"]["access_token"]),
        s(&reply.json["tokens"]["refresh_token"]),
        s(&reply.json["user"]["id"]),
    ))
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
