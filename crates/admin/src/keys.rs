//! `tenx-admin keys` over auth's `ListSigningKeys`: the signing keys and
//! their rotation schedule.

use std::io::Write;

use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::auth::v1::signing_key::State;
use tonic::metadata::{Ascii, MetadataValue};

use crate::cli::Services;
use crate::{refused, request};

fn when(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp.map_or_else(|| "-".to_owned(), ToString::to_string)
}

pub async fn run(
    services: &Services,
    bearer: MetadataValue<Ascii>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut client = AuthServiceClient::new(crate::channel(&services.auth).await?);
    let listed = client
        .list_signing_keys(request(pb::ListSigningKeysRequest {}, &bearer))
        .await
        .map_err(|s| refused("auth", s))?
        .into_inner();
    match (listed.rotation_period_seconds, &listed.next_key_due_at) {
        (0, _) => writeln!(out, "rotation: not scheduled (tenx-auth rotate-keys only)")?,
        (period, Some(due)) => writeln!(out, "rotation: every {period} s; next key due {due}")?,
        (period, None) => writeln!(out, "rotation: every {period} s; the next key is published")?,
    }
    for key in &listed.keys {
        match key.state() {
            State::Current => {
                writeln!(out, "current  {}  signing since {}", key.kid, when(key.activates_at.as_ref()))?
            }
            State::Next => {
                writeln!(out, "next     {}  signs from {}", key.kid, when(key.activates_at.as_ref()))?
            }
            State::Retired | State::Unspecified => writeln!(
                out,
                "retired  {}  since {}, published until {}",
                key.kid,
                when(key.retired_at.as_ref()),
                when(key.published_until.as_ref())
            )?,
        }
    }
    Ok(())
}
