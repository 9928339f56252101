//! The operator's command line. It talks to each service's gRPC port (not
//! the public edge, which does not serve operator RPCs) with the operator's
//! credential, taken from the environment, never from the command line,
//! which `ps` shows to everyone on the machine.

mod cli;
mod dead_letters;
mod keys;
mod replay;
mod status;
mod user;

use std::io::Write;

use tenx_proto::auth::v1::IssueServiceTokenRequest;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

pub use cli::{Command, Services, USAGE, Usage, parse};

/// The environment variable holding the `operator` service client's secret
/// (auth's `service_clients.operator`): exchanged for a service token.
pub const SECRET_ENV: &str = "TENX_ADMIN_SECRET";
/// Or an access token of a user with the `admin` role, used as it is.
pub const TOKEN_ENV: &str = "TENX_ADMIN_TOKEN";

/// Who the operator is.
#[derive(Clone)]
pub enum Credential {
    /// The `operator` client's secret, exchanged at auth for a token.
    Secret(String),
    /// An admin's access token.
    Token(String),
    None,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Secret(_) => "Secret(…)",
            Credential::Token(_) => "Token(…)",
            Credential::None => "None",
        })
    }
}

impl Credential {
    /// [`TOKEN_ENV`], else [`SECRET_ENV`].
    pub fn from_env() -> Self {
        let set = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        match (set(TOKEN_ENV), set(SECRET_ENV)) {
            (Some(token), _) => Credential::Token(token),
            (None, Some(secret)) => Credential::Secret(secret),
            (None, None) => Credential::None,
        }
    }

    /// `Bearer <token>`, asking auth for one when given the secret.
    async fn bearer(&self, services: &Services) -> anyhow::Result<MetadataValue<Ascii>> {
        let token = match self {
            Credential::Token(token) => token.clone(),
            Credential::Secret(secret) => {
                let request = IssueServiceTokenRequest { service: "operator".into(), secret: secret.clone() };
                AuthServiceClient::new(channel(&services.auth).await?)
                    .issue_service_token(request)
                    .await
                    .map_err(|s| anyhow::anyhow!("auth refused the operator's secret: {}", s.message()))?
                    .into_inner()
                    .access_token
            }
            Credential::None => {
                anyhow::bail!("no credential: set {SECRET_ENV} (the operator client's secret) or {TOKEN_ENV}")
            }
        };
        Ok(format!("Bearer {token}").parse()?)
    }
}

/// `message` with the operator's credential.
fn request<T>(message: T, bearer: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer.clone());
    request
}

/// A refusal as the operator needs to read it.
fn refused(service: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{service}: {:?}: {}", status.code(), status.message())
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    let url = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    Endpoint::from_shared(url.clone())?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))
}

/// Runs the command line `args` (without the program name), writing what
/// it shows to `out`.
pub async fn run(args: &[String], credential: Credential, out: &mut impl Write) -> anyhow::Result<()> {
    let (command, services) = parse(args)?;
    if let Command::Help = command {
        writeln!(out, "{USAGE}")?;
        return Ok(());
    }
    let bearer = credential.bearer(&services).await?;
    match command {
        Command::Help => Ok(()),
        Command::Token => {
            let token = bearer.to_str()?.trim_start_matches("Bearer ");
            writeln!(out, "{token}")?;
            Ok(())
        }
        Command::Keys => keys::run(&services, bearer, out).await,
        Command::User(who) => user::run(&who, &services, bearer, out).await,
        Command::Role { who, role, grant } => {
            user::set_role(&who, &role, grant, &services, bearer, out).await
        }
        Command::Replay(replay) => replay::run(replay, &services, bearer, out).await,
        Command::Status { services: which } => status::run(&which, &services, bearer, out).await,
        Command::DeadLetters(action) => dead_letters::run(action, &services, bearer, out).await,
    }
}
