//! How calls reach the platform: gRPC (the gateway's door, or each
//! service's own) or the gateway's HTTP API. Each operation a scenario
//! makes is here once per door, and checks its answer: a wrong one is an
//! error, not a fast success.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::billing::v1 as billing;
use tenx_proto::billing::v1::billing_service_client::BillingServiceClient;
use tenx_proto::notification::v1 as notification;
use tenx_proto::notification::v1::notification_service_client::NotificationServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::http::Http;

pub const PASSWORD: &str = "load-test password 1";

/// The price `subscribe` buys: Business, monthly, USD 50.00, no trial
/// (charged at once), from billing's demo catalog.
pub const PRICE_ID: &str = "20000000-0000-4000-8000-000000000004";

/// A card the simulated provider always charges.
pub const CARD: &str = "tok_success";

/// What `--target` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The gateway's gRPC door (JWT checked, rate limited, then the service).
    Gateway,
    /// The gateway's HTTP API (the same, as JSON over HTTP/1.1).
    Http,
    /// Each service itself, past the edge.
    Direct,
}

impl Target {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gateway" => Some(Self::Gateway),
            "http" => Some(Self::Http),
            "direct" => Some(Self::Direct),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Http => "http",
            Self::Direct => "direct",
        }
    }

    /// Where `make up` serves the gateway's door (`Direct`: auth).
    pub fn default_addr(self) -> SocketAddr {
        match self {
            Self::Gateway => SocketAddr::from(([127, 0, 0, 1], 50050)),
            Self::Http => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Self::Direct => Services::default().auth,
        }
    }
}

/// Where each service serves gRPC itself: the `direct` target, and the
/// operator's calls (a service token from auth, `Send` to notification:
/// operator RPCs the edge does not serve).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    pub auth: SocketAddr,
    pub billing: SocketAddr,
    pub notification: SocketAddr,
}

impl Default for Services {
    /// `make up`'s ports.
    fn default() -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self { auth: local(50051), billing: local(50052), notification: local(50053) }
    }
}

/// A service's clients over the run's connections.
#[derive(Debug)]
pub struct Grpc {
    auth: Vec<AuthServiceClient<Channel>>,
    billing: Vec<BillingServiceClient<Channel>>,
    notification: Vec<NotificationServiceClient<Channel>>,
}

/// How calls reach the target.
#[derive(Debug, Clone)]
pub enum Door {
    /// HTTP/2 connections, calls spread over them.
    Grpc(Arc<Grpc>),
    /// A keep-alive connection pool.
    Http(Arc<Http>),
}

async fn channels(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..n.max(1) {
        channels.push(Endpoint::from_shared(format!("http://{addr}"))?.connect().await?);
    }
    Ok(channels)
}

impl Door {
    /// `connections` connections to each place `target` is served (a pool
    /// for HTTP): the gateway's door at `addr`, or each of `services`.
    pub async fn connect(
        target: Target,
        addr: SocketAddr,
        services: Services,
        connections: usize,
    ) -> anyhow::Result<Self> {
        let (auth, billing, notification) = match target {
            Target::Http => return Ok(Self::Http(Arc::new(Http::new(addr)))),
            // One set of connections carries every service's calls.
            Target::Gateway => {
                let shared = channels(addr, connections).await?;
                (shared.clone(), shared.clone(), shared)
            }
            Target::Direct => (
                channels(services.auth, connections).await?,
                channels(services.billing, connections).await?,
                channels(services.notification, connections).await?,
            ),
        };
        Ok(Self::Grpc(Arc::new(Grpc {
            auth: auth.into_iter().map(AuthServiceClient::new).collect(),
            billing: billing.into_iter().map(BillingServiceClient::new).collect(),
            notification: notification.into_iter().map(NotificationServiceClient::new).collect(),
        })))
    }

    /// Signs up `email`: the user's id and access token.
    pub async fn sign_up(self, n: u64, email: String) -> Result<(String, String), String> {
        match self {
            Door::Grpc(grpc) => {
                let request = auth::SignUpRequest {
                    email,
                    password: PASSWORD.into(),
                    display_name: "Load".into(),
                    ..Default::default()
                };
                let reply = pick(&grpc.auth, n).sign_up(request).await.map_err(status)?.into_inner();
                Ok(id_and_token(reply.user, reply.tokens))
            }
            Door::Http(http) => {
                let body = json!({ "email": email, "password": PASSWORD, "display_name": "Load" });
                let reply = http.send("POST", "/v1/auth/signup", None, None, Some(body), 201).await?;
                Ok(json_id_and_token(&reply))
            }
        }
    }

    /// Logs `email` in: the user's id and a new access token.
    pub async fn login(self, n: u64, email: String) -> Result<(String, String), String> {
        match self {
            Door::Grpc(grpc) => {
                let request =
                    auth::LoginRequest { email, password: PASSWORD.into(), device_name: "tenx-load".into() };
                let reply = pick(&grpc.auth, n).login(request).await.map_err(status)?.into_inner();
                Ok(id_and_token(reply.user, reply.tokens))
            }
            Door::Http(http) => {
                let body = json!({ "email": email, "password": PASSWORD, "device_name": "tenx-load" });
                let reply = http.send("POST", "/v1/auth/login", None, None, Some(body), 200).await?;
                Ok(json_id_and_token(&reply))
            }
        }
    }

    /// The caller's own profile: its id.
    pub async fn me(self, n: u64, token: String) -> Result<String, String> {
        match self {
            Door::Grpc(grpc) => {
                let request = bearer(&token, auth::GetUserRequest::default(), None)?;
                let reply = pick(&grpc.auth, n).get_user(request).await.map_err(status)?.into_inner();
                Ok(reply.user.map(|u| u.id).unwrap_or_default())
            }
            Door::Http(http) => {
                let reply = http.send("GET", "/v1/me", Some(&token), None, None, 200).await?;
                Ok(text(&reply["user"]["id"]))
            }
        }
    }

    /// Adds the always-charged card and subscribes to [`PRICE_ID`] with it
    /// (`key` makes each call's idempotency keys): the subscription must
    /// be active and its first invoice paid.
    pub async fn subscribe(self, n: u64, token: String, key: String) -> Result<(), String> {
        let (subscription, invoice) = match self {
            Door::Grpc(grpc) => {
                let card = billing::AddPaymentMethodRequest { token: CARD.into(), set_default: false };
                let card = bearer(&token, card, Some(&format!("{key}-card")))?;
                let card =
                    pick(&grpc.billing, n).add_payment_method(card).await.map_err(status)?.into_inner();
                let request = billing::CreateSubscriptionRequest {
                    price_id: PRICE_ID.into(),
                    payment_method_id: card.payment_method.map(|m| m.id).unwrap_or_default(),
                    trial_days: Some(0),
                };
                let request = bearer(&token, request, Some(&format!("{key}-subscription")))?;
                let reply =
                    pick(&grpc.billing, n).create_subscription(request).await.map_err(status)?.into_inner();
                let subscription = reply.subscription.map(|s| s.status());
                let invoice = reply.invoice.map(|i| i.status());
                (
                    subscription.map(|s| s.as_str_name().to_owned()),
                    invoice.map(|i| i.as_str_name().to_owned()),
                )
            }
            Door::Http(http) => {
                let card = json!({ "token": CARD });
                let card_key = format!("{key}-card");
                let card = http
                    .send(
                        "POST",
                        "/v1/billing/payment-methods",
                        Some(&token),
                        Some(&card_key),
                        Some(card),
                        201,
                    )
                    .await?;
                let body = json!({
                    "price_id": PRICE_ID,
                    "payment_method_id": card["payment_method"]["id"],
                    "trial_days": 0,
                });
                let subscription_key = format!("{key}-subscription");
                let reply = http
                    .send(
                        "POST",
                        "/v1/billing/subscriptions",
                        Some(&token),
                        Some(&subscription_key),
                        Some(body),
                        201,
                    )
                    .await?;
                let named =
                    |v: &Value, prefix: &str| v.as_str().map(|s| format!("{prefix}{}", s.to_uppercase()));
                (
                    named(&reply["subscription"]["status"], "SUBSCRIPTION_STATUS_"),
                    named(&reply["invoice"]["status"], "INVOICE_STATUS_"),
                )
            }
        };
        match (subscription.as_deref(), invoice.as_deref()) {
            (Some("SUBSCRIPTION_STATUS_ACTIVE"), Some("INVOICE_STATUS_PAID")) => Ok(()),
            other => Err(format!("CreateSubscription: not active and paid but {other:?}")),
        }
    }

    /// Whether one of the caller's newest in-app notifications says `marker`.
    pub async fn inbox_has(self, n: u64, token: String, marker: String) -> Result<bool, String> {
        let bodies: Vec<String> = match self {
            Door::Grpc(grpc) => {
                let request = notification::ListNotificationsRequest { page_size: 100, ..Default::default() };
                let request = bearer(&token, request, None)?;
                let reply = pick(&grpc.notification, n)
                    .list_notifications(request)
                    .await
                    .map_err(status)?
                    .into_inner();
                reply.notifications.into_iter().map(|n| n.body).collect()
            }
            Door::Http(http) => {
                let reply = http
                    .send("GET", "/v1/notifications?page_size=100", Some(&token), None, None, 200)
                    .await?;
                reply["notifications"].as_array().into_iter().flatten().map(|n| text(&n["body"])).collect()
            }
        };
        Ok(bodies.iter().any(|body| body.contains(&marker)))
    }
}

/// The client of call `n` (calls spread over the connections).
fn pick<T: Clone>(clients: &[T], n: u64) -> T {
    clients[(n % clients.len() as u64) as usize].clone()
}

/// `message` with the caller's access token and, for a mutation, its
/// idempotency key.
fn bearer<T>(token: &str, message: T, key: Option<&str>) -> Result<tonic::Request<T>, String> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().map_err(|_| "a bad token".to_owned())?;
    request.metadata_mut().insert("authorization", value);
    if let Some(key) = key {
        let key = key.parse().map_err(|_| "a bad idempotency key".to_owned())?;
        request.metadata_mut().insert("idempotency-key", key);
    }
    Ok(request)
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// What a signup or a login answers over gRPC: the user's id and the
/// access token (empty when missing).
fn id_and_token(user: Option<auth::User>, tokens: Option<auth::Tokens>) -> (String, String) {
    (user.map(|u| u.id).unwrap_or_default(), tokens.map(|t| t.access_token).unwrap_or_default())
}

/// The same, from the HTTP API's JSON.
fn json_id_and_token(reply: &Value) -> (String, String) {
    (text(&reply["user"]["id"]), text(&reply["tokens"]["access_token"]))
}

pub(crate) fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}
