#!/usr/bin/env bash
# Makes sure tenx's local dependencies run on loopback:
#
#   PostgreSQL primary        127.0.0.1:5432  (user postgres, trust)
#   PostgreSQL stream replica 127.0.0.1:5433  (hot standby of the primary)
#   Redis                     127.0.0.1:6379
#   RabbitMQ                  127.0.0.1:5672  (guest/guest)
#   SMTP sink                 127.0.0.1:2525  (aiosmtpd in .tools/venv)
#   localstripe               127.0.0.1:8420  (a stateful Stripe emulator, in
#                                            .tools/venv; billing's Stripe tests)
#   SMTP sink with STARTTLS   127.0.0.1:2587  (same Maildir; certificate for
#                                            localhost from a throw-away CA in
#                                            /tmp/tenx-smtp-sink/tls/ca.pem)
#   pgbouncer binary          not started: tests run their own in front of
#                             their databases (transaction mode)
#
# Uses what already runs, starts installed-but-stopped servers, installs
# missing ones from Debian/Ubuntu packages (root + apt-get), or, when no
# native server is installed and a Docker engine answers, runs
# deploy/local/compose.yaml. Idempotent. Prints `deps: ok` on success; on
# failure names the dependency, says why, and exits non-zero.
#
# Environment knobs (rarely needed):
#   TENX_DEPS_PG=selfmade   build the replica with pg_basebackup + pg_ctl
#                           even where the cluster is Debian-managed
#   TENX_DEPS_QUIET=1       print nothing on success
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/deploy/local"
TOOLS="$ROOT/.tools"
mkdir -p "$TOOLS"
LOG="$TOOLS/deps.log"         # output of the commands this script runs
: >"$LOG"

PG_PORT=5432
REPLICA_PORT=5433
REDIS_PORT=6379
AMQP_PORT=5672
SMTP_PORT=2525
export PGCONNECT_TIMEOUT=5

fail() { echo "deps: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [[ $(id -u) -eq 0 ]]; }
log() { echo "== $*" >>"$LOG"; }
# run CMD... with its output in $LOG
run() { log "$*"; "$@" >>"$LOG" 2>&1; }

# Run a command as the postgres OS user (or as ourselves if we are not root).
as_pg() {
  if [[ $(id -un) == postgres ]] || ! is_root; then "$@"
  elif have runuser; then runuser -u postgres -- "$@"
  else su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  fi
}

# --- generic probes ---------------------------------------------------------

tcp_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# wait_until SECONDS CMD... : retry CMD every 0.5 s until it succeeds or time is up
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

redis_ok() {
  timeout 3 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$REDIS_PORT"' || exit 1
    printf "PING\r\n" >&3
    IFS= read -r -t 2 line <&3 || exit 1
    [[ $line == "+PONG"* ]]' 2>/dev/null
}

# The AMQP listener answers the protocol header with a Connection.Start
# frame (type 1) only once the broker has finished booting.
amqp_ok() {
  timeout 5 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$AMQP_PORT"' || exit 1
    printf "AMQP\x00\x00\x09\x01" >&3
    b=$(head -c 1 <&3 | od -An -tu1 | tr -d " ")
    [[ $b == 1 ]]' 2>/dev/null
}

smtp_ok() {
  timeout 3 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"${1:-$SMTP_PORT}"' || exit 1
    IFS= read -r -t 2 line <&3 || exit 1
    printf "QUIT\r\n" >&3
    [[ $line == 220* ]]' 2>/dev/null
}

# --- docker compose -----------------------------------------------------------

DOCKER_OK=
docker_ok() {
  if [[ -z $DOCKER_OK ]]; then
    DOCKER_OK=no
    if have docker && timeout 10 docker info >/dev/null 2>&1 \
        && timeout 10 docker compose version >/dev/null 2>&1; then
      DOCKER_OK=yes
    fi
  fi
  [[ $DOCKER_OK == yes ]]
}
compose() { docker compose -f "$HERE/compose.yaml" "$@"; }

# --- apt ------------------------------------------------------------------------

APT_UPDATED=
can_apt() { is_root && have apt-get; }
apt_install() {
  local what=$1; shift
  if [[ -z $APT_UPDATED ]]; then
    run timeout 600 apt-get update -q || fail "$what: apt-get update failed; see $LOG"
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive run timeout 1200 \
    apt-get install -y --no-install-recommends "$@" \
    || fail "$what: apt-get install $* failed; see $LOG"
}

# --- PostgreSQL -----------------------------------------------------------------

PG_MODE=          # debian | selfmade | docker
# psql on PORT as postgres; prints unaligned tuples.
pgq() {
  local port=$1; shift
  if [[ $PG_MODE == docker ]] && ! have psql; then
    local svc=postgres; [[ $port == "$REPLICA_PORT" ]] && svc=postgres-replica
    compose exec -T "$svc" psql -X -q -At -U postgres -d postgres -v ON_ERROR_STOP=1 "$@" 2>>"$LOG"
  else
    psql -X -q -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@" 2>>"$LOG"
  fi
}
pg_up() { [[ $(pgq "$1" -c 'select 1' 2>/dev/null) == 1 ]]; }
# pg_isready: the server accepts connections (even if auth would fail)
pg_accepting() {
  if have pg_isready; then pg_isready -q -h 127.0.0.1 -p "$1" -t 2; else tcp_open "$1"; fi
}

debian_pg_installed() { have pg_lsclusters && have pg_ctlcluster && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
pg_bin() {  # newest server binary dir holding NAME, or NAME from PATH
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -n $d && -x $d/$1 ]]; then echo "$d/$1"
  elif have "$1"; then command -v "$1"
  else return 1
  fi
}
selfmade_pg_possible() { pg_bin pg_ctl >/dev/null && pg_bin pg_basebackup >/dev/null; }

# Field N of `pg_lsclusters -h` for VER/CLUSTER (1 ver 2 name 3 port 4 status 5 owner 6 datadir 7 log).
cluster_field() { pg_lsclusters -h 2>/dev/null | awk -v v="$1" -v c="$2" -v f="$3" '$1==v && $2==c {print $f}'; }

# Primary's pg_hba must allow replication from loopback without a password
# (and, for the tests, postgres over TCP with trust).
ensure_primary_hba() {
  local hba=$1 changed=
  [[ -f $hba ]] || fail "postgres primary: pg_hba.conf not found at $hba"
  if ! grep -Eq '^[[:space:]]*host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    sed -i '0,/^[[:space:]]*[^#[:space:]]/s//host replication all 127.0.0.1\/32 trust\n&/' "$hba"
    grep -q '^host replication all 127.0.0.1/32 trust' "$hba" || echo 'host replication all 127.0.0.1/32 trust' >>"$hba"
    changed=1
  fi
  if ! pg_up "$PG_PORT"; then
    # the server runs but does not let postgres in over TCP without a password
    if ! grep -Eq '^[[:space:]]*host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
      sed -i '0,/^[[:space:]]*[^#[:space:]]/s//host all all 127.0.0.1\/32 trust\n&/' "$hba"
      changed=1
    fi
  fi
  [[ -z $changed ]] || return 0
  return 1
}

pg_debian_primary() {
  local ver status
  ver=$(pg_lsclusters -h 2>/dev/null | awk '$2=="main"{print $1}' | sort -V | tail -n1)
  if [[ -z $ver ]]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    run pg_createcluster -p "$PG_PORT" "$ver" main \
      || fail "postgres primary: pg_createcluster $ver main failed; see $LOG"
  fi
  PG_VER=$ver
  PG_MAIN_LOG=$(cluster_field "$ver" main 7); PG_MAIN_LOG=${PG_MAIN_LOG:-/var/log/postgresql/postgresql-$ver-main.log}
  [[ $(cluster_field "$ver" main 3) == "$PG_PORT" ]] \
    || fail "postgres primary: cluster $ver/main is configured for port $(cluster_field "$ver" main 3), not $PG_PORT (see /etc/postgresql/$ver/main)"

  status=$(cluster_field "$ver" main 4)
  if [[ $status != online* ]]; then
    run timeout 120 pg_ctlcluster --skip-systemctl-redirect "$ver" main start \
      || fail "postgres primary on 127.0.0.1:$PG_PORT did not start; see $PG_MAIN_LOG and $LOG"
  fi
  wait_until 60 pg_accepting "$PG_PORT" \
    || fail "postgres primary on 127.0.0.1:$PG_PORT does not accept connections; see $PG_MAIN_LOG"

  local reload=
  ensure_primary_hba "/etc/postgresql/$ver/main/pg_hba.conf" && reload=1
  # Keep some WAL for a replica that was down for a while (test runs that
  # create databases write a lot of it); otherwise it must be rebuilt.
  local keep=/etc/postgresql/$ver/main/conf.d/91-tenx-replication.conf
  if [[ ! -f $keep ]]; then
    mkdir -p "${keep%/*}"
    printf '# written by deploy/local/deps.sh\nwal_keep_size = 512MB\n' >"$keep"
    chown postgres:postgres "$keep" 2>/dev/null || true
    reload=1
  fi
  if [[ -n $reload ]]; then
    run pg_ctlcluster --skip-systemctl-redirect "$ver" main reload \
      || fail "postgres primary: reload after editing pg_hba.conf failed; see $LOG"
    sleep 1
  fi
}

pg_check_primary() {
  wait_until 10 pg_up "$PG_PORT" \
    || fail "postgres primary on 127.0.0.1:$PG_PORT: psql -h 127.0.0.1 -U postgres -c 'select 1' fails; see $LOG"
  local wal senders rec
  rec=$(pgq "$PG_PORT" -c 'select pg_is_in_recovery()')
  [[ $rec == f ]] || fail "postgres primary on 127.0.0.1:$PG_PORT is itself in recovery (a standby), not a primary"
  wal=$(pgq "$PG_PORT" -c 'show wal_level')
  senders=$(pgq "$PG_PORT" -c 'show max_wal_senders')
  [[ $wal != minimal && ${senders:-0} -gt 0 ]] \
    || fail "postgres primary on 127.0.0.1:$PG_PORT cannot feed a replica (wal_level=$wal, max_wal_senders=$senders); set wal_level=replica and max_wal_senders>=2, then restart it"
}

# 0 when the server on the replica port is a hot standby streaming from the primary.
replica_streaming() {
  [[ $(pgq "$REPLICA_PORT" -c 'select pg_is_in_recovery()' 2>/dev/null) == t ]] || return 1
  [[ $(pgq "$REPLICA_PORT" -c "select count(*) from pg_stat_wal_receiver where status = 'streaming'" 2>/dev/null) -ge 1 ]]
}

replica_resume_if_paused() {
  if [[ $(pgq "$REPLICA_PORT" -c 'select pg_is_wal_replay_paused()' 2>/dev/null) == t ]]; then
    pgq "$REPLICA_PORT" -c 'select pg_wal_replay_resume()' >/dev/null \
      || fail "postgres replica on 127.0.0.1:$REPLICA_PORT: WAL replay is paused and pg_wal_replay_resume() failed; see $LOG"
  fi
}

# verify_replica LOGFILE: 0 = healthy; 1 = unhealthy (caller may recreate)
verify_replica() {
  wait_until 60 pg_accepting "$REPLICA_PORT" || return 1
  wait_until 20 pg_up "$REPLICA_PORT" || return 1
  # a promoted (or never-standby) server will not become one by waiting
  [[ $(pgq "$REPLICA_PORT" -c 'select pg_is_in_recovery()' 2>/dev/null) == t ]] || return 1
  replica_resume_if_paused
  wait_until 20 replica_streaming || return 1
  replica_resume_if_paused
}

# --- Debian-managed replica cluster ---

debian_replica_create() {
  local ver=$PG_VER datadir
  if [[ $(cluster_field "$ver" replica 4) == online* ]]; then
    run timeout 60 pg_ctlcluster --skip-systemctl-redirect "$ver" replica stop -m fast || true
  fi
  if tcp_open "$REPLICA_PORT"; then
    fail "postgres replica: port $REPLICA_PORT is already taken by another process (not cluster $ver/replica)"
  fi
  if [[ -n $(cluster_field "$ver" replica 1) ]]; then
    run pg_dropcluster "$ver" replica || fail "postgres replica: pg_dropcluster $ver replica failed; see $LOG"
  fi
  run pg_createcluster -p "$REPLICA_PORT" "$ver" replica \
    || fail "postgres replica: pg_createcluster -p $REPLICA_PORT $ver replica failed; see $LOG"
  datadir=$(cluster_field "$ver" replica 6)
  [[ -n $datadir && -d $datadir ]] || fail "postgres replica: no data directory for cluster $ver/replica"
  find "$datadir" -mindepth 1 -delete
  as_pg timeout 600 "$(pg_bin pg_basebackup)" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$datadir" \
      -R -X stream -c fast >>"$LOG" 2>&1 \
    || fail "postgres replica: pg_basebackup from 127.0.0.1:$PG_PORT into $datadir failed; see $LOG"
  install -o postgres -g postgres -m 640 "/etc/postgresql/$ver/main/pg_hba.conf" "/etc/postgresql/$ver/replica/pg_hba.conf"
  mkdir -p "/etc/postgresql/$ver/replica/conf.d"
  cat >"/etc/postgresql/$ver/replica/conf.d/90-tenx-replica.conf" <<EOF
# written by deploy/local/deps.sh
port = $REPLICA_PORT
hot_standby = on
hot_standby_feedback = on
EOF
  chown -R postgres:postgres "/etc/postgresql/$ver/replica/conf.d"
}

debian_replica_start() {
  run timeout 120 pg_ctlcluster --skip-systemctl-redirect "$PG_VER" replica start
}

pg_debian_replica() {
  local ver=$PG_VER port status rlog
  rlog=/var/log/postgresql/postgresql-$ver-replica.log
  port=$(cluster_field "$ver" replica 3)
  status=$(cluster_field "$ver" replica 4)

  if [[ -z $port ]]; then
    if tcp_open "$REPLICA_PORT"; then
      # Something else serves 5433: use it if it is a streaming replica.
      verify_replica && return 0
      fail "postgres replica: 127.0.0.1:$REPLICA_PORT is taken by a server that is not a streaming replica of 127.0.0.1:$PG_PORT (and is no Debian cluster $ver/replica)"
    fi
    debian_replica_create
    debian_replica_start || fail "postgres replica on 127.0.0.1:$REPLICA_PORT did not start; see $rlog"
  elif [[ $port != "$REPLICA_PORT" ]]; then
    debian_replica_create
    debian_replica_start || fail "postgres replica on 127.0.0.1:$REPLICA_PORT did not start; see $rlog"
  elif [[ $status != online* ]]; then
    if ! debian_replica_start; then
      debian_replica_create
      debian_replica_start || fail "postgres replica on 127.0.0.1:$REPLICA_PORT did not start; see $rlog"
    fi
  fi

  if ! verify_replica; then
    log "replica unhealthy (not in recovery or not streaming); recreating"
    debian_replica_create
    debian_replica_start || fail "postgres replica on 127.0.0.1:$REPLICA_PORT did not start; see $rlog"
    verify_replica || fail "postgres replica on 127.0.0.1:$REPLICA_PORT is not a streaming hot standby of 127.0.0.1:$PG_PORT even after recreating it; see $rlog"
  fi
}

# --- self-made replica (PostgreSQL not managed by postgresql-common) ---

SELF_DIR=
selfmade_dirs() {
  if is_root; then SELF_DIR=/var/lib/postgresql/tenx-replica; else SELF_DIR=$TOOLS/pg-replica; fi
  SELF_DATA=$SELF_DIR/data
  SELF_LOG=$SELF_DIR/replica.log
}

selfmade_replica_create() {
  local pgctl basebackup owner
  pgctl=$(pg_bin pg_ctl); basebackup=$(pg_bin pg_basebackup)
  if [[ -f $SELF_DATA/PG_VERSION ]]; then
    as_pg timeout 60 "$pgctl" -D "$SELF_DATA" -m fast -w stop >>"$LOG" 2>&1 || true
  fi
  if tcp_open "$REPLICA_PORT"; then
    fail "postgres replica: port $REPLICA_PORT is already taken by another process"
  fi
  rm -rf "$SELF_DATA"
  mkdir -p "$SELF_DIR"
  if is_root; then chown postgres:postgres "$SELF_DIR"; fi
  chmod 700 "$SELF_DIR"
  as_pg timeout 600 "$basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$SELF_DATA" \
      -R -X stream -c fast >>"$LOG" 2>&1 \
    || fail "postgres replica: pg_basebackup from 127.0.0.1:$PG_PORT into $SELF_DATA failed; see $LOG"
  owner=$(id -un); is_root && owner=postgres
  # Where the primary keeps its configuration outside the data directory
  # (e.g. postgresql-common's /etc/postgresql), the copy has none: give it
  # a minimal one with loopback trust, like the primary's.
  if [[ ! -f $SELF_DATA/postgresql.conf ]]; then
    as_pg tee "$SELF_DATA/postgresql.conf" >/dev/null </dev/null
  fi
  if [[ ! -f $SELF_DATA/pg_hba.conf ]]; then
    as_pg tee "$SELF_DATA/pg_hba.conf" >/dev/null <<'EOF'
local all all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
EOF
  fi
  [[ -f $SELF_DATA/pg_ident.conf ]] || as_pg tee "$SELF_DATA/pg_ident.conf" >/dev/null </dev/null
  # Later settings in postgresql.auto.conf win over the copied postgresql.conf.
  as_pg tee -a "$SELF_DATA/postgresql.auto.conf" >/dev/null <<EOF
# written by deploy/local/deps.sh
port = $REPLICA_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SELF_DIR'
hot_standby = on
hot_standby_feedback = on
external_pid_file = ''
cluster_name = 'tenx-replica'
EOF
  log "self-made replica created in $SELF_DATA (owner $owner)"
}

selfmade_replica_start() {
  as_pg timeout 90 "$(pg_bin pg_ctl)" -D "$SELF_DATA" -l "$SELF_LOG" -w -t 60 start >>"$LOG" 2>&1
}

pg_selfmade_replica() {
  local pgctl
  selfmade_dirs
  pgctl=$(pg_bin pg_ctl)
  if [[ -f $SELF_DATA/PG_VERSION ]]; then
    if ! as_pg "$pgctl" -D "$SELF_DATA" status >/dev/null 2>&1; then
      tcp_open "$REPLICA_PORT" && { verify_replica && return 0;
        fail "postgres replica: 127.0.0.1:$REPLICA_PORT is taken by a server that is not a streaming replica of 127.0.0.1:$PG_PORT"; }
      if ! selfmade_replica_start; then
        selfmade_replica_create
        selfmade_replica_start || fail "postgres replica on 127.0.0.1:$REPLICA_PORT did not start; see $SELF_LOG"
      fi
    fi
  else
    if tcp_open "$REPLICA_PORT"; then
      verify_replica && return 0
      fail "postgres replica: 127.0.0.1:$REPLICA_PORT is taken by a server that is not a streaming replica of 127.0.0.1:$PG_PORT"
    fi
    selfmade_replica_create
    selfmade_replica_start || fail "postgres replica on 127.0.0.1:$REPLICA_PORT did not start; see $SELF_LOG"
  fi
  if ! verify_replica; then
    log "replica unhealthy (not in recovery or not streaming); recreating"
    selfmade_replica_create
    selfmade_replica_start || fail "postgres replica on 127.0.0.1:$REPLICA_PORT did not start; see $SELF_LOG"
    verify_replica || fail "postgres replica on 127.0.0.1:$REPLICA_PORT is not a streaming hot standby of 127.0.0.1:$PG_PORT even after recreating it; see $SELF_LOG"
  fi
}

pg_selfmade_primary() {
  pg_accepting "$PG_PORT" \
    || fail "postgres primary on 127.0.0.1:$PG_PORT is not running and is not a Debian-managed cluster this script can start; start it yourself"
  wait_until 10 pg_up "$PG_PORT" \
    || fail "postgres primary on 127.0.0.1:$PG_PORT: psql -h 127.0.0.1 -U postgres -c 'select 1' fails (needs trust auth for postgres on 127.0.0.1); see $LOG"
  local hba
  hba=$(pgq "$PG_PORT" -c 'show hba_file')
  if [[ -w $hba ]] && ensure_primary_hba "$hba"; then
    pgq "$PG_PORT" -c 'select pg_reload_conf()' >/dev/null
    sleep 1
  fi
}

# --- docker-compose Postgres ---

pg_docker() {
  local want=()
  pg_accepting "$PG_PORT" || want+=(postgres)
  pg_accepting "$REPLICA_PORT" || want+=(postgres-replica)
  if ((${#want[@]})); then
    run timeout 600 compose up -d "${want[@]}" || fail "postgres: docker compose up ${want[*]} failed; see $LOG"
  fi
  wait_until 90 pg_up "$PG_PORT" || fail "postgres primary (compose service postgres) on 127.0.0.1:$PG_PORT did not start; see 'docker compose -f $HERE/compose.yaml logs postgres'"
  if ! verify_replica; then
    run timeout 600 compose up -d --force-recreate --renew-anon-volumes postgres-replica \
      || fail "postgres replica: docker compose recreate failed; see $LOG"
    verify_replica || fail "postgres replica (compose service postgres-replica) on 127.0.0.1:$REPLICA_PORT is not streaming; see 'docker compose -f $HERE/compose.yaml logs postgres-replica'"
  fi
}

ensure_postgres() {
  if [[ ${TENX_DEPS_PG:-} == selfmade ]] && selfmade_pg_possible; then
    PG_MODE=selfmade
  elif debian_pg_installed; then
    PG_MODE=debian
  elif selfmade_pg_possible; then
    PG_MODE=selfmade
  elif docker_ok; then
    PG_MODE=docker
  elif can_apt; then
    apt_install postgres postgresql
    debian_pg_installed || fail "postgres: installed the postgresql package but pg_lsclusters/pg_ctlcluster are missing"
    PG_MODE=debian
  else
    fail "postgres: no PostgreSQL server installed, no Docker engine, and cannot apt-get install (not root or no apt-get)"
  fi

  case $PG_MODE in
    debian)
      pg_debian_primary
      pg_check_primary
      if [[ ${TENX_DEPS_PG:-} == selfmade ]]; then pg_selfmade_replica; else pg_debian_replica; fi
      ;;
    selfmade)
      if debian_pg_installed; then pg_debian_primary; else pg_selfmade_primary; fi
      pg_check_primary
      pg_selfmade_replica
      ;;
    docker)
      pg_docker
      ;;
  esac
  pg_up "$REPLICA_PORT" \
    || fail "postgres replica on 127.0.0.1:$REPLICA_PORT: psql -h 127.0.0.1 -p $REPLICA_PORT -U postgres -c 'select 1' fails; see $LOG"
}

# --- Redis --------------------------------------------------------------------

start_redis_native() {
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  run timeout 30 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
      --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log \
    || fail "redis on 127.0.0.1:$REDIS_PORT: redis-server failed to start; see $LOG and /var/log/redis/ci.log"
  wait_until 30 redis_ok || fail "redis on 127.0.0.1:$REDIS_PORT did not answer PING after starting; see /var/log/redis/ci.log"
}

ensure_redis() {
  redis_ok && return 0
  if tcp_open "$REDIS_PORT"; then
    wait_until 15 redis_ok && return 0
    fail "redis: something listens on 127.0.0.1:$REDIS_PORT but does not answer PING"
  fi
  if have redis-server; then
    start_redis_native
  elif docker_ok; then
    run timeout 600 compose up -d redis || fail "redis: docker compose up redis failed; see $LOG"
    wait_until 60 redis_ok || fail "redis (compose service redis) on 127.0.0.1:$REDIS_PORT did not answer PING"
  elif can_apt; then
    apt_install redis redis-server
    # the package may have started one (where an init system runs)
    wait_until 3 redis_ok || start_redis_native
  else
    fail "redis: redis-server not installed, no Docker engine, and cannot apt-get install"
  fi
}

# --- RabbitMQ -----------------------------------------------------------------

start_rabbitmq_native() {
  RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 \
    run timeout 60 rabbitmq-server -detached \
    || fail "rabbitmq on 127.0.0.1:$AMQP_PORT: rabbitmq-server -detached failed; see $LOG and /var/log/rabbitmq/"
  if have rabbitmqctl; then
    run timeout 90 rabbitmqctl await_startup \
      || fail "rabbitmq on 127.0.0.1:$AMQP_PORT did not finish booting within 90 s; see /var/log/rabbitmq/"
  fi
  wait_until 60 amqp_ok || fail "rabbitmq on 127.0.0.1:$AMQP_PORT does not answer AMQP; see /var/log/rabbitmq/"
}

ensure_rabbitmq() {
  amqp_ok && return 0
  if tcp_open "$AMQP_PORT"; then
    # still booting?
    if have rabbitmqctl; then run timeout 60 rabbitmqctl await_startup || true; fi
    wait_until 30 amqp_ok && return 0
    fail "rabbitmq: something listens on 127.0.0.1:$AMQP_PORT but does not speak AMQP 0-9-1"
  fi
  if have rabbitmq-server; then
    # a node may be up with its listener not yet open (booting)
    if have rabbitmqctl && run timeout 15 rabbitmqctl -q ping; then
      run timeout 90 rabbitmqctl await_startup || true
      wait_until 30 amqp_ok && return 0
    fi
    start_rabbitmq_native
  elif docker_ok; then
    run timeout 600 compose up -d rabbitmq || fail "rabbitmq: docker compose up rabbitmq failed; see $LOG"
    wait_until 120 amqp_ok || fail "rabbitmq (compose service rabbitmq) on 127.0.0.1:$AMQP_PORT did not come up within 120 s"
  elif can_apt; then
    apt_install rabbitmq rabbitmq-server
    wait_until 3 amqp_ok || start_rabbitmq_native
  else
    fail "rabbitmq: rabbitmq-server not installed, no Docker engine, and cannot apt-get install"
  fi
}

# --- SMTP sink ------------------------------------------------------------------

# The sink keeps every message as a file in this Maildir, one machine-wide
# place, so tests (of any checkout) can read back what was sent.
SMTP_MAILDIR=${TENX_SMTP_MAILDIR:-/tmp/tenx-smtp-sink/maildir}

smtp_keeps_mail() { pgrep -f "aiosmtpd.*Mailbox $SMTP_MAILDIR" >/dev/null 2>&1; }
smtp_port_free() { ! tcp_open "$SMTP_PORT"; }

ensure_smtp() {
  smtp_ok && smtp_keeps_mail && return 0
  # An earlier sink of ours that only logged mail: replace it.
  if pkill -f "aiosmtpd -n -l 127.0.0.1:$SMTP_PORT" 2>/dev/null; then
    wait_until 10 smtp_port_free || true
  fi
  if tcp_open "$SMTP_PORT"; then
    wait_until 10 smtp_ok && return 0
    fail "smtp sink: something listens on 127.0.0.1:$SMTP_PORT but sends no SMTP 220 greeting"
  fi
  if have python3 || [[ -x $TOOLS/venv/bin/python ]] || ! docker_ok; then
    "$HERE/tools.sh" venv || fail "smtp sink: could not install aiosmtpd into $TOOLS/venv (see above)"
    local smtplog=$TOOLS/smtp-sink.log
    mkdir -p "$(dirname "$SMTP_MAILDIR")"
    (
      cd "$TOOLS"
      setsid nohup "$TOOLS/venv/bin/python3" -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" \
        -c aiosmtpd.handlers.Mailbox "$SMTP_MAILDIR" \
        >"$smtplog" 2>&1 </dev/null &
      echo $! >"$TOOLS/smtp-sink.pid"
    )
    wait_until 20 smtp_ok || fail "smtp sink on 127.0.0.1:$SMTP_PORT (aiosmtpd) did not start; see $smtplog"
  else
    run timeout 600 compose up -d smtp || fail "smtp sink: docker compose up smtp failed; see $LOG"
    wait_until 60 smtp_ok || fail "smtp sink (compose service smtp) on 127.0.0.1:$SMTP_PORT did not come up"
  fi
}

# A second sink that insists on STARTTLS, so the relay TLS modes are tested
# against a real server. Its certificate names localhost and 127.0.0.1 and
# comes from a CA made here for the purpose (Python's trustme).
SMTP_TLS_PORT=2587
SMTP_TLS_DIR=${TENX_SMTP_TLS_DIR:-/tmp/tenx-smtp-sink/tls}

smtp_tls_port_free() { ! tcp_open "$SMTP_TLS_PORT"; }

ensure_smtp_tls() {
  smtp_ok "$SMTP_TLS_PORT" && [[ -s $SMTP_TLS_DIR/ca.pem ]] && return 0
  # Ours, but its CA file is gone: start over with a fresh CA.
  if pkill -f "aiosmtpd -n -l 127.0.0.1:$SMTP_TLS_PORT" 2>/dev/null; then
    wait_until 10 smtp_tls_port_free || true
  fi
  tcp_open "$SMTP_TLS_PORT" && fail "smtp tls sink: 127.0.0.1:$SMTP_TLS_PORT is taken by something else"
  "$HERE/tools.sh" venv || fail "smtp tls sink: could not install aiosmtpd and trustme into $TOOLS/venv"
  mkdir -p "$SMTP_TLS_DIR" "$(dirname "$SMTP_MAILDIR")"
  "$TOOLS/venv/bin/python3" - "$SMTP_TLS_DIR" >>"$LOG" 2>&1 <<'PY' || fail "smtp tls sink: could not make its certificate; see $LOG"
import sys, trustme
folder = sys.argv[1]
ca = trustme.CA(organization_name="tenx local test CA")
leaf = ca.issue_cert("localhost", "127.0.0.1")
leaf.cert_chain_pems[0].write_to_path(f"{folder}/server.pem")
leaf.private_key_pem.write_to_path(f"{folder}/server.key")
ca.cert_pem.write_to_path(f"{folder}/ca.pem")
PY
  local smtplog=$TOOLS/smtp-tls-sink.log
  (
    cd "$TOOLS"
    setsid nohup "$TOOLS/venv/bin/python3" -m aiosmtpd -n -l "127.0.0.1:$SMTP_TLS_PORT" \
      --tlscert "$SMTP_TLS_DIR/server.pem" --tlskey "$SMTP_TLS_DIR/server.key" \
      -c aiosmtpd.handlers.Mailbox "$SMTP_MAILDIR" \
      >"$smtplog" 2>&1 </dev/null &
  )
  wait_until 20 smtp_ok "$SMTP_TLS_PORT" || fail "smtp tls sink on 127.0.0.1:$SMTP_TLS_PORT did not start; see $smtplog"
}

# --- localstripe -----------------------------------------------------------------

# A stateful Stripe emulator (PyPI's localstripe): billing's Stripe
# provider is tested against its API and its signed webhooks.
STRIPE_PORT=8420

localstripe_ok() {
  timeout 3 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$STRIPE_PORT"' || exit 1
    printf "GET /v1/balance HTTP/1.0\r\nAuthorization: Bearer sk_test_deps\r\n\r\n" >&3
    IFS= read -r -t 2 line <&3 || exit 1
    [[ $line == "HTTP/1."?" 200"* ]]' 2>/dev/null
}

ensure_localstripe() {
  localstripe_ok && return 0
  tcp_open "$STRIPE_PORT" && fail "localstripe: 127.0.0.1:$STRIPE_PORT is taken by something that is not localstripe"
  "$HERE/tools.sh" venv || fail "localstripe: could not install it into $TOOLS/venv (see above)"
  local stripelog=$TOOLS/localstripe.log
  (
    cd "$TOOLS"
    # --from-scratch: its store (kept in /tmp/localstripe.pickle, rewritten
    # on every change) starts empty rather than as big as every earlier run.
    setsid nohup "$TOOLS/venv/bin/localstripe" --port "$STRIPE_PORT" --from-scratch \
      >"$stripelog" 2>&1 </dev/null &
  )
  wait_until 30 localstripe_ok || fail "localstripe on 127.0.0.1:$STRIPE_PORT did not start; see $stripelog"
}

# --- PgBouncer -------------------------------------------------------------------

# Not a server the platform needs: the binary, for the tests that start a
# PgBouncer of their own in front of their databases (transaction mode).
pgbouncer_bin() { have pgbouncer || [[ -x /usr/sbin/pgbouncer ]]; }

ensure_pgbouncer() {
  pgbouncer_bin && return 0
  can_apt || fail "pgbouncer: not installed and cannot apt-get install it (not root or no apt-get)"
  apt_install pgbouncer pgbouncer
  pgbouncer_bin || fail "pgbouncer: installed, but no pgbouncer binary on the PATH or in /usr/sbin"
}

# --------------------------------------------------------------------------------

ensure_postgres
ensure_redis
ensure_rabbitmq
ensure_smtp
ensure_smtp_tls
ensure_localstripe
ensure_pgbouncer

[[ -n ${TENX_DEPS_QUIET:-} ]] || echo "deps: ok"
