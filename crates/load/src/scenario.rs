//! The scenarios, by name, each a call the engine repeats and the users
//! it needs made first. Every call checks its answer: a wrong one is an
//! error, not a fast success.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::transport::{Channel, Endpoint};

/// A call the engine repeats: `n` is the request's number.
pub type Call = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What `--target` names: both speak auth's gRPC API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The gateway's gRPC door (JWT checked, rate limited, then auth).
    Gateway,
    /// Auth itself, past the edge.
    Auth,
}

impl Target {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gateway" => Some(Self::Gateway),
            "auth" => Some(Self::Auth),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Auth => "auth",
        }
    }

    /// Where `make up` serves it.
    pub fn default_addr(self) -> SocketAddr {
        match self {
            Self::Gateway => SocketAddr::from(([127, 0, 0, 1], 50050)),
            Self::Auth => SocketAddr::from(([127, 0, 0, 1], 50051)),
        }
    }
}

/// The scenarios there are.
pub const NAMES: [&str; 3] = ["me", "login", "signup"];

pub const PASSWORD: &str = "load-test password 1";

/// `connections` HTTP/2 connections to `addr`, calls spread over them.
pub async fn connect(
    addr: SocketAddr,
    connections: usize,
) -> anyhow::Result<Vec<AuthServiceClient<Channel>>> {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
        clients.push(AuthServiceClient::new(channel));
    }
    Ok(clients)
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

/// Signs up `n` users (`run` keeps their emails apart from other runs').
pub async fn sign_up_users(
    client: &AuthServiceClient<Channel>,
    run: &str,
    n: u64,
) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::new();
    for i in 0..n {
        let email = email(&format!("{run}-u"), i);
        let request = pb::SignUpRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            display_name: "Load".into(),
            ..Default::default()
        };
        let reply = client.clone().sign_up(request).await?.into_inner();
        let id = reply.user.map(|u| u.id).unwrap_or_default();
        let token = reply.tokens.map(|t| t.access_token).unwrap_or_default();
        anyhow::ensure!(!id.is_empty() && !token.is_empty(), "signing up {email}: no user or token");
        users.push(User { email, id, token });
    }
    Ok(users)
}

fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

/// The call of scenario `name` against `clients`, with `users` made for
/// it (`me` and `login` need some). `run` names this run's new users.
pub fn call(
    name: &str,
    clients: Vec<AuthServiceClient<Channel>>,
    users: Vec<User>,
    run: String,
) -> Option<Call> {
    let clients = Arc::new(clients);
    let users = Arc::new(users);
    let pick = move |n: u64| clients[(n % clients.len() as u64) as usize].clone();
    let call: Call = match name {
        // Cached authenticated reads: the caller's own profile.
        "me" => Arc::new(move |n| {
            let (mut client, user) = (pick(n), users[(n % users.len() as u64) as usize].clone());
            Box::pin(async move {
                let mut request = tonic::Request::new(pb::GetUserRequest::default());
                let bearer =
                    format!("Bearer {}", user.token).parse().map_err(|_| "a bad token".to_owned())?;
                request.metadata_mut().insert("authorization", bearer);
                let reply = client.get_user(request).await.map_err(status)?.into_inner();
                match reply.user {
                    Some(u) if u.id == user.id => Ok(()),
                    other => Err(format!("GetUser answered another user: {other:?}")),
                }
            })
        }),
        // Password logins, spread over the users (one account's failures
        // would lock it; these all succeed).
        "login" => Arc::new(move |n| {
            let (mut client, user) = (pick(n), users[(n % users.len() as u64) as usize].clone());
            Box::pin(async move {
                let request = pb::LoginRequest {
                    email: user.email,
                    password: PASSWORD.into(),
                    device_name: "tenx-load".into(),
                };
                let reply = client.login(request).await.map_err(status)?.into_inner();
                match (reply.user, reply.tokens) {
                    (Some(u), Some(t)) if u.id == user.id && !t.access_token.is_empty() => Ok(()),
                    _ => Err("Login answered without the user or a token".into()),
                }
            })
        }),
        // A burst of new accounts (each hashes a password).
        "signup" => Arc::new(move |n| {
            let mut client = pick(n);
            let email = email(&run, n);
            Box::pin(async move {
                let request = pb::SignUpRequest {
                    email,
                    password: PASSWORD.into(),
                    display_name: "Load".into(),
                    ..Default::default()
                };
                let reply = client.sign_up(request).await.map_err(status)?.into_inner();
                match reply.user {
                    Some(u) if !u.id.is_empty() => Ok(()),
                    _ => Err("SignUp answered without a user".into()),
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
