#!/usr/bin/env bash
# Reference figures for scripts/bench-sync.sh: the same workload and the same
# lines on a 3-node Patroni cluster (one etcd, 3 PostgreSQL 15 and 3 Patroni
# run as the postgres user, on loopback), a fresh cluster per mode. For
# asynchronous replication and synchronous_mode on and quorum, prints commit
# throughput and p50/p99 commit latency of single-row inserts (pgbench,
# CLIENTS connections for SECS seconds), in the synchronous modes the
# switchover time (`patronictl switchover --force` -> new primary writable),
# and the hard-failover time (SIGKILL of Patroni + postmaster -> new primary
# writable). Every line starts with "Patroni <version>". Patroni raises ttl to
# 20 and retry_timeout to 3 at least: the settings line says what it runs.
# Patroni is pip-installed into a throwaway venv (PATRONI_VERSION, default
# 4.1.5); PATRONI_VENV=DIR keeps the venv there and reuses it next time.
# The PostgreSQL parameters are the ones leasedog sets (scripts/cluster-lib.sh
# and src/postgres/conf.rs: shared_buffers 16MB, hot_standby_feedback,
# wal_receiver_status_interval 1s, wal_retrieve_retry_interval 1s, checksums).
#
#   bash scripts/bench-patroni-sync.sh         # ttl 8 / loop_wait 1 / retry 2 asked
#   CLIENTS=8 SECS=20 bash scripts/bench-patroni-sync.sh
#   MODES="on" PATRONI_VENV=/var/tmp/patroni-venv bash scripts/bench-patroni-sync.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-patroni-sync: run as root"; exit 2; }
umask 022 # the venv and the work dirs are read by the postgres user
BIN_DIR=/usr/lib/postgresql/15/bin
# The venv's interpreter must be one the postgres user can run (not pyenv's
# under /root).
PYTHON=${PYTHON:-/usr/bin/python3}
for c in etcd setpriv curl "$BIN_DIR/pgbench" "$PYTHON"; do
  command -v "$c" >/dev/null || { echo "bench-patroni-sync: $c missing (bash scripts/setup.sh)"; exit 2; }
done
TTL=${TTL:-8} LOOP_WAIT=${LOOP_WAIT:-1} RETRY_TIMEOUT=${RETRY_TIMEOUT:-2}
CLIENTS=${CLIENTS:-4} SECS=${SECS:-10} MODES=${MODES:-"off on quorum"}
PATRONI_VERSION=${PATRONI_VERSION:-4.1.5}

top=$(mktemp -d /var/tmp/patroni-bench.XXXXXX)
chmod 755 "$top"
sub="" # the running mode's subshell
finish() {
  set +e
  # The subshell's own EXIT trap stops its cluster.
  if [ -n "$sub" ]; then kill -TERM "$sub" 2>/dev/null; wait "$sub"; fi
  [ -n "${KEEP:-}" ] || [ -e "$top/keep" ] || rm -rf "$top"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

venv=${PATRONI_VENV:-$top/venv}
if [ ! -x "$venv/bin/patroni" ]; then
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q "patroni[etcd3]==$PATRONI_VERSION" psycopg2-binary >"$top/pip.log" 2>&1 \
    || { cat "$top/pip.log"; exit 1; }
fi
as_pg() { setpriv --reuid postgres --regid postgres --init-groups "$@"; }
as_pg "$venv/bin/patroni" --version >/dev/null 2>&1 \
  || { echo "bench-patroni-sync: the postgres user cannot run $venv/bin/patroni"; exit 2; }
label="Patroni $("$venv/bin/patroni" --version | awk '{print $2}')"

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
elapsed() { "$PYTHON" -c "print(f'{$2-$1:.2f}')"; }
# psql_on I SQL: through node I's socket, as postgres (trust).
psql_on() { "$BIN_DIR/psql" -X -At -U postgres -d postgres -h "$work/node$1/sock" -p "$(cat "$work/node$1/port")" -c "$2" 2>/dev/null; }
primary() { for i in 1 2 3; do [ "$(psql_on "$i" 'select pg_is_in_recovery()')" = f ] && { echo "$i"; return 0; }; done; return 1; }
streaming() { psql_on "$1" "select count(*) from pg_stat_replication where state='streaming' and application_name like 'node%'"; }
postmaster_of() { head -1 "$work/node$1/data/postmaster.pid"; }
# On a failure the mode's logs stay (and the top temp dir with them).
keep_logs() { KEEP=1; touch "$top/keep"; echo "$label: logs kept in $work (node*/patroni.log)"; }
# Patroni's view of the cluster (GET /cluster) from the first node that answers.
cluster_json() {
  local i
  for i in 1 2 3; do curl -sf -m 1 "http://127.0.0.1:$(cat "$work/node$i/api")/cluster" && return 0; done
  return 1
}

# Stops Patroni first (it stops its PostgreSQL), then any postmaster left
# (by the PID in postmaster.pid, if that is still a postgres process), then
# etcd and anything else started: TERM, then KILL after 10 s.
cluster_down() {
  set +e
  local pid d pm
  for pid in "${patroni[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${patroni[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  for d in "$work"/node*/data; do
    [ -f "$d/postmaster.pid" ] || continue
    pm=$(head -1 "$d/postmaster.pid")
    [ "$(ps -o comm= -p "$pm" 2>/dev/null)" = postgres ] || continue
    kill -QUIT "$pm"
    for _ in $(seq 100); do kill -0 "$pm" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pm" 2>/dev/null
  done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}

start_etcd() {
  etcd_port=$(free_port); local peer_port deadline=$((SECONDS + 30)); peer_port=$(free_port)
  etcd --name bench --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "bench=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
  pids+=("$!")
  until curl -sf -m 1 "http://127.0.0.1:$etcd_port/health" | grep -q '"health":"true"'; do
    [ $SECONDS -lt $deadline ] || { echo "$label: etcd did not start; $work/etcd.log"; keep_logs; exit 1; }
    sleep 0.1
  done
}

# write_configs MODE: node1..3's patroni.yml; synchronous_mode by MODE.
write_configs() {
  local sync i d port api
  case $1 in off) sync=false ;; on) sync=true ;; quorum) sync=quorum ;; *) echo "unknown mode $1"; exit 2 ;; esac
  for i in 1 2 3; do
    d="$work/node$i"
    mkdir -p "$d/sock"
    port=$(free_port); api=$(free_port)
    echo "$port" >"$d/port"; echo "$api" >"$d/api"
    cat >"$d/patroni.yml" <<YAML
scope: bench
name: node$i
restapi:
  listen: 127.0.0.1:$api
  connect_address: 127.0.0.1:$api
etcd3:
  hosts: 127.0.0.1:$etcd_port
bootstrap:
  dcs:
    ttl: $TTL
    loop_wait: $LOOP_WAIT
    retry_timeout: $RETRY_TIMEOUT
    synchronous_mode: $sync
    postgresql:
      use_pg_rewind: true
      use_slots: true
  initdb:
    - data-checksums
postgresql:
  listen: 127.0.0.1:$port
  connect_address: 127.0.0.1:$port
  data_dir: $d/data
  bin_dir: $BIN_DIR
  pgpass: $d/pgpass
  authentication:
    superuser: {username: postgres, password: bench}
    replication: {username: replicator, password: bench}
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
  parameters:
    unix_socket_directories: $d/sock
    shared_buffers: 16MB
    hot_standby_feedback: 'on'
    wal_receiver_status_interval: 1s
    wal_retrieve_retry_interval: 1s
watchdog:
  mode: 'off'
YAML
  done
  chown postgres:postgres "$work"
  chown -R postgres:postgres "$work"/node*
}

# start_patroni I: setpriv and the venv script's interpreter exec, so $! is
# Patroni's own PID (not through as_pg: a function run in the background is
# a subshell of its own).
start_patroni() {
  setpriv --reuid postgres --regid postgres --init-groups \
    "$venv/bin/patroni" "$work/node$1/patroni.yml" >>"$work/node$1/patroni.log" 2>&1 &
  patroni[$1]=$!
  disown "$!" # no "Killed" line when the benchmark kills it
}

# wait_healthy: one primary, two streaming replicas (PostgreSQL's view).
wait_healthy() {
  local deadline=$((SECONDS + 120)) p i ok
  while [ $SECONDS -lt $deadline ]; do
    if p=$(primary) && [ "$(streaming "$p")" = 2 ]; then
      ok=1
      for i in 1 2 3; do [ "$i" = "$p" ] || [ "$(psql_on "$i" 'select pg_is_in_recovery()')" = t ] || ok=0; done
      [ $ok = 1 ] && return 0
    fi
    sleep 0.2
  done
  echo "$label: the cluster did not become healthy; logs in $work/node*/patroni.log"; keep_logs; exit 1
}

# wait_published MODE: Patroni's view (its DCS keys, through /cluster) has a
# running leader and two streaming replicas, and in the synchronous modes a
# sync or quorum standby (Patroni names it in the sync key once PostgreSQL
# waits for it). Polled where bench-sync.sh waits for the sync key or sleeps
# a loop_wait for the members' publications.
wait_published() {
  local deadline=$((SECONDS + 60))
  until cluster_json 2>/dev/null | "$PYTHON" -c '
import json, sys
mode, ms = sys.argv[1], json.load(sys.stdin)["members"]
leader = [m for m in ms if m["role"] == "leader" and m["state"] == "running"]
streaming = [m for m in ms if m["role"] != "leader" and m["state"] == "streaming"]
sync = [m for m in streaming if m["role"] in ("sync_standby", "quorum_standby")]
sys.exit(0 if leader and len(streaming) == 2 and (mode == "off" or sync) else 1)' "$1"; do
    [ $SECONDS -lt $deadline ] || { echo "$label $1: Patroni did not publish a healthy cluster"; cluster_json; keep_logs; exit 1; }
    sleep 0.2
  done
}

# wait_new_primary OLD [PID OUT]: waits until a node other than OLD accepts
# a write; prints its number. Gives up early if process PID (the switchover
# command) has ended and its output OUT reports a failure.
wait_new_primary() {
  local old=$1 deadline=$((SECONDS + 120)) i
  while [ $SECONDS -lt $deadline ]; do
    for i in 1 2 3; do
      [ "$i" = "$old" ] && continue
      if psql_on "$i" "create table if not exists probe_writes (x int); insert into probe_writes values (1)" >/dev/null; then echo "$i"; return 0; fi
    done
    if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && grep -qiE 'failed|could not|error' "$3"; then return 1; fi
    sleep 0.02
  done
  return 1
}

# read_settings I: the ttl, loop_wait and retry_timeout Patroni runs with,
# from its dynamic configuration (GET /config on node I), into eff_*.
read_settings() {
  read -r eff_ttl eff_loop eff_retry < <(curl -sf -m 2 "http://127.0.0.1:$(cat "$work/node$1/api")/config" |
    "$PYTHON" -c 'import json,sys; c=json.load(sys.stdin); print(c["ttl"], c["loop_wait"], c["retry_timeout"])') || true
  [ -n "$eff_retry" ] || { echo "$label: no dynamic configuration from node$1"; exit 1; }
}
print_settings() {
  local asked=""
  [ "$eff_ttl $eff_loop $eff_retry" = "$TTL $LOOP_WAIT $RETRY_TIMEOUT" ] ||
    asked=" (asked for ttl $TTL, loop_wait $LOOP_WAIT, retry_timeout $RETRY_TIMEOUT: Patroni's minimums are ttl 20, loop_wait 1, retry_timeout 3)"
  echo "$label settings: ttl $eff_ttl, loop_wait $eff_loop, retry_timeout $eff_retry$asked; pgbench $CLIENTS clients x ${SECS}s, single-row INSERT"
}

# run_mode MODE [SETTINGS]: a fresh cluster; in a subshell of its own whose
# EXIT trap stops it. SETTINGS=1: print the settings line first.
run_mode() {
  local mode=$1 p new t0 t1 bench ctl eff_ttl eff_loop eff_retry
  work=$(mktemp -d "$top/$mode.XXXXXX")
  chmod 755 "$work"
  pids=()
  declare -gA patroni=()
  trap cluster_down EXIT
  trap 'exit 143' TERM
  start_etcd
  write_configs "$mode"
  for i in 1 2 3; do start_patroni "$i"; done
  wait_healthy
  p=$(primary)
  wait_published "$mode"
  read_settings "$p"
  [ -z "${2:-}" ] || print_settings
  psql_on "$p" "create table bench (id bigserial primary key, v int)" >/dev/null
  echo 'INSERT INTO bench (v) VALUES (1);' >"$work/insert.sql"
  chmod 644 "$work/insert.sql"
  # In the background (its PID recorded) so that a signal stops it at once.
  (cd "$work" && exec setpriv --reuid postgres --regid postgres --init-groups \
    "$BIN_DIR/pgbench" -n -f "$work/insert.sql" -c "$CLIENTS" -j "$CLIENTS" -T "$SECS" -l \
    -h "$work/node$p/sock" -p "$(cat "$work/node$p/port")" -U postgres postgres >"$work/pgbench.out" 2>&1) &
  bench=$!
  pids+=("$bench")
  wait "$bench" || { cat "$work/pgbench.out"; exit 1; }
  # pgbench's per-transaction log: column 3 is the latency in microseconds.
  "$PYTHON" - "$mode" "$SECS" "$label" "$work"/pgbench_log.* <<'PY'
import sys
mode, secs, label, files = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
lat = sorted(int(l.split()[2]) for f in files for l in open(f) if l.strip())
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] / 1000
name = {"off": "asynchronous", "on": "synchronous_mode on", "quorum": "synchronous_mode quorum"}[mode]
print(f"{label} {name}: {len(lat) / secs:.0f} commits/s, latency p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms")
PY
  if [ "$mode" != off ]; then
    wait_published "$mode"
    # No candidate: Patroni picks a sync (quorum) standby. patronictl waits
    # for the leader to change, so it runs beside the poll.
    t0=$(now)
    "$venv/bin/patronictl" -c "$work/node1/patroni.yml" switchover --force >"$work/switchover.out" 2>&1 &
    ctl=$!
    pids+=("$ctl")
    new=$(wait_new_primary "$p" "$ctl" "$work/switchover.out") || { echo "$label $mode: switchover failed"; cat "$work/switchover.out"; keep_logs; exit 1; }
    t1=$(now)
    wait "$ctl" || { cat "$work/switchover.out"; keep_logs; exit 1; }
    echo "$label $mode: switchover: node$new writable $(elapsed "$t0" "$t1") s after the command"
    wait_healthy
    p=$new
    wait_published "$mode"
  fi
  t0=$(now)
  kill -KILL "${patroni[$p]}" "$(postmaster_of "$p")"
  new=$(wait_new_primary "$p") || { echo "$label $mode: no new primary after the kill"; keep_logs; exit 1; }
  t1=$(now)
  echo "$label $mode: hard failover: node$new writable $(elapsed "$t0" "$t1") s after SIGKILL of node$p (ttl $eff_ttl)"
}

first=1
for mode in $MODES; do
  ( run_mode "$mode" ${first:+settings} ) &
  sub=$!
  wait "$sub"
  sub="" first=""
done
