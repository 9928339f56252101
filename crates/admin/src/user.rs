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

/// `EMAIL|ID` as auth's requests take it: `(email, user_id)`, one empty.
fn email_or_id(who: &str) -> (String, String) {
    if who.contains('@') { (who.to_owned(), String::new()) } else { (String::new(), who.to_owned()) }
}

/// Roles as one word: `admin,billing` or `-`.
fn roles(roles: &[String]) -> String {
    if roles.is_empty() { "-".to_owned() } else { roles.join(",") }
}

pub async fn run(
    who: &str,
    services: &Services,
    bearer: MetadataValue<Ascii>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (email, user_id) = email_or_id(who);
    let lookup = pb::LookupUserRequest { email, user_id };
    let mut client = AuthServiceClient::new(crate::channel(&services.auth).await?);
    let found =
        client.lookup_user(request(lookup, &bearer)).await.map_err(|s| refused("auth", s))?.into_inner();
    let user = found.user.unwrap_or_default();
    let roles = roles(&found.roles);
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
    let (email, user_id) = email_or_id(who);
    let mut client = AuthServiceClient::new(crate::channel(&services.auth).await?);
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
