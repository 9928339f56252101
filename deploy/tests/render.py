"""The chart rendered offline (Helm's Go SDK through helm-python-sdk), as
the scenarios the acceptance list names."""

from __future__ import annotations

import copy
from functools import cache

import helm_python
import yaml

import tenx_deploy as td

RELEASE = "tenx"
NAMESPACE = "tenx"


def render(values: dict | None = None) -> dict[str, str]:
    chart = helm_python.Chart.load(td.CHART)
    return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def only(svc: str) -> dict:
    return {"services": {s: {"enabled": s == svc} for s in td.chart_services()}}


def features_on() -> dict:
    """HPA (CPU + custom metric), PDB, NetworkPolicy, ServiceMonitor,
    OTLP, and the routes (auth standing in as the public service, since the
    gateway has not landed)."""
    services = {
        s: {
            "autoscaling": {"enabled": True, "podsMetric": {"name": "grpc_requests_per_second", "averageValue": "100"}},
            "pdb": {"enabled": True},
        }
        for s in td.chart_services()
    }
    services[td.chart_services()[0]]["public"] = True
    return {
        "services": services,
        "networkPolicy": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "otlp": {"endpoint": "http://otel-collector.observability:4317"},
        "ingress": {"enabled": True, "className": "nginx", "tls": [{"hosts": ["tenx.example.com"], "secretName": "tenx-tls"}]},
        "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway-system"}]},
    }


def existing_secret() -> dict:
    return {"services": {s: {"secrets": {"existingSecret": f"prod-{s}"}} for s in td.chart_services()}}


def scenarios() -> dict[str, dict]:
    out = {"defaults": {}, "features-on": features_on(), "existing-secret": existing_secret()}
    for svc in td.chart_services():
        out[f"only-{svc}"] = only(svc)
    return out


@cache
def rendered(name: str) -> dict[str, str]:
    return render(copy.deepcopy(scenarios()[name]))
