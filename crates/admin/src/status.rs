//! `tenx-admin status` over `tenx.ops.v1.StatusService`: what an operator
//! checks first, one block per service.

use std::io::Write;

use tenx_proto::ops::v1 as pb;
use tenx_proto::ops::v1::status_service_client::StatusServiceClient;
use tonic::metadata::{Ascii, MetadataValue};

use crate::cli::{Service, Services};
use crate::{refused, request};

pub async fn run(
    which: &[Service],
    services: &Services,
    bearer: MetadataValue<Ascii>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for service in which {
        let mut client = StatusServiceClient::new(crate::channel(services.of(*service)).await?);
        let status = client
            .get_status(request(pb::GetStatusRequest {}, &bearer))
            .await
            .map_err(|s| refused(service.name(), s))?
            .into_inner();
        show(&status, out)?;
    }
    Ok(())
}

fn show(s: &pb::GetStatusResponse, out: &mut impl Write) -> anyhow::Result<()> {
    let failing: Vec<String> =
        s.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.reason)).collect();
    let ready =
        if failing.is_empty() { "ready".to_owned() } else { format!("NOT READY ({})", failing.join("; ")) };
    writeln!(out, "{}  {}  {}  {ready}", s.service, s.instance, s.version)?;
    match &s.outbox {
        Some(o) => {
            writeln!(out, "  outbox  pending {}  oldest {:.1} s", o.pending, o.oldest_pending_age_seconds)?
        }
        None => writeln!(out, "  outbox  unknown (its probe failed)")?,
    }
    for q in &s.queues {
        let flag = if q.kind == "dead_letter" && q.depth > 0 { "  <- dead letters" } else { "" };
        writeln!(
            out,
            "  queue  {}  {}  ready {}  consumers {}{flag}",
            q.queue, q.kind, q.depth, q.consumers
        )?;
    }
    for p in &s.pools {
        writeln!(
            out,
            "  pool  {} {}  in use {}  idle {}  max {}  waiting {}",
            p.pool, p.role, p.in_use, p.idle, p.max, p.waiting
        )?;
    }
    for c in &s.caches {
        writeln!(
            out,
            "  cache  {}  in-process hits {}  Redis hits {}  loads {}",
            c.cache, c.in_process_hits, c.redis_hits, c.loads
        )?;
    }
    for r in &s.slow_requests {
        writeln!(
            out,
            "  slow  {}  code {}  {:.1} ms  trace {}",
            r.method, r.code, r.duration_ms, r.trace_id
        )?;
    }
    Ok(())
}
