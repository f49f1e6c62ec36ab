# A 3-node leasedog cluster on loopback for the demo and the benchmark:
# etcd + 3 PostgreSQL 15 + 3 agents run as the postgres user. Source it after
# setting TTL LOOP_WAIT RETRY_TIMEOUT SAFETY_MARGIN (and EXTRA_YAML, top-level
# keys added to every node's file); call cluster_up, and the EXIT trap stops
# everything by PID. More clusters (other scopes) on the same etcd:
# extra_cluster_up K (the scale benchmark). ETCD_ARGS: extra etcd flags.
BIN_DIR=/usr/lib/postgresql/15/bin
work=$(mktemp -d /tmp/leasedog-cluster.XXXXXX)
chmod 755 "$work"
# LEASEDOG_BIN: another build to run (a before/after comparison).
cp "${LEASEDOG_BIN:-target/release/leasedog}" "$work/leasedog"
pids=()

cluster_down() {
  set +e
  for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null; kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  for d in "$work"/node*/data; do
    [ -f "$d/postmaster.pid" ] && kill -QUIT "$(head -1 "$d/postmaster.pid")" 2>/dev/null
  done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cluster_down EXIT

# A port below the kernel's ephemeral range (32768-60999), where no
# outgoing connection can be holding it when the server starts; each handed
# out once (recorded in $work/ports) and only if it binds now.
free_port() {
  python3 - "$work/ports" <<'PY'
import random, socket, sys
path = sys.argv[1]
try:
    given = set(open(path).read().split())
except FileNotFoundError:
    given = set()
while True:
    p = random.randrange(20000, 32000)
    if str(p) in given:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    s.close()
    open(path, "a").write(f"{p}\n")
    print(p)
    break
PY
}
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2-$1:.2f}')"; }

start_etcd() {
  etcd_port=$(free_port); local peer_port; peer_port=$(free_port)
  etcd --name demo --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "demo=http://127.0.0.1:$peer_port" ${ETCD_ARGS:-} >"$work/etcd.log" 2>&1 &
  etcd_pid=$!
  pids+=("$etcd_pid")
}

# write_configs [DIR SCOPE]: node1..3 under DIR (default $work, scope demo).
write_configs() {
  local base=${1:-$work} scope=${2:-demo}
  for i in 1 2 3; do
    local d="$base/node$i" port api
    mkdir -p "$d/sock"
    port=$(free_port); api=$(free_port)
    echo "$port" >"$d/port"
    cat >"$d/leasedog.yml" <<YAML
scope: $scope
name: node$i
etcd3:
  hosts: ["127.0.0.1:$etcd_port"]
ttl: $TTL
loop_wait: $LOOP_WAIT
retry_timeout: $RETRY_TIMEOUT
watchdog:
  mode: automatic
  driver: testing        # a real node uses the default: /dev/watchdog
  device: $d/watchdog.log
  safety_margin: $SAFETY_MARGIN
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
${EXTRA_YAML:-}
YAML
  done
  chown -R postgres:postgres "$base"
}

declare -A agent
# Every agent started, of every cluster (PIDs).
all_agents=()
# start_agent I [DIR]: node I's agent (DIR: $work).
start_agent() {
  local base=${2:-$work}
  # setpriv execs the agent, so $! is the agent's own PID.
  setpriv --reuid postgres --regid postgres --init-groups \
    "$work/leasedog" -c "$base/node$1/leasedog.yml" run >>"$base/node$1/agent.log" 2>&1 &
  [ "$base" = "$work" ] && agent[$1]=$!
  disown "$!" # no "Killed" line when a benchmark kills it
  pids+=("$!")
  all_agents+=("$!")
}
ld() { "$work/leasedog" -c "$work/node1/leasedog.yml" "$@"; }
# psql_on I SQL [DIR]
psql_on() { local base=${3:-$work}; "$BIN_DIR/psql" -X -At -U postgres -d postgres -h "$base/node$1/sock" -p "$(cat "$base/node$1/port")" -c "$2" 2>/dev/null; }
primary() { for i in 1 2 3; do [ "$(psql_on "$i" 'select pg_is_in_recovery()' "${1:-$work}")" = f ] && { echo "$i"; return 0; }; done; return 1; }
streaming() { psql_on "$1" "select count(*) from pg_stat_replication where state='streaming' and application_name like 'node%'" "${2:-$work}"; }
postmaster_of() { head -1 "$work/node$1/data/postmaster.pid"; }

# wait_healthy [DIR [SECONDS]]: one primary, two streaming replicas.
wait_healthy() {
  local base=${1:-$work} deadline=$((SECONDS + ${2:-120})) p
  while [ $SECONDS -lt $deadline ]; do
    if p=$(primary "$base") && [ "$(streaming "$p" "$base")" = 2 ]; then
      local ok=1
      for i in 1 2 3; do [ "$i" = "$p" ] || [ "$(psql_on "$i" 'select pg_is_in_recovery()' "$base")" = t ] || ok=0; done
      [ $ok = 1 ] && return 0
    fi
    sleep 0.2
  done
  echo "the cluster did not become healthy; logs in $base/node*/agent.log"; KEEP=1; exit 1
}

# Waits until a node other than $1 accepts a write; prints its number.
wait_new_primary() {
  local old=$1 deadline=$((SECONDS + 120))
  while [ $SECONDS -lt $deadline ]; do
    for i in 1 2 3; do
      [ "$i" = "$old" ] && continue
      if psql_on "$i" "create table if not exists probe_writes (x int); insert into probe_writes values (1)" >/dev/null; then echo "$i"; return 0; fi
    done
    sleep 0.02
  done
  return 1
}

cluster_up() {
  start_etcd
  write_configs
  for i in 1 2 3; do start_agent "$i"; done
  wait_healthy
}

# extra_cluster_up K: cluster K (scope demoK, under $work/cluster$K) on the
# same etcd, healthy.
extra_cluster_up() {
  local base="$work/cluster$1"
  mkdir -p "$base"
  write_configs "$base" "demo$1"
  for i in 1 2 3; do start_agent "$i" "$base"; done
  wait_healthy "$base" 300
}

# etcd_metric NAME [FILTER]: the sum of etcd's counter NAME over the series
# whose labels contain FILTER (e.g. 'grpc_method="Watch"').
etcd_metric() {
  curl -s "http://127.0.0.1:$etcd_port/metrics" |
    awk -v m="$1" -v f="${2:-}" '($1 == m || index($1, m "{") == 1) && index($1, f) {s += $2} END {printf "%d\n", s}'
}
# CPU ticks (user + system) of processes.
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
