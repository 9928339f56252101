//! The scenarios, by name, each a call the engine repeats and the users
//! it needs made first, through either door: gRPC (the gateway's or
//! auth's own) or the gateway's HTTP API. Every call checks its answer: a
//! wrong one is an error, not a fast success.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::http::Http;

/// A call the engine repeats: `n` is the request's number.
pub type Call = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What `--target` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The gateway's gRPC door (JWT checked, rate limited, then auth).
    Gateway,
    /// The gateway's HTTP API (the same, as JSON over HTTP/1.1).
    Http,
    /// Auth itself, past the edge.
    Auth,
}

impl Target {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gateway" => Some(Self::Gateway),
            "http" => Some(Self::Http),
            "auth" => Some(Self::Auth),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Http => "http",
            Self::Auth => "auth",
        }
    }

    /// Where `make up` serves it.
    pub fn default_addr(self) -> SocketAddr {
        match self {
            Self::Gateway => SocketAddr::from(([127, 0, 0, 1], 50050)),
            Self::Http => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Self::Auth => SocketAddr::from(([127, 0, 0, 1], 50051)),
        }
    }
}

/// The scenarios there are.
pub const NAMES: [&str; 3] = ["me", "login", "signup"];

pub const PASSWORD: &str = "load-test password 1";

/// How calls reach the target.
#[derive(Debug, Clone)]
pub enum Door {
    /// HTTP/2 connections, calls spread over them.
    Grpc(Arc<Vec<AuthServiceClient<Channel>>>),
    /// A keep-alive connection pool.
    Http(Arc<Http>),
}

impl Door {
    /// `connections` connections to `target` at `addr` (a pool for HTTP).
    pub async fn connect(target: Target, addr: SocketAddr, connections: usize) -> anyhow::Result<Self> {
        if target == Target::Http {
            return Ok(Self::Http(Arc::new(Http::new(addr))));
        }
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            let channel = Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
            clients.push(AuthServiceClient::new(channel));
        }
        Ok(Self::Grpc(Arc::new(clients)))
    }

    fn grpc(clients: &[AuthServiceClient<Channel>], n: u64) -> AuthServiceClient<Channel> {
        clients[(n % clients.len() as u64) as usize].clone()
    }

    /// Signs up `email`: the user's id and access token.
    async fn sign_up(self, n: u64, email: String) -> Result<(String, String), String> {
        match self {
            Door::Grpc(clients) => {
                let request = pb::SignUpRequest {
                    email,
                    password: PASSWORD.into(),
                    display_name: "Load".into(),
                    ..Default::default()
                };
                let reply = Self::grpc(&clients, n).sign_up(request).await.map_err(status)?.into_inner();
                Ok(id_and_token(reply.user, reply.tokens))
            }
            Door::Http(http) => {
                let body = json!({ "email": email, "password": PASSWORD, "display_name": "Load" });
                let reply = http.send("POST", "/v1/auth/signup", None, Some(body), 201).await?;
                Ok(json_id_and_token(&reply))
            }
        }
    }

    /// Logs `email` in: the user's id and a new access token.
    async fn login(self, n: u64, email: String) -> Result<(String, String), String> {
        match self {
            Door::Grpc(clients) => {
                let request =
                    pb::LoginRequest { email, password: PASSWORD.into(), device_name: "tenx-load".into() };
                let reply = Self::grpc(&clients, n).login(request).await.map_err(status)?.into_inner();
                Ok(id_and_token(reply.user, reply.tokens))
            }
            Door::Http(http) => {
                let body = json!({ "email": email, "password": PASSWORD, "device_name": "tenx-load" });
                let reply = http.send("POST", "/v1/auth/login", None, Some(body), 200).await?;
                Ok(json_id_and_token(&reply))
            }
        }
    }

    /// The caller's own profile: its id.
    async fn me(self, n: u64, token: String) -> Result<String, String> {
        match self {
            Door::Grpc(clients) => {
                let mut request = tonic::Request::new(pb::GetUserRequest::default());
                let bearer = format!("Bearer {token}").parse().map_err(|_| "a bad token".to_owned())?;
                request.metadata_mut().insert("authorization", bearer);
                let reply = Self::grpc(&clients, n).get_user(request).await.map_err(status)?.into_inner();
                Ok(reply.user.map(|u| u.id).unwrap_or_default())
            }
            Door::Http(http) => {
                let reply = http.send("GET", "/v1/me", Some(&token), None, 200).await?;
                Ok(text(&reply["user"]["id"]))
            }
        }
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// What a signup or a login answers over gRPC: the user's id and the
/// access token (empty when missing).
fn id_and_token(user: Option<pb::User>, tokens: Option<pb::Tokens>) -> (String, String) {
    (user.map(|u| u.id).unwrap_or_default(), tokens.map(|t| t.access_token).unwrap_or_default())
}

/// The same, from the HTTP API's JSON.
fn json_id_and_token(reply: &Value) -> (String, String) {
    (text(&reply["user"]["id"]), text(&reply["tokens"]["access_token"]))
}

fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

/// A user made for a run: its email, id and access token.
#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    pub id: String,
    pub token: String,
}

fn email(run: &str, n: u64) -> String {
    format!("load-{run}-{n}@example.com")
}

/// Signs up `n` users through `door` (`run` keeps their emails apart from
/// other runs').
pub async fn sign_up_users(door: &Door, run: &str, n: u64) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::new();
    for i in 0..n {
        let email = email(&format!("{run}-u"), i);
        let (id, token) = door.clone().sign_up(i, email.clone()).await.map_err(anyhow::Error::msg)?;
        anyhow::ensure!(!id.is_empty() && !token.is_empty(), "signing up {email}: no user or token");
        users.push(User { email, id, token });
    }
    Ok(users)
}

/// The call of scenario `name` through `door`, with `users` made for it
/// (`me` and `login` need some). `run` names this run's new users.
pub fn call(name: &str, door: Door, users: Vec<User>, run: String) -> Option<Call> {
    let users = Arc::new(users);
    let user = move |n: u64| users[(n % users.len() as u64) as usize].clone();
    let call: Call = match name {
        // Cached authenticated reads: the caller's own profile.
        "me" => Arc::new(move |n| {
            let (door, user) = (door.clone(), user(n));
            Box::pin(async move {
                let id = door.me(n, user.token).await?;
                if id == user.id { Ok(()) } else { Err(format!("GetUser answered another user: {id:?}")) }
            })
        }),
        // Password logins, spread over the users (one account's failures
        // would lock it; these all succeed).
        "login" => Arc::new(move |n| {
            let (door, user) = (door.clone(), user(n));
            Box::pin(async move {
                let (id, token) = door.login(n, user.email).await?;
                if id == user.id && !token.is_empty() {
                    Ok(())
                } else {
                    Err("Login answered without the user or a token".into())
                }
            })
        }),
        // A burst of new accounts (each hashes a password).
        "signup" => Arc::new(move |n| {
            let (door, email) = (door.clone(), email(&run, n));
            Box::pin(async move {
                let (id, token) = door.sign_up(n, email).await?;
                if !id.is_empty() && !token.is_empty() {
                    Ok(())
                } else {
                    Err("SignUp answered without a user or a token".into())
                }
            })
        }),
        _ => return None,
    };
    Some(call)
}

/// How many users a scenario needs made before it runs.
pub fn users_needed(name: &str) -> u64 {
    match name {
        "me" | "login" => 16,
        _ => 0,
    }
}
