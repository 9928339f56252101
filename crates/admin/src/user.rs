//! `tenx-admin user EMAIL|ID` over auth's `LookupUser`: one account as
//! support needs it.

use std::io::Write;

use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::metadata::{Ascii, MetadataValue};

use crate::cli::Services;
use crate::{refused, request};

fn when(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp.map_or_else(|| "never".to_owned(), ToString::to_string)
}

pub async fn run(
    who: &str,
    services: &Services,
    bearer: MetadataValue<Ascii>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let lookup = if who.contains('@') {
        pb::LookupUserRequest { email: who.to_owned(), ..Default::default() }
    } else {
        pb::LookupUserRequest { user_id: who.to_owned(), ..Default::default() }
    };
    let mut client = AuthServiceClient::new(crate::channel(&services.auth).await?);
    let found =
        client.lookup_user(request(lookup, &bearer)).await.map_err(|s| refused("auth", s))?.into_inner();
    let user = found.user.unwrap_or_default();
    let roles = if found.roles.is_empty() { "-".to_owned() } else { found.roles.join(",") };
    let verified = if user.email_verified { "verified" } else { "unverified" };
    writeln!(out, "{}  {}  {verified}  roles {roles}", user.id, user.email)?;
    writeln!(out, "  name {:?}  created {}", user.display_name, when(user.created_at.as_ref()))?;
    writeln!(
        out,
        "  sessions {}  last login {}  api keys {}",
        found.active_sessions,
        when(found.last_login_at.as_ref()),
        found.active_api_keys
    )?;
    match found.locked_clients {
        0 => writeln!(out, "  logins not locked")?,
        n => writeln!(out, "  logins locked for {n} client(s) until {}", when(found.locked_until.as_ref()))?,
    }
    Ok(())
}

/// `grant-role` / `revoke-role`: auth's `GrantRole` / `RevokeRole`.
pub async fn set_role(
    who: &str,
    role: &str,
    grant: bool,
    services: &Services,
    bearer: MetadataValue<Ascii>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (email, user_id) =
        if who.contains('@') { (who.to_owned(), String::new()) } else { (String::new(), who.to_owned()) };
    let mut client = AuthServiceClient::new(crate::channel(&services.auth).await?);
    let roles = |roles: &[String]| if roles.is_empty() { "-".to_owned() } else { roles.join(",") };
    if grant {
        let request = pb::GrantRoleRequest { email, user_id, role: role.to_owned() };
        let done =
            client.grant_role(crate::request(request, &bearer)).await.map_err(|s| refused("auth", s))?;
        let done = done.into_inner();
        let what = if done.changed { "granted; in the account's next token" } else { "already held" };
        writeln!(out, "{who}  roles {}  ({role} {what})", roles(&done.roles))?;
    } else {
        let request = pb::RevokeRoleRequest { email, user_id, role: role.to_owned() };
        let done =
            client.revoke_role(crate::request(request, &bearer)).await.map_err(|s| refused("auth", s))?;
        let done = done.into_inner();
        let what = if done.changed {
            format!("revoked; {} session(s) ended", done.sessions_revoked)
        } else {
            "not held".to_owned()
        };
        writeln!(out, "{who}  roles {}  ({role} {what})", roles(&done.roles))?;
    }
    Ok(())
}
