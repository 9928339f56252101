#!/usr/bin/env bash
# Installs the project's dev tools into .tools/ (gitignored), from the
# ordinary registries (npm, PyPI). Idempotent; quiet when all is installed.
#
#   deploy/local/tools.sh          # everything
#   deploy/local/tools.sh venv     # only the Python venv (used by deps.sh)
#   deploy/local/tools.sh buf      # only buf
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
  if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import aiosmtpd, trustme' >/dev/null 2>&1; then
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
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check aiosmtpd trustme >>"$LOG" 2>&1 \
    || die "venv: pip install aiosmtpd trustme failed; see $LOG"
  "$venv/bin/python" -c 'import aiosmtpd, trustme' >/dev/null 2>&1 \
    || die "venv: aiosmtpd or trustme not importable after install; see $LOG"
}

mkdir -p "$TOOLS"
case "${1:-all}" in
  all)  install_buf; install_venv ;;
  buf)  install_buf ;;
  venv) install_venv ;;
  *)    die "usage: $0 [all|buf|venv]" ;;
esac
