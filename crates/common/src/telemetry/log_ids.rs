//! JSON log lines that join their trace: each line written inside a span
//! (a request, a consumed message, a relay batch, anything under them)
//! carries the OpenTelemetry `trace_id` and `span_id` of that span as
//! top-level keys, so a log backend links a line to its trace and a
//! trace to its lines, whether or not traces are exported.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::SpanId;
use opentelemetry::trace::{TraceContextExt, TraceId};
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The JSON event format, plus `trace_id` and `span_id`.
pub(super) struct WithTraceIds {
    json: Format<Json>,
    /// The subscriber this format is part of, set once it is built (the
    /// OpenTelemetry layer answers for a span through it).
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl WithTraceIds {
    pub(super) fn new(json: Format<Json>, dispatch: Arc<OnceLock<WeakDispatch>>) -> Self {
        Self { json, dispatch }
    }

    /// The ids of the span `event` was recorded in, if it was in one that
    /// OpenTelemetry knows.
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> Option<(TraceId, SpanId)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'w> FormatFields<'w> + 'static,
    {
        let id = event.parent().and_then(|id| ctx.span(id)).or_else(|| ctx.lookup_current())?.id();
        let dispatch = self.dispatch.get()?.upgrade()?;
        // Holds no lock of the span's while it asks (the JSON format above
        // has released its own), as `get_otel_context` requires.
        let cx = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
        let span = cx.span();
        let context = span.span_context();
        context.is_valid().then(|| (context.trace_id(), context.span_id()))
    }
}

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::with_capacity(256);
        self.json.format_event(ctx, Writer::new(&mut line), event)?;
        if let Some((trace_id, span_id)) = self.ids(ctx, event)
            && let Some(object) = line.strip_suffix("}\n")
        {
            writer.write_str(object)?;
            return writeln!(writer, r#","trace_id":"{trace_id}","span_id":"{span_id}"}}"#);
        }
        writer.write_str(&line)
    }
}
