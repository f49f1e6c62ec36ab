#!/usr/bin/env bash
# Compatibility with Patroni's own tools, tested against the real thing:
# patronictl of Patroni 4.1.5 (from PyPI, in a throwaway virtual
# environment) pointed at a leasedog cluster's etcd. `patronictl list` shows
# the three members, the leader and streaming replicas; `patronictl
# show-config` reads the config key that leasedog's bootstrap wrote
# (bootstrap.dcs.postgresql.parameters) and `leasedog edit-config` changed;
# `patronictl edit-config -s ttl=20` moves every member to leases of 20 s.
#
#   bash scripts/patroni-compat.sh            # as root
#   PATRONI_VENV=/tmp/venv bash scripts/patroni-compat.sh   # reuse a venv
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "patroni-compat: run as root"; exit 2; }
cargo build --release --quiet
venv=${PATRONI_VENV:-}
if [ -z "$venv" ] || [ ! -x "$venv/bin/patronictl" ]; then
  venv=$(mktemp -d /tmp/patroni-venv.XXXXXX)
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'patroni[etcd3]==4.1.5' psycopg2-binary
  trap_venv=$venv
fi
TTL=10 LOOP_WAIT=1 RETRY_TIMEOUT=2 SAFETY_MARGIN=2
EXTRA_YAML=$'bootstrap:\n  dcs:\n    postgresql:\n      parameters:\n        work_mem: 6MB'
source scripts/cluster-lib.sh
if [ -n "${trap_venv:-}" ]; then
  trap 'cluster_down; rm -rf "$trap_venv"' EXIT
fi
cluster_up
ld edit-config --force --quiet --pg max_wal_size=2GB >/dev/null
cat >"$work/patroni.yml" <<YAML
scope: demo
namespace: /service/
etcd3:
  hosts: 127.0.0.1:$etcd_port
YAML
pctl() { "$venv/bin/patronictl" -c "$work/patroni.yml" "$@"; }
fail() { echo "patroni-compat: $*"; exit 1; }

config=$(pctl show-config)
for want in "work_mem: 6MB" "max_wal_size: 2GB" "ttl: 10" "loop_wait: 1" "use_pg_rewind: true"; do
  grep -qF "$want" <<<"$config" || fail "patronictl show-config lacks '$want':
$config"
done
echo "patronictl show-config reads leasedog's config key:"
sed 's/^/  /' <<<"$config"

# Members publish their streaming state once per loop_wait.
deadline=$((SECONDS + 30))
until pctl list -f json | python3 -c '
import json, sys
m = json.load(sys.stdin)
roles = sorted(x["Role"] for x in m)
ok = len(m) == 3 and roles == ["Leader", "Replica", "Replica"] \
  and all(x["State"] in ("running", "streaming") for x in m)
sys.exit(0 if ok else 1)'; do
  [ $SECONDS -lt $deadline ] || fail "patronictl list: $(pctl list 2>&1)"
  sleep 0.5
done
echo "patronictl list reads leasedog's member and leader keys:"
pctl list | sed 's/^/  /'

# patronictl edit-config changes the ttl; leasedog's members take it from
# the config key: the leader's key (and every member key) moves to a lease
# granted the new TTL, the leader stays.
leader_before=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$etcd_port" get --print-value-only /service/demo/leader)
pctl edit-config --force -s ttl=20 >/dev/null
granted() {
  ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$etcd_port" get -w json --prefix /service/demo/ | python3 -c '
import json, sys
kvs = json.load(sys.stdin).get("kvs", [])
print(" ".join(sorted({format(kv["lease"], "x") for kv in kvs if kv.get("lease")})))' | tr " " "\n" |
  while read -r id; do
    [ -n "$id" ] && ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$etcd_port" lease timetolive "$id" -w json |
      python3 -c 'import json, sys; v = json.load(sys.stdin); print(v.get("granted-ttl", "expired-%x" % v["id"]))'
  done | sort -u | tr "\n" " "
}
deadline=$((SECONDS + 30))
until [ "$(granted)" = "20 " ]; do
  [ $SECONDS -lt $deadline ] || fail "after patronictl edit-config -s ttl=20 the keys' leases are granted: $(granted)"
  sleep 0.5
done
leader_after=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$etcd_port" get --print-value-only /service/demo/leader)
[ "$leader_after" = "$leader_before" ] || fail "the leader changed with the ttl: $leader_before -> $leader_after"
echo "patronictl edit-config -s ttl=20: every key of the cluster on a lease of 20 s, leader still $leader_after"
echo "patroni-compat: ok"
