//! `tenx.ops.v1.EventReplayService`: a window of a service's published
//! events, sent again page by page ([`crate::outbox::Replayer`]).

use std::time::SystemTime;

use tenx_proto::ops::v1 as pb;
use tenx_proto::ops::v1::event_replay_service_server::{EventReplayService, EventReplayServiceServer};
use tonic::{Request, Response, Status};

use crate::db::Db;
use crate::grpc::ApiError;
use crate::outbox::{OutboxError, ReplayWindow, Replayer};
use crate::queue::Amqp;

/// Most events one call replays; one page is one confirmed publish.
pub const MAX_PAGE: i32 = 5000;
const DEFAULT_PAGE: i32 = 1000;

/// `EventReplayService` over `db`'s outbox, publishing with `amqp`.
pub fn event_replay_service(db: &Db, amqp: Amqp) -> EventReplayServiceServer<EventReplayApi> {
    EventReplayServiceServer::new(EventReplayApi { replayer: Replayer::new(db, amqp) })
}

#[derive(Debug)]
pub struct EventReplayApi {
    replayer: Replayer,
}

fn time(field: &str, timestamp: Option<prost_types::Timestamp>) -> Result<SystemTime, ApiError> {
    let timestamp = timestamp.ok_or_else(|| ApiError::invalid(field, "required"))?;
    SystemTime::try_from(timestamp).map_err(|_| ApiError::invalid(field, "not a valid time"))
}

/// The request as a window, every field checked.
fn window(request: pb::ReplayEventsRequest) -> Result<ReplayWindow, ApiError> {
    let from = time("from", request.from)?;
    let to = time("to", request.to)?;
    if to <= from {
        return Err(ApiError::invalid("to", "must be after from"));
    }
    let limit = match request.page_size {
        0 => DEFAULT_PAGE,
        n @ 1..=MAX_PAGE => n,
        _ => {
            return Err(ApiError::invalid(
                "page_size",
                format!("must be 1 to {MAX_PAGE} (0: {DEFAULT_PAGE})"),
            ));
        }
    };
    let after_seq = match request.page_token.as_str() {
        "" => 0,
        token => token
            .parse::<i64>()
            .ok()
            .filter(|seq| *seq > 0)
            .ok_or_else(|| ApiError::invalid("page_token", "not a token this service returned"))?,
    };
    let event_type = match request.event_type {
        kind if kind.is_empty() => None,
        kind if kind.len() <= 200
            && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_') =>
        {
            Some(kind)
        }
        _ => return Err(ApiError::invalid("event_type", "an event type, like `auth.user.signed_up`")),
    };
    Ok(ReplayWindow { from, to, event_type, after_seq, limit: i64::from(limit) })
}

impl From<OutboxError> for ApiError {
    fn from(error: OutboxError) -> Self {
        match error {
            OutboxError::Db(e) => e.into(),
            OutboxError::Postgres(e) => e.into(),
            OutboxError::Pool(e) => ApiError::Unavailable(format!("database: {e}")),
            OutboxError::Queue(e) => e.into(),
        }
    }
}

#[tonic::async_trait]
impl EventReplayService for EventReplayApi {
    async fn replay_events(
        &self,
        request: Request<pb::ReplayEventsRequest>,
    ) -> Result<Response<pb::ReplayEventsResponse>, Status> {
        let window = window(request.into_inner())?;
        let replayed = self.replayer.replay(&window).await.map_err(ApiError::from)?;
        tracing::info!(
            events = replayed.count,
            event_type = window.event_type.as_deref().unwrap_or("*"),
            after_seq = window.after_seq,
            "events replayed"
        );
        Ok(Response::new(pb::ReplayEventsResponse {
            replayed: u32::try_from(replayed.count).unwrap_or(u32::MAX),
            next_page_token: replayed.next_after.map(|seq| seq.to_string()).unwrap_or_default(),
            oldest_retained: replayed.oldest_retained.map(Into::into),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::ReplayEventsRequest {
        pb::ReplayEventsRequest {
            from: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            to: Some(prost_types::Timestamp { seconds: 1_700_003_600, nanos: 0 }),
            ..Default::default()
        }
    }

    fn field(result: Result<ReplayWindow, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidArgument { field, .. }) => field,
            other => panic!("not a bad argument: {other:?}"),
        }
    }

    #[test]
    fn a_window_needs_both_ends_in_order_and_bounded_pages() {
        let ok = window(request()).expect("valid");
        assert_eq!((ok.limit, ok.after_seq, ok.event_type), (1000, 0, None));
        assert_eq!(field(window(pb::ReplayEventsRequest { from: None, ..request() })), "from");
        assert_eq!(field(window(pb::ReplayEventsRequest { to: None, ..request() })), "to");
        assert_eq!(field(window(pb::ReplayEventsRequest { to: request().from, ..request() })), "to");
        for size in [-1, MAX_PAGE + 1] {
            assert_eq!(field(window(pb::ReplayEventsRequest { page_size: size, ..request() })), "page_size");
        }
        for token in ["x", "-3", "0", "1e3"] {
            let bad = pb::ReplayEventsRequest { page_token: token.into(), ..request() };
            assert_eq!(field(window(bad)), "page_token", "{token}");
        }
        for kind in ["auth.*", "a b", "billing.#"] {
            let bad = pb::ReplayEventsRequest { event_type: kind.into(), ..request() };
            assert_eq!(field(window(bad)), "event_type", "{kind}");
        }
        let next = window(pb::ReplayEventsRequest {
            page_token: "42".into(),
            page_size: 7,
            event_type: "auth.user.signed_up".into(),
            ..request()
        })
        .expect("valid");
        assert_eq!(
            (next.after_seq, next.limit, next.event_type.as_deref()),
            (42, 7, Some("auth.user.signed_up"))
        );
    }
}
