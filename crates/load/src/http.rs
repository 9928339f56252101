//! The gateway's HTTP API as a door: JSON over HTTP/1.1, keep-alive
//! connections pooled (as a browser or a mobile client's HTTP stack).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Http {
    pub fn new(addr: SocketAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(connector);
        Self { client, base: format!("http://{addr}") }
    }

    /// Sends one request (with the caller's token and a mutation's
    /// `Idempotency-Key` when given) and reads the JSON answer, which must
    /// come with status `expected`; otherwise the error says the status and
    /// the error code the body carries.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        idempotency_key: Option<&str>,
        body: Option<Value>,
        expected: u16,
    ) -> Result<Value, String> {
        let mut request = http::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let bytes = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(bytes)).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("HTTP body: {e}"))?.to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != expected {
            let code = json["error"]["code"].as_str().unwrap_or("no error code");
            return Err(format!("HTTP {status}: {code}"));
        }
        Ok(json)
    }
}
