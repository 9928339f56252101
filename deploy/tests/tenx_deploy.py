"""What the deployment checks share: where things are, which services
exist, which config keys each reads, and the chart rendered offline."""

from __future__ import annotations

import json
import re
import tomllib
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tenx"
VENV_BIN = ROOT / ".tools" / "venv" / "bin"
KUBE_VERSION = "1.30.0"

# Config keys whose values are secrets: wired from a Secret as
# TENX_<SVC>__<SECTION>__<KEY>, never written to a ConfigMap. The common
# ones (crates/common: `Secret<…>` fields) plus each service's own.
COMMON_SECRET_KEYS = ["database.primary_url", "database.replica_url", "database.migrate_url", "redis.url", "amqp.url"]
# The services that call others as themselves: each presents its own
# authn.client_secret to auth, which knows it as service_clients.<svc>.
SERVICE_CLIENTS = ["gateway", "billing", "notification"]
SERVICE_SECRET_KEYS = {
    "auth": ["tokens.key_encryption_key", "codes.seal_key", *(f"service_clients.{c}" for c in SERVICE_CLIENTS)],
    **{c: ["authn.client_secret"] for c in SERVICE_CLIENTS},
    # Stripe's API key and its webhook's signing secret (provider.kind stripe).
    "billing": ["authn.client_secret", "provider.stripe_secret_key", "provider.stripe_webhook_secret"],
    # codes.seal_key: auth's, which opens the codes auth seals into its events.
    "notification": ["authn.client_secret", "codes.seal_key"],
}
# Secret keys a service runs without (its variable is optional): the
# replica, and Stripe's keys, which only provider.kind stripe needs (billing
# refuses to start without them then) and which have no default.
OPTIONAL_SECRET_KEYS = ["database.replica_url", "database.migrate_url", "provider.stripe_secret_key",
                        "provider.stripe_webhook_secret"]
EMPTY_BY_DEFAULT_SECRET_KEYS = ["database.migrate_url", "provider.stripe_secret_key", "provider.stripe_webhook_secret"]
# Secret keys a service reads from another service's Secret rather than
# its own, so that one value lives in one place: service → key → (the
# service whose Secret holds it, its key there). Both directions: auth's
# service_clients.<svc> is <svc>'s authn.client_secret (auth reads the
# clients' Secrets); notification's codes.seal_key is auth's (notification
# reads auth's Secret). The chart declares the same (helm/tenx/templates/
# _helpers.tpl: tenx.serviceClients, tenx.sharedSecretKeys).
FOREIGN_SECRET_KEYS = {
    "auth": {f"service_clients.{c}": (c, "authn.client_secret") for c in SERVICE_CLIENTS},
    "notification": {"codes.seal_key": ("auth", "codes.seal_key")},
}
# Of those, the keys the service holds in its own Secret (values `secrets`,
# or its existingSecret) when that other service is not in the release,
# where they are then required: notification without auth needs the seal
# key of the auth it works with. (auth without a client simply has no
# service_clients.<svc>.)
FALLBACK_SECRET_KEYS = {"notification": ["codes.seal_key"]}

# Types of the keys of the shared sections (crates/common), for the values
# schema; each service's own keys are typed from its defaults.toml.
INT = {"type": "integer", "minimum": 0}
POS = {"type": "integer", "minimum": 1}
STR = {"type": "string"}
LISTEN = {"type": "string", "pattern": "^.+:[0-9]{1,5}$"}
# The shared gRPC client (tenx_common::grpc::ClientSettings) at
# upstreams.<name>. An empty url is the chart's "this release's <name>".
CLIENT_KEY_TYPES = {
    "url": {"type": "string", "pattern": "^(|https?://.+)$"},
    "connect_timeout_ms": POS, "request_timeout_ms": POS, "resolve_interval_ms": POS,
}
COMMON_KEY_TYPES = {
    "server": {"listen": LISTEN, "admin_listen": LISTEN, "shutdown_delay_ms": INT, "shutdown_grace_ms": INT},
    "database": {
        "primary_url": STR, "replica_url": STR, "migrate_url": STR,
        "pooling": {"enum": ["session", "transaction"]},
        "schema": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
        "max_connections": POS, "connect_timeout_ms": POS, "acquire_timeout_ms": POS,
        "statement_timeout_ms": {"type": "integer", "minimum": 0, "maximum": 2147483647}, "replica_retry_ms": INT,
    },
    "redis": {"url": STR, "key_prefix": STR, "response_timeout_ms": POS, "connect_timeout_ms": POS},
    "amqp": {
        "url": STR, "exchange": STR, "prefix": STR, "prefetch": POS,
        "retry_delays_ms": {"type": "array", "items": INT, "minItems": 1},
        "max_attempts": POS, "connect_timeout_ms": POS,
    },
    "outbox": {"batch_size": POS, "partitions_per_batch": POS, "poll_interval_ms": POS, "wake_spacing_ms": INT, "retention_hours": POS},
    "retention": {"interval_seconds": POS, "batch_size": {"type": "integer", "minimum": 1, "maximum": 100000}, "inbox_days": POS,
                  "sessions_days": POS, "codes_days": POS, "notifications_days": POS, "deliveries_days": POS},
    # Token verification (tenx_common::authn::AuthnSettings): the gateway, billing, notification.
    "authn": {
        "issuer": {"type": "string", "minLength": 1}, "audience": {"type": "string", "minLength": 1},
        "refresh_seconds": POS, "min_refetch_seconds": POS, "client_secret": STR, "revocation_prefix": STR,
    },
    "telemetry": {
        "log_format": {"enum": ["json", "pretty"]}, "log_filter": STR,
        "otlp_endpoint": {"type": "string", "pattern": "^https?://.+$"},
        "sample_ratio": {"type": "number", "minimum": 0, "maximum": 1}, "slow_request_ms": INT,
        "metrics_export_seconds": INT,
    },
}


def load_yaml_file(path: Path):
    return yaml.safe_load(path.read_text())


@cache
def chart_values() -> dict:
    return load_yaml_file(CHART / "values.yaml")


def chart_services() -> list[str]:
    """Services the chart deploys (values.yaml `services`)."""
    return sorted(chart_values()["services"])


def crate_services() -> list[str]:
    """Services that exist in the workspace: crates with src/defaults.toml."""
    return sorted(p.parent.parent.name for p in ROOT.glob("crates/*/src/defaults.toml"))


@cache
def defaults(svc: str) -> dict:
    return tomllib.loads((ROOT / "crates" / svc / "src" / "defaults.toml").read_text())


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """{"server": {"listen": x}} → {"server.listen": x}; nested tables too
    ({"upstreams": {"auth": {"url": x}}} → {"upstreams.auth.url": x}).
    Lists (e.g. smtp.relays) are values; an empty table has no keys."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@cache
def documented_common_keys() -> dict[str, list[str]]:
    """docs/CONFIGURATION.md: the keys of each shared section (`## \\`name\\``),
    and of the shared upstream client (`## Upstream clients (e.g.
    \\`upstreams.auth\\`)`), returned as section `upstreams.*`: every table
    under a service's `upstreams`."""
    out: dict[str, list[str]] = {}
    section = None
    for line in (ROOT / "docs" / "CONFIGURATION.md").read_text().splitlines():
        if m := re.match(r"^## `([a-z_]+)`", line):
            section = m.group(1)
            out[section] = []
        elif re.match(r"^## Upstream clients \(e\.g\. `upstreams\.[a-z_]+`\)", line):
            section = "upstreams.*"
            out[section] = []
        elif line.startswith("## "):
            section = None
        elif section and (m := re.match(r"^\| `([a-z_]+)` \|", line)):
            out[section].append(m.group(1))
    return out


def settings_sections(svc: str) -> set[str]:
    """Top-level fields of the service's settings struct (crates/<svc>/src/settings.rs)."""
    text = (ROOT / "crates" / svc / "src" / "settings.rs").read_text()
    struct = re.search(r"pub struct \w+Settings \{(.*?)\n\}", text, re.S)
    assert struct, f"no settings struct in crates/{svc}/src/settings.rs"
    return set(re.findall(r"pub (\w+):", struct.group(1)))


def upstreams(svc: str) -> list[str]:
    """The services this one calls (its `[upstreams.<name>]` tables)."""
    return sorted(defaults(svc).get("upstreams", {}))


def known_keys(svc: str) -> set[str]:
    """Every config key the service reads: its defaults.toml, plus the
    documented keys of each shared section its settings struct has (and of
    the shared client, for each of its upstreams). Keys under a map section
    (`routes.<op>.<key>`) are not listed: see map_sections / key_is_known."""
    keys = set(flatten(defaults(svc)))
    fields = settings_sections(svc)
    for section, names in documented_common_keys().items():
        if section == "upstreams.*":
            keys |= {f"upstreams.{up}.{name}" for up in upstreams(svc) for name in names}
        elif section in fields:
            keys |= {f"{section}.{name}" for name in names}
    return keys


def _struct_fields(text: str, name: str) -> dict[str, str]:
    struct = re.search(rf"pub struct {name} \{{(.*?)\n\}}", text, re.S)
    assert struct, f"no struct {name}"
    return dict(re.findall(r"pub (\w+): ([\w<>:, ]+),", struct.group(1)))


def operation_ids(svc: str) -> list[str]:
    """The gateway's operation ids, the names `routes.<op>` may use
    (validate() refuses others): each public RPC declares its own in its
    proto, `option (tenx.options.v1.route) = {operation_id: "…"}`."""
    assert svc == "gateway", svc
    ops: set[str] = set()
    for proto in (ROOT / "proto" / "tenx").rglob("*.proto"):
        ops |= set(re.findall(r'option \(tenx\.options\.v1\.route\) = \{\s*operation_id: "(\w+)"', proto.read_text()))
    return sorted(ops)


# Names a map section accepts, where the service restricts them.
MAP_SECTION_NAMES = {("gateway", "routes"): operation_ids}


def map_sections(svc: str) -> dict[str, tuple[list[str] | None, dict[str, str]]]:
    """Top-level settings fields of type HashMap<String, T> (e.g. the
    gateway's `routes`): section → (allowed names or None, T's fields and
    their Rust types)."""
    text = (ROOT / "crates" / svc / "src" / "settings.rs").read_text()
    out = {}
    for field, ty in re.findall(r"pub (\w+): HashMap<String, (\w+)>", text):
        if field in settings_sections(svc):
            names = MAP_SECTION_NAMES.get((svc, field))
            out[field] = (names(svc) if names else None, _struct_fields(text, ty))
    return out


def key_is_known(svc: str, key: str) -> bool:
    """A key the service reads: a known key, or `<map section>.<name>.<field>`."""
    if key in known_keys(svc):
        return True
    parts = key.split(".")
    maps = map_sections(svc)
    if len(parts) == 3 and parts[0] in maps:
        names, fields = maps[parts[0]]
        return (names is None or parts[1] in names) and parts[2] in fields
    return False


def secret_keys(svc: str) -> list[str]:
    """Every secret key the service reads (from its own Secret or another's)."""
    return sorted(k for k in COMMON_SECRET_KEYS + SERVICE_SECRET_KEYS.get(svc, []) if k in known_keys(svc))


def foreign_secret_keys(svc: str) -> dict[str, tuple[str, str]]:
    """The secret keys the service reads from another service's Secret:
    key → (that service, its key)."""
    return {k: v for k, v in FOREIGN_SECRET_KEYS.get(svc, {}).items() if k in known_keys(svc)}


def own_secret_keys(svc: str) -> list[str]:
    """The keys of the service's own Secret when every service is in the
    release (the defaults)."""
    return [k for k in secret_keys(svc) if k not in foreign_secret_keys(svc)]


def fallback_secret_keys(svc: str) -> list[str]:
    """The foreign keys the service holds in its own Secret when their
    owner is not in the release."""
    return sorted(k for k in FALLBACK_SECRET_KEYS.get(svc, []) if k in foreign_secret_keys(svc))


def values_secret_keys(svc: str) -> list[str]:
    """The keys of values `services.<svc>.secrets`: its own, and those it
    holds only while their owner is not in the release."""
    return sorted(own_secret_keys(svc) + fallback_secret_keys(svc))


def has_migrate(svc: str) -> bool:
    """Whether tenx-<svc> has a `migrate` command: its main.rs dispatches
    it, or its main is the host's (`host::main`), which has one for a
    service declared with migrations (`hosted!(…, migrations = "…")`)."""
    src = ROOT / "crates" / svc / "src"
    main = (src / "main.rs").read_text()
    if re.search(r'Some\("migrate"\) =>', main):
        return True
    hosted = re.search(r'hosted!\([^;]*migrations = "', (src / "app.rs").read_text())
    return "host::main::<" in main and bool(hosted)


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def grpc_port(svc: str) -> int:
    return port_of(defaults(svc)["server"]["listen"])


def admin_port(svc: str) -> int:
    return port_of(defaults(svc)["server"]["admin_listen"])


def http_port(svc: str) -> int | None:
    """The HTTP API port of a service with `http.listen` (the gateway)."""
    listen = defaults(svc).get("http", {}).get("listen")
    return port_of(listen) if listen else None


def ports(svc: str) -> dict[str, int]:
    """The named container/Service ports of a service."""
    out = {"grpc": grpc_port(svc), "admin": admin_port(svc)}
    if http_port(svc):
        out["http"] = http_port(svc)
    return out


# --- values.schema.json ---------------------------------------------------

def _infer(value) -> dict:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            item = {k: _infer(v) for k, v in value[0].items()}
            return {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": item}}
        return {"type": "array", "items": _infer(value[0]) if value else {}}
    raise TypeError(f"cannot type {value!r}")


def _rust_type_schema(rust: str) -> dict:
    """The schema of a field of a map section's table, from its Rust type."""
    inner = re.fullmatch(r"Option<(.+)>", rust)
    rust = inner.group(1) if inner else rust
    if rust in ("u8", "u16", "u32", "u64", "usize"):
        return POS  # the services refuse 0 for every one of these today
    if rust == "bool":
        return {"type": "boolean"}
    if rust == "String":
        return STR
    raise TypeError(f"no schema for Rust type {rust}")


def _object(props: dict, **extra) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": props, **extra}


def config_schema(svc: str) -> dict:
    """The schema of services.<svc>.config: every non-secret key the service
    reads, typed; unknown sections and keys rejected."""
    secret = set(secret_keys(svc))
    tree: dict = {}
    flat = flatten(defaults(svc))
    for key in sorted(known_keys(svc)):
        if key in secret:
            continue
        parts = key.split(".")
        section, name = parts[0], parts[-1]
        if name.endswith("listen"):
            typed = LISTEN
        elif section == "upstreams" and len(parts) == 3:
            typed = CLIENT_KEY_TYPES.get(name)
        else:
            typed = COMMON_KEY_TYPES.get(section, {}).get(name) if len(parts) == 2 else None
        if typed is None:
            assert key in flat, f"{svc}: {key} is documented but has no type (add it to COMMON_KEY_TYPES)"
            typed = _infer(flat[key])
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[name] = ("leaf", typed)

    def build(node: dict, path: list[str]) -> dict:
        props = {k: v[1] if isinstance(v, tuple) else build(v, path + [k]) for k, v in node.items()}
        extra = {"required": ["listen", "admin_listen"]} if path == ["server"] else {}
        return _object(props, **extra)

    sections = {name: build(node, [name]) for name, node in tree.items()}
    for name, (names, fields) in map_sections(svc).items():
        table = _object({f: _rust_type_schema(t) for f, t in fields.items()})
        sections[name] = {"type": "object", "additionalProperties": table}
        if names is not None:
            sections[name]["propertyNames"] = {"enum": names}
    return {"type": "object", "additionalProperties": False, "required": ["server"], "properties": sections}


def secrets_schema(svc: str) -> dict:
    sections: dict[str, dict] = {}
    for key in values_secret_keys(svc):
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = {"type": "string"}
    props: dict = {"existingSecret": {"type": "string"}}
    props |= {s: {"type": "object", "additionalProperties": False, "properties": p} for s, p in sections.items()}
    return {"type": "object", "additionalProperties": False, "properties": props}


def _refuse_the_simulator_in_production(service: dict) -> None:
    """billing's simulated provider moves no money: the schema refuses it
    unless config.deployment.environment says this is not production."""
    deployment = service["properties"]["config"]["properties"]["deployment"]
    deployment["properties"]["environment"] = {
        "enum": ["production", "staging", "development", "test"],
        "description": "production refuses the simulated payment provider and Stripe test-mode keys",
    }
    service["allOf"] = [{
        "if": {"properties": {"config": {"properties": {"provider": {
            "properties": {"kind": {"const": "simulated"}}, "required": ["kind"]}}, "required": ["provider"]}},
            "required": ["config"]},
        "then": {"properties": {"config": {"properties": {"deployment": {
            "properties": {"environment": {"not": {"const": "production"},
                                           "description": "the simulated provider is refused in production"}},
            "required": ["environment"]}}, "required": ["deployment"]}}},
    }]


def generate_schema() -> dict:
    template = json.loads((Path(__file__).parent / "values.schema.base.json").read_text())
    services = {}
    for svc in chart_services():
        service = json.loads(json.dumps(template["definitions"]["service"]))
        service["properties"]["config"] = config_schema(svc)
        if not has_migrate(svc):
            service["properties"]["migrate"] = {
                "const": False, "description": f"tenx-{svc} has no migrate command (it keeps no database)"}
        service["properties"]["secrets"] = secrets_schema(svc)
        if svc == "billing":
            _refuse_the_simulator_in_production(service)
        services[svc] = service
    template["properties"]["services"]["properties"] = services
    del template["definitions"]
    return template


def schema_text() -> str:
    return json.dumps(generate_schema(), indent=2) + "\n"
