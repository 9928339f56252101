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
COMMON_SECRET_KEYS = ["database.primary_url", "database.replica_url", "redis.url", "amqp.url"]
SERVICE_SECRET_KEYS = {"auth": ["tokens.key_encryption_key"]}

# Types of the keys of the shared sections (crates/common), for the values
# schema; each service's own keys are typed from its defaults.toml.
INT = {"type": "integer", "minimum": 0}
POS = {"type": "integer", "minimum": 1}
STR = {"type": "string"}
LISTEN = {"type": "string", "pattern": "^.+:[0-9]{1,5}$"}
COMMON_KEY_TYPES = {
    "server": {"listen": LISTEN, "admin_listen": LISTEN, "shutdown_delay_ms": INT, "shutdown_grace_ms": INT},
    "database": {
        "primary_url": STR, "replica_url": STR,
        "schema": {"type": "string", "pattern": "^[a-z_][a-z0-9_]*$"},
        "max_connections": POS, "connect_timeout_ms": POS, "acquire_timeout_ms": POS, "replica_retry_ms": INT,
    },
    "redis": {"url": STR, "key_prefix": STR, "response_timeout_ms": POS, "connect_timeout_ms": POS},
    "amqp": {
        "url": STR, "exchange": STR, "prefix": STR, "prefetch": POS,
        "retry_delays_ms": {"type": "array", "items": INT, "minItems": 1},
        "max_attempts": POS, "connect_timeout_ms": POS,
    },
    "outbox": {"batch_size": POS, "partitions_per_batch": POS, "poll_interval_ms": POS, "retention_hours": POS},
    "telemetry": {
        "log_format": {"enum": ["json", "pretty"]}, "log_filter": STR,
        "otlp_endpoint": {"type": "string", "pattern": "^https?://.+$"},
        "sample_ratio": {"type": "number", "minimum": 0, "maximum": 1}, "slow_request_ms": INT,
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


def flatten(config: dict) -> dict[str, object]:
    """{"server": {"listen": x}} → {"server.listen": x} (sections of keys)."""
    return {f"{section}.{key}": value for section, keys in config.items() for key, value in keys.items()}


@cache
def documented_common_keys() -> dict[str, list[str]]:
    """docs/CONFIGURATION.md: the keys of each shared section (`## \\`name\\``)."""
    out: dict[str, list[str]] = {}
    section = None
    for line in (ROOT / "docs" / "CONFIGURATION.md").read_text().splitlines():
        if m := re.match(r"^## `([a-z_]+)`", line):
            section = m.group(1)
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


def known_keys(svc: str) -> set[str]:
    """Every config key the service reads: its defaults.toml, plus the
    documented keys of each shared section its settings struct has."""
    keys = set(flatten(defaults(svc)))
    fields = settings_sections(svc)
    for section, names in documented_common_keys().items():
        if section in fields:
            keys |= {f"{section}.{name}" for name in names}
    return keys


def secret_keys(svc: str) -> list[str]:
    return sorted(k for k in COMMON_SECRET_KEYS + SERVICE_SECRET_KEYS.get(svc, []) if k in known_keys(svc))


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def grpc_port(svc: str) -> int:
    return port_of(defaults(svc)["server"]["listen"])


def admin_port(svc: str) -> int:
    return port_of(defaults(svc)["server"]["admin_listen"])


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


def config_schema(svc: str) -> dict:
    """The schema of services.<svc>.config: every non-secret key the service
    reads, typed; unknown sections and keys rejected."""
    secret = set(secret_keys(svc))
    sections: dict[str, dict] = {}
    flat = flatten(defaults(svc))
    for key in sorted(known_keys(svc)):
        if key in secret:
            continue
        section, name = key.split(".", 1)
        typed = COMMON_KEY_TYPES.get(section, {}).get(name)
        if typed is None:
            assert key in flat, f"{svc}: {key} is documented but has no type (add it to COMMON_KEY_TYPES)"
            typed = _infer(flat[key])
        sections.setdefault(section, {})[name] = typed
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["server"],
        "properties": {
            section: {"type": "object", "additionalProperties": False, "properties": props,
                      **({"required": ["listen", "admin_listen"]} if section == "server" else {})}
            for section, props in sections.items()
        },
    }


def secrets_schema(svc: str) -> dict:
    sections: dict[str, dict] = {}
    for key in secret_keys(svc):
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = {"type": "string"}
    props: dict = {"existingSecret": {"type": "string"}}
    props |= {s: {"type": "object", "additionalProperties": False, "properties": p} for s, p in sections.items()}
    return {"type": "object", "additionalProperties": False, "properties": props}


def generate_schema() -> dict:
    template = json.loads((Path(__file__).parent / "values.schema.base.json").read_text())
    services = {}
    for svc in chart_services():
        service = json.loads(json.dumps(template["definitions"]["service"]))
        service["properties"]["config"] = config_schema(svc)
        service["properties"]["secrets"] = secrets_schema(svc)
        services[svc] = service
    template["properties"]["services"]["properties"] = services
    del template["definitions"]
    return template


def schema_text() -> str:
    return json.dumps(generate_schema(), indent=2) + "\n"
