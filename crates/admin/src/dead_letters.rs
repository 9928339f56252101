//! `tenx-admin dead-letters …` over `tenx.ops.v1.DeadLetterService`.

use std::io::Write;

use tenx_proto::ops::v1 as pb;
use tenx_proto::ops::v1::dead_letter_service_client::DeadLetterServiceClient;
use tonic::metadata::{Ascii, MetadataValue};

use crate::cli::{DeadLetterAction, Pick, Services};
use crate::{refused, request};

fn selection(pick: Pick) -> pb::Selection {
    match pick {
        Pick::Ids(message_ids) => pb::Selection { message_ids, ..Default::default() },
        Pick::Type(event_type) => pb::Selection { event_type, ..Default::default() },
        Pick::All => pb::Selection { all: true, ..Default::default() },
    }
}

pub async fn run(
    action: DeadLetterAction,
    services: &Services,
    bearer: MetadataValue<Ascii>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match action {
        DeadLetterAction::List { services: which, queue, limit } => {
            // Every service also serves the unrouted queue they share: once.
            let mut shown = std::collections::HashSet::new();
            for service in which {
                let mut client = DeadLetterServiceClient::new(crate::channel(services.of(service)).await?);
                let message = pb::ListDeadLettersRequest { queue: queue.clone().unwrap_or_default(), limit };
                let listed = client
                    .list_dead_letters(request(message, &bearer))
                    .await
                    .map_err(|s| refused(service.name(), s))?
                    .into_inner();
                for dlq in listed.queues {
                    if !shown.insert(dlq.queue.clone()) {
                        continue;
                    }
                    writeln!(
                        out,
                        "{}  {}  depth {}  (redrives to {})",
                        service.name(),
                        dlq.queue,
                        dlq.depth,
                        dlq.work_queue
                    )?;
                    for m in dlq.messages {
                        writeln!(
                            out,
                            "  {}  {}  attempts {}  {} B  {}",
                            m.message_id, m.event_type, m.attempts, m.size_bytes, m.last_error
                        )?;
                    }
                }
            }
        }
        DeadLetterAction::Redrive { service, queue, pick } => {
            let mut client = DeadLetterServiceClient::new(crate::channel(services.of(service)).await?);
            let message =
                pb::RedriveDeadLettersRequest { queue: queue.clone(), selection: Some(selection(pick)) };
            let done = client
                .redrive_dead_letters(request(message, &bearer))
                .await
                .map_err(|s| refused(service.name(), s))?
                .into_inner();
            writeln!(out, "{queue}: redriven {}, remaining {}", done.redriven, done.remaining)?;
        }
        DeadLetterAction::Purge { service, queue, pick } => {
            let mut client = DeadLetterServiceClient::new(crate::channel(services.of(service)).await?);
            let message =
                pb::PurgeDeadLettersRequest { queue: queue.clone(), selection: Some(selection(pick)) };
            let done = client
                .purge_dead_letters(request(message, &bearer))
                .await
                .map_err(|s| refused(service.name(), s))?
                .into_inner();
            writeln!(out, "{queue}: purged {}, remaining {}", done.purged, done.remaining)?;
        }
    }
    Ok(())
}
