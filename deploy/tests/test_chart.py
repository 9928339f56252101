"""helm/tenx: lint, render, Kubernetes schemas, the values schema, security,
probes, migrations, config keys, README. Run: make check-deploy."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
import tomllib
import unittest
from pathlib import Path

import helm_python
import jsonschema
import yaml

import chart_readme
import dashboards
import render as r
import tenx_deploy as td

CRD_SCHEMAS = Path(__file__).parent / "crd-schemas"

# Chart values that deliberately differ from the service's defaults.toml,
# with why. Anything else must equal the default (no silent drift).
CHART_OVERRIDES = {
    # 127.0.0.1:2525 is the local sink; in a cluster the relay is a Service.
    # "" (upstreams.<name>.url) = this release's <name> Service, filled in by the chart.
    # server.shutdown_delay_ms: 0 locally (nothing balances in front; Ctrl-C
    # stops at once), 5 s in a cluster (the pod leaves its endpoints first).
    "notification": {"smtp.relays", "upstreams.auth.url", "server.shutdown_delay_ms"},
    "gateway": {"upstreams.auth.url", "upstreams.notification.url", "upstreams.billing.url", "server.shutdown_delay_ms"},
    "billing": {"upstreams.auth.url", "server.shutdown_delay_ms"},
    "auth": {"server.shutdown_delay_ms"},
}


# Values for a release behind one proxy that appends to X-Forwarded-For
# (what an Ingress or HTTPRoute needs).
BEHIND_ONE_PROXY = {"services": {"gateway": {"config": {"http": {"forwarded_hops": 1}}}}}


def public_service() -> str:
    """The chart's one public service (values: `public: true`)."""
    (public,) = [s for s, v in td.chart_values()["services"].items() if v.get("public")]
    return public


def deployment(docs, svc):
    found = r.find(docs, "Deployment", f"{r.RELEASE}-{svc}")
    assert len(found) == 1, f"expected one Deployment {r.RELEASE}-{svc}, found {len(found)}"
    return found[0]


def config_toml(docs, svc, name=None) -> dict:
    cm = r.find(docs, "ConfigMap", name or f"{r.RELEASE}-{svc}")
    assert len(cm) == 1, f"expected one ConfigMap for {svc}"
    return tomllib.loads(cm[0]["data"]["config.toml"])


def secret_env(container) -> dict[str, dict]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e}


def env_name(svc, key):
    """The variable tenx_common::config::Loader reads for a dotted key."""
    return f"TENX_{svc.upper()}__{key.replace('.', '__').upper()}"


def env_of_service(docs, svc) -> dict[str, dict]:
    """The secretKeyRefs of the service's Deployment by variable, to edit in place."""
    return secret_env(deployment(docs, svc)["spec"]["template"]["spec"]["containers"][0])


def callers_of(svc: str) -> list[str]:
    """The chart's services that call svc (an `upstreams.<svc>` table)."""
    return sorted(c for c in td.chart_services() if c != svc and svc in td.upstreams(c))


def server_pod_labels(docs, svc) -> dict:
    return deployment(docs, svc)["spec"]["template"]["metadata"]["labels"]


def _peer_selects_pod(peer: dict, labels: dict) -> bool:
    """A NetworkPolicyPeer selecting a pod of this namespace (ipBlock and
    namespaceSelector peers are taken to select other namespaces)."""
    if set(peer) != {"podSelector"}:
        return False
    sel = peer["podSelector"]
    assert set(sel) <= {"matchLabels"}, f"unsupported selector {sel}"
    return sel.get("matchLabels", {}).items() <= labels.items()


def admits(docs, svc: str, labels: dict, port: int) -> bool:
    """Whether svc's NetworkPolicy admits a pod of the release's namespace
    with these labels to this port."""
    (np,) = [np for np in r.find(docs, "NetworkPolicy")
             if np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == svc]
    for rule in np["spec"].get("ingress", []):
        if "ports" in rule and port not in [p["port"] for p in rule["ports"]]:
            continue
        if "from" not in rule or any(_peer_selects_pod(peer, labels) for peer in rule["from"]):
            return True
    return False


def deployed(docs, svc: str) -> bool:
    return len(r.find(docs, "Deployment", f"{r.RELEASE}-{svc}")) == 1


def owner_secret_ref(docs, owner: str, key: str) -> dict | None:
    """The Secret and key the owner's Deployment reads its own `key` from
    (None when the owner is not deployed or does not read it)."""
    if not deployed(docs, owner):
        return None
    return secret_env(deployment(docs, owner)["spec"]["template"]["spec"]["containers"][0]).get(env_name(owner, key))


def own_secret_names(docs) -> dict[str, set[str]]:
    """Per deployed service, the Secrets its own keys (those it never reads
    from another service's Secret) come from."""
    out = {}
    for svc in td.chart_services():
        if deployed(docs, svc):
            env = secret_env(deployment(docs, svc)["spec"]["template"]["spec"]["containers"][0])
            own = {env_name(svc, k) for k in td.own_secret_keys(svc)}
            out[svc] = {ref["name"] for name, ref in env.items() if name in own}
    return out


def config_key_problems(svc: str, docs: list[dict]) -> list[str]:
    """What an operator would trip over: a key the service reads that the
    chart does not set, or a key the chart sets that the service ignores.
    Secrets come from the service's own Secret (one Secret, the key named
    like the config key, and no other service's), except the keys
    td.FOREIGN_SECRET_KEYS lists (auth's service_clients.<svc>,
    notification's codes.seal_key), which must come from exactly the Secret
    and key that other service reads its own from — or, for the keys of
    td.FALLBACK_SECRET_KEYS when that service is not deployed, from the
    service's own Secret."""
    problems = []
    file_keys = set(td.flatten(config_toml(docs, svc)))
    container = deployment(docs, svc)["spec"]["template"]["spec"]["containers"][0]
    env = secret_env(container)
    by_env = {env_name(svc, k): k for k in td.known_keys(svc)}
    foreign = td.foreign_secret_keys(svc)
    fallback = td.fallback_secret_keys(svc)
    others = {other: names for other, names in own_secret_names(docs).items() if other != svc}
    env_keys = set()
    own_secrets = set()
    for name, ref in env.items():
        if name not in by_env:
            problems.append(f"{svc}: variable {name} sets no config key the service reads")
            continue
        key = by_env[name]
        env_keys.add(key)
        if key in foreign:
            owner, owner_key = foreign[key]
            want = owner_secret_ref(docs, owner, owner_key)
            if want is None and key in fallback and not deployed(docs, owner):
                pass  # the owner is not in the release: the service's own key, checked below
            elif want is None:
                problems.append(f"{svc}: {name} reads {owner}'s {owner_key}, but no {owner} Deployment reads it")
                continue
            else:
                if (ref["name"], ref["key"]) != (want["name"], want["key"]) or ref.get("optional") != want.get("optional"):
                    problems.append(f"{svc}: {name} reads Secret {ref['name']!r} key {ref['key']!r}, "
                                    f"expected {owner}'s: Secret {want['name']!r} key {owner_key!r}")
                continue
        own_secrets.add(ref["name"])
        if ref["key"] != key:
            problems.append(f"{svc}: {name} reads Secret key {ref['key']!r}, expected {key!r}")
        for other, names in sorted(others.items()):
            if ref["name"] in names:
                problems.append(f"{svc}: {name} reads {other}'s Secret {ref['name']!r}, "
                                f"which {svc}'s {key} is not declared to (td.FOREIGN_SECRET_KEYS)")
    if len(own_secrets) > 1:
        problems.append(f"{svc}: its own secrets come from several Secrets: {sorted(own_secrets)}")
    for key in sorted(td.flatten(td.defaults(svc))):
        if key not in file_keys | env_keys:
            problems.append(f"{svc}: config key {key} (defaults.toml) is not set by the chart")
    for key in sorted(k for k in file_keys if not td.key_is_known(svc, k)):
        problems.append(f"{svc}: the chart sets {key}, which {svc} does not read")
    for key in sorted(file_keys & set(td.secret_keys(svc))):
        problems.append(f"{svc}: secret {key} is written into the ConfigMap")
    for key in td.secret_keys(svc):
        if key not in env_keys:
            problems.append(f"{svc}: secret {key} is not passed from the Secret")
    return problems


class Lint(unittest.TestCase):
    def test_lint_strict_for_every_scenario(self):
        for name, values in r.scenarios().items():
            with self.subTest(scenario=name):
                report = helm_python.lint(td.CHART, values, strict=True, kube_version=f"v{td.KUBE_VERSION}")
                bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
                self.assertEqual(bad, [], f"helm lint --strict ({name})")

    def test_scenarios_cover_every_service(self):
        for svc in td.chart_services():
            self.assertIn(f"only-{svc}", r.scenarios(), f"helm/tenx/ci/only-{svc}.yaml is missing")
            only = r.scenarios()[f"only-{svc}"]["services"]
            self.assertEqual({s: v["enabled"] for s, v in only.items()}, {s: s == svc for s in td.chart_services()})

    def test_every_scenario_renders_what_it_asks_for(self):
        kinds = lambda n: {d["kind"] for d in r.manifests(r.rendered(n))}  # noqa: E731
        self.assertLessEqual(
            {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor", "PrometheusRule",
             "Ingress", "HTTPRoute"},
            kinds("features-on"),
        )
        self.assertNotIn("Secret", kinds("existing-secret"))
        for svc in td.chart_services():
            docs = r.manifests(r.rendered(f"only-{svc}"))
            names = {d["metadata"]["name"] for d in r.find(docs, "Deployment")}
            self.assertEqual(names, {f"{r.RELEASE}-{svc}"}, f"only-{svc} renders exactly its Deployment")
        self.assertLessEqual({"GRPCRoute"}, kinds("features-on"))


class KubernetesSchemas(unittest.TestCase):
    def test_every_manifest_passes_kubernetes_validate_strict(self):
        crd_kinds = {p.stem for p in CRD_SCHEMAS.glob("*.json")}
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for scenario in r.scenarios():
                for i, doc in enumerate(r.manifests(r.rendered(scenario))):
                    if doc["kind"] in crd_kinds:
                        schema = json.loads((CRD_SCHEMAS / f"{doc['kind']}.json").read_text())
                        jsonschema.validate(doc, schema)
                        continue
                    path = Path(tmp) / f"{scenario}-{i:03}-{doc['kind']}.yaml"
                    path.write_text(yaml.safe_dump(doc))
                    files.append(str(path))
            self.assertGreater(len(files), 20)
            run = subprocess.run(
                [td.VENV_BIN / "kubernetes-validate", "-k", td.KUBE_VERSION, "--strict", "--quiet", *files],
                capture_output=True, text=True,
            )
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            self.assertNotIn("Couldn't find schema", run.stdout + run.stderr)

    def test_kubernetes_validate_catches_a_bad_manifest(self):
        docs = r.manifests(r.rendered("defaults"))
        bad = deployment(docs, td.chart_services()[0])
        bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(bad, f)
            f.flush()
            run = subprocess.run([td.VENV_BIN / "kubernetes-validate", "-k", td.KUBE_VERSION, "--strict", f.name],
                                 capture_output=True, text=True)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("prot", run.stdout + run.stderr)

    def test_crd_subset_schemas_refuse_unknown_fields(self):
        docs = r.manifests(r.rendered("features-on"))
        for kind in ("ServiceMonitor", "HTTPRoute"):
            doc = r.find(docs, kind)[0]
            doc["spec"]["endpointz" if kind == "ServiceMonitor" else "rulez"] = []
            with self.assertRaises(jsonschema.ValidationError):
                jsonschema.validate(doc, json.loads((CRD_SCHEMAS / f"{kind}.json").read_text()))


class ValuesSchema(unittest.TestCase):
    BAD = {
        "unknown top-level key": ({"replicaCount": 3}, "replicaCount"),
        "wrong type": ({"services": {"auth": {"replicas": "two"}}}, "replicas"),
        "unknown service (typo)": ({"services": {"notifcation": {"enabled": True}}}, "notifcation"),
        "unknown service key": ({"services": {"auth": {"replica": 2}}}, "replica"),
        "unknown config key": ({"services": {"auth": {"config": {"password": {"min_lenght": 12}}}}}, "min_lenght"),
        "wrong config type": ({"services": {"auth": {"config": {"password": {"min_length": "ten"}}}}}, "min_length"),
        "unknown config section": ({"services": {"notification": {"config": {"smpt": {"from": "x"}}}}}, "smpt"),
        "secret in config": ({"services": {"auth": {"config": {"database": {"primary_url": "postgres://x"}}}}}, "primary_url"),
        "bad log format": ({"services": {"auth": {"config": {"telemetry": {"log_format": "xml"}}}}}, "log_format"),
        "listen without port": ({"services": {"auth": {"config": {"server": {"listen": "0.0.0.0"}}}}}, "listen"),
        "bad OTLP endpoint": ({"otlp": {"endpoint": "otel:4317"}}, "endpoint"),
        "unknown secret key": ({"services": {"auth": {"secrets": {"redis": {"uri": "redis://x"}}}}}, "uri"),
        "gateway migrate": ({"services": {"gateway": {"migrate": True}}}, "migrate"),
        "gateway secret it has not": ({"services": {"gateway": {"secrets": {"database": {"primary_url": "postgres://x"}}}}}, "database"),
        "gateway redis url in config": ({"services": {"gateway": {"config": {"redis": {"url": "redis://x"}}}}}, "url"),
        "upstream url not http": ({"services": {"gateway": {"config": {"upstreams": {"auth": {"url": "auth:50051"}}}}}}, "url"),
        "unknown upstream": ({"services": {"gateway": {"config": {"upstreams": {"payments": {"url": ""}}}}}}, "payments"),
        "upstream key typo": ({"services": {"gateway": {"config": {"upstreams": {"auth": {"timeout_ms": 1}}}}}}, "timeout_ms"),
        "unknown route op": ({"services": {"gateway": {"config": {"routes": {"auth_sigup": {"requests": 5}}}}}}, "auth_sigup"),
        "route key typo": ({"services": {"gateway": {"config": {"routes": {"auth_signup": {"request": 5}}}}}}, "request"),
        "route limit zero": ({"services": {"gateway": {"config": {"routes": {"auth_signup": {"requests": 0}}}}}}, "requests"),
        "http listen without port": ({"services": {"gateway": {"config": {"http": {"listen": "0.0.0.0"}}}}}, "listen"),
        "ingress grpc typo": ({"ingress": {"grpc": {"host": ["x"]}}}, "host"),
        "datastore egress typo": ({"networkPolicy": {"datastoreEgress": {"postgres": []}}}, "postgres"),
        "billing key typo": ({"services": {"billing": {"config": {"billing": {"trial_day": 7}}}}}, "trial_day"),
        "billing wrong type": ({"services": {"billing": {"config": {"idempotency": {"ttl_hours": "24h"}}}}}, "ttl_hours"),
        "client secret in config": ({"services": {"billing": {"config": {"authn": {"client_secret": "x" * 32}}}}}, "client_secret"),
        "auth keeps no copy of a client secret": ({"services": {"auth": {"secrets": {"service_clients": {"billing": "x"}}}}}, "service_clients"),
        "service clients in auth's config": ({"services": {"auth": {"config": {"service_clients": {"billing": "x"}}}}}, "service_clients"),
        "authn refresh zero": ({"services": {"notification": {"config": {"authn": {"refresh_seconds": 0}}}}}, "refresh_seconds"),
        "gateway jwks (renamed authn)": ({"services": {"gateway": {"config": {"jwks": {"issuer": "tenx-auth"}}}}}, "jwks"),
        "extraIngressFrom not a list": ({"services": {"billing": {"extraIngressFrom": {"podSelector": {}}}}}, "extraIngressFrom"),
        # A key tenx-billing does not read.
        "billing key not read": ({"services": {"billing": {"config": {"tax": {"inclusive": True}}}}}, "tax"),
    }

    def test_bad_values_are_rejected_by_the_schema(self):
        for what, (values, key) in self.BAD.items():
            with self.subTest(what):
                with self.assertRaises(helm_python.HelmValuesError) as caught:
                    r.render(values)
                self.assertIn(key, str(caught.exception))

    def test_schema_has_every_service_and_refuses_unknown_keys_everywhere(self):
        schema = json.loads((td.CHART / "values.schema.json").read_text())

        def walk(node, path):
            if node.get("type") == "object" and "properties" in node:
                self.assertIn("additionalProperties", node, f"{path} accepts unknown keys")
            for key, child in node.get("properties", {}).items():
                walk(child, f"{path}.{key}")

        walk(schema, "values")
        self.assertEqual(sorted(schema["properties"]["services"]["properties"]), td.chart_services())

    def test_schema_is_generated_from_the_defaults(self):
        self.assertEqual((td.CHART / "values.schema.json").read_text(), td.schema_text(),
                         "values.schema.json is stale: run .tools/venv/bin/python deploy/tests/gen.py")


class Workloads(unittest.TestCase):
    def test_chart_services_are_crates(self):
        for svc in td.chart_services():
            self.assertIn(svc, td.crate_services(), f"chart service {svc} has no crates/{svc}/src/defaults.toml")

    def test_every_service_crate_has_a_chart_block(self):
        for svc in td.crate_services():
            self.assertIn(svc, td.chart_services(),
                          f"crates/{svc}/src/defaults.toml exists but helm/tenx/values.yaml has no services.{svc} block "
                          "(see 'Adding a service' in helm/tenx/README.md)")

    def test_deployments_run_non_root_with_grpc_probes_on_the_real_port(self):
        for scenario in r.scenarios():
            docs = r.manifests(r.rendered(scenario))
            for dep in r.find(docs, "Deployment"):
                svc = dep["metadata"]["labels"]["app.kubernetes.io/component"]
                if svc == "pgbouncer":
                    continue  # not a tenx service: its own test
                with self.subTest(scenario=scenario, service=svc):
                    pod = dep["spec"]["template"]["spec"]
                    self.assertIs(pod["securityContext"]["runAsNonRoot"], True)
                    self.assertIsInstance(pod["securityContext"]["runAsUser"], int)
                    self.assertGreater(pod["securityContext"]["runAsUser"], 0)
                    self.assertEqual(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault")
                    self.assertIs(pod["automountServiceAccountToken"], False)
                    (c,) = pod["containers"]
                    sc = c["securityContext"]
                    self.assertIs(sc["runAsNonRoot"], True)
                    self.assertGreater(sc["runAsUser"], 0)
                    self.assertIs(sc["readOnlyRootFilesystem"], True)
                    self.assertIs(sc["allowPrivilegeEscalation"], False)
                    self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                    port = td.grpc_port(svc)
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        self.assertEqual(c[probe], c[probe] | {"grpc": {"port": port}}, f"{probe} is gRPC on {port}")
                    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                    self.assertEqual(ports, td.ports(svc))
                    self.assertEqual(c["command"], [f"/usr/local/bin/tenx-{svc}"])
                    self.assertEqual(c["args"], ["--config", "/etc/tenx/config.toml", "serve"])
                    self.assertIn("memory", c["resources"]["limits"])
                    self.assertIn("cpu", c["resources"]["requests"])
                    (svc_obj,) = r.find(docs, "Service", dep["metadata"]["name"])
                    self.assertEqual({p["name"]: p["port"] for p in svc_obj["spec"]["ports"]}, td.ports(svc))
                    self.assertEqual(svc_obj["spec"]["selector"], dep["spec"]["selector"]["matchLabels"])

    def test_migration_hook_job_runs_the_real_migrate(self):
        docs = r.manifests(r.rendered("defaults"))
        jobs = {j["metadata"]["labels"]["app.kubernetes.io/component"]: j for j in r.find(docs, "Job")}
        # Exactly the services whose binary has `migrate` (the gateway has none).
        self.assertEqual(sorted(jobs), [s for s in td.chart_services() if td.has_migrate(s)])
        self.assertIn("auth", jobs)
        self.assertIn("billing", jobs)
        self.assertNotIn("gateway", jobs)
        for svc in td.chart_services():
            self.assertIs(td.chart_values()["services"][svc]["migrate"], td.has_migrate(svc),
                          f"services.{svc}.migrate must say whether tenx-{svc} has a migrate command")
        for svc, job in jobs.items():
            with self.subTest(service=svc):
                hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
                self.assertEqual(hooks, {"pre-install", "pre-upgrade"})
                (c,) = job["spec"]["template"]["spec"]["containers"]
                self.assertEqual(c["command"], [f"/usr/local/bin/tenx-{svc}"])
                self.assertEqual(c["args"], ["--config", "/etc/tenx/config.toml", "migrate"])
                self.assertEqual(c["securityContext"]["readOnlyRootFilesystem"], True)
                # Same settings as the servers: the same secrets and a config hook of the same content.
                dep_c = deployment(docs, svc)["spec"]["template"]["spec"]["containers"][0]
                self.assertEqual(secret_env(c), secret_env(dep_c))
                cm = job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
                self.assertEqual(config_toml(docs, svc, cm), config_toml(docs, svc))
                # Everything the Job needs exists before it: hooks of lower weight (its own Secret,
                # and any other service's it reads a key from, e.g. notification auth's seal key).
                secrets = {f"{r.RELEASE}-{svc}"} | {ref["name"] for ref in secret_env(c).values()}
                for kind, name in (("ConfigMap", cm), *(("Secret", s) for s in sorted(secrets)),
                                   ("ServiceAccount", job["spec"]["template"]["spec"]["serviceAccountName"])):
                    (dep,) = r.find(docs, kind, name)
                    ann = dep["metadata"]["annotations"]
                    self.assertIn("pre-install", ann["helm.sh/hook"], f"{kind} {name} is a pre-install hook")
                    self.assertLess(int(ann["helm.sh/hook-weight"]), int(job["metadata"]["annotations"]["helm.sh/hook-weight"]))

    def test_hpa_pdb_and_replicas(self):
        docs = r.manifests(r.rendered("features-on"))
        for svc in td.chart_services():
            with self.subTest(service=svc):
                (hpa,) = r.find(docs, "HorizontalPodAutoscaler", f"{r.RELEASE}-{svc}")
                types = [m["type"] for m in hpa["spec"]["metrics"]]
                self.assertEqual(types, ["Resource", "Pods"])
                self.assertNotIn("replicas", deployment(docs, svc)["spec"], "the HPA owns replicas")
                (pdb,) = r.find(docs, "PodDisruptionBudget", f"{r.RELEASE}-{svc}")
                self.assertEqual(pdb["spec"]["selector"]["matchLabels"], deployment(docs, svc)["spec"]["selector"]["matchLabels"])

    def test_network_policy_only_the_public_service_is_reachable_from_outside(self):
        docs = r.manifests(r.rendered("features-on"))
        public = public_service()
        self.assertEqual(public, "gateway")
        grpc_ports = {td.grpc_port(s) for s in td.chart_services()}
        server_peer = {"app.kubernetes.io/name": "tenx", "app.kubernetes.io/instance": r.RELEASE, "tenx.dev/role": "server"}
        test_peer = {"app.kubernetes.io/name": "tenx", "app.kubernetes.io/instance": r.RELEASE, "app.kubernetes.io/component": "test"}
        nps = {np["metadata"]["labels"]["app.kubernetes.io/component"]: np for np in r.find(docs, "NetworkPolicy")}
        self.assertEqual(nps.pop("pgbouncer")["spec"]["ingress"][0]["ports"], [{"port": 6432, "protocol": "TCP"}])
        self.assertEqual(sorted(nps), td.chart_services())
        for svc, np in nps.items():
            with self.subTest(service=svc):
                ingress = np["spec"]["ingress"]
                open_rules = [rule for rule in ingress if "from" not in rule]
                grpc_rules = [rule for rule in ingress if any(p["port"] == td.grpc_port(svc) for p in rule["ports"])]
                if svc == public:
                    # The public doors (HTTP API and gRPC) from anywhere; never the admin port.
                    self.assertEqual([sorted(p["port"] for p in rule["ports"]) for rule in open_rules],
                                     [sorted([td.http_port(svc), td.grpc_port(svc)])])
                else:
                    self.assertEqual(open_rules, [], f"{svc} must not accept connections from anywhere")
                    # gRPC only from the servers of the services that call it (their upstreams), by component.
                    callers = callers_of(svc)
                    self.assertEqual([rule["from"] for rule in grpc_rules],
                                     [[{"podSelector": {"matchLabels": server_peer | {"app.kubernetes.io/component": c}}}
                                       for c in callers]])
                    self.assertEqual([[p["port"] for p in rule["ports"]] for rule in grpc_rules], [[td.grpc_port(svc)]])
                # The admin port only from the helm test pod and metricsFrom; no other port from them.
                for rule in ingress:
                    if rule.get("from") and rule not in grpc_rules:
                        self.assertEqual([p["port"] for p in rule["ports"]], [td.admin_port(svc)])
                self.assertIn([{"podSelector": {"matchLabels": test_peer}}], [rule.get("from") for rule in ingress])
                self.assertEqual(set(np["spec"]["policyTypes"]), {"Ingress", "Egress"})
                egress = np["spec"]["egress"]
                to_servers = [rule for rule in egress if rule.get("to") == [{"podSelector": {"matchLabels": server_peer}}]]
                self.assertEqual([{p["port"] for p in rule["ports"]} for rule in to_servers], [grpc_ports])
                egress_ports = {p["port"] for rule in egress for p in rule.get("ports", [])}
                stores = {"database": {5432, 6432}, "redis": {6379}, "amqp": {5672}}
                uses = {s for s in stores if any(k.startswith(f"{s}.") for k in td.secret_keys(svc))}
                self.assertLessEqual({53, 4317} | grpc_ports, egress_ports)
                for store, store_ports in stores.items():
                    if store in uses:
                        self.assertLessEqual(store_ports, egress_ports, f"{svc} reaches its {store}")
                    else:
                        self.assertFalse(store_ports & egress_ports, f"{svc} has no {store}: no egress to it")
                self.assertEqual(np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], svc)
        self.assertEqual(td.secret_keys("gateway"), ["authn.client_secret", "redis.url"])
        self.assertEqual(td.secret_keys("billing"),
                         ["amqp.url", "authn.client_secret", "database.migrate_url", "database.primary_url",
                          "database.replica_url", "provider.stripe_secret_key", "provider.stripe_webhook_secret", "redis.url"])

    def test_network_policy_is_on_by_default_and_admits_each_service_only_from_its_callers(self):
        self.assertIs(td.chart_values()["networkPolicy"]["enabled"], True)
        docs = r.manifests(r.rendered("defaults"))
        self.assertEqual(sorted(np["metadata"]["labels"]["app.kubernetes.io/component"]
                                for np in r.find(docs, "NetworkPolicy")), td.chart_services())
        self.assertEqual(callers_of("auth"), ["billing", "gateway", "notification"])
        self.assertEqual(callers_of("billing"), ["gateway"])
        self.assertEqual(callers_of("notification"), ["gateway"])
        pods = {svc: server_pod_labels(docs, svc) for svc in td.chart_services()}
        stranger = {"app": "something-else"}
        for svc in td.chart_services():
            port = td.grpc_port(svc)
            for caller in td.chart_services():
                if caller != svc:
                    with self.subTest(service=svc, caller=caller):
                        self.assertIs(admits(docs, svc, pods[caller], port),
                                      svc == public_service() or caller in callers_of(svc))
            self.assertIs(admits(docs, svc, stranger, port), svc == public_service())
        # The examples the design names.
        self.assertTrue(admits(docs, "auth", pods["billing"], td.grpc_port("auth")))
        self.assertTrue(admits(docs, "auth", pods["notification"], td.grpc_port("auth")))
        self.assertFalse(admits(docs, "billing", pods["notification"], td.grpc_port("billing")))
        self.assertFalse(admits(docs, "notification", pods["billing"], td.grpc_port("notification")))
        # Only the servers: not the caller's migration Job.
        self.assertFalse(admits(docs, "auth", pods["billing"] | {"tenx.dev/role": "migrate"}, td.grpc_port("auth")))
        # Off when asked.
        self.assertEqual(r.find(r.manifests(r.render({"networkPolicy": {"enabled": False}})), "NetworkPolicy"), [])

    def test_extra_ingress_from_admits_operator_backends_to_that_service_only(self):
        metering = {"app": "metering"}
        docs = r.manifests(r.render({"services": {"billing": {"extraIngressFrom": [{"podSelector": {"matchLabels": metering}}]}}}))
        self.assertTrue(admits(docs, "billing", metering, td.grpc_port("billing")))
        self.assertTrue(admits(docs, "billing", server_pod_labels(docs, "gateway"), td.grpc_port("billing")))
        self.assertFalse(admits(docs, "billing", metering, td.admin_port("billing")))
        self.assertFalse(admits(docs, "notification", metering, td.grpc_port("notification")))
        self.assertFalse(admits(docs, "auth", metering, td.grpc_port("auth")))
        # A service no one in the release calls gets no gRPC rule at all (never an empty `from`, which admits all).
        docs = r.manifests(r.rendered("only-billing"))
        (np,) = r.find(docs, "NetworkPolicy")
        self.assertEqual([rule for rule in np["spec"]["ingress"] if not rule.get("from")], [])
        self.assertFalse(admits(docs, "billing", {"app": "gateway-elsewhere"}, td.grpc_port("billing")))
        # Its auth is outside the release: its port is reachable (egress to any address).
        self.assertIn({"ports": [{"port": 50051, "protocol": "TCP"}]}, np["spec"]["egress"])

    def test_routes_point_at_the_public_services_http_api_and_optionally_grpc(self):
        docs = r.manifests(r.rendered("features-on"))
        public = public_service()
        name = f"{r.RELEASE}-{public}"
        (ing,) = r.find(docs, "Ingress", r.RELEASE)
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        self.assertEqual(backend, {"name": name, "port": {"name": "http"}})
        (svc_obj,) = r.find(docs, "Service", name)
        self.assertIn({"name": "http", "port": td.http_port(public)},
                      [{"name": p["name"], "port": p["port"]} for p in svc_obj["spec"]["ports"]])
        (grpc_ing,) = r.find(docs, "Ingress", f"{r.RELEASE}-grpc")
        self.assertEqual(grpc_ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"],
                         {"name": name, "port": {"name": "grpc"}})
        self.assertEqual(grpc_ing["spec"]["rules"][0]["host"], "grpc.tenx.example.com")
        self.assertEqual(grpc_ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"], "GRPC")
        self.assertNotIn("annotations", ing["metadata"], "the HTTP Ingress is not told the backend speaks gRPC")
        (route,) = r.find(docs, "HTTPRoute")
        self.assertEqual(route["spec"]["rules"][0]["backendRefs"][0], {"name": name, "port": td.http_port(public)})
        (grpc_route,) = r.find(docs, "GRPCRoute")
        self.assertEqual(grpc_route["spec"]["rules"][0]["backendRefs"][0], {"name": name, "port": td.grpc_port(public)})
        self.assertEqual(grpc_route["spec"]["parentRefs"], route["spec"]["parentRefs"])
        # Defaults: no routes at all; gRPC routes only when asked for.
        defaults = r.manifests(r.rendered("defaults"))
        self.assertEqual([d for d in defaults if d["kind"] in ("Ingress", "HTTPRoute", "GRPCRoute")], [])
        only_http = r.manifests(r.render({"ingress": {"enabled": True}} | BEHIND_ONE_PROXY))
        self.assertEqual([d["metadata"]["name"] for d in r.find(only_http, "Ingress")], [r.RELEASE])
        # No public service: refused, not silently empty.
        for values in ({"ingress": {"enabled": True}}, {"httpRoute": {"enabled": True, "parentRefs": [{"name": "p"}]}}):
            with self.assertRaises(helm_python.HelmError) as caught:
                r.render(values | {"services": {public: {"enabled": False}}})
            self.assertIn("public: true", str(caught.exception))

    def test_upstream_urls_are_this_releases_services_unless_set(self):
        docs = r.manifests(r.rendered("defaults"))
        services = {d["metadata"]["name"]: d for d in r.find(docs, "Service")}
        for svc in td.chart_services():
            for up in td.upstreams(svc):
                with self.subTest(service=svc, upstream=up):
                    url = config_toml(docs, svc)["upstreams"][up]["url"]
                    self.assertEqual(url, f"http://{r.RELEASE}-{up}-pods:{td.grpc_port(up)}")
                    # It names the release's headless Service of the
                    # upstream (DNS answers with every ready pod, which the
                    # client balances over), on its gRPC port, selecting
                    # the same pods as the upstream's own Service.
                    host, port = url.removeprefix("http://").split(":")
                    headless = services[host]["spec"]
                    self.assertEqual(headless["clusterIP"], "None")
                    self.assertNotIn("publishNotReadyAddresses", headless, "only ready pods get calls")
                    self.assertEqual(headless["selector"], services[f"{r.RELEASE}-{up}"]["spec"]["selector"])
                    grpc = [p["port"] for p in headless["ports"] if p["name"] == "grpc"]
                    self.assertEqual(grpc, [int(port)])
        self.assertEqual(td.upstreams("gateway"), ["auth", "billing", "notification"])
        # The release's names follow fullnameOverride; the ports follow the target's listen.
        docs = r.manifests(r.render({"fullnameOverride": "edge", "services": {"auth": {"config": {"server": {"listen": "0.0.0.0:6000"}}}}}))
        self.assertEqual(config_toml(docs, "gateway", "edge-gateway")["upstreams"]["auth"]["url"], "http://edge-auth-pods:6000")
        # An operator's URL wins.
        docs = r.manifests(r.rendered("only-gateway"))
        self.assertEqual(config_toml(docs, "gateway")["upstreams"]["auth"]["url"], "http://auth.tenx-core.svc:50051")
        # Empty, with the upstream not in this release: refused, naming the key.
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render({"services": {"notification": {"enabled": False}}})
        self.assertIn("services.gateway.config.upstreams.notification.url is empty", str(caught.exception))

    def test_routes_need_forwarded_hops_set(self):
        routes = {
            "ingress": {"ingress": {"enabled": True}},
            "ingress (gRPC)": {"ingress": {"grpc": {"enabled": True}}},
            "httpRoute": {"httpRoute": {"enabled": True, "parentRefs": [{"name": "p"}]}},
            "httpRoute (gRPC)": {"httpRoute": {"grpc": {"enabled": True}, "parentRefs": [{"name": "p"}]}},
        }
        for what, values in routes.items():
            with self.subTest(what):
                with self.assertRaises(helm_python.HelmError) as caught:
                    r.render(values)
                message = str(caught.exception)
                self.assertIn(f"{what.split()[0]} sends clients to gateway through a proxy, "
                              "but services.gateway.config.http.forwarded_hops is 0", message)
                self.assertIn("Set services.gateway.config.http.forwarded_hops to the number of proxies "
                              "that append to X-Forwarded-For (usually 1)", message)
                docs = r.manifests(r.render(values | BEHIND_ONE_PROXY))
                self.assertEqual(config_toml(docs, "gateway")["http"]["forwarded_hops"], 1)
        # Without routes, 0 (the TCP peer address) is right and renders.
        self.assertEqual(config_toml(r.manifests(r.rendered("defaults")), "gateway")["http"]["forwarded_hops"], 0)
        # Every scenario that routes from outside says how many proxies there are.
        for name, values in r.scenarios().items():
            if any(values.get(k, {}).get("enabled") or values.get(k, {}).get("grpc", {}).get("enabled")
                   for k in ("ingress", "httpRoute")):
                self.assertGreaterEqual(values["services"]["gateway"]["config"]["http"]["forwarded_hops"], 1, name)

    def test_the_gateways_payment_deadline_must_outlast_the_payment_providers_timeout(self):
        docs = r.manifests(r.rendered("defaults"))
        self.assertGreater(config_toml(docs, "gateway")["limits"]["payment_timeout_ms"],
                           config_toml(docs, "billing")["provider"]["timeout_ms"])
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render({"services": {"billing": {"config": {"provider": {"timeout_ms": 20000}}}}})
        self.assertIn("services.gateway.config.limits.payment_timeout_ms (15000) must exceed "
                      "services.billing.config.provider.timeout_ms (20000)", str(caught.exception))
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render({"services": {"gateway": {"config": {"routes": {
                "billing_invoices_pay": {"timeout_ms": 3000}}}}}})
        self.assertIn("services.gateway.config.routes.billing_invoices_pay.timeout_ms (3000) must exceed",
                      str(caught.exception))
        # Billing outside the release: nothing to compare with.
        r.render({"services": {"billing": {"enabled": False}, "gateway": {"config": {
            "upstreams": {"billing": {"url": "http://billing.x:50052"}}, "limits": {"payment_timeout_ms": 5000}}}}})

    def test_token_verifiers_and_auth_must_agree_on_issuer_audience_and_revocation_prefix(self):
        docs = r.manifests(r.rendered("defaults"))
        auth = config_toml(docs, "auth")
        verifiers = [svc for svc in td.chart_services() if "authn" in td.defaults(svc)]
        self.assertEqual(verifiers, ["billing", "gateway", "notification"])
        for svc in verifiers:
            with self.subTest(service=svc):
                authn = config_toml(docs, svc)["authn"]
                self.assertEqual(authn["issuer"], auth["tokens"]["issuer"])
                self.assertEqual(authn["audience"], auth["tokens"]["audience"])
                self.assertEqual(authn["revocation_prefix"], auth["redis"]["key_prefix"])
                self.assertNotIn("client_secret", authn, "a secret, from the Secret")
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render({"services": {"auth": {"config": {"tokens": {"issuer": "https://id.example.com"}}}}})
        self.assertRegex(str(caught.exception), r"services\.(billing|gateway|notification)\.config\.authn\.issuer")
        for svc in verifiers:
            with self.subTest(service=svc):
                with self.assertRaises(helm_python.HelmError) as caught:
                    r.render({"services": {svc: {"config": {"authn": {"audience": "other"}}}}})
                self.assertIn(f"services.{svc}.config.authn.audience (other) differs from services.auth.config.tokens.audience",
                              str(caught.exception))
                with self.assertRaises(helm_python.HelmError) as caught:
                    r.render({"services": {svc: {"config": {"authn": {"revocation_prefix": "other:"}}}}})
                self.assertIn(f"services.{svc}.config.authn.revocation_prefix (other:) differs from "
                              "services.auth.config.redis.key_prefix", str(caught.exception))
        # Auth outside the release: nothing to compare with.
        r.render({"services": {"auth": {"enabled": False}, "billing": {"config": {
            "upstreams": {"auth": {"url": "http://auth.x:50051"}}, "authn": {"audience": "other"}}},
            "notification": {"enabled": False}, "gateway": {"enabled": False}}})

    def test_helm_test_hook_checks_every_service(self):
        docs = r.manifests(r.rendered("defaults"))
        (pod,) = [d for d in r.find(docs, "Pod") if d["metadata"]["annotations"]["helm.sh/hook"] == "test"]
        args = pod["spec"]["containers"][0]["args"]
        urls = [a for a in args if a.startswith("http://")]
        public = public_service()
        # The gateway first: alive, and its public HTTP door serves; then everyone's readiness.
        self.assertEqual(urls[:2], [f"http://{r.RELEASE}-{public}:{td.admin_port(public)}/healthz",
                                    f"http://{r.RELEASE}-{public}:{td.http_port(public)}/openapi.json"])
        self.assertEqual(sorted(urls[2:]), sorted(f"http://{r.RELEASE}-{svc}:{td.admin_port(svc)}/readyz"
                                                  for svc in td.chart_services()))
        self.assertIn("--fail", args)
        self.assertEqual(pod["metadata"]["labels"]["app.kubernetes.io/component"], "test",
                         "the NetworkPolicy admits the admin ports from this label")
        self.assertIs(pod["spec"]["securityContext"]["runAsNonRoot"], True)

    def test_service_monitor_scrapes_the_admin_port(self):
        docs = r.manifests(r.rendered("features-on"))
        for sm in r.find(docs, "ServiceMonitor"):
            self.assertEqual(sm["spec"]["endpoints"][0]["port"], "admin")
            self.assertEqual(sm["metadata"]["labels"]["release"], "kube-prometheus")
            svc = sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
            (service,) = r.find(docs, "Service", f"{r.RELEASE}-{svc}")
            self.assertLessEqual(sm["spec"]["selector"]["matchLabels"].items(), service["metadata"]["labels"].items())

    def test_pgbouncer_pools_transactions_keeps_prepared_statements_and_drains(self):
        docs = r.manifests(r.rendered("features-on"))
        name = f"{r.RELEASE}-pgbouncer"
        ini = r.find(docs, "ConfigMap", name)[0]["data"]["pgbouncer.ini"]
        settings = dict(line.split(" = ", 1) for line in ini.splitlines() if " = " in line)
        self.assertEqual(settings["pool_mode"], "transaction")
        # The services run with database.pooling "session" through it: their
        # named statements and the search_path set at connect must survive.
        self.assertGreater(int(settings["max_prepared_statements"]), 0)
        self.assertEqual(settings["track_extra_parameters"], "search_path")
        values = td.chart_values()["pgbouncer"]
        version = tuple(int(p) for p in re.findall(r"\d+", values["image"]["tag"])[:2])
        self.assertGreaterEqual(version, (1, 21), "max_prepared_statements needs PgBouncer 1.21")
        deployment = r.find(docs, "Deployment", name)[0]
        self.assertEqual(deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        self.assertIs(pod["securityContext"]["runAsNonRoot"], True)
        self.assertIs(pod["automountServiceAccountToken"], False)
        self.assertIs(container["securityContext"]["readOnlyRootFilesystem"], True)
        self.assertEqual(container["securityContext"]["capabilities"]["drop"], ["ALL"])
        self.assertIn("readinessProbe", container)
        self.assertIn("livenessProbe", container)
        # A rolling update: the pod keeps serving while it leaves the
        # Service, then SIGINT (safe shutdown: transactions in flight end).
        pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        self.assertIn(f"sleep {values['preStopSeconds']}", pre_stop)
        self.assertIn("kill -INT 1", pre_stop)
        self.assertGreater(pod["terminationGracePeriodSeconds"], values["preStopSeconds"])
        self.assertEqual([p["port"] for p in r.find(docs, "Service", name)[0]["spec"]["ports"]], [6432])
        self.assertEqual(len(r.find(docs, "PodDisruptionBudget", name)), 1)
        policy = r.find(docs, "NetworkPolicy", name)[0]
        callers = sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                         for p in policy["spec"]["ingress"][0]["from"])
        self.assertEqual(callers, ["auth", "billing", "notification"], "only the services that keep a database")
        # Off by default; on, it needs the userlist.
        self.assertEqual(r.find(r.manifests(r.rendered("defaults")), "Deployment", name), [])
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render({"pgbouncer": {"enabled": True}})
        self.assertIn("pgbouncer.authSecret", str(caught.exception))


ALERTS = td.CHART / "files" / "alerts.yaml"
ALERT_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yaml"
PROMTOOL = td.ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool"
OBSERVABILITY = td.ROOT / "docs" / "OBSERVABILITY.md"


def documented_metrics() -> set[str]:
    """The metric names in docs/OBSERVABILITY.md's tables."""
    return set(re.findall(r"^\| `(tenx_[a-z0-9_]+)`", OBSERVABILITY.read_text(), re.M))


def queried_metrics(expr: str) -> set[str]:
    """The tenx metric families a PromQL expression reads (a histogram's
    _bucket/_sum/_count by its base name; recording rules' names, which
    hold a colon, are not metrics)."""
    names = set(re.findall(r"(?<![:\w])(tenx_[a-z0-9_]+)(?![:\w])", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count")) else n for n in names}


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROMTOOL), *map(str, args)], capture_output=True, text=True)


class Observability(unittest.TestCase):
    def test_alert_rules_pass_promtool_check_and_their_unit_tests(self):
        check = promtool("check", "rules", ALERTS)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        tests = promtool("test", "rules", ALERT_TESTS)
        self.assertEqual(tests.returncode, 0, tests.stdout + tests.stderr)

    def test_promtool_catches_a_broken_rule_and_a_failing_alert_test(self):
        rules = yaml.safe_load(ALERTS.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            broken = copy_rules(rules)
            broken["groups"][1]["rules"][0]["expr"] = "max by (queue) (tenx_queue_depth{kind=)"
            path = Path(tmp) / "broken.yaml"
            path.write_text(yaml.safe_dump(broken))
            self.assertNotEqual(promtool("check", "rules", path).returncode, 0)
            # An alert that no longer fires fails its unit test.
            quiet = copy_rules(rules)
            quiet["groups"][1]["rules"][0]["expr"] = 'max by (queue) (tenx_queue_depth{kind="dead_letter"}) > 100'
            rules_path = Path(tmp) / "rules.yaml"
            rules_path.write_text(yaml.safe_dump(quiet))
            tests = yaml.safe_load(ALERT_TESTS.read_text())
            tests["rule_files"] = [str(rules_path)]
            tests_path = Path(tmp) / "tests.yaml"
            tests_path.write_text(yaml.safe_dump(tests))
            run = promtool("test", "rules", tests_path)
            self.assertNotEqual(run.returncode, 0)
            self.assertIn("TenxDeadLetters", run.stdout + run.stderr)

    def test_the_prometheus_rule_ships_the_rules_file_as_it_is(self):
        docs = r.manifests(r.rendered("features-on"))
        (rule,) = r.find(docs, "PrometheusRule")
        self.assertEqual(rule["spec"], yaml.safe_load(ALERTS.read_text()), "Helm must not template {{ $labels }}")
        self.assertEqual(rule["metadata"]["labels"]["release"], "kube-prometheus")
        self.assertEqual(r.find(r.manifests(r.rendered("defaults")), "PrometheusRule"), [], "off by default")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(rule["spec"], f)
            f.flush()
            check = promtool("check", "rules", f.name)
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

    def test_alerts_query_only_documented_metrics(self):
        documented = documented_metrics()
        for group in yaml.safe_load(ALERTS.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule["record"]
                queried = queried_metrics(rule["expr"])
                self.assertTrue(queried or ":" in rule["expr"], f"{name} reads no metric")
                self.assertLessEqual(queried, documented, f"{name} reads metrics docs/OBSERVABILITY.md does not list")

    def test_every_documented_metric_is_registered_by_a_service(self):
        registered = set()
        for path in td.ROOT.glob("crates/*/src/**/*.rs"):
            registered |= set(re.findall(r'register\(\s*"([a-z0-9_]+)"', path.read_text()))
        self.assertGreater(len(registered), 30)
        for name in documented_metrics():
            family = re.sub(r"_total$", "", name.removeprefix("tenx_"))
            self.assertIn(family, registered, f"{name} is documented but no code registers {family!r}")

    def test_dashboards_are_generated_from_dashboards_py(self):
        files = {p.name: p.read_text() for p in (td.CHART / "dashboards").glob("*.json")}
        wanted = {name: dashboards.text(board) for name, board in dashboards.boards().items()}
        self.assertEqual(files, wanted, "stale: run .tools/venv/bin/python deploy/tests/gen.py")

    def test_every_dashboard_query_parses_and_reads_only_documented_metrics(self):
        documented = documented_metrics()
        rules, uids = [], set()
        for name, board in dashboards.boards().items():
            self.assertNotIn(board["uid"], uids)
            uids.add(board["uid"])
            panels = [p for p in board["panels"] if p["type"] != "row"]
            self.assertGreater(len(panels), 5, name)
            for panel in panels:
                self.assertEqual(panel["datasource"]["uid"], "${datasource}", f"{name}: {panel['title']}")
                for target in panel["targets"]:
                    queried = queried_metrics(target["expr"])
                    self.assertTrue(queried, f"{name}: {panel['title']} reads no metric")
                    self.assertLessEqual(queried, documented, f"{name}: {panel['title']}")
                    # Grafana's variables as a value PromQL takes, then
                    # parsed by promtool as a recording rule.
                    expr = target["expr"].replace("$__rate_interval", "5m").replace("$job", "tenx-x")
                    rules.append({"record": f"dashboard:q{len(rules)}", "expr": expr})
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)
            f.flush()
            check = promtool("check", "rules", f.name)
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        self.assertGreater(len(rules), 60)

    def test_dashboards_ship_as_configmaps_for_grafanas_sidecar(self):
        docs = r.manifests(r.rendered("features-on"))
        maps = [d for d in r.find(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
        shipped = {k: v for d in maps for k, v in d["data"].items()}
        files = {p.name: p.read_text() for p in (td.CHART / "dashboards").glob("*.json")}
        self.assertEqual(set(shipped), set(files))
        for name, text in shipped.items():
            self.assertEqual(json.loads(text), json.loads(files[name]), f"{name} must ship as it is")
        self.assertTrue(all(d["metadata"]["annotations"]["grafana_folder"] == "tenx" for d in maps))
        defaults = r.manifests(r.rendered("defaults"))
        self.assertFalse([d for d in r.find(defaults, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]])


def copy_rules(rules: dict) -> dict:
    return json.loads(json.dumps(rules))


class Secrets(unittest.TestCase):
    def test_generated_secret_holds_every_secret_key_and_a_fresh_kek(self):
        docs = r.manifests(r.rendered("defaults"))
        client_secrets = set()
        for svc in td.chart_services():
            with self.subTest(service=svc):
                (secret,) = r.find(docs, "Secret", f"{r.RELEASE}-{svc}")
                # Its own keys; auth's service_clients.* live in the clients' Secrets, not
                # here; Stripe's keys only once set (they have no default and are never made up).
                self.assertEqual(sorted(secret["data"]),
                                 [k for k in td.own_secret_keys(svc) if k not in td.EMPTY_BY_DEFAULT_SECRET_KEYS])
                self.assertEqual(secret["metadata"]["annotations"]["helm.sh/resource-policy"], "keep")
                for section, key in (("tokens", "key_encryption_key"), ("codes", "seal_key")):
                    if f"{section}.{key}" in secret["data"]:
                        value = base64.b64decode(secret["data"][f"{section}.{key}"]).decode()
                        self.assertEqual(len(base64.b64decode(value, validate=True)), 32, f"{section}.{key}: 32 bytes, base64")
                        self.assertNotEqual(value, td.defaults(svc)[section][key], "never the dev key")
                if svc in td.SERVICE_CLIENTS:
                    client_secret = base64.b64decode(secret["data"]["authn.client_secret"]).decode()
                    self.assertGreaterEqual(len(client_secret), 32, "auth refuses shorter client secrets")
                    self.assertRegex(client_secret, r"^[A-Za-z0-9]+$")
                    client_secrets.add(client_secret)
        self.assertEqual(len(client_secrets), len(td.SERVICE_CLIENTS), "one fresh secret per service")
        self.assertEqual(td.own_secret_keys("auth"), ["amqp.url", "codes.seal_key", "database.migrate_url",
                                                      "database.primary_url", "database.replica_url", "redis.url",
                                                      "tokens.key_encryption_key"])
        # notification keeps no copy of auth's seal key.
        self.assertNotIn("codes.seal_key", td.own_secret_keys("notification"))
        self.assertIn("codes.seal_key", td.secret_keys("notification"))

    def test_billing_takes_stripe_by_default_and_its_keys_from_its_secret(self):
        docs = r.manifests(r.rendered("defaults"))
        billing = config_toml(docs, "billing")
        self.assertEqual((billing["provider"]["kind"], billing["deployment"]["environment"]), ("stripe", "production"))
        (secret,) = r.find(docs, "Secret", f"{r.RELEASE}-billing")
        self.assertNotIn("provider.stripe_secret_key", secret["data"], "never made up")
        notes = r.rendered("defaults")["tenx/templates/NOTES.txt"]
        self.assertIn("billing refuses to start", notes, "the missing keys are named at install")
        docs = r.manifests(r.rendered("features-on"))
        (secret,) = r.find(docs, "Secret", f"{r.RELEASE}-billing")
        self.assertEqual(base64.b64decode(secret["data"]["provider.stripe_secret_key"]).decode(), "sk_live_ci_placeholder")
        self.assertNotIn("billing refuses to start", r.rendered("features-on")["tenx/templates/NOTES.txt"])

    def test_the_notes_say_how_to_reach_the_operator_console_and_only_by_port_forward(self):
        notes = r.rendered("defaults")["tenx/templates/NOTES.txt"]
        docs = r.manifests(r.rendered("defaults"))
        (service,) = r.find(docs, "Service", f"{r.RELEASE}-gateway")
        admin = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "admin")
        self.assertIn(f"port-forward svc/{r.RELEASE}-gateway {admin}\n", notes)
        self.assertIn(f"http://127.0.0.1:{admin}/console", notes)
        exposed = [d for d in r.manifests(r.rendered("features-on")) if d["kind"] in ("Ingress", "HTTPRoute", "GRPCRoute")]
        self.assertTrue(exposed, "features-on exposes the gateway")
        for doc in exposed:
            text = json.dumps(doc)
            self.assertNotIn(f'"number": {admin}', text, "the admin port (and its console) is never exposed")
            self.assertNotIn(f'"port": {admin}', text, "the admin port (and its console) is never exposed")

    def test_the_schema_refuses_the_simulated_provider_in_production(self):
        simulated = {"services": {"billing": {"config": {"provider": {"kind": "simulated"}}}}}
        with self.assertRaises(Exception) as caught:
            r.render(simulated)
        self.assertIn("environment", str(caught.exception))
        simulated["services"]["billing"]["config"]["deployment"] = {"environment": "staging"}
        self.assertEqual(config_toml(r.manifests(r.render(simulated)), "billing")["provider"]["kind"], "simulated")
        with self.assertRaises(Exception):
            r.render({"services": {"billing": {"config": {"deployment": {"environment": "prod"}}}}})

    def test_a_client_secret_set_in_values_is_used_and_a_short_one_refused(self):
        value = "s" * 32
        docs = r.manifests(r.render({"services": {"billing": {"secrets": {"authn": {"client_secret": value}}}}}))
        (secret,) = r.find(docs, "Secret", f"{r.RELEASE}-billing")
        self.assertEqual(base64.b64decode(secret["data"]["authn.client_secret"]).decode(), value)
        # auth's pods roll with it (they read it at start).
        checksum = lambda d: deployment(d, "auth")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]  # noqa: E731
        self.assertNotEqual(checksum(docs), checksum(r.manifests(r.rendered("defaults"))))
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render({"services": {"billing": {"secrets": {"authn": {"client_secret": "s" * 31}}}}})
        self.assertIn("services.billing.secrets.authn.client_secret is shorter than 32 characters", str(caught.exception))

    def test_auth_reads_each_client_secret_from_the_secret_and_key_that_service_reads(self):
        for scenario in ("defaults", "existing-secret", "features-on"):
            docs = r.manifests(r.rendered(scenario))
            auth_env = secret_env(deployment(docs, "auth")["spec"]["template"]["spec"]["containers"][0])
            for client in td.SERVICE_CLIENTS:
                with self.subTest(scenario=scenario, client=client):
                    own = secret_env(deployment(docs, client)["spec"]["template"]["spec"]["containers"][0])
                    theirs = own[env_name(client, "authn.client_secret")]
                    ours = auth_env[env_name("auth", f"service_clients.{client}")]
                    self.assertEqual(ours, theirs)
                    self.assertEqual(ours["key"], "authn.client_secret")
                    self.assertNotIn("optional", ours)
                    want = f"prod-{client}" if scenario == "existing-secret" else f"{r.RELEASE}-{client}"
                    self.assertEqual(ours["name"], want)
        # A service that is not deployed here is no service client of this auth.
        docs = r.manifests(r.render({"services": {"notification": {"enabled": False},
                                                  "gateway": {"config": {"upstreams": {"notification": {"url": "http://n:1"}}}}}}))
        names = set(secret_env(deployment(docs, "auth")["spec"]["template"]["spec"]["containers"][0]))
        self.assertEqual({n for n in names if "SERVICE_CLIENTS" in n},
                         {env_name("auth", "service_clients.gateway"), env_name("auth", "service_clients.billing")})
        docs = r.manifests(r.rendered("only-auth"))
        names = set(secret_env(deployment(docs, "auth")["spec"]["template"]["spec"]["containers"][0]))
        self.assertEqual({n for n in names if "SERVICE_CLIENTS" in n}, set())

    def test_notification_reads_the_seal_key_from_the_secret_and_key_auth_reads(self):
        var = env_name("notification", "codes.seal_key")
        for scenario in ("defaults", "existing-secret", "features-on"):
            docs = r.manifests(r.rendered(scenario))
            with self.subTest(scenario=scenario):
                auths = secret_env(deployment(docs, "auth")["spec"]["template"]["spec"]["containers"][0])
                theirs = auths[env_name("auth", "codes.seal_key")]
                ours = secret_env(deployment(docs, "notification")["spec"]["template"]["spec"]["containers"][0])[var]
                self.assertEqual(ours, theirs)
                self.assertEqual(ours["key"], "codes.seal_key")
                self.assertNotIn("optional", ours)
                self.assertEqual(ours["name"], "prod-auth" if scenario == "existing-secret" else f"{r.RELEASE}-auth")
                # The migration Job reads it the same way.
                (job,) = [j for j in r.find(docs, "Job") if j["metadata"]["labels"]["app.kubernetes.io/component"] == "notification"]
                self.assertEqual(secret_env(job["spec"]["template"]["spec"]["containers"][0])[var], theirs)
                if scenario != "existing-secret":
                    (own,) = r.find(docs, "Secret", f"{r.RELEASE}-notification")
                    self.assertNotIn("codes.seal_key", own["data"], "no copy in notification's Secret")
                    (auth_secret,) = r.find(docs, "Secret", f"{r.RELEASE}-auth")
                    self.assertIn("codes.seal_key", auth_secret["data"])

    def test_a_seal_key_set_in_values_is_checked_and_rolls_notification(self):
        key = base64.b64encode(bytes(range(32))).decode()
        docs = r.manifests(r.render({"services": {"auth": {"secrets": {"codes": {"seal_key": key}}}}}))
        (secret,) = r.find(docs, "Secret", f"{r.RELEASE}-auth")
        self.assertEqual(base64.b64decode(secret["data"]["codes.seal_key"]).decode(), key)
        checksum = lambda d, s: deployment(d, s)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]  # noqa: E731
        defaults = r.manifests(r.rendered("defaults"))
        # Both sides read it at start: both roll.
        self.assertNotEqual(checksum(docs, "notification"), checksum(defaults, "notification"))
        self.assertNotEqual(checksum(docs, "auth"), checksum(defaults, "auth"))
        self.assertEqual(checksum(docs, "billing"), checksum(defaults, "billing"))
        # So does a change of the Secret notification reads it from.
        moved = r.manifests(r.render({"services": {"auth": {"secrets": {"existingSecret": "prod-auth"}}}}))
        self.assertNotEqual(checksum(moved, "notification"), checksum(defaults, "notification"))
        bad = {
            "too short": base64.b64encode(b"x" * 16).decode(),
            "too long": base64.b64encode(b"x" * 33).decode(),
            "not base64": "!" * 43 + "=",
            "unpadded": key.rstrip("="),
            "non-canonical last character": key[:42] + chr(ord(key[42]) + 1) + "=",
        }
        for what, value in bad.items():
            with self.subTest(what):
                with self.assertRaises(helm_python.HelmError) as caught:
                    r.render({"services": {"auth": {"secrets": {"codes": {"seal_key": value}}}}})
                self.assertIn("services.auth.secrets.codes.seal_key is not 32 bytes in base64", str(caught.exception))
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render({"services": {"auth": {"secrets": {"codes": {"seal_key": td.defaults("auth")["codes"]["seal_key"]}}}}})
        self.assertIn("services.auth.secrets.codes.seal_key is the public development key", str(caught.exception))
        # With auth in the release notification holds no copy: a value there is refused, not ignored.
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render({"services": {"notification": {"secrets": {"codes": {"seal_key": key}}}}})
        self.assertIn("services.notification.secrets.codes.seal_key is set, but auth is in this release", str(caught.exception))

    def test_without_auth_notification_needs_its_own_seal_key(self):
        scenario = r.scenarios()["only-notification"]
        value = scenario["services"]["notification"]["secrets"]["codes"]["seal_key"]
        self.assertEqual(len(base64.b64decode(value, validate=True)), 32)
        docs = r.manifests(r.rendered("only-notification"))
        ref = secret_env(deployment(docs, "notification")["spec"]["template"]["spec"]["containers"][0])[
            env_name("notification", "codes.seal_key")]
        self.assertEqual(ref, {"name": f"{r.RELEASE}-notification", "key": "codes.seal_key"})
        (secret,) = r.find(docs, "Secret", f"{r.RELEASE}-notification")
        self.assertEqual(base64.b64decode(secret["data"]["codes.seal_key"]).decode(), value)
        self.assertEqual(config_key_problems("notification", docs), [])
        # Required then: never generated (it must equal the other auth's).
        without = {"services": {s: {"enabled": v["enabled"]} | ({"config": v["config"]} if "config" in v else {})
                                for s, v in scenario["services"].items()}}
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render(without)
        self.assertIn("services.notification.secrets.codes.seal_key is required when auth is not in this release",
                      str(caught.exception))
        # With notification's existingSecret, the key comes from that Secret.
        existing = json.loads(json.dumps(without))
        existing["services"]["notification"]["secrets"] = {"existingSecret": "prod-notification"}
        docs = r.manifests(r.render(existing))
        env = secret_env(deployment(docs, "notification")["spec"]["template"]["spec"]["containers"][0])
        self.assertEqual(env[env_name("notification", "codes.seal_key")], {"name": "prod-notification", "key": "codes.seal_key"})
        self.assertEqual(config_key_problems("notification", docs), [])
        self.assertEqual(td.fallback_secret_keys("notification"), ["codes.seal_key"])
        self.assertEqual(td.values_secret_keys("notification"), sorted(td.own_secret_keys("notification") + ["codes.seal_key"]))

    def test_existing_secret_mode_references_it_and_generates_nothing(self):
        docs = r.manifests(r.rendered("existing-secret"))
        self.assertEqual(r.find(docs, "Secret"), [])
        for svc in td.chart_services():
            with self.subTest(service=svc):
                env = secret_env(deployment(docs, svc)["spec"]["template"]["spec"]["containers"][0])
                foreign = {env_name(svc, k): owner for k, (owner, _) in td.foreign_secret_keys(svc).items()}
                self.assertEqual({name: ref["name"] for name, ref in env.items()},
                                 {name: f"prod-{foreign.get(name, svc)}" for name in env})
                own = {name: ref for name, ref in env.items() if name not in foreign}
                required = {ref["key"] for ref in own.values() if not ref.get("optional")}
                self.assertEqual(required, set(td.own_secret_keys(svc)) - set(td.OPTIONAL_SECRET_KEYS))
                self.assertEqual(set(foreign), {env_name(svc, k) for k in td.foreign_secret_keys(svc)})

    def test_a_missing_required_secret_fails_the_render(self):
        svc = td.chart_services()[0]
        with self.assertRaises(helm_python.HelmError) as caught:
            r.render({"services": {svc: {"secrets": {"redis": {"url": ""}}}}})
        self.assertIn("redis.url", str(caught.exception))


class ConfigKeys(unittest.TestCase):
    def test_every_key_a_service_reads_is_wired_and_nothing_else(self):
        for scenario in ("defaults", "features-on", "existing-secret"):
            docs = r.manifests(r.rendered(scenario))
            for svc in td.chart_services():
                with self.subTest(scenario=scenario, service=svc):
                    self.assertEqual(config_key_problems(svc, docs), [])

    def test_the_check_catches_a_dropped_key_and_a_stray_variable(self):
        svc = "auth" if "auth" in td.chart_services() else td.chart_services()[0]
        values = td.chart_values()["services"][svc]["config"]
        section = next(s for s in values if s != "server")
        key = next(iter(values[section]))
        # Helm merges maps, so drop the key by nulling it.
        docs = r.manifests(r.render({"services": {svc: {"config": {section: {key: None}}}}}))
        self.assertIn(f"{svc}: config key {section}.{key} (defaults.toml) is not set by the chart",
                      config_key_problems(svc, docs))
        docs = r.manifests(r.render({"services": {"gateway": {"config": {"upstreams": {"auth": {"connect_timeout_ms": None}}}}}}))
        self.assertIn("gateway: config key upstreams.auth.connect_timeout_ms (defaults.toml) is not set by the chart",
                      config_key_problems("gateway", docs))
        docs = r.manifests(r.rendered("features-on"))
        self.assertEqual(config_toml(docs, "gateway")["routes"]["auth_signup"], {"requests": 5, "period_seconds": 60})
        cm = r.find(docs, "ConfigMap", f"{r.RELEASE}-gateway")[0]
        cm["data"]["config.toml"] += "\n[routes.password_change]\nrequests = 1\n[upstreams.payments]\nurl = \"http://x\"\n"
        problems = config_key_problems("gateway", docs)
        self.assertIn("gateway: the chart sets upstreams.payments.url, which gateway does not read", problems)
        self.assertNotIn("routes.password_change.requests", "".join(problems))
        docs = r.manifests(r.rendered("defaults"))
        env = deployment(docs, svc)["spec"]["template"]["spec"]["containers"][0]["env"]
        env.append({"name": env_name(svc, "redis.uri"), "valueFrom": {"secretKeyRef": {"name": "x", "key": "redis.uri"}}})
        self.assertIn(f"{svc}: variable {env_name(svc, 'redis.uri')} sets no config key the service reads",
                      config_key_problems(svc, docs))

    def test_the_check_accepts_only_the_clients_own_secret_for_auths_service_clients(self):
        var = env_name("auth", "service_clients.billing")

        def auth_env(docs):
            env = deployment(docs, "auth")["spec"]["template"]["spec"]["containers"][0]["env"]
            return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}

        want = (f"auth: {var} reads Secret {{!r}} key {{!r}}, "
                f"expected billing's: Secret '{r.RELEASE}-billing' key 'authn.client_secret'")
        for name, key in ((f"{r.RELEASE}-auth", "service_clients.billing"),   # a copy in auth's own Secret
                          (f"{r.RELEASE}-billing", "redis.url"),              # billing's Secret, another key
                          (f"{r.RELEASE}-gateway", "authn.client_secret")):   # another client's secret
            with self.subTest(name=name, key=key):
                docs = r.manifests(r.rendered("defaults"))
                auth_env(docs)[var].update(name=name, key=key)
                self.assertIn(want.format(name, key), config_key_problems("auth", docs))
        # Dropped: caught as an unwired secret.
        docs = r.manifests(r.rendered("defaults"))
        container = deployment(docs, "auth")["spec"]["template"]["spec"]["containers"][0]
        container["env"] = [e for e in container["env"] if e["name"] != var]
        self.assertIn("auth: secret service_clients.billing is not passed from the Secret", config_key_problems("auth", docs))
        # The client not deployed: nothing to read from.
        docs = r.manifests(r.rendered("defaults"))
        docs = [d for d in docs if not (d["kind"] == "Deployment" and d["metadata"]["name"] == f"{r.RELEASE}-billing")]
        self.assertIn(f"auth: {var} reads billing's authn.client_secret, but no billing Deployment reads it",
                      config_key_problems("auth", docs))
        # Only auth's service_clients may read another Secret: billing's own keys from one Secret.
        docs = r.manifests(r.rendered("defaults"))
        env = deployment(docs, "billing")["spec"]["template"]["spec"]["containers"][0]["env"]
        next(e for e in env if e["name"] == env_name("billing", "redis.url"))["valueFrom"]["secretKeyRef"]["name"] = f"{r.RELEASE}-auth"
        self.assertIn(f"billing: its own secrets come from several Secrets: ['{r.RELEASE}-auth', '{r.RELEASE}-billing']",
                      config_key_problems("billing", docs))

    def test_the_check_accepts_only_auths_seal_key_for_notification(self):
        var = env_name("notification", "codes.seal_key")
        want = (f"notification: {var} reads Secret {{!r}} key {{!r}}, "
                f"expected auth's: Secret '{r.RELEASE}-auth' key 'codes.seal_key'")
        for name, key in ((f"{r.RELEASE}-notification", "codes.seal_key"),   # a copy in its own Secret
                          (f"{r.RELEASE}-auth", "tokens.key_encryption_key"),  # auth's Secret, another key
                          (f"{r.RELEASE}-billing", "codes.seal_key")):         # another service's Secret
            with self.subTest(name=name, key=key):
                docs = r.manifests(r.rendered("defaults"))
                env_of_service(docs, "notification")[var].update(name=name, key=key)
                self.assertIn(want.format(name, key), config_key_problems("notification", docs))
        # Optional where auth's is required: caught.
        docs = r.manifests(r.rendered("defaults"))
        env_of_service(docs, "notification")[var]["optional"] = True
        self.assertIn(want.format(f"{r.RELEASE}-auth", "codes.seal_key"), config_key_problems("notification", docs))
        # Dropped: caught as an unwired secret.
        docs = r.manifests(r.rendered("defaults"))
        container = deployment(docs, "notification")["spec"]["template"]["spec"]["containers"][0]
        container["env"] = [e for e in container["env"] if e["name"] != var]
        self.assertIn("notification: secret codes.seal_key is not passed from the Secret",
                      config_key_problems("notification", docs))
        # auth in the release but its Deployment not reading the key: nothing to share.
        docs = r.manifests(r.rendered("defaults"))
        container = deployment(docs, "auth")["spec"]["template"]["spec"]["containers"][0]
        container["env"] = [e for e in container["env"] if e["name"] != env_name("auth", "codes.seal_key")]
        self.assertIn(f"notification: {var} reads auth's codes.seal_key, but no auth Deployment reads it",
                      config_key_problems("notification", docs))
        # Without auth it is notification's own: from auth's Secret it is caught.
        docs = r.manifests(r.rendered("only-notification"))
        env_of_service(docs, "notification")[var]["name"] = f"{r.RELEASE}-auth"
        self.assertIn(f"notification: its own secrets come from several Secrets: ['{r.RELEASE}-auth', '{r.RELEASE}-notification']",
                      config_key_problems("notification", docs))

    def test_the_check_catches_an_undeclared_read_of_another_services_secret(self):
        # Every one of the gateway's keys from auth's Secret: one Secret, but not its own.
        docs = r.manifests(r.rendered("defaults"))
        for ref in env_of_service(docs, "gateway").values():
            ref["name"] = f"{r.RELEASE}-auth"
        problems = config_key_problems("gateway", docs)
        for key in td.own_secret_keys("gateway"):
            self.assertIn(f"gateway: {env_name('gateway', key)} reads auth's Secret '{r.RELEASE}-auth', "
                          f"which gateway's {key} is not declared to (td.FOREIGN_SECRET_KEYS)", problems)
        # The declared direction only: auth may not read notification's Secret for its own seal key.
        docs = r.manifests(r.rendered("defaults"))
        env_of_service(docs, "auth")[env_name("auth", "codes.seal_key")]["name"] = f"{r.RELEASE}-notification"
        self.assertIn(f"auth: {env_name('auth', 'codes.seal_key')} reads notification's Secret '{r.RELEASE}-notification', "
                      "which auth's codes.seal_key is not declared to (td.FOREIGN_SECRET_KEYS)",
                      config_key_problems("auth", docs))

    def test_chart_config_equals_the_service_defaults(self):
        for svc in td.chart_services():
            with self.subTest(service=svc):
                chart = td.flatten(td.chart_values()["services"][svc]["config"])
                for key, value in td.flatten(td.defaults(svc)).items():
                    if key in chart and key not in CHART_OVERRIDES.get(svc, set()):
                        self.assertEqual(chart[key], value, f"{svc}: {key} differs from defaults.toml")

    def test_a_rolling_update_drains_before_it_is_killed(self):
        # Every listener keeps accepting for shutdown_delay_ms after SIGTERM
        # (while the pod leaves its Services' endpoints), then calls in
        # flight get shutdown_grace_ms; SIGKILL must come after both.
        docs = r.manifests(r.rendered("defaults"))
        for svc in td.chart_services():
            with self.subTest(service=svc):
                server = config_toml(docs, svc)["server"]
                self.assertGreaterEqual(server["shutdown_delay_ms"], 5000, f"{svc}: endpoints need seconds to drop a pod")
                pod = next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"].endswith(f"-{svc}"))
                grace_s = pod["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                self.assertGreater(grace_s * 1000, server["shutdown_delay_ms"] + server["shutdown_grace_ms"],
                                   f"{svc}: SIGKILL before the drain ends")

    def test_otlp_endpoint_reaches_every_service(self):
        docs = r.manifests(r.rendered("features-on"))
        for svc in td.chart_services():
            self.assertEqual(config_toml(docs, svc)["telemetry"]["otlp_endpoint"], "http://otel-collector.observability:4317")

    def test_config_toml_keeps_integers_integers(self):
        docs = r.manifests(r.rendered("defaults"))
        for svc in td.chart_services():
            for key, value in td.flatten(config_toml(docs, svc)).items():
                want = td.flatten(td.defaults(svc)).get(key)
                if isinstance(want, int) and not isinstance(want, bool):
                    self.assertIs(type(value), int, f"{svc}: {key} = {value!r} must be an integer")


class Readme(unittest.TestCase):
    def test_every_value_is_documented_and_the_table_is_current(self):
        documented = chart_readme.documented()
        for leaf in chart_readme.leaves():
            parts = leaf.split(".")
            covered = any(".".join(parts[:i]) in documented for i in range(1, len(parts) + 1))
            self.assertTrue(covered, f"values.yaml {leaf} has no `# --` description")
        readme = (td.CHART / "README.md").read_text()
        self.assertEqual(readme, chart_readme.with_table(readme),
                         "helm/tenx/README.md values table is stale: run .tools/venv/bin/python deploy/tests/gen.py")
        for path in documented:
            self.assertIn(f"| `{path}` |", readme)


if __name__ == "__main__":
    unittest.main()
