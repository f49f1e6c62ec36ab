#!/usr/bin/env bash
# Benchmark of synchronous replication: for asynchronous replication and
# synchronous_mode on and quorum, on the 3-node loopback cluster, prints
# commit throughput and p50/p99 commit latency of single-row inserts
# (pgbench, CLIENTS connections for SECS seconds), the hard-failover time
# (SIGKILL of agent + postmaster -> new primary writable) and, in the
# synchronous modes, the switchover time (command -> new primary writable).
#
#   bash scripts/bench-sync.sh                 # ttl 8 / loop_wait 1 / retry 2 / margin 2
#   CLIENTS=8 SECS=20 bash scripts/bench-sync.sh
#   MODES="on" bash scripts/bench-sync.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench-sync: run as root"; exit 2; }
bash scripts/setup.sh >/dev/null
cargo build --release --quiet
TTL=${TTL:-8} LOOP_WAIT=${LOOP_WAIT:-1} RETRY_TIMEOUT=${RETRY_TIMEOUT:-2} SAFETY_MARGIN=${SAFETY_MARGIN:-2}
CLIENTS=${CLIENTS:-4} SECS=${SECS:-10} MODES=${MODES:-"off on quorum"}
echo "settings: ttl $TTL, loop_wait $LOOP_WAIT, retry_timeout $RETRY_TIMEOUT; pgbench $CLIENTS clients x ${SECS}s, single-row INSERT"

for mode in $MODES; do
  (
    EXTRA_YAML="synchronous_mode: $mode"
    source scripts/cluster-lib.sh
    cluster_up
    p=$(primary)
    # The leader's sync key names a standby (PostgreSQL waits for it by then).
    sync_named() {
      local deadline=$((SECONDS + 30))
      until ld list --json | python3 -c 'import json,sys; s=json.load(sys.stdin).get("synchronous"); sys.exit(0 if s and s["standbys"] else 1)'; do
        [ $SECONDS -lt $deadline ] || { echo "$mode: no synchronous standby named"; exit 1; }
        sleep 0.2
      done
    }
    [ "$mode" = off ] || sync_named
    psql_on "$p" "create table bench (id bigserial primary key, v int)" >/dev/null
    echo 'INSERT INTO bench (v) VALUES (1);' >"$work/insert.sql"
    chmod 644 "$work/insert.sql"
    (cd "$work" && setpriv --reuid postgres --regid postgres --init-groups \
      "$BIN_DIR/pgbench" -n -f "$work/insert.sql" -c "$CLIENTS" -j "$CLIENTS" -T "$SECS" -l \
      -h "$work/node$p/sock" -p "$(cat "$work/node$p/port")" -U postgres postgres >"$work/pgbench.out" 2>&1) \
      || { cat "$work/pgbench.out"; exit 1; }
    # pgbench's per-transaction log: column 3 is the latency in microseconds.
    python3 - "$mode" "$SECS" "$work"/pgbench_log.* <<'PY'
import sys
mode, secs, files = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
lat = sorted(int(l.split()[2]) for f in files for l in open(f) if l.strip())
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] / 1000
label = {"off": "asynchronous", "on": "synchronous_mode on", "quorum": "synchronous_mode quorum"}[mode]
print(f"{label}: {len(lat) / secs:.0f} commits/s, latency p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms")
PY
    if [ "$mode" != off ]; then
      sleep $((LOOP_WAIT + 1)) # members publish their streaming state once per loop_wait
      t0=$(now)
      ld switchover >/dev/null
      new=$(wait_new_primary "$p")
      t1=$(now)
      echo "$mode: switchover: node$new writable $(elapsed "$t0" "$t1") s after the command"
      wait_healthy
      p=$new
      sync_named
    fi
    t0=$(now)
    kill -KILL "${agent[$p]}" "$(postmaster_of "$p")"
    new=$(wait_new_primary "$p")
    t1=$(now)
    echo "$mode: hard failover: node$new writable $(elapsed "$t0" "$t1") s after SIGKILL of node$p (ttl $TTL)"
  )
done
