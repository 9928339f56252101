#!/usr/bin/env bash
# A newcomer's first minutes, checked: `make up` brings the whole platform
# up (dependencies included, installed first on a bare machine), a signup
# through the gateway's HTTP API answers 201, and its welcome email reaches
# the SMTP sink. Then it stops what `make up` started. CI's newcomer job
# runs it before `make test`; it works the same on a developer machine
# (where nothing may listen on the platform's ports yet).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
mkdir -p .tools
LOG=.tools/smoke-up.log
MAILDIR=${TENX_SMTP_MAILDIR:-/tmp/tenx-smtp-sink/maildir}
# The first `make up` builds tenx-dev in release mode: allow for it.
READY_WITHIN=${TENX_SMOKE_READY_SECONDS:-2400}

fail() {
  echo "smoke-up: $*" >&2
  echo "--- last lines of $LOG ---" >&2
  tail -40 "$LOG" >&2 || true
  exit 1
}

# Its own process group, so that stopping it stops make, cargo and tenx-dev.
setsid make up >"$LOG" 2>&1 &
UP=$!
trap 'kill -TERM -- "-$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true' EXIT

ready() { curl -sf -o /dev/null http://127.0.0.1:9090/readyz; }
for ((i = 0; i < READY_WITHIN; i++)); do
  ready && break
  kill -0 "$UP" 2>/dev/null || fail "make up exited before the gateway was ready"
  sleep 1
done
ready || fail "the gateway was not ready within ${READY_WITHIN}s"

EMAIL="newcomer-$(date +%s)-$RANDOM@example.com"
STATUS=$(curl -s -o .tools/smoke-signup.json -w '%{http_code}' -X POST http://127.0.0.1:8080/v1/auth/signup \
  -H 'content-type: application/json' \
  -d "{\"email\":\"$EMAIL\",\"password\":\"correct horse battery staple\",\"display_name\":\"Newcomer\"}")
[[ $STATUS == 201 ]] || fail "signup answered $STATUS: $(cat .tools/smoke-signup.json)"

for ((i = 0; i < 60; i++)); do
  if grep -rlsi "^To:.*$EMAIL" "$MAILDIR/new" "$MAILDIR/cur" >/dev/null; then
    echo "smoke-up: make up serves; a signup answered 201 and its welcome email arrived"
    exit 0
  fi
  sleep 1
done
fail "no welcome email for $EMAIL in $MAILDIR within 60s"
