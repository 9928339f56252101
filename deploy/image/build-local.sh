#!/usr/bin/env bash
# Builds each service's OCI image from an already-built binary, without a
# container daemon, and checks it:
#
#   deploy/image/build-local.sh [--user UID:GID] [--keep DIR] BIN_DIR SERVICE...
#   deploy/image/build-local.sh target/release auth notification
#
# buildah (vfs storage, in a temporary directory removed on exit) assembles
# FROM scratch: the binary at /usr/local/bin/tenx-<svc>, the shared
# libraries `ldd` names (and the loader), CA certificates, /etc/passwd with
# the non-root user, /tmp; user 65532:65532, ENTRYPOINT the binary, EXPOSE
# the ports of crates/<svc>/src/defaults.toml (server.listen, admin_listen
# and, for the gateway, http.listen), OCI labels. Then:
#   - skopeo reads the image config: entrypoint, non-root numeric user, ports;
#   - umoci unpacks the root filesystem, and the binary, run from it with
#     `chroot --userspec=<image user>`, must answer --help (exit 0, usage).
# --keep DIR leaves the OCI layout there (skopeo copy oci:DIR:tenx-<svc> …).
# --user overrides the image user (the tests use 0:0 to see the check fail).
# CI on GitHub builds deploy/Dockerfile instead; this is the daemonless twin
# that `make check-deploy` runs. Needs root (chroot, vfs ownership) and
# buildah, skopeo, umoci (deploy/local/tools.sh deploy installs them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
USER_SPEC="65532:65532"
KEEP=""
die() { echo "image: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --user) USER_SPEC="${2:?--user needs UID:GID}"; shift 2 ;;
    --keep) KEEP="${2:?--keep needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;/^set -e/d'; exit 0 ;;
    --*) die "unknown option $1" ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || die "usage: $0 [--user UID:GID] [--keep DIR] BIN_DIR SERVICE..."
BIN_DIR="$(cd "$1" 2>/dev/null && pwd)" || die "binary directory $1 does not exist (build first: cargo build --release --bins)"
shift

if [[ $(id -u) -ne 0 ]]; then
  if sudo -n true 2>/dev/null; then
    exec sudo -n --preserve-env=PATH "$0" --user "$USER_SPEC" ${KEEP:+--keep "$KEEP"} "$BIN_DIR" "$@"
  fi
  die "needs root (chroot and vfs storage keep file ownership) and no passwordless sudo is available"
fi
for tool in buildah skopeo umoci python3 ldd chroot; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run deploy/local/tools.sh deploy)"
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tenx-image.XXXXXX")"
BUILDAH=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
cleanup() {
  "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
  "${BUILDAH[@]}" rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The ports of a service: server.listen, server.admin_listen, and
# http.listen when it has one (the gateway's HTTP API).
ports_of() {
  python3 - "$ROOT/crates/$1/src/defaults.toml" <<'PY'
import sys, tomllib
config = tomllib.load(open(sys.argv[1], "rb"))
server, http = config["server"], config.get("http", {})
ports = [server["listen"], server["admin_listen"]] + ([http["listen"]] if "listen" in http else [])
print(*(p.rsplit(":", 1)[1] for p in ports))
PY
}

# Absolute paths of the shared objects a binary loads (the loader included).
libs_of() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u
}

build_one() {
  local svc="$1" bin="$BIN_DIR/tenx-$1" ref="tenx-$1"
  [[ -x "$bin" ]] || die "$bin is missing or not executable (cargo build --release --bins -p tenx-$svc)"
  [[ -f "$ROOT/crates/$svc/src/defaults.toml" ]] || die "no crates/$svc/src/defaults.toml: unknown service $svc"
  file -L "$bin" 2>/dev/null | grep -q 'statically linked' && die "$bin is static; expected a glibc binary"
  local grpc admin http
  read -r grpc admin http < <(ports_of "$svc")

  local ctr layout="$WORK/oci" bundle="$WORK/bundle-$svc" etc="$WORK/etc-$svc"
  ctr="$("${BUILDAH[@]}" from --name "$ref-build" scratch)"
  "${BUILDAH[@]}" copy --chmod 0755 "$ctr" "$bin" "/usr/local/bin/tenx-$svc" >/dev/null
  local lib
  while read -r lib; do
    "${BUILDAH[@]}" copy "$ctr" "$(readlink -f "$lib")" "$lib" >/dev/null
  done < <(libs_of "$bin")
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] \
    && "${BUILDAH[@]}" copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
  mkdir -p "$etc/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$etc/group"
  "${BUILDAH[@]}" copy "$ctr" "$etc/passwd" "$etc/group" /etc/ >/dev/null
  chmod 1777 "$etc/tmp"
  "${BUILDAH[@]}" copy "$ctr" "$etc/tmp" /tmp >/dev/null
  "${BUILDAH[@]}" config \
    --user "$USER_SPEC" \
    --entrypoint "[\"/usr/local/bin/tenx-$svc\"]" --cmd serve \
    --port "$grpc/tcp" --port "$admin/tcp" ${http:+--port "$http/tcp"} \
    --label org.opencontainers.image.title="tenx-$svc" \
    --label org.opencontainers.image.source="https://github.com/tenx-platform/tenx" \
    --label org.opencontainers.image.version="$(git -C "$ROOT" describe --tags --always 2>/dev/null || echo dev)" \
    --label org.opencontainers.image.revision="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    "$ctr"
  "${BUILDAH[@]}" commit --quiet --format oci "$ctr" "oci:$layout:$ref" >/dev/null

  # --- checks on what was built -------------------------------------------
  local config
  config="$(skopeo inspect --config "oci:$layout:$ref")"
  python3 - "$svc" "$grpc" "$admin" "$http" <<PY || die "$ref: image config check failed"
import json, sys
svc, grpc, admin, http = sys.argv[1:]
cfg = json.loads('''$config''')["config"]
bad = []
if cfg.get("Entrypoint") != [f"/usr/local/bin/tenx-{svc}"]:
    bad.append(f"entrypoint is {cfg.get('Entrypoint')}, not the service binary")
user = cfg.get("User", "")
uid = user.split(":")[0]
if not uid.isdigit():
    bad.append(f"user {user!r} is not numeric (runAsNonRoot cannot verify a name)")
elif int(uid) == 0:
    bad.append(f"user {user!r} is root")
ports = set(cfg.get("ExposedPorts", {}))
want = {f"{p}/tcp" for p in (grpc, admin, http) if p}
if ports != want:
    bad.append(f"exposed ports {sorted(ports)}, expected {sorted(want)}")
labels = cfg.get("Labels", {})
for label in ("source", "version", "revision"):
    if not labels.get(f"org.opencontainers.image.{label}"):
        bad.append(f"label org.opencontainers.image.{label} missing")
for b in bad:
    print(f"image: tenx-{svc}: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY

  umoci unpack --image "$layout:$ref" "$bundle" >/dev/null 2>"$WORK/umoci.log" \
    || { cat "$WORK/umoci.log" >&2; die "$ref: umoci unpack failed"; }
  local out rc=0 user
  user="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["User"])' <<<"$config")"
  out="$(chroot --userspec="$user" "$bundle/rootfs" "/usr/local/bin/tenx-$svc" --help 2>&1)" || rc=$?
  [[ $rc -eq 0 ]] || die "$ref: /usr/local/bin/tenx-$svc --help in the image's root filesystem exited $rc: $out"
  [[ "$out" == *"usage: tenx-$svc"* ]] || die "$ref: --help printed no usage line: $out"
  local size
  size="$(du -sh "$bundle/rootfs" | cut -f1)"
  echo "image: $ref ok: entrypoint /usr/local/bin/tenx-$svc, user $user, ports $grpc $admin${http:+ $http}, rootfs $size; --help: ${out%%$'\n'*}"
  if [[ -n "$KEEP" ]]; then
    mkdir -p "$KEEP"
    skopeo copy --quiet "oci:$layout:$ref" "oci:$KEEP:$ref"
  fi
  "${BUILDAH[@]}" rm "$ctr" >/dev/null
}

for svc in "$@"; do
  build_one "$svc"
done
