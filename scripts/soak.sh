#!/usr/bin/env bash
# Soak: the 3-node loopback cluster at short settings (default ttl 4 /
# loop_wait 1 / retry_timeout 1 / safety_margin 2: watchdog timeout 2 s) for
# DURATION seconds (default 3600) under a light writer, then prints the
# leader changes (spurious failovers), the leader's fence stops, every
# watchdog deadline missed, and the histogram of the time between feeds
# (testing watchdog logs).
#
#   bash scripts/soak.sh                       # one hour
#   DURATION=600 bash scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "soak: run as root"; exit 2; }
bash scripts/setup.sh >/dev/null
cargo build --release --quiet
TTL=${TTL:-4} LOOP_WAIT=${LOOP_WAIT:-1} RETRY_TIMEOUT=${RETRY_TIMEOUT:-1} SAFETY_MARGIN=${SAFETY_MARGIN:-2}
DURATION=${DURATION:-3600}
source scripts/cluster-lib.sh
cluster_up
p=$(primary)
leader0=$(ld list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
echo "settings: ttl $TTL, loop_wait $LOOP_WAIT, retry_timeout $RETRY_TIMEOUT, safety_margin $SAFETY_MARGIN (watchdog $((TTL - SAFETY_MARGIN)) s); ${DURATION}s; leader $leader0"
psql_on "$p" "create table soak (t timestamptz default now())" >/dev/null
changes=0 last=$leader0 writes=0 failed=0
end=$((SECONDS + DURATION))
while [ $SECONDS -lt $end ]; do
  l=$(ld list --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])' 2>/dev/null || echo "?")
  if [ "$l" != "$last" ] && [ "$l" != "?" ]; then
    changes=$((changes + 1)); echo "$(date +%T) leader changed: $last -> $l"; last=$l
  fi
  if psql_on "$(primary || echo 1)" "insert into soak default values" >/dev/null; then
    writes=$((writes + 1))
  else
    failed=$((failed + 1))
  fi
  sleep 1
done
stops=$(cat "$work"/node*/agent.log | grep -c "stopping PostgreSQL before the lease expires" || true)
echo "leader changes: $changes; writes: $writes ok, $failed failed; fence stops (lease not renewed in time): $stops"
python3 - "$((TTL - SAFETY_MARGIN))" "$work"/node*/watchdog.log <<'PY'
import sys
timeout_ms, files = int(sys.argv[1]) * 1000, sys.argv[2:]
edges = [250, 500, 750, 1000, 1250, 1500, 1750, 2000]
hist, missed, total = [0] * (len(edges) + 1), 0, 0
for f in files:
    last = None
    for line in open(f):
        ms, _, op = line.strip().partition(" ")
        t = int(ms)
        if op in ("open", "keepalive"):
            if last is not None:
                gap = t - last
                total += 1
                hist[sum(gap > e for e in edges)] += 1
                if gap > timeout_ms:
                    missed += 1
            last = t
        elif op in ("magic-close", "close"):
            last = None
labels = [f"<={edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">{edges[-1]}"]
print(f"feeds: {total}; deadlines missed (gap > {timeout_ms} ms): {missed}")
print("time between feeds, ms: " + ", ".join(f"{l}: {n}" for l, n in zip(labels, hist)))
PY
