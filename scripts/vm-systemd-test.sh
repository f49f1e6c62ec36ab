#!/usr/bin/env bash
# The .deb under a real systemd: a QEMU guest (TCG) boots Debian 12 — a
# debootstrap root with systemd, udev, etcd and PostgreSQL 15, run from the
# initramfs — with an emulated i6300esb watchdog. Inside, as an operator
# would: `dpkg -i` the package (not enabled, not started; udev gives the
# postgres group /dev/watchdog), edit the config, `systemctl enable --now`
# (Type=notify), the node becomes primary with the watchdog armed and kept in
# systemd's file descriptor store; the agent is killed with SIGKILL and
# systemd restarts it while PostgreSQL keeps running (KillMode=process); the
# new agent takes over the armed watchdog from the store, with no watchdog
# reset; `systemctl reload`;
# an upgrade restarts the running agent, and in maintenance mode leaves
# PostgreSQL running through it; `systemctl stop` stops PostgreSQL, releases
# the key and disarms the watchdog (no reset afterwards); an upgrade does not
# start a stopped agent; `dpkg -r` stops a running agent and keeps the config
# and the data directory.
#
#   bash scripts/vm-systemd-test.sh        (root; builds the packages if needed;
#                                          LEASEDOG_DEB=FILE tests another .deb)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "vm-systemd-test: run as root"; exit 2; }
bash scripts/setup.sh >/dev/null
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
command -v depmod >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q kmod >/dev/null
version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
deb=${LEASEDOG_DEB:-target/package/leasedog_${version}-1_amd64.deb}
[ -f "$deb" ] || bash scripts/package.sh >/dev/null

W=$(mktemp -d /tmp/leasedog-vmsd.XXXXXX)
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
fail() { echo "vm-systemd-test FAILED: $*"; echo "--- console:"; tail -200 "$W/console.log" 2>/dev/null; KEEP=1; exit 1; }

# --- the Debian root, built once per package set and kept as a tarball
pkgs=systemd,systemd-sysv,udev,kmod,procps,postgresql-15,etcd-server,etcd-client
cache=/var/cache/leasedog-vm
tarball="$cache/bookworm-$(echo "$pkgs" | md5sum | cut -c1-8).tar"
R="$W/root"
if [ ! -f "$tarball" ]; then
  echo "vm-systemd-test: debootstrap bookworm ($pkgs)"
  mkdir -p "$cache"
  debootstrap --variant=minbase --include="$pkgs" bookworm "$W/boot" http://deb.debian.org/debian >"$W/debootstrap.log" 2>&1 ||
    { tail -20 "$W/debootstrap.log"; fail "debootstrap"; }
  tar -C "$W/boot" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
  rm -rf "$W/boot"
fi
mkdir -p "$R"
tar -C "$R" -xf "$tarball"

# Lighter and quicker to boot: no docs, no default cluster, no timers.
rm -rf "$R"/usr/share/{doc,man,info,locale}/* "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/*
# PostgreSQL's JIT and the LLVM it loads (a third of the root): without
# them PostgreSQL runs with JIT unavailable.
rm -rf "$R"/usr/lib/postgresql/15/lib/{llvmjit*,bitcode} "$R"/usr/lib/x86_64-linux-gnu/lib{LLVM-14.so.1,z3.so.4}
chroot "$R" pg_dropcluster 15 main >/dev/null 2>&1 || true
chroot "$R" systemctl disable postgresql.service >/dev/null 2>&1 || true
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer \
  logrotate.timer dpkg-db-backup.timer getty@tty1.service serial-getty@ttyS0.service \
  getty.target systemd-timesyncd.service; do
  ln -sf /dev/null "$R/etc/systemd/system/$u"
done
echo vm > "$R/etc/hostname"
: > "$R/etc/fstab"

# The kernel, and the watchdog modules udev loads for the emulated i6300esb.
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
(cd "$W" && apt-get download "$pkg" >/dev/null 2>&1) || fail "cannot download $pkg"
dpkg -x "$W"/linux-image-*.deb "$W/k"
kver=$(ls "$W/k/lib/modules")
for m in watchdog i6300esb; do
  f=$(find "$W/k/lib/modules/$kver" -name "$m.ko*" | head -1)
  d="$R/lib/modules/$kver/$(dirname "${f#"$W/k/lib/modules/$kver/"}")"
  mkdir -p "$d"; cp "$f" "$d/"
done
cp "$W/k/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$R" "$kver"

cp "$deb" "$R/root/leasedog.deb"

# --- the test, run by systemd in the guest once it is up
cat > "$R/etc/systemd/system/vmtest.service" <<'UNIT'
[Unit]
Description=leasedog package test
After=multi-user.target etcd.service
Wants=etcd.service
[Service]
Type=oneshot
ExecStart=/root/vmtest.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/vmtest.service "$R/etc/systemd/system/multi-user.target.wants/vmtest.service"

cat > "$R/root/vmtest.sh" <<'GUEST'
#!/bin/bash
set -u
say() { echo "VMTEST $*"; }
# What the agent and systemd said, and where everything waits: every call
# bounded, since systemd itself (or a client of it) may be what hangs.
diag() {
  echo "--- journal of leasedog:"
  timeout 20 journalctl -u leasedog --no-pager -o short-monotonic | tail -80
  echo "--- systemd (PID 1) about leasedog:"
  timeout 20 journalctl _PID=1 --no-pager -o short-monotonic | grep -i 'leasedog\|store\|notif' | tail -40
  echo "--- systemctl status:"
  timeout 10 systemctl status --no-pager -l leasedog | head -30
  echo "--- $(timeout 10 systemctl show -p NFileDescriptorStore,FileDescriptorStoreMax,MainPID,SubState,NRestarts leasedog | tr '\n' ' ')"
  echo "--- processes (wchan):"
  ps -eo pid,ppid,user,stat,wchan:32,etime,args | grep -v ' \[' | tail -60
  local mp
  mp=$(ps -o pid= -C leasedog | head -1 | tr -d ' ')
  if [ -n "$mp" ]; then
    echo "--- agent $mp fds and threads:"
    ls -l /proc/"$mp"/fd 2>&1 | tail -n +2
    for t in /proc/"$mp"/task/*; do echo "$t $(cat "$t"/comm) $(cat "$t"/wchan 2>/dev/null) $(awk '{print $3}' "$t"/stat)"; done
  fi
}
fail() {
  say "FAIL: $*"
  diag
  systemctl poweroff; exit 1
}
prop() { systemctl show -p "$1" --value leasedog; }
as_pg() { runuser -u postgres -- "$@"; }
primary() { [ "$(timeout -k 2 10 runuser -u postgres -- psql -h /var/run/postgresql -p 5433 -Atc 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; }
wait_until() { # seconds, what, command...
  local n=$1 what=$2; shift 2
  for _ in $(seq $((n * 5))); do "$@" && return 0; sleep 0.2; done
  fail "timed out after ${n}s waiting for $what"
}
wd_open_by() { ls -l "/proc/$1/fd" 2>/dev/null | grep -q '/dev/watchdog'; }
postmaster() { head -1 /var/lib/postgresql/vm/postmaster.pid 2>/dev/null; }

say "booted; systemd $(systemctl --version | head -1 | cut -d' ' -f2)"
wait_until 60 "etcd" etcdctl --command-timeout=2s endpoint health

out=$(dpkg -i /root/leasedog.deb 2>&1) || fail "dpkg -i: $out"
echo "$out" | grep -q 'not enabled' || fail "no post-install message"
systemctl is-enabled --quiet leasedog && fail "enabled by the install"
systemctl is-active --quiet leasedog && fail "started by the install"
say "installed: not enabled, not started"

udevadm settle
wait_until 10 "the watchdog device" test -c /dev/watchdog0
[ "$(stat -c '%G %a' /dev/watchdog)" = "postgres 660" ] || fail "/dev/watchdog is $(stat -c '%U:%G %a' /dev/watchdog)"
[ "$(stat -c '%U %a' /run/leasedog)" = "postgres 750" ] || fail "/run/leasedog"
say "udev: /dev/watchdog postgres 660; tmpfiles: /run/leasedog"

# The operator's edit, in place (keeps the conffile's owner and mode).
cat > /etc/leasedog/leasedog.yml <<'YAML'
scope: vm
name: vm1
etcd3:
  hosts: [127.0.0.1:2379]
ttl: 20
loop_wait: 2
retry_timeout: 5
watchdog:
  mode: required
  safety_margin: 5
postgresql:
  data_dir: /var/lib/postgresql/vm
  bin_dir: /usr/lib/postgresql/15/bin
  listen: 127.0.0.1:5433
  connect_address: 127.0.0.1:5433
  parameters:
    shared_buffers: 16MB
    max_connections: 20
    fsync: "off"
restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
YAML
[ "$(stat -c '%U:%G %a' /etc/leasedog/leasedog.yml)" = "root:postgres 640" ] || fail "config owner/mode"
as_pg leasedog check-config || fail "check-config"

t0=$(date +%s%N)
systemctl enable --now leasedog || fail "systemctl enable --now"
t1=$(date +%s%N)
[ "$(prop ActiveState)/$(prop SubState)" = "active/running" ] || fail "not active after start: $(prop ActiveState)/$(prop SubState)"
say "systemctl enable --now returned after $(( (t1 - t0) / 1000000 )) ms: active/running"
# Should the guest test itself get stuck, the state is dumped anyway.
( sleep 120; say "still not primary after 120 s:"; diag ) &
sentinel=$!
wait_until 180 "PostgreSQL primary" primary
kill "$sentinel" 2>/dev/null
pid=$(prop MainPID)
wait_until 30 "watchdog armed" wd_open_by "$pid"
[ "$(stat -c %U /proc/"$pid")" = postgres ] || fail "the agent does not run as postgres"
status=$(prop StatusText)
[ -n "$status" ] || fail "no StatusText"
say "primary; agent $pid as postgres holds /dev/watchdog; status: $status"
as_pg psql -h /var/run/postgresql -p 5433 -qc 'create table t(x int); insert into t values (1)' || fail "write"

# A crash: systemd restarts the agent after RestartSec; PostgreSQL runs on.
# The armed watchdog sits in systemd's file descriptor store, so the crash
# does not close it (a close would ping it, restarting its countdown), and
# the restarted agent takes it over instead of opening the device again.
wait_until 10 "the watchdog in systemd's fd store" bash -c '[ "$(systemctl show -p NFileDescriptorStore --value leasedog)" = 1 ]'
pm=$(postmaster)
# The agent's log on the console meanwhile: a watchdog reset would leave
# nothing else to read.
journalctl -f -n 0 -u leasedog -o short-monotonic > /dev/ttyS0 2>&1 &
jf=$!
tk=$(date +%s%N)
say "SIGKILL to the agent $pid at $(awk '{print $1}' /proc/uptime) s"
kill -KILL "$pid"
wait_until 30 "a restarted agent" bash -c '[ "$(systemctl show -p NRestarts --value leasedog)" = 1 ] && [ "$(systemctl show -p SubState --value leasedog)" = running ]'
[ "$(postmaster)" = "$pm" ] && kill -0 "$pm" || fail "PostgreSQL did not survive the agent's crash (KillMode=process)"
pid2=$(prop MainPID)
wait_until 30 "the stored watchdog taken over by the new agent" bash -c "journalctl -u leasedog _PID=$pid2 --no-pager | grep -q 'took over the armed watchdog'"
wd_open_by "$pid2" || fail "the restarted agent does not hold /dev/watchdog"
wait_until 30 "primary again" primary
kill "$jf"
say "SIGKILL: systemd restarted the agent ($pid -> $pid2) after $(( ($(date +%s%N) - tk) / 1000000 )) ms; postmaster $pm kept running; the new agent took over the armed watchdog from systemd's fd store"

systemctl reload leasedog || fail "reload"
wait_until 10 "the reload in the journal" bash -c "journalctl -u leasedog --no-pager | grep -q 'configuration reloaded'"
say "systemctl reload: configuration reloaded"

# An upgrade (the same package again) restarts a running agent.
dpkg -i /root/leasedog.deb >/dev/null 2>&1 || fail "upgrade"
pid3=$(prop MainPID)
[ "$pid3" != "$pid2" ] && [ "$(prop ActiveState)" = active ] || fail "upgrade did not restart the running agent"
wait_until 60 "primary after the upgrade" primary
[ "$(as_pg psql -h /var/run/postgresql -p 5433 -Atc 'select x from t')" = 1 ] || fail "data lost"
say "upgrade: agent restarted ($pid2 -> $pid3), data kept"

# Paused, an upgrade restarts the agent and leaves PostgreSQL alone.
leasedog pause --wait >/dev/null || fail "pause"
pm=$(postmaster)
dpkg -i /root/leasedog.deb >/dev/null 2>&1 || fail "upgrade while paused"
pid4=$(prop MainPID)
[ "$pid4" != "$pid3" ] || fail "the paused upgrade did not restart the agent"
[ "$(postmaster)" = "$pm" ] && kill -0 "$pm" || fail "the paused upgrade restarted PostgreSQL"
journalctl -u leasedog --no-pager | grep -q 'leaving PostgreSQL running' || fail "no paused shutdown in the journal"
wait_until 60 "resume accepted by the restarted agent" leasedog resume --wait
[ "$(postmaster)" = "$pm" ] || fail "PostgreSQL restarted on resume"
wait_until 30 "primary after resume" primary
say "paused upgrade: agent restarted ($pid3 -> $pid4), postmaster $pm untouched; resumed"

systemctl stop leasedog || fail "systemctl stop"
[ "$(prop ActiveState)" = inactive ] || fail "not inactive after stop: $(prop ActiveState)"
pgrep -u postgres -x postgres >/dev/null && fail "PostgreSQL still runs after systemctl stop"
[ -z "$(etcdctl get --print-value-only /service/vm/leader)" ] || fail "leader key not released"
journalctl -u leasedog --no-pager | grep -q 'watchdog disarmed' || fail "watchdog not disarmed"
[ "$(prop NFileDescriptorStore)" = 0 ] || fail "systemd still stores $(prop NFileDescriptorStore) fds after the stop"
say "systemctl stop: PostgreSQL stopped, key released, watchdog disarmed"
sleep 20
say "no watchdog reset 20 s after the stop"
dpkg -i /root/leasedog.deb >/dev/null 2>&1 || fail "upgrade while stopped"
systemctl is-active --quiet leasedog && fail "an upgrade started a stopped agent"
say "upgrade of a stopped agent: not started"

systemctl start leasedog || fail "start again"
wait_until 120 "primary again" primary
dpkg -r leasedog >/dev/null 2>&1 || fail "dpkg -r"
systemctl is-active --quiet leasedog && fail "dpkg -r left the agent running"
pgrep -u postgres -x postgres >/dev/null && fail "PostgreSQL still runs after dpkg -r"
[ -f /etc/leasedog/leasedog.yml ] || fail "dpkg -r removed the config"
[ -f /var/lib/postgresql/vm/PG_VERSION ] || fail "the data directory is gone"
say "dpkg -r: agent and PostgreSQL stopped; config and data directory kept"
# Every arm of the run succeeded: a device still held open (by systemd's
# store, say) would have failed it with EBUSY.
journalctl -u leasedog --no-pager | grep -E 'cannot be armed|resource busy|could not hand the watchdog|unusable|did not confirm the removal' && fail "a failed arm or store"
journalctl -u leasedog --no-pager -o short-monotonic | grep -E 'watchdog (armed|disarmed)|took over|starting: member' | sed 's/^/VMTEST journal: /'
say PASS
systemctl poweroff
GUEST
chmod 755 "$R/root/vmtest.sh"

(cd "$R" && find . | cpio -o -H newc 2>/dev/null) > "$W/initrd.cpio"
echo "vm-systemd-test: root $(du -sh "$W/initrd.cpio" | cut -f1), kernel $kver; booting"

start=$(date +%s)
timeout 900 qemu-system-x86_64 -accel tcg -m 2048 -nographic -no-user-config -nodefaults -serial stdio \
  -kernel "$W/k/boot/vmlinuz-$kver" -initrd "$W/initrd.cpio" \
  -append "console=ttyS0 rdinit=/sbin/init panic=-1 quiet systemd.show_status=0" \
  -no-reboot -qmp "unix:$W/qmp.sock,server=on,wait=on" -device i6300esb -action watchdog=reset \
  >"$W/console.log" 2>&1 &
q=$!; pids+=("$q")
python3 scripts/qmp-events.py "$W/qmp.sock" "$W/qmp.log" >/dev/null 2>&1 &
pids+=($!)
tail -f "$W/console.log" --pid "$q" 2>/dev/null | grep --line-buffered '^VMTEST' || true
wait "$q" || true
grep -q '^VMTEST PASS' "$W/console.log" || fail "the guest test did not pass"
grep -q WATCHDOG "$W/qmp.log" && fail "the watchdog reset the guest"
grep -q 'guest-shutdown' "$W/qmp.log" || fail "the guest did not power off cleanly: $(cat "$W/qmp.log")"
echo "vm-systemd-test: passed in $(( $(date +%s) - start )) s of VM time"
