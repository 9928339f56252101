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
