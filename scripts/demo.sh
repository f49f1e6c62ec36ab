#!/usr/bin/env bash
# The leasedog demo: a real 3-node cluster on loopback (etcd + 3 PostgreSQL 15
# + 3 agents, run as the postgres user), the cluster table, the primary
# killed (agent and postmaster, SIGKILL), the new primary shown, the old node
# rejoining as a replica, then everything stopped.
#
#   bash scripts/demo.sh            # ttl 8 / loop_wait 1 / retry_timeout 2
#   KEEP=1 bash scripts/demo.sh     # leave the cluster running at the end
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it starts PostgreSQL as the postgres user)"; exit 2; }
bash scripts/setup.sh
cargo build --release --quiet

BIN_DIR=/usr/lib/postgresql/15/bin
work=$(mktemp -d /tmp/leasedog-demo.XXXXXX)
chmod 755 "$work"
cp target/release/leasedog "$work/leasedog"
pids=()

cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  for d in "$work"/node*/data; do
    [ -f "$d/postmaster.pid" ] && kill -QUIT "$(head -1 "$d/postmaster.pid")" 2>/dev/null
  done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { setpriv --reuid postgres --regid postgres --init-groups "$@"; }

etcd_port=$(free_port); peer_port=$(free_port)
etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "demo=http://127.0.0.1:$peer_port" >"$work/etcd.log" 2>&1 &
pids+=($!)

for i in 1 2 3; do
  d="$work/node$i"; mkdir -p "$d/sock"
  port=$(free_port); api=$(free_port)
  echo "$port" >"$d/port"
  cat >"$d/leasedog.yml" <<YAML
scope: demo
name: node$i
etcd3:
  hosts: ["127.0.0.1:$etcd_port"]
ttl: 8
loop_wait: 1
retry_timeout: 2
watchdog:
  mode: automatic
  driver: testing        # a real node uses the default: /dev/watchdog
  device: $d/watchdog.log
  safety_margin: 2
postgresql:
  data_dir: $d/data
  bin_dir: $BIN_DIR
  listen: 127.0.0.1:$port
  connect_address: 127.0.0.1:$port
  socket_dir: $d/sock
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
  parameters:
    shared_buffers: 16MB
restapi:
  listen: 127.0.0.1:$api
  connect_address: 127.0.0.1:$api
control:
  socket: $d/leasedog.sock
YAML
done
chown -R postgres:postgres "$work"

start_agent() {
  as_pg "$work/leasedog" -c "$work/node$1/leasedog.yml" run >>"$work/node$1/agent.log" 2>&1 &
  eval "agent$1=$!"
  pids+=($!)
}
ld() { "$work/leasedog" -c "$work/node1/leasedog.yml" "$@"; }
psql_on() { "$BIN_DIR/psql" -X -At -U postgres -d postgres -h "$work/node$1/sock" -p "$(cat "$work/node$1/port")" -c "$2" 2>/dev/null; }
primary() { for i in 1 2 3; do [ "$(psql_on $i 'select pg_is_in_recovery()')" = f ] && { echo "$i"; return; }; done; return 1; }
streaming() { psql_on "$1" "select count(*) from pg_stat_replication where state='streaming'"; }

echo "== starting etcd on 127.0.0.1:$etcd_port and three agents (logs in $work/node*/agent.log)"
for i in 1 2 3; do start_agent $i; done

wait_healthy() {
  local want=$1 deadline=$((SECONDS + 120))
  while [ $SECONDS -lt $deadline ]; do
    if p=$(primary) && [ "$(streaming "$p")" = "$want" ]; then return 0; fi
    sleep 0.2
  done
  echo "demo: the cluster did not become healthy; see $work/node*/agent.log"; KEEP=1; exit 1
}
wait_healthy 2
sleep 1 # let every member publish its latest position for the table
ld list

p=$(primary)
psql_on "$p" "create table demo (id serial primary key, at timestamptz default now()); insert into demo default values;" >/dev/null
echo
echo "== killing node$p: its agent and its postmaster, with SIGKILL"
eval "agent_pid=\$agent$p"
pm=$(head -1 "$work/node$p/data/postmaster.pid")
t0=$(date +%s.%N)
kill -KILL "$agent_pid" "$pm"
while true; do
  for i in 1 2 3; do
    [ "$i" = "$p" ] && continue
    if psql_on "$i" "insert into demo default values" >/dev/null; then new=$i; break 2; fi
  done
  sleep 0.05
done
t1=$(date +%s.%N)
echo "== node$new accepts writes $(python3 -c "print(f'{$t1-$t0:.1f}')") s after the kill (ttl 8)"
sleep 1
ld list
echo
echo "== restarting node$p's agent: it rewinds and rejoins as a replica"
start_agent "$p"
wait_healthy 2
sleep 1
ld list
echo "rows on node$p: $(psql_on "$p" 'select count(*) from demo')"
echo
echo "== stopping everything"
