//! The operator RPCs every service serves: `tenx.ops.v1.DeadLetterService`
//! over its own consumer groups' queues, `tenx.ops.v1.StatusService`
//! ([`status`]) and `tenx.ops.v1.EventReplayService` ([`replay`]).
//! Who may call them is the contract's (`CALLER_OPERATOR`), enforced by the
//! shared authentication layer before a handler runs.

mod replay;
mod status;

pub use replay::{EventReplayApi, event_replay_service};
pub use status::{StatusApi, instance_name, status_service};

use std::collections::HashSet;

use tenx_proto::ops::v1 as pb;
use tenx_proto::ops::v1::dead_letter_service_server::{DeadLetterService, DeadLetterServiceServer};
use tonic::{Request, Response, Status};

use crate::grpc::ApiError;
use crate::queue::dead_letters::{DeadLetters, Listing, Parked, Selection};
use crate::queue::{Amqp, Topology};

/// Most messages a listing shows per queue.
pub const MAX_LIST: i32 = 500;

/// `DeadLetterService` over `groups` (the topologies of the service's
/// consumers), ready for a service's router.
pub fn dead_letter_service(amqp: Amqp, groups: Vec<Topology>) -> DeadLetterServiceServer<DeadLetterApi> {
    DeadLetterServiceServer::new(DeadLetterApi { letters: DeadLetters::new(amqp, groups) })
}

#[derive(Debug)]
pub struct DeadLetterApi {
    letters: DeadLetters,
}

impl DeadLetterApi {
    /// The parked queue named `queue`; anything else is the caller's
    /// mistake, named with the queues there are.
    fn parked(&self, queue: &str) -> Result<&Parked, ApiError> {
        self.letters.find(queue).ok_or_else(|| {
            let known: Vec<&str> = self.letters.queues().iter().map(|p| p.queue.as_str()).collect();
            ApiError::invalid(
                "queue",
                format!("not a dead-letter queue of this service (it has: {})", known.join(", ")),
            )
        })
    }
}

/// Exactly one of `message_ids`, `event_type` or `all`.
fn selection(selection: Option<pb::Selection>) -> Result<Selection, ApiError> {
    let pb::Selection { message_ids, event_type, all } = selection.unwrap_or_default();
    match (message_ids.is_empty(), event_type.is_empty(), all) {
        (false, true, false) => {
            if message_ids.iter().any(String::is_empty) {
                return Err(ApiError::invalid("selection.message_ids", "a message id is empty"));
            }
            Ok(Selection::Ids(message_ids.into_iter().collect::<HashSet<_>>()))
        }
        (true, false, false) => Ok(Selection::EventType(event_type)),
        (true, true, true) => Ok(Selection::All),
        _ => Err(ApiError::invalid("selection", "set exactly one of message_ids, event_type or all")),
    }
}

fn listing(listing: Listing) -> pb::DeadLetterQueue {
    pb::DeadLetterQueue {
        queue: listing.queue,
        work_queue: listing.work_queue,
        depth: listing.depth,
        messages: listing
            .messages
            .into_iter()
            .map(|m| pb::DeadLetter {
                message_id: m.message_id,
                event_type: m.event_type,
                attempts: m.attempts,
                last_error: m.last_error,
                size_bytes: u64::try_from(m.size_bytes).unwrap_or(u64::MAX),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl DeadLetterService for DeadLetterApi {
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 50,
            n @ 1..=MAX_LIST => usize::try_from(n).unwrap_or(50),
            _ => return Err(ApiError::invalid("limit", format!("must be 1 to {MAX_LIST} (0: 50)")).into()),
        };
        let parked: Vec<&Parked> = if request.queue.is_empty() {
            self.letters.queues().iter().collect()
        } else {
            vec![self.parked(&request.queue)?]
        };
        let mut queues = Vec::with_capacity(parked.len());
        for one in parked {
            queues.push(listing(self.letters.list(one, limit).await.map_err(ApiError::from)?));
        }
        Ok(Response::new(pb::ListDeadLettersResponse { queues }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::RedriveDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let parked = self.parked(&request.queue)?;
        let selection = selection(request.selection)?;
        let moved = self.letters.redrive(parked, &selection).await.map_err(ApiError::from)?;
        tracing::info!(queue = %parked.queue, redriven = moved.taken, remaining = moved.remaining, "dead letters redriven");
        Ok(Response::new(pb::RedriveDeadLettersResponse {
            redriven: moved.taken,
            remaining: moved.remaining,
        }))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let parked = self.parked(&request.queue)?;
        let selection = selection(request.selection)?;
        let moved = self.letters.purge(parked, &selection).await.map_err(ApiError::from)?;
        tracing::info!(queue = %parked.queue, purged = moved.taken, remaining = moved.remaining, "dead letters purged");
        Ok(Response::new(pb::PurgeDeadLettersResponse { purged: moved.taken, remaining: moved.remaining }))
    }
}
