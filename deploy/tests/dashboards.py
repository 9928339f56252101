"""Grafana dashboards of tenx, written as code: gen.py renders them to
helm/tenx/dashboards/*.json, which the chart ships as ConfigMaps for
Grafana's dashboard sidecar (`grafanaDashboards.enabled`). test_chart.py
checks that the files are current, that every query parses (promtool) and
reads only the metrics docs/OBSERVABILITY.md lists.

An overview (RED per service: rate, errors, duration; USE per dependency:
the Postgres pools, the replica, the cache's Redis, RabbitMQ's queues, the
outbox, the gateway's circuits) and one dashboard per service."""

from __future__ import annotations

import json

RATE = "$__rate_interval"
# gRPC codes that are the server's failure, not a refusal of the caller's
# request (the alerts' error objective uses the same).
SERVER_ERRORS = 'code=~"2|4|13|14|15"'
SERVICES = ["gateway", "auth", "billing", "notification"]
IN_USE = 'state="in_use"'
DEAD_LETTERS = 'kind="dead_letter"'


class Board:
    """Panels laid out on Grafana's 24-column grid, two per row."""

    def __init__(self, uid: str, title: str, description: str, job: str | None):
        self.uid, self.title, self.description, self.job = uid, title, description, job
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0

    def sel(self, extra: str = "") -> str:
        """The label selector of this board's service (`job=~"$job"`), plus `extra`."""
        parts = (['job=~"$job"'] if self.job else []) + ([extra] if extra else [])
        return "{" + ",".join(parts) + "}" if parts else ""

    def row(self, title: str) -> None:
        if self.x:
            self.y += 8
            self.x = 0
        self.panels.append({"type": "row", "title": title, "id": len(self.panels) + 1, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def panel(self, title: str, description: str, targets: list[tuple[str, str]], unit: str = "short",
              kind: str = "timeseries") -> None:
        panel = {
            "type": kind,
            "title": title,
            "description": description,
            "id": len(self.panels) + 1,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]}}
            if kind == "timeseries" else {},
            "targets": [
                {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                 "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        self.panels.append(panel)
        if self.x:
            self.x = 0
            self.y += 8
        else:
            self.x = 12

    def json(self) -> dict:
        variables = [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1,
        }]
        if self.job:
            variables.append({
                "name": "job", "label": "job", "type": "query",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": {"query": "label_values(tenx_grpc_server_requests_total, job)", "refId": "jobs"},
                "definition": "label_values(tenx_grpc_server_requests_total, job)",
                # The chart's Services are `<release>-<service>`.
                "regex": f"/.*{self.job}$/", "includeAll": True, "multi": True, "current": {},
                "refresh": 2, "hide": 0,
            })
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["tenx"],
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "timezone": "browser",
            "time": {"from": "now-1h", "to": "now"},
            "refresh": "30s",
            "templating": {"list": variables},
            "annotations": {"list": []},
            "links": [{"title": "tenx", "type": "dashboards", "tags": ["tenx"], "asDropdown": True}],
            "panels": self.panels,
        }


def grpc_red(b: Board, by: str) -> None:
    """Rate, errors and duration of the gRPC calls `b` selects, by `by`."""
    b.panel("Requests", "gRPC calls served per second.",
            [(f"sum by ({by}) (rate(tenx_grpc_server_requests_total{b.sel()}[{RATE}]))", f"{{{{{by}}}}}")], "reqps")
    b.panel("Server errors", "Share of calls that failed on the server's side (UNKNOWN, DEADLINE_EXCEEDED, "
            "INTERNAL, UNAVAILABLE, DATA_LOSS); the objective is 0.1 %.",
            [(f"sum by ({by}) (rate(tenx_grpc_server_requests_total{b.sel(SERVER_ERRORS)}[{RATE}])) / "
              f"sum by ({by}) (rate(tenx_grpc_server_requests_total{b.sel()}[{RATE}]))", f"{{{{{by}}}}}")],
            "percentunit")
    b.panel("Latency p99", "99th percentile of the time to the response headers; the objective is 99 % within "
            "512 ms.",
            [(f"histogram_quantile(0.99, sum by ({by}, le) "
              f"(rate(tenx_grpc_server_request_duration_seconds_bucket{b.sel()}[{RATE}])))", f"{{{{{by}}}}}")], "s")
    b.panel("Calls by status code", "Calls per second by gRPC status code (0 = OK; refusals such as "
            "INVALID_ARGUMENT 3 or PERMISSION_DENIED 7 are the caller's).",
            [(f"sum by (code) (rate(tenx_grpc_server_requests_total{b.sel()}[{RATE}]))", "{{code}}")], "reqps")


def postgres(b: Board) -> None:
    b.panel("Postgres pools: in use", "Connections in use out of the pool's limit.",
            [(f"sum by (pool, role) (tenx_db_pool_connections{b.sel(IN_USE)}) / "
              f"sum by (pool, role) (tenx_db_pool_max_connections{b.sel()})", "{{pool}} {{role}}")], "percentunit")
    b.panel("Postgres pools: waiting", "Callers waiting for a connection (saturation), and p99 of the wait.",
            [(f"sum by (pool, role) (tenx_db_pool_waiting{b.sel()})", "waiting {{pool}} {{role}}"),
             (f"histogram_quantile(0.99, sum by (pool, role, le) "
              f"(rate(tenx_db_pool_wait_seconds_bucket{b.sel()}[{RATE}])))", "p99 wait {{pool}} {{role}}")])
    b.panel("Read replica lag", "How far the replica is behind the primary.",
            [(f"max by (pool) (tenx_db_replica_lag_seconds{b.sel()})", "{{pool}}")], "s")
    b.panel("Rows pruned", "Rows deleted past their time to live (retention), by table.",
            [(f"sum by (table) (increase(tenx_retention_pruned_total{b.sel()}[1h]))", "{{table}}")])
    b.panel("Reads by server", "Reads served by the replica and the primary, and reads the replica could not "
            "serve (unavailable, lagging).",
            [(f"sum by (pool, role) (rate(tenx_db_reads_total{b.sel()}[{RATE}]))", "{{pool}} {{role}}"),
             (f"sum by (pool, reason) (rate(tenx_db_replica_fallbacks_total{b.sel()}[{RATE}]))",
              "fallback {{pool}} {{reason}}")], "ops")


def messaging(b: Board) -> None:
    b.panel("Queue depth", "Messages ready in each queue (work, retry tiers, dead letters, unrouted).",
            [(f"max by (queue) (tenx_queue_depth{b.sel()})", "{{queue}}")])
    b.panel("Dead letters", "Messages that failed their last attempt, waiting to be redriven or purged.",
            [(f"max by (queue) (tenx_queue_depth{b.sel(DEAD_LETTERS)})", "{{queue}}")])
    b.panel("Outbox backlog", "Events committed but not yet confirmed by RabbitMQ, and the oldest one's age.",
            [(f"max by (service) (tenx_outbox_pending{b.sel()})", "pending {{service}}"),
             (f"max by (service) (tenx_outbox_oldest_pending_age_seconds{b.sel()})", "oldest (s) {{service}}")])
    b.panel("Consumed messages", "Messages consumed per second by outcome.",
            [(f"sum by (queue, outcome) (rate(tenx_queue_messages_total{b.sel()}[{RATE}]))", "{{queue}} {{outcome}}"),
             (f"sum (rate(tenx_outbox_published_total{b.sel()}[{RATE}]))", "published by the outbox")], "ops")


def cache(b: Board) -> None:
    b.panel("Cache hit ratio", "Share of lookups answered by a cache layer (l1 in-process, l2 Redis) rather "
            "than the loader.",
            [(f"sum by (cache) (rate(tenx_cache_hits_total{b.sel()}[{RATE}])) / "
              f"(sum by (cache) (rate(tenx_cache_hits_total{b.sel()}[{RATE}])) + "
              f"sum by (cache) (rate(tenx_cache_loads_total{b.sel()}[{RATE}])))", "{{cache}}")], "percentunit")
    b.panel("Cache errors (Redis)", "Redis operations of the caches that failed; the cache skips Redis meanwhile.",
            [(f"sum by (cache, op) (rate(tenx_cache_errors_total{b.sel()}[{RATE}]))", "{{cache}} {{op}}")], "ops")


def probes(b: Board) -> None:
    b.panel("Metric probes failing", "Scrape-time samples that failed: the gauges they own are missing.",
            [(f"sum by (job, probe) (rate(tenx_probe_failures_total{b.sel()}[{RATE}]))", "{{job}} {{probe}}")],
            "ops")


def overview() -> Board:
    b = Board("tenx-overview", "tenx / Overview",
              "RED of every service and USE of every dependency (docs/OBSERVABILITY.md).", None)
    b.row("Services (RED)")
    grpc_red(b, "job")
    b.row("Postgres")
    postgres(b)
    b.row("RabbitMQ and the outbox")
    messaging(b)
    b.row("Cache, circuits, probes")
    cache(b)
    b.panel("Gateway circuits", "1 while the gateway's circuit to a service is open (calls fail fast).",
            [("max by (upstream) (tenx_gateway_circuit_open)", "{{upstream}}")])
    probes(b)
    return b


def service(name: str) -> Board:
    b = Board(f"tenx-{name}", f"tenx / {name}", f"The {name} service: its calls, its dependencies and "
              f"its own counters (docs/OBSERVABILITY.md).", name)
    b.row("gRPC")
    grpc_red(b, "method")
    b.panel("Slow requests", "Calls over telemetry.slow_request_ms, each also logged with its trace id.",
            [(f"sum by (method) (rate(tenx_grpc_server_slow_requests_total{b.sel()}[{RATE}]))", "{{method}}")],
            "reqps")
    if name == "gateway":
        b.row("HTTP API and upstreams")
        b.panel("HTTP requests", "Requests per second by route (operation id) and status.",
                [(f"sum by (route, status) (rate(tenx_gateway_http_requests_total{b.sel()}[{RATE}]))",
                  "{{route}} {{status}}")], "reqps")
        b.panel("HTTP latency p99", "99th percentile by route.",
                [(f"histogram_quantile(0.99, sum by (route, le) "
                  f"(rate(tenx_gateway_http_request_duration_seconds_bucket{b.sel()}[{RATE}])))", "{{route}}")], "s")
        b.panel("Shed, retried, failed fast", "Requests refused at http.max_in_flight, retries of idempotent "
                "calls, calls refused by an open circuit.",
                [(f"sum (rate(tenx_gateway_http_shed_total{b.sel()}[{RATE}]))", "shed"),
                 (f"sum by (upstream) (rate(tenx_gateway_upstream_retries_total{b.sel()}[{RATE}]))",
                  "retries {{upstream}}"),
                 (f"sum by (upstream) (rate(tenx_gateway_circuit_rejected_total{b.sel()}[{RATE}]))",
                  "circuit open {{upstream}}")], "ops")
        b.panel("Circuits", "1 while the circuit to a service is open.",
                [(f"max by (upstream) (tenx_gateway_circuit_open{b.sel()})", "{{upstream}}")])
        b.panel("Rate limits", "Checks by where they were decided (lease, redis, local) and outcome.",
                [(f"sum by (store, outcome) (rate(tenx_gateway_ratelimit_decisions_total{b.sel()}[{RATE}]))",
                  "{{store}} {{outcome}}")], "ops")
        b.panel("Rate-limit calls to Redis", "Calls to the shared allowance (take, top_up, return).",
                [(f"sum by (kind) (rate(tenx_gateway_ratelimit_redis_calls_total{b.sel()}[{RATE}]))", "{{kind}}")],
                "ops")
        return b
    b.row("Postgres")
    postgres(b)
    b.row("RabbitMQ, outbox, cache")
    messaging(b)
    cache(b)
    probes(b)
    if name == "billing":
        b.row("Billing")
        b.panel("Payment attempts", "Attempts per second by outcome and who started them.",
                [(f"sum by (outcome, initiated_by) (rate(tenx_billing_payment_attempts_total{b.sel()}[{RATE}]))",
                  "{{outcome}} {{initiated_by}}")], "ops")
        b.panel("Idempotency", "Mutating calls by idempotency result (new, replayed, reused, in_use).",
                [(f"sum by (outcome) (rate(tenx_billing_idempotency_total{b.sel()}[{RATE}]))", "{{outcome}}")],
                "ops")
        b.panel("Scheduler jobs", "Jobs run by kind and outcome.",
                [(f"sum by (kind, outcome) (rate(tenx_billing_jobs_total{b.sel()}[{RATE}]))", "{{kind}} {{outcome}}")],
                "ops")
        b.panel("Usage records", "Usage records by outcome.",
                [(f"sum by (outcome) (rate(tenx_billing_usage_records_total{b.sel()}[{RATE}]))", "{{outcome}}")],
                "ops")
    if name == "notification":
        b.row("Deliveries")
        for metric, what in [("sent", "delivered"), ("failed", "failed attempts"), ("retried", "to be retried"),
                             ("dead_lettered", "dead-lettered"), ("skipped", "muted by the user")]:
            b.panel(f"Notifications {what}", f"Notifications {what}, by channel.",
                    [(f"sum by (channel) (rate(tenx_notification_{metric}_total{b.sel()}[{RATE}]))", "{{channel}}")],
                    "ops")
    return b


def boards() -> dict[str, dict]:
    """File name (under helm/tenx/dashboards/) to dashboard JSON."""
    out = {"overview.json": overview().json()}
    for name in SERVICES:
        out[f"{name}.json"] = service(name).json()
    return out


def text(board: dict) -> str:
    return json.dumps(board, indent=2, sort_keys=False) + "\n"
