"""A per-service image built here without a daemon (buildah FROM scratch)
from the release binaries, checked by deploy/image/build-local.sh:
entrypoint, non-root numeric user, ports, labels, and `--help` run from
the image's root filesystem. TENX_BIN_DIR picks the binaries
(default target/release, built by `make check-deploy`)."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

import render as r
import tenx_deploy as td

SCRIPT = td.ROOT / "deploy" / "image" / "build-local.sh"
BIN_DIR = Path(os.environ.get("TENX_BIN_DIR", td.ROOT / "target" / "release"))


class Images(unittest.TestCase):
    def test_release_binaries_exist(self):
        for svc in td.chart_services():
            self.assertTrue((BIN_DIR / f"tenx-{svc}").is_file(),
                            f"{BIN_DIR}/tenx-{svc} missing: cargo build --release --bins -p tenx-{svc}")

    def test_each_service_image_builds_and_answers_help(self):
        run = subprocess.run([SCRIPT, BIN_DIR, *td.chart_services()], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        for svc in td.chart_services():
            self.assertIn(f"image: tenx-{svc} ok: entrypoint /usr/local/bin/tenx-{svc}, user 65532:65532", run.stdout)
            self.assertIn(f"--help: usage: tenx-{svc} ", run.stdout)

    def test_the_service_accepts_the_config_the_chart_renders(self):
        """The real binary loads the rendered config.toml plus the Secret's
        variables and validates them before it looks at the command: an
        unknown command then exits 1, a bad config exits 78 (EX_CONFIG)."""
        docs = r.manifests(r.rendered("features-on"))
        for svc in td.chart_services():
            with self.subTest(service=svc), tempfile.TemporaryDirectory() as tmp:
                (cm,) = r.find(docs, "ConfigMap", f"{r.RELEASE}-{svc}")
                dep = r.find(docs, "Deployment", f"{r.RELEASE}-{svc}")[0]
                env = {"PATH": "/usr/bin:/bin"}
                for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
                    # The Secret the variable names: the service's own, or another
                    # service's (td.FOREIGN_SECRET_KEYS: auth's service_clients.*
                    # from the clients', notification's codes.seal_key from auth's).
                    ref = e["valueFrom"]["secretKeyRef"]
                    (secret,) = r.find(docs, "Secret", ref["name"])
                    if ref.get("optional") and ref["key"] not in secret["data"]:
                        continue  # the kubelet leaves an optional variable unset
                    env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
                config = Path(tmp) / "config.toml"
                config.write_text(cm["data"]["config.toml"])
                run = subprocess.run([BIN_DIR / f"tenx-{svc}", "--config", config, "no-such-command"],
                                     capture_output=True, text=True, env=env, timeout=30)
                self.assertEqual((run.returncode, "unknown command" in run.stderr), (1, True), run.stderr)
                config.write_text(cm["data"]["config.toml"].replace('listen = "0.0.0.0:', 'listen = "nowhere:x'))
                run = subprocess.run([BIN_DIR / f"tenx-{svc}", "--config", config, "no-such-command"],
                                     capture_output=True, text=True, env=env, timeout=30)
                self.assertEqual(run.returncode, 78, run.stderr)

    def test_the_gateway_accepts_every_route_id_the_schema_allows(self):
        """values.schema.json lets `routes.<op>` name the operation ids read
        from the gateway's sources; the binary must accept each (and refuse
        one it does not know), so the two lists cannot drift apart."""
        docs = r.manifests(r.rendered("defaults"))
        (cm,) = r.find(docs, "ConfigMap", f"{r.RELEASE}-gateway")
        ops = td.operation_ids("gateway")
        self.assertGreater(len(ops), 15)
        env = {"PATH": "/usr/bin:/bin", "TENX_GATEWAY__REDIS__URL": "redis://redis:6379"}
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.toml"
            for extra, want in (("".join(f"\n[routes.{op}]\nrequests = 1\n" for op in ops), 1),
                                ("\n[routes.no_such_op]\nrequests = 1\n", 78)):
                config.write_text(cm["data"]["config.toml"].replace("\n[routes]\n", "\n") + extra)
                run = subprocess.run([BIN_DIR / "tenx-gateway", "--config", config, "no-such-command"],
                                     capture_output=True, text=True, env=env, timeout=30)
                self.assertEqual(run.returncode, want, run.stderr)

    def test_a_root_user_is_refused(self):
        svc = td.chart_services()[0]
        run = subprocess.run([SCRIPT, "--user", "0:0", BIN_DIR, svc], capture_output=True, text=True)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("is root", run.stderr)


if __name__ == "__main__":
    unittest.main()
