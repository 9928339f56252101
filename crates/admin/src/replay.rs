//! `tenx-admin replay` over each service's `EventReplayService`: a window
//! of published events sent again, page after page.

use std::io::Write;
use std::time::SystemTime;

use tenx_proto::ops::v1::ReplayEventsRequest;
use tenx_proto::ops::v1::event_replay_service_client::EventReplayServiceClient;
use tonic::metadata::{Ascii, MetadataValue};

use crate::cli::{Replay, Services};
use crate::{refused, request};

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    at.into()
}

pub async fn run(
    replay: Replay,
    services: &Services,
    bearer: MetadataValue<Ascii>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let kind = replay.event_type.clone().unwrap_or_default();
    for service in &replay.services {
        let name = service.name();
        let mut client = EventReplayServiceClient::new(crate::channel(services.of(*service)).await?);
        let (mut total, mut page_token) = (0u64, String::new());
        let oldest = loop {
            let page = ReplayEventsRequest {
                from: Some(timestamp(replay.from)),
                to: Some(timestamp(replay.to)),
                event_type: kind.clone(),
                page_size: 0,
                page_token: std::mem::take(&mut page_token),
            };
            let done = client
                .replay_events(request(page, &bearer))
                .await
                .map_err(|s| refused(name, s))?
                .into_inner();
            total += u64::from(done.replayed);
            if done.next_page_token.is_empty() {
                break done.oldest_retained;
            }
            page_token = done.next_page_token;
        };
        let what = if kind.is_empty() { "events".to_owned() } else { format!("{kind} events") };
        writeln!(out, "{name}  replayed {total} {what}")?;
        let from = timestamp(replay.from);
        match oldest {
            Some(oldest) if (oldest.seconds, oldest.nanos) > (from.seconds, from.nanos) => writeln!(
                out,
                "  the outbox keeps events from {oldest} only: older ones of the window were pruned (outbox.retention_hours)"
            )?,
            None => writeln!(out, "  the outbox keeps no published event")?,
            Some(_) => {}
        }
    }
    Ok(())
}
