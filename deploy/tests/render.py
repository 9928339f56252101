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


def scenarios() -> dict[str, dict]:
    """defaults plus helm/tenx/ci/<name>.yaml (the same files ci.yml lints
    with the helm binary)."""
    out = {"defaults": {}}
    for path in sorted((td.CHART / "ci").glob("*.yaml")):
        out[path.stem] = td.load_yaml_file(path) or {}
    return out


@cache
def rendered(name: str) -> dict[str, str]:
    return render(copy.deepcopy(scenarios()[name]))
