#!/usr/bin/env bash
# Benchmark: runs the 3-node loopback cluster and prints, for the timings
# given, hard-failover time (SIGKILL of agent + postmaster -> new primary
# writable), graceful-handover time (SIGTERM -> new primary writable), and
# for one agent over an idle period: RSS, threads, CPU seconds, and what the
# three idle agents cost etcd: gRPC messages etcd received per minute (calls
# plus messages on streams: grpc_server_msg_received_total, summed), calls
# and streams started per minute, and the watch and keep-alive streams
# started and ended Unavailable in the window (0 when no stream is re-made).
# CLUSTERS=N: the scale benchmark instead (scripts/bench-scale.sh).
#
#   bash scripts/bench.sh                       # ttl 8 / loop_wait 1 / retry 2 / margin 2
#   TTL=30 LOOP_WAIT=10 RETRY_TIMEOUT=10 SAFETY_MARGIN=5 bash scripts/bench.sh
#   IDLE_SECS=60 bash scripts/bench.sh          # idle window (default 60)
#   IDLE_ONLY=1 bash scripts/bench.sh           # the idle figures only
#   TTL=4 LOOP_WAIT=1 RETRY_TIMEOUT=1 SAFETY_MARGIN=2 TRIALS=5 bash scripts/bench.sh
#   EXTRA_YAML="primary_start_timeout: 0" bash scripts/bench.sh
#   LEASEDOG_BIN=/path/to/leasedog bash scripts/bench.sh  # another build (before/after)
#   CLUSTERS=4 bash scripts/bench.sh            # = CLUSTERS=4 bash scripts/bench-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -z "${CLUSTERS:-}" ] || exec bash scripts/bench-scale.sh
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root"; exit 2; }
bash scripts/setup.sh >/dev/null
cargo build --release --quiet
TTL=${TTL:-8} LOOP_WAIT=${LOOP_WAIT:-1} RETRY_TIMEOUT=${RETRY_TIMEOUT:-2} SAFETY_MARGIN=${SAFETY_MARGIN:-2}
IDLE_SECS=${IDLE_SECS:-60}
source scripts/cluster-lib.sh

cluster_up
echo "settings: ttl $TTL, loop_wait $LOOP_WAIT, retry_timeout $RETRY_TIMEOUT, safety_margin $SAFETY_MARGIN"

# Idle footprint of one replica's agent and the cluster's etcd traffic.
p=$(primary); r=$(( p % 3 + 1 ))
pid=${agent[$r]}
tick=$(getconf CLK_TCK)
sleep $((LOOP_WAIT + 1)) # the members' first publications after startup
etcd_counts() {
  echo "$(etcd_metric grpc_server_msg_received_total) $(etcd_metric grpc_server_started_total)" \
    "$(etcd_metric grpc_server_started_total 'grpc_method="Watch"') $(etcd_metric grpc_server_started_total 'grpc_method="LeaseKeepAlive"')" \
    "$(etcd_metric grpc_server_handled_total 'grpc_code="Unavailable"') $(etcd_metric etcd_server_proposals_committed_total)"
}
by_method() {
  curl -s "http://127.0.0.1:$etcd_port/metrics" |
    awk '$1 ~ /^grpc_server_msg_received_total/ { match($1, /grpc_method="[^"]*"/); print substr($1, RSTART + 13, RLENGTH - 14), $2 }' | sort
}
c0=$(cpu_ticks "$pid"); read -r m0 e0 w0 k0 u0 p0 < <(etcd_counts); by_method >"$work/methods0"
sleep "$IDLE_SECS"
c1=$(cpu_ticks "$pid"); read -r m1 e1 w1 k1 u1 p1 < <(etcd_counts); by_method >"$work/methods1"
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$pid/status")
lp=${agent[$p]}
rss_leader=$(awk '/VmRSS/ {print $2}' "/proc/$lp/status")
echo "agent RSS: replica $(python3 -c "print(f'{$rss/1024:.1f}')") MiB, leader $(python3 -c "print(f'{$rss_leader/1024:.1f}')") MiB; threads: $threads"
echo "agent CPU over ${IDLE_SECS}s idle: $(python3 -c "print(f'{($c1-$c0)/$tick:.2f}')") s"
echo "etcd gRPC messages per minute (3 agents): $(python3 -c "print(round(($m1-$m0)*60/$IDLE_SECS))")"
echo "  by method: $(join "$work/methods0" "$work/methods1" | awk -v s="$IDLE_SECS" '$3 > $2 {printf "%s %d, ", $1, ($3 - $2) * 60 / s + 0.5}' | sed 's/, $//')"
echo "etcd calls and streams started per minute (3 agents): $(python3 -c "print(round(($e1-$e0)*60/$IDLE_SECS))")"
echo "etcd writes (raft proposals) per minute (3 agents): $(python3 -c "print(round(($p1-$p0)*60/$IDLE_SECS))")"
echo "etcd streams started over ${IDLE_SECS}s idle: Watch $((w1 - w0)), LeaseKeepAlive $((k1 - k0)); ended Unavailable: $((u1 - u0))"
[ -z "${IDLE_ONLY:-}" ] || exit 0

# Hard failover, TRIALS times (default 5): each time the primary's agent and
# postmaster are killed, then brought back before the next trial.
times=()
for _ in $(seq "${TRIALS:-5}"); do
  p=$(primary)
  sleep $((LOOP_WAIT + 1)) # a settled cluster: members published their positions
  t0=$(now)
  kill -KILL "${agent[$p]}" "$(postmaster_of "$p")"
  new=$(wait_new_primary "$p")
  t1=$(now)
  times+=("$(elapsed "$t0" "$t1")")
  echo "hard failover: node$new writable ${times[-1]} s after SIGKILL of node$p (ttl $TTL)"
  start_agent "$p"
  wait_healthy
done
echo "hard failover: median $(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}') s of ${#times[@]} (ttl $TTL)"

# PostgreSQL alone killed on the leader (agent alive): restarted in place
# (primary_start_timeout, default 300 s), or with PRIMARY_START_TIMEOUT=0
# in EXTRA_YAML the key released at once: time until a primary is writable.
p=$(primary)
t0=$(now)
kill -KILL "$(postmaster_of "$p")"
deadline=$((SECONDS + 120))
until psql_on_any_primary=$(primary) && psql_on "$psql_on_any_primary" "insert into probe_writes values (3)" >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || { echo "no writable primary 120 s after PostgreSQL was killed"; exit 1; }
  sleep 0.02
done
t1=$(now)
echo "PostgreSQL killed on the leader node$p: node$psql_on_any_primary writable $(elapsed "$t0" "$t1") s later"
wait_healthy

# Graceful handover.
p=$(primary)
t0=$(now)
kill -TERM "${agent[$p]}"
new=$(wait_new_primary "$p")
t1=$(now)
echo "graceful handover: node$new writable $(elapsed "$t0" "$t1") s after SIGTERM of node$p's agent"
start_agent "$p"
wait_healthy

# Switchover: command -> candidate writable, and -> old primary streaming again.
sleep $((LOOP_WAIT + 1)) # members publish their streaming state once per loop_wait
p=$(primary); target=$(( p % 3 + 1 ))
t0=$(now)
ld switchover --to "node$target" >/dev/null &
sw=$!
while ! psql_on "$target" "insert into probe_writes values (2)" >/dev/null; do sleep 0.01; done
t1=$(now)
while [ "$(psql_on "$p" "select status from pg_stat_wal_receiver")" != streaming ]; do sleep 0.02; done
t2=$(now)
wait "$sw" || true
echo "switchover: node$target writable $(elapsed "$t0" "$t1") s after the command; old primary node$p streaming after $(elapsed "$t0" "$t2") s"
