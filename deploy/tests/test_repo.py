"""Lint-clean deployment files (hadolint, actionlint, yamllint), the compose
file against the compose spec and in step with the chart, the Dockerfile
and the image workflow in step with the services."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml

import tenx_deploy as td

DOCKERFILES = sorted(p for p in td.ROOT.glob("**/Dockerfile*") if ".tools" not in p.parts and "target" not in p.parts)
WORKFLOWS = sorted((td.ROOT / ".github" / "workflows").glob("*.yml"))
COMPOSE = td.ROOT / "deploy" / "compose.yaml"
YAML_PATHS = [".github/workflows", "deploy", "helm/tenx/values.yaml", "helm/tenx/Chart.yaml", "helm/tenx/ci", ".yamllint"]


def tool(name: str, *args, cwd=td.ROOT, input=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(td.VENV_BIN / name), *map(str, args)], cwd=cwd, capture_output=True, text=True, input=input)


class Linters(unittest.TestCase):
    def test_hadolint_reports_nothing(self):
        self.assertTrue(DOCKERFILES, "no Dockerfile found")
        run = tool("hadolint", *DOCKERFILES)
        self.assertEqual((run.returncode, run.stdout + run.stderr), (0, ""))

    def test_hadolint_does_report_a_bad_dockerfile(self):
        run = tool("hadolint", "-", input="FROM debian:latest\nRUN apt-get install curl\n")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("DL3007", run.stdout)

    def test_actionlint_reports_nothing(self):
        self.assertGreaterEqual({p.name for p in WORKFLOWS}, {"ci.yml", "images.yml", "release.yml"})
        run = tool("actionlint", "-no-color", *WORKFLOWS)
        self.assertEqual((run.returncode, run.stdout + run.stderr), (0, ""))

    def test_actionlint_does_report_a_bad_workflow(self):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["git", "init", "-q", tmp], check=True)
            bad = Path(tmp) / ".github" / "workflows" / "bad.yml"
            bad.parent.mkdir(parents=True)
            bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
                           "      - run: echo ${{ github.event.nope.title }}\n      - uses: actions/checkout@v4\n        with: 3\n")
            run = tool("actionlint", "-no-color", bad, cwd=tmp)
        self.assertNotEqual(run.returncode, 0)

    def test_workflows_match_the_github_workflow_schema(self):
        run = tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *WORKFLOWS)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)

    def test_yamllint_strict_reports_nothing(self):
        run = tool("yamllint", "--strict", "-f", "parsable", *YAML_PATHS)
        self.assertEqual((run.returncode, run.stdout + run.stderr), (0, ""))


class Compose(unittest.TestCase):
    compose = yaml.safe_load(COMPOSE.read_text())

    def test_compose_files_match_the_compose_spec(self):
        run = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE,
                   td.ROOT / "deploy" / "local" / "compose.yaml")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)

    def test_compose_spec_check_catches_a_bad_file(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write("services:\n  x:\n    image: a\n    portz: [1]\n")
            f.flush()
            run = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", f.name)
        self.assertNotEqual(run.returncode, 0)

    def test_same_topology_as_the_chart(self):
        services = self.compose["services"]
        for infra in ("postgres", "postgres-replica", "pgbouncer", "redis", "rabbitmq", "smtp", "otel-collector", "jaeger"):
            self.assertIn(infra, services)
        self.assertIn("management", services["rabbitmq"]["image"])
        tenx = {name for name, s in services.items() if "tenx-" in str(s.get("image", "")) and not name.endswith("-migrate")}
        self.assertEqual(sorted(tenx), td.chart_services(), "compose and chart deploy the same services")
        migrators = sorted(name.removesuffix("-migrate") for name in services if name.endswith("-migrate"))
        self.assertEqual(migrators, [svc for svc in td.chart_services() if td.has_migrate(svc)],
                         "a <svc>-migrate for exactly the services with a migrate command")
        for svc in td.chart_services():
            with self.subTest(service=svc):
                s = services[svc]
                self.assertEqual(s["build"]["target"], svc)
                self.assertEqual(s["build"]["args"]["SERVICE"], svc)
                published = {int(p.split(":")[-1]) for p in s["ports"]}
                self.assertEqual(published, set(td.ports(svc).values()))
                for p in s["ports"]:
                    self.assertTrue(p.startswith("127.0.0.1:"), f"{svc} publishes {p} beyond loopback")
                if td.has_migrate(svc):
                    m = services[f"{svc}-migrate"]
                    self.assertEqual(m["command"], ["migrate"])
                    self.assertEqual(s["depends_on"][f"{svc}-migrate"]["condition"], "service_completed_successfully")
                self.assertEqual(s["user"], "65532:65532")
                self.assertIs(s["read_only"], True)
                by_env = {f"TENX_{svc.upper()}__{k.replace('.', '__').upper()}": k for k in td.known_keys(svc)}
                env = s["environment"]
                for up in td.upstreams(svc):
                    # Each upstream is the compose service of that name, on its gRPC port.
                    self.assertEqual(env[f"TENX_{svc.upper()}__UPSTREAMS__{up.upper()}__URL"], f"http://{up}:{td.grpc_port(up)}")
                    self.assertIn(up, s["depends_on"])
                for container in (s, services[f"{svc}-migrate"]) if td.has_migrate(svc) else (s,):
                    for name in container["environment"]:
                        self.assertIn(name, by_env, f"compose {svc}: {name} sets no key {svc} reads")
                    for key in td.secret_keys(svc):
                        if key in td.flatten(td.defaults(svc)):
                            self.assertIn(f"TENX_{svc.upper()}__{key.replace('.', '__').upper()}", container["environment"])

    def test_a_shared_secret_is_one_value_on_both_sides(self):
        """What the chart reads from another service's Secret (td.FOREIGN_SECRET_KEYS:
        auth's service_clients.<svc>, notification's codes.seal_key) is one
        compose value on both sides, in the servers and the migrations."""
        services = self.compose["services"]
        env = lambda svc, key: f"TENX_{svc.upper()}__{key.replace('.', '__').upper()}"  # noqa: E731
        for svc, keys in td.FOREIGN_SECRET_KEYS.items():
            for key, (owner, owner_key) in keys.items():
                with self.subTest(service=svc, key=key):
                    theirs = services[owner]["environment"][env(owner, owner_key)]
                    for name in (svc, f"{svc}-migrate"):
                        if name in services:
                            self.assertEqual(services[name]["environment"][env(svc, key)], theirs)
        # The seal key's development default: 32 bytes in base64, as both services require.
        value = services["auth"]["environment"][env("auth", "codes.seal_key")]
        m = re.fullmatch(r"\$\{TENX_CODES_SEAL_KEY:-([A-Za-z0-9+/=]+)\}", value)
        self.assertIsNotNone(m, value)
        self.assertEqual(len(base64.b64decode(m.group(1), validate=True)), 32)


class Dockerfile(unittest.TestCase):
    text = (td.ROOT / "deploy" / "Dockerfile").read_text()

    def stage(self, name: str) -> str:
        m = re.search(rf"^FROM \S+ AS {re.escape(name)}\n(.*?)(?=^FROM |\Z)", self.text, re.S | re.M)
        self.assertIsNotNone(m, f"deploy/Dockerfile has no stage {name}")
        return m.group(1)

    def test_a_runtime_stage_per_service_with_its_ports_and_entrypoint(self):
        for svc in td.chart_services():
            with self.subTest(service=svc):
                body = self.stage(svc)
                self.assertIn(f'ENTRYPOINT ["/usr/local/bin/tenx-{svc}"]', body)
                self.assertRegex(body, rf"(?m)^EXPOSE {' '.join(map(str, td.ports(svc).values()))}$")
                self.assertIn(f"COPY --from=builder /out/tenx-{svc} /usr/local/bin/tenx-{svc}", body)

    def test_runtime_is_minimal_non_root_and_labelled(self):
        runtime = self.stage("runtime")
        self.assertRegex(self.text, r"(?m)^FROM gcr\.io/distroless/cc-debian12:nonroot AS runtime$")
        self.assertRegex(runtime, r"(?m)^USER 65532:65532$")
        for label in ("source", "version", "revision"):
            self.assertIn(f"org.opencontainers.image.{label}=", runtime)

    def test_dependencies_are_cooked_before_the_sources_are_copied(self):
        builder = self.stage("builder")
        self.assertLess(builder.index("cargo chef cook"), builder.index("COPY . ."))


class ImageWorkflow(unittest.TestCase):
    wf = yaml.safe_load((td.ROOT / ".github" / "workflows" / "images.yml").read_text())

    def test_builds_every_service_multi_arch_with_cache_and_pushes_to_ghcr(self):
        build = self.wf["jobs"]["build"]
        step = next(s for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
        self.assertEqual(step["with"]["platforms"], "linux/amd64,linux/arm64")
        self.assertIn("type=gha", step["with"]["cache-from"])
        self.assertEqual(step["with"]["target"], "${{ matrix.service }}")
        self.assertIn("ghcr.io/", next(s for s in build["steps"] if s.get("id") == "meta")["with"]["images"])
        pick = next(s for s in self.wf["jobs"]["changes"]["steps"] if s.get("id") == "pick")["run"]
        # The change filter lists the shared inputs of every image.
        for shared in ("crates/common/", "crates/proto/", "proto/", "Cargo\\.lock"):
            self.assertIn(shared, pick)
        self.assertIn("crates/*/src/defaults.toml", pick, "the matrix comes from the services that exist")
        self.assertIn("proto-drift", self.wf["jobs"])

    def pick(self, change: str) -> list[str]:
        """Runs the `changes` job's script in a scratch repository holding
        the services' defaults.toml, for a pull request that touches `change`."""
        script = next(s for s in self.wf["jobs"]["changes"]["steps"] if s.get("id") == "pick")["run"]
        with tempfile.TemporaryDirectory() as tmp:
            git = lambda *a: subprocess.run(["git", "-C", tmp, *a], check=True, capture_output=True, text=True).stdout  # noqa: E731
            git("init", "-q")
            git("config", "user.email", "ci@example.com")
            git("config", "user.name", "ci")
            for svc in td.crate_services():
                path = Path(tmp) / "crates" / svc / "src" / "defaults.toml"
                path.parent.mkdir(parents=True)
                path.write_text("")
            git("add", "-A")
            git("commit", "-q", "-m", "base")
            base = git("rev-parse", "HEAD").strip()
            changed = Path(tmp) / change
            changed.parent.mkdir(parents=True, exist_ok=True)
            changed.write_text("changed\n")
            git("add", "-A")
            git("commit", "-q", "-m", "change")
            out = Path(tmp) / "github_output"
            env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "EVENT": "pull_request", "BASE_SHA": base,
                   "GITHUB_OUTPUT": str(out)}
            run = subprocess.run(["bash", "-e", "-c", script], cwd=tmp, env=env, capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, run.stderr)
            (line,) = out.read_text().splitlines()
            return json.loads(line.removeprefix("services="))

    def test_the_matrix_rebuilds_exactly_the_services_whose_inputs_changed(self):
        self.assertIn("gateway", td.crate_services())
        self.assertEqual(self.pick("crates/gateway/src/http.rs"), ["gateway"])
        self.assertEqual(self.pick("crates/auth/src/lib.rs"), ["auth"])
        self.assertEqual(self.pick("crates/billing/migrations/V1__billing.sql"), ["billing"])
        for shared in ("crates/common/src/lib.rs", "crates/proto/src/lib.rs", "proto/tenx/auth/v1/auth.proto", "Cargo.lock"):
            with self.subTest(shared):
                self.assertEqual(self.pick(shared), td.crate_services())
        self.assertEqual(self.pick("docs/README.md"), [])


if __name__ == "__main__":
    unittest.main()
