#!/usr/bin/env bash
# Scale benchmark: N clusters (scopes demo, demo2 ... demoN) of 3 small
# PostgreSQL 15 instances and their agents, all on one etcd, left idle; prints
# for each N what etcd receives (gRPC messages per minute: calls plus messages
# on streams, grpc_server_msg_received_total summed), the streams started and
# ended Unavailable in the window, etcd's CPU, and the agents' CPU, total and
# per member. The per-member figures should stay flat as N grows: no agent
# reads or watches another scope's keys.
#
#   bash scripts/bench-scale.sh                 # N = 1, 4, 10 in turn, 30/10/10/5
#   CLUSTERS=4 bash scripts/bench-scale.sh      # one N
#   TTL=20 LOOP_WAIT=1 RETRY_TIMEOUT=3 SAFETY_MARGIN=2 bash scripts/bench-scale.sh
#   IDLE_SECS=60                                # idle window (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-scale: run as root"; exit 2; }
if [ -z "${CLUSTERS:-}" ]; then
  bash scripts/setup.sh >/dev/null
  cargo build --release --quiet
  for n in 1 4 10; do SKIP_BUILD=1 CLUSTERS=$n bash "$0"; done
  exit 0
fi
if [ -z "${SKIP_BUILD:-}" ]; then
  bash scripts/setup.sh >/dev/null
  cargo build --release --quiet
fi
TTL=${TTL:-30} LOOP_WAIT=${LOOP_WAIT:-10} RETRY_TIMEOUT=${RETRY_TIMEOUT:-10} SAFETY_MARGIN=${SAFETY_MARGIN:-5}
IDLE_SECS=${IDLE_SECS:-60}
source scripts/cluster-lib.sh

cluster_up
for k in $(seq 2 "$CLUSTERS"); do extra_cluster_up "$k"; done
members=$((3 * CLUSTERS))
echo "settings: ttl $TTL, loop_wait $LOOP_WAIT, retry_timeout $RETRY_TIMEOUT, safety_margin $SAFETY_MARGIN"
sleep $((LOOP_WAIT + 1)) # the members' first publications after startup

tick=$(getconf CLK_TCK)
counts() {
  echo "$(etcd_metric grpc_server_msg_received_total)" \
    "$(etcd_metric grpc_server_started_total 'grpc_method="Watch"')" \
    "$(etcd_metric grpc_server_started_total 'grpc_method="LeaseKeepAlive"')" \
    "$(etcd_metric grpc_server_handled_total 'grpc_code="Unavailable"')" \
    "$(cpu_ticks "$etcd_pid") $(cpu_ticks "${all_agents[@]}")" \
    "$(etcd_metric etcd_server_proposals_committed_total)"
}
read -r m0 w0 k0 u0 e0 a0 p0 < <(counts)
t0=$(now)
sleep "$IDLE_SECS"
read -r m1 w1 k1 u1 e1 a1 p1 < <(counts)
t1=$(now)
python3 - "$CLUSTERS" "$members" "$t0" "$t1" "$tick" "$m0" "$m1" "$e0" "$e1" "$a0" "$a1" "$p0" "$p1" <<'PY'
import sys
n, members = int(sys.argv[1]), int(sys.argv[2])
t0, t1, tick = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
m0, m1, e0, e1, a0, a1, p0, p1 = map(int, sys.argv[6:14])
mins = (t1 - t0) / 60
msgs = (m1 - m0) / mins
writes = (p1 - p0) / mins
etcd_cpu = (e1 - e0) / tick / mins  # CPU seconds per minute
agent_cpu = (a1 - a0) / tick / mins
print(f"{n} cluster(s), {members} members, idle {t1 - t0:.0f} s:")
print(f"  etcd gRPC messages per minute: {msgs:.0f} ({msgs / members:.1f} per member)")
print(f"  etcd writes (raft proposals) per minute: {writes:.0f} ({writes / members:.1f} per member)")
print(f"  etcd CPU: {etcd_cpu * 1000:.0f} ms per minute ({etcd_cpu * 1000 / members:.1f} per member)")
print(f"  agent CPU: {agent_cpu * 1000:.0f} ms per minute ({agent_cpu * 1000 / members:.1f} per member)")
PY
echo "  etcd streams started in the window: Watch $((w1 - w0)), LeaseKeepAlive $((k1 - k0)); ended Unavailable: $((u1 - u0))"
