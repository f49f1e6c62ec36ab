#!/usr/bin/env bash
# A real kernel watchdog driver fences a frozen leader (issue 5, part 3).
#
# A QEMU guest (TCG) boots Debian's kernel with a busybox initramfs holding
# the leasedog binary, PostgreSQL 15 and a data directory initialised on the
# host. QEMU emulates an i6300esb watchdog and exits on a watchdog reset
# (`-action watchdog=reset -no-reboot`); QMP tells a watchdog reset from any
# other exit. The guest's agent reaches etcd on the host through QEMU's user
# network (10.0.2.2). Scenarios (default: all):
#   leader    the leader agent is frozen (SIGSTOP): the VM must be reset by
#             the watchdog BEFORE its lease expires on the host's etcd
#   replica   a replica agent frozen the same way: no reset
#   graceful  a leader stopped with SIGTERM closes the watchdog with the
#             magic character: no reset
#   leader4   as leader, at ttl 4 / loop_wait 1 / retry_timeout 1 /
#             safety_margin 2 (a 2 s watchdog)
#   check     `leasedog watchdog-check` in the guest reports driver, timeout
#
#   bash scripts/vm-test.sh [leader leader4 replica graceful check]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "vm-test: run as root"; exit 2; }
bash scripts/setup.sh >/dev/null
for p in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio; do
  command -v "${p%%:*}" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${p#*:}" >/dev/null
done
cargo build --release --quiet
scenarios=("${@:-leader leader4 replica graceful check}")
scenarios=(${scenarios[*]})

W=$(mktemp -d /tmp/leasedog-vm.XXXXXX)
chmod 755 "$W"
pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT

# --- kernel and modules, from Debian's package (downloaded, not installed)
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
(cd "$W" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "vm-test: cannot download $pkg"; exit 1; }
dpkg -x "$W"/linux-image-*.deb "$W/k"
kver=$(ls "$W/k/lib/modules")
kdir="$W/k/lib/modules/$kver/kernel/drivers"
mod() { # copies a module, decompressing .ko.xz (busybox insmod cannot read xz)
  local f; f=$(find "$kdir" -name "$1.ko*" | head -1)
  case "$f" in *.xz) xz -dc "$f" >"$R/$1.ko" ;; *) cp "$f" "$R/$1.ko" ;; esac
}

# --- the root filesystem
R="$W/root"
mkdir -p "$R"/{bin,sbin,etc,proc,sys,dev,tmp,run/leasedog,var/run/postgresql,lib64,usr/lib,usr/share/postgresql,usr/share/zoneinfo/Etc}
cp /bin/busybox "$R/bin/busybox"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
mod watchdog; mod i6300esb; mod e1000
copy_with_libs() { # binary and its shared libraries, at the same paths
  mkdir -p "$R$(dirname "$1")"; cp "$1" "$R$1"
  ldd "$1" | awk '/=> \//{print $3} /^\t\/lib64/{print $1}' | while read -r lib; do
    mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"
  done
}
copy_with_libs "$PWD/target/release/leasedog"
cp target/release/leasedog "$R/bin/leasedog"
for b in postgres pg_ctl initdb pg_basebackup pg_rewind pg_controldata; do copy_with_libs "/usr/lib/postgresql/15/bin/$b"; done
cp -r /usr/share/postgresql/15 "$R/usr/share/postgresql/"
cp -r /usr/lib/postgresql/15/lib "$R/usr/lib/postgresql/15/lib"
cp /usr/share/zoneinfo/UTC "$R/usr/share/zoneinfo/UTC"; cp /usr/share/zoneinfo/UTC "$R/usr/share/zoneinfo/Etc/UTC"
uid=$(id -u postgres); gid=$(id -g postgres)
printf 'root:x:0:0::/:/bin/sh\npostgres:x:%s:%s::/tmp:/bin/sh\n' "$uid" "$gid" >"$R/etc/passwd"
printf 'root:x:0:\npostgres:x:%s:\n' "$gid" >"$R/etc/group"

# A data directory initialised on the host (initdb under TCG is slow).
install -d -o postgres -g postgres -m 700 "$W/pgdata"
setpriv --reuid postgres --regid postgres --init-groups /usr/lib/postgresql/15/bin/initdb -D "$W/pgdata" \
  --data-checksums -U postgres --auth-local=trust --locale=C --encoding=UTF8 >/dev/null 2>&1
mkdir -p "$R/var/lib/pg"; cp -a "$W/pgdata" "$R/var/lib/pg/data"

# --- host etcd, reached from the guest at 10.0.2.2
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ep=$(free_port); pp=$(free_port)
etcd --name vm --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
  --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
  --initial-cluster "vm=http://127.0.0.1:$pp" >"$W/etcd.log" 2>&1 &
pids+=($!)
ctl() { ETCDCTL_API=3 etcdctl --endpoints "http://127.0.0.1:$ep" --command-timeout=2s "$@"; }
for _ in $(seq 100); do ctl put /ready 1 >/dev/null 2>&1 && break; sleep 0.1; done

# /etc/leasedog.yml: ttl 20 / loop_wait 2 / retry_timeout 6 / safety_margin 5;
# /etc/leasedog4.yml (scenario leader4): the short settings, ttl 4 / 1 / 1 / 2.
write_guest_config() { # file ttl loop_wait retry_timeout safety_margin
cat >"$1" <<YAML
scope: vm
name: guest
etcd3:
  hosts: ["10.0.2.2:$ep"]
ttl: $2
loop_wait: $3
retry_timeout: $4
watchdog:
  mode: required
  device: /dev/watchdog
  safety_margin: $5
postgresql:
  data_dir: /var/lib/pg/data
  bin_dir: /usr/lib/postgresql/15/bin
  listen: 127.0.0.1:5432
  socket_dir: /var/run/postgresql
  parameters:
    shared_buffers: 8MB
    max_connections: 10
    fsync: "off"
restapi:
  listen: 127.0.0.1:8008
control:
  socket: /run/leasedog/leasedog.sock
YAML
}
write_guest_config "$R/etc/leasedog.yml" 20 2 6 5
write_guest_config "$R/etc/leasedog4.yml" 4 1 1 2

cat >"$R/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/shm; mount -t tmpfs shm /dev/shm; mount -t tmpfs tmp /tmp; chmod 1777 /tmp /dev/shm
insmod /watchdog.ko; insmod /i6300esb.ko; insmod /e1000.ko
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
mode=$(sed 's/.*ldmode=\([a-z0-9]*\).*/\1/' /proc/cmdline)
cfg=/etc/leasedog.yml; [ "$mode" = leader4 ] && cfg=/etc/leasedog4.yml
chown postgres:postgres /dev/watchdog /dev/watchdog0 /var/run/postgresql /run/leasedog
chown -R postgres:postgres /var/lib/pg; chmod 700 /var/lib/pg/data
echo "GUEST mode=$mode"
if [ "$mode" = check ]; then
  su -s /bin/sh -c 'exec /bin/leasedog -c /etc/leasedog.yml watchdog-check' postgres
  echo "GUEST check-exit=$?"
  poweroff -f
fi
su -s /bin/sh -c "exec /bin/leasedog -c $cfg run" postgres &
agent=$!
if [ "$mode" = replica ]; then
  sleep 8
  kill -STOP $agent; echo "GUEST FROZEN"
  sleep 25; echo "GUEST still alive"; poweroff -f
fi
i=0
until timeout 3 wget -q -O /dev/null http://127.0.0.1:8008/primary 2>/dev/null; do
  i=$((i+1)); [ $i -gt 150 ] && { echo "GUEST never became leader"; poweroff -f; }
  sleep 1
done
echo "GUEST LEADER"
sleep 3
if [ "$mode" = graceful ]; then
  kill -TERM $agent; wait $agent; echo "GUEST agent exit=$?"
  sleep 25; echo "GUEST still alive"; poweroff -f
fi
kill -STOP $agent; echo "GUEST FROZEN"
sleep 120; echo "GUEST still alive"; poweroff -f
INIT
chmod 755 "$R/init"
(cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$W/initrd.gz")

# --- one VM run: prints QEMU's console; QMP events with host timestamps to $W/qmp.log

run_vm() { # mode, timeout; sets $q to QEMU's PID
  rm -f "$W/qmp.sock" "$W/qmp.log"
  timeout "$2" qemu-system-x86_64 -accel tcg -m 768 -nographic -no-user-config -nodefaults -serial stdio \
    -kernel "$W/k/boot/vmlinuz-$kver" -initrd "$W/initrd.gz" -append "console=ttyS0 quiet panic=-1 ldmode=$1" \
    -no-reboot -qmp "unix:$W/qmp.sock,server=on,wait=on" -device i6300esb -action watchdog=reset \
    -netdev user,id=n0 -device e1000,netdev=n0 >"$W/console-$1.log" 2>&1 &
  q=$!; pids+=("$q")
  python3 scripts/qmp-events.py "$W/qmp.sock" "$W/qmp.log" >/dev/null 2>&1 &
  pids+=($!)
}
wait_vm() { while kill -0 "$q" 2>/dev/null; do sleep 0.2; done; }
fail() { echo "vm-test FAILED: $*"; echo "--- console:"; tail -30 "$W"/console-*.log; KEEP=1; exit 1; }

for mode in "${scenarios[@]}"; do
  ctl del --prefix /service/vm/ >/dev/null
  case $mode in
    leader|leader4)
      run_vm "$mode" 300
      # Host view: when the guest's key appears, and when it goes.
      until [ "$(ctl get --print-value-only /service/vm/leader)" = guest ]; do
        kill -0 "$q" 2>/dev/null || fail "QEMU exited before the guest led"; sleep 0.2; done
      until grep -q "GUEST FROZEN" "$W/console-$mode.log"; do
        kill -0 "$q" 2>/dev/null || fail "QEMU exited before the agent was frozen"; sleep 0.1; done
      frozen=$(date +%s.%N)
      while [ "$(ctl get --print-value-only /service/vm/leader)" = guest ]; do sleep 0.05; done
      gone=$(date +%s.%N)
      wait_vm
      reset=$(awk '$2=="WATCHDOG" {print $1; exit}' "$W/qmp.log")
      [ -n "$reset" ] || fail "no watchdog reset (QMP: $(cat "$W/qmp.log"))"
      grep -q '"reset"' "$W/qmp.log" || fail "watchdog action was not reset"
      python3 - "$frozen" "$reset" "$gone" "$mode" <<'PY' || fail "the reset did not come before the lease expiry"
import sys
frozen, reset, gone = map(float, sys.argv[1:4])
settings = {"leader": "ttl 20, watchdog 15 s", "leader4": "ttl 4, watchdog 2 s"}[sys.argv[4]]
print(f"{sys.argv[4]} ({settings}): agent frozen; watchdog reset {reset-frozen:.2f}s later; lease expired on the host's etcd "
      f"{gone-frozen:.2f}s later; margin {gone-reset:.2f}s")
sys.exit(0 if reset < gone else 1)
PY
      ;;
    replica)
      # Another member holds the key with a lease the test keeps alive.
      lease=$(ctl lease grant 60 | awk '{print $2}')
      ctl put --lease="$lease" /service/vm/leader other >/dev/null
      ctl put /service/vm/initialize 1 >/dev/null
      run_vm replica 200
      wait_vm
      grep -q "GUEST FROZEN" "$W/console-replica.log" || fail "the replica guest never froze its agent"
      grep -q WATCHDOG "$W/qmp.log" && fail "a frozen replica was reset"
      grep -q "GUEST still alive" "$W/console-replica.log" || fail "the replica guest did not live on"
      echo "replica: agent frozen for 25s, no watchdog reset"
      ;;
    graceful)
      run_vm graceful 300
      wait_vm
      grep -q "GUEST agent exit=0" "$W/console-graceful.log" || fail "graceful stop did not exit 0"
      grep -q WATCHDOG "$W/qmp.log" && fail "the VM was reset after a graceful stop"
      grep -q "GUEST still alive" "$W/console-graceful.log" || fail "the guest did not live on"
      echo "graceful: leader stopped by SIGTERM, watchdog closed with the magic character, no reset for 25s"
      ;;
    check)
      run_vm check 120
      wait_vm
      grep -q "GUEST check-exit=0" "$W/console-check.log" || fail "watchdog-check failed"
      grep -iq "i6300ESB" "$W/console-check.log" || fail "watchdog-check did not name the driver"
      echo "check: $(grep -E 'identity|timeout|disarmed' "$W/console-check.log" | tr -s ' ' | tr '\r\n' '; ')"
      ;;
    *) echo "unknown scenario $mode"; exit 2 ;;
  esac
done
echo "vm-test: all scenarios passed"
