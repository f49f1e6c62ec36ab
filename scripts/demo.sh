#!/usr/bin/env bash
# The leasedog demo: a real 3-node cluster on loopback (etcd + 3 PostgreSQL 15
# + 3 agents, run as the postgres user), the cluster table, the primary
# killed (agent and postmaster, SIGKILL), the new primary shown, the old node
# rejoining as a replica, then everything stopped.
#
#   bash scripts/demo.sh            # ttl 8 / loop_wait 1 / retry_timeout 2 / safety_margin 2
#   KEEP=1 bash scripts/demo.sh     # keep the work directory (logs) at the end
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it starts PostgreSQL as the postgres user)"; exit 2; }
bash scripts/setup.sh
cargo build --release --quiet
TTL=8 LOOP_WAIT=1 RETRY_TIMEOUT=2 SAFETY_MARGIN=2
source scripts/cluster-lib.sh

echo "== starting etcd and three agents (work directory $work)"
cluster_up
sleep 1.5 # every member publishes its latest position once per loop_wait
ld list

p=$(primary)
psql_on "$p" "create table demo (id serial primary key, at timestamptz default now()); insert into demo default values;" >/dev/null
echo
echo "== killing node$p: its agent and its postmaster, with SIGKILL"
t0=$(now)
kill -KILL "${agent[$p]}" "$(postmaster_of "$p")"
new=$(wait_new_primary "$p")
t1=$(now)
echo "== node$new accepts writes $(elapsed "$t0" "$t1") s after the kill (ttl $TTL: the old lease had to expire)"
sleep 1.5
ld list
echo
echo "== restarting node$p's agent: it rewinds and rejoins as a replica"
start_agent "$p"
wait_healthy
sleep 1.5
ld list
echo "rows in demo on node$p: $(psql_on "$p" 'select count(*) from demo')"
echo
echo "== stopping everything"
