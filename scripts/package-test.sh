#!/usr/bin/env bash
# Builds both packages and checks them. The .deb is installed on this machine
# for real (dpkg -i, upgrade, -r, -P); the .rpm is inspected and installed
# into a scratch root. The glibc floor check is shown to fail on a binary
# that needs a newer glibc. Run as root on Debian 12 (CI does).
#
# No systemd runs here, so the maintainer scripts' calls to systemd are
# observed with stand-ins for systemctl and deb-systemd-invoke that log
# their arguments, under a /run/systemd/system made for the test.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package-test: FAIL: $*" >&2; exit 1; }
ok() { echo "package-test: ok: $*"; }

work=$(mktemp -d /tmp/leasedog-pkgtest.XXXXXX)
made_run_systemd=""
cleanup() {
  if dpkg -s leasedog >/dev/null 2>&1; then dpkg -P leasedog >/dev/null 2>&1 || true; fi
  [ -z "$made_run_systemd" ] || rmdir /run/systemd/system 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A leftover install from an earlier run would hide what this run installs.
if dpkg -s leasedog >/dev/null 2>&1; then dpkg -P leasedog >/dev/null; fi

bash scripts/package.sh
version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
deb=target/package/leasedog_${version}-1_amd64.deb
rpmfile=target/package/leasedog-${version}-1.x86_64.rpm
[ -f "$deb" ] || fail "no $deb"
[ -f "$rpmfile" ] || fail "no $rpmfile"

# --- glibc floor -------------------------------------------------------------
# arc4random appeared in glibc 2.36: a binary calling it cannot run on Rocky 9.
cat > "$work/new-glibc.c" <<'C'
#include <stdlib.h>
#include <stdio.h>
int main(void) { printf("%u\n", arc4random()); return 0; }
C
gcc -o "$work/new-glibc" "$work/new-glibc.c"
if bash scripts/glibc-floor.sh "$work/new-glibc" 2.34 2> "$work/floor.err"; then
  fail "glibc-floor accepted a binary that needs glibc 2.36"
fi
grep -q 'arc4random@GLIBC_2.36' "$work/floor.err" || fail "glibc-floor did not name arc4random: $(cat "$work/floor.err")"
if LEASEDOG_MAX_GLIBC=2.17 bash scripts/package.sh > "$work/pkg-low.out" 2>&1; then
  fail "package.sh built packages above a glibc floor of 2.17"
fi
grep -q 'above the floor 2.17' "$work/pkg-low.out" || fail "package.sh did not explain the glibc failure"
bash scripts/glibc-floor.sh target/release/leasedog 2.34 >/dev/null || fail "leasedog needs a glibc above 2.34"
ok "glibc floor: leasedog <= 2.34; a 2.36 symbol and a lowered floor both fail the build"
# The refused build stopped before touching the packages built above.
[ -f "$deb" ] && [ -f "$rpmfile" ] || fail "the refused build removed the packages"

# --- .deb: lintian -----------------------------------------------------------
lintian --fail-on error --info "$deb" | tee "$work/lintian.txt"
if grep -q '^E:' "$work/lintian.txt"; then fail "lintian reports errors"; fi
ok "lintian: no errors ($(grep -c '^W:' "$work/lintian.txt" || true) warnings)"

# --- .deb: install, with systemd stand-ins -----------------------------------
stand_ins() { # DIR TOOL...: each tool logs its arguments to $work/systemd-calls
  local dir=$1; shift
  mkdir -p "$dir"
  for tool in "$@"; do
    printf '#!/bin/sh\necho "%s $*" >> %s/systemd-calls\nexit 0\n' "$tool" "$work" > "$dir/$tool"
    chmod 755 "$dir/$tool"
  done
}
stubs="$work/bin"
stand_ins "$stubs" systemctl deb-systemd-invoke
if [ ! -d /run/systemd/system ]; then
  mkdir -p /run/systemd/system
  made_run_systemd=1
fi
calls() { cat "$work/systemd-calls" 2>/dev/null || true; }

# A data directory must survive anything the package does.
datadir=/var/lib/postgresql/15/leasedog-pkgtest
mkdir -p "$datadir"
echo keep > "$datadir/PG_VERSION"

PATH="$stubs:$PATH" dpkg -i "$deb" > "$work/install.out" 2>&1 || { cat "$work/install.out"; fail "dpkg -i"; }
grep -q 'leasedog is installed, not enabled' "$work/install.out" || fail "no post-install message"
if calls | grep -Eq 'start|enable|restart'; then fail "a fresh install started or enabled the agent: $(calls)"; fi
ok "dpkg -i: installed, not started, not enabled"

[ "$(leasedog --version)" = "leasedog $version" ] || fail "leasedog --version: $(leasedog --version)"
man -w leasedog >/dev/null || fail "man -w leasedog"
MANPAGER=cat MANWIDTH=100 man leasedog 2>/dev/null | grep -q 'hardware watchdog' || fail "man leasedog has no description"
MANPAGER=cat man leasedog-switchover 2>/dev/null | grep -q -- '--to' || fail "man leasedog-switchover"
ok "leasedog --version, man leasedog, man leasedog-switchover"

check_stat() { # path owner:group mode
  local got
  got=$(stat -c '%U:%G %a' "$1" 2>/dev/null) || fail "$1 missing"
  [ "$got" = "$2 $3" ] || fail "$1 is $got, expected $2 $3"
}
check_stat /usr/bin/leasedog root:root 755
check_stat /lib/systemd/system/leasedog.service root:root 644
check_stat /etc/leasedog/leasedog.yml root:postgres 640
check_stat /lib/udev/rules.d/60-leasedog-watchdog.rules root:root 644
check_stat /usr/lib/tmpfiles.d/leasedog.conf root:root 644
check_stat /usr/share/man/man1/leasedog.1.gz root:root 644
check_stat /usr/share/bash-completion/completions/leasedog root:root 644
check_stat /usr/share/zsh/vendor-completions/_leasedog root:root 644
check_stat /usr/share/fish/vendor_completions.d/leasedog.fish root:root 644
check_stat /usr/share/doc/leasedog/README.md root:root 644
check_stat /usr/share/doc/leasedog/copyright root:root 644
check_stat /run/leasedog postgres:postgres 750
grep -q 'MIT License' /usr/share/doc/leasedog/copyright || fail "no licence in copyright"
grep -q 'GROUP="postgres", MODE="0660"' /lib/udev/rules.d/60-leasedog-watchdog.rules || fail "udev rule"
dpkg-query -W -f='${Conffiles}\n' leasedog | grep -q '/etc/leasedog/leasedog.yml' || fail "config is not a conffile"
dpkg --verify leasedog || fail "dpkg --verify: installed files differ from the md5sums"
[ -s /var/lib/dpkg/info/leasedog.md5sums ] || fail "no md5sums"
# The installed config is usable as it stands, as postgres.
setpriv --reuid postgres --regid postgres --init-groups leasedog check-config > "$work/check.out" 2>&1 ||
  fail "leasedog check-config on the installed example: $(cat "$work/check.out")"
ok "files, owners and modes; /run/leasedog from tmpfiles.d; conffile; check-config as postgres"

# The unit: systemd-analyze verify parses it and checks the binary and man page.
systemd-analyze verify /lib/systemd/system/leasedog.service > "$work/verify.out" 2>&1 ||
  { cat "$work/verify.out"; fail "systemd-analyze verify"; }
if grep -i 'leasedog.service' "$work/verify.out"; then fail "systemd-analyze verify complains about the unit"; fi
unit=/lib/systemd/system/leasedog.service
for want in '^Type=notify$' '^User=postgres$' '^KillMode=process$' '^Restart=on-failure$' \
  '^RestartSec=' '^TimeoutStopSec=' '^LimitMEMLOCK=infinity$' '^ExecStart=/usr/bin/leasedog run$' \
  '^FileDescriptorStoreMax=1$' '^Environment=LEASEDOG_WATCHDOG_FDSTORE=1$'; do
  grep -q "$want" "$unit" || fail "unit lacks $want"
done
ok "systemd-analyze verify accepts the unit"

# --- upgrade: keeps the edited config, restarts only a running agent --------
echo '# edited by the operator' >> /etc/leasedog/leasedog.yml
: > "$work/systemd-calls"
PATH="$stubs:$PATH" dpkg -i "$deb" > "$work/upgrade.out" 2>&1 || { cat "$work/upgrade.out"; fail "upgrade"; }
grep -q '^# edited by the operator$' /etc/leasedog/leasedog.yml || fail "upgrade lost the edited config"
calls | grep -q 'deb-systemd-invoke try-restart leasedog.service' || fail "upgrade did not try-restart: $(calls)"
if calls | grep -Eq 'invoke (start|restart|stop) '; then fail "upgrade started or stopped unconditionally: $(calls)"; fi
check_stat /etc/leasedog/leasedog.yml root:postgres 640
ok "upgrade: edited config kept, agent try-restarted (restarts only if it was running)"

# --- remove, then purge -----------------------------------------------------
: > "$work/systemd-calls"
PATH="$stubs:$PATH" dpkg -r leasedog > "$work/remove.out" 2>&1 || { cat "$work/remove.out"; fail "dpkg -r"; }
calls | grep -q 'deb-systemd-invoke stop leasedog.service' || fail "remove did not stop the agent: $(calls)"
[ ! -e /usr/bin/leasedog ] || fail "dpkg -r left /usr/bin/leasedog"
[ ! -e /lib/systemd/system/leasedog.service ] || fail "dpkg -r left the unit"
[ -f /etc/leasedog/leasedog.yml ] || fail "dpkg -r removed the config (policy keeps conffiles until purge)"
dpkg -s leasedog 2>/dev/null | grep -q '^Status: deinstall ok config-files' || fail "not in config-files state after -r"
PATH="$stubs:$PATH" dpkg -P leasedog > "$work/purge.out" 2>&1 || { cat "$work/purge.out"; fail "dpkg -P"; }
if dpkg -s leasedog >/dev/null 2>&1; then fail "dpkg -P left the package known to dpkg"; fi
for gone in /etc/leasedog /run/leasedog /usr/share/doc/leasedog /lib/udev/rules.d/60-leasedog-watchdog.rules \
  /usr/lib/tmpfiles.d/leasedog.conf /usr/share/man/man1/leasedog.1.gz /usr/share/bash-completion/completions/leasedog; do
  [ ! -e "$gone" ] || fail "dpkg -P left $gone"
done
[ "$(cat "$datadir/PG_VERSION")" = keep ] || fail "the data directory was touched"
rm -rf "$datadir"
ok "dpkg -r stops the agent and keeps the config; dpkg -P leaves nothing; data directory untouched"

# --- .rpm --------------------------------------------------------------------
rpm -qpl "$rpmfile" | sort > "$work/rpm-files"
cat > "$work/rpm-expected" <<'LIST'
/etc/leasedog/leasedog.yml
/usr/bin/leasedog
/usr/lib/systemd/system/leasedog.service
/usr/lib/tmpfiles.d/leasedog.conf
/usr/lib/udev/rules.d/60-leasedog-watchdog.rules
/usr/share/bash-completion/completions/leasedog
/usr/share/doc/leasedog/README.md
/usr/share/fish/vendor_completions.d/leasedog.fish
/usr/share/licenses/leasedog/LICENSE
/usr/share/man/man1/leasedog-check-config.1.gz
/usr/share/man/man1/leasedog-edit-config.1.gz
/usr/share/man/man1/leasedog-failover.1.gz
/usr/share/man/man1/leasedog-history.1.gz
/usr/share/man/man1/leasedog-list.1.gz
/usr/share/man/man1/leasedog-pause.1.gz
/usr/share/man/man1/leasedog-reinit.1.gz
/usr/share/man/man1/leasedog-reload.1.gz
/usr/share/man/man1/leasedog-restart.1.gz
/usr/share/man/man1/leasedog-resume.1.gz
/usr/share/man/man1/leasedog-run.1.gz
/usr/share/man/man1/leasedog-show-config.1.gz
/usr/share/man/man1/leasedog-status.1.gz
/usr/share/man/man1/leasedog-switchover.1.gz
/usr/share/man/man1/leasedog-watchdog-check.1.gz
/usr/share/man/man1/leasedog.1.gz
/usr/share/zsh/site-functions/_leasedog
LIST
diff -u "$work/rpm-expected" "$work/rpm-files" || fail "rpm -qpl differs from the expected list"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEMODES:perms} %{FILENAMES}\n]' "$rpmfile" > "$work/rpm-attrs"
grep -q '^cn root:postgres -rw-r----- /etc/leasedog/leasedog.yml$' "$work/rpm-attrs" ||
  fail "config is not %config(noreplace) root:postgres 0640: $(grep leasedog.yml "$work/rpm-attrs")"
grep -q ' root:root -rwxr-xr-x /usr/bin/leasedog$' "$work/rpm-attrs" || fail "binary attributes"
ok "rpm -qpl: the expected files; config %config(noreplace) root:postgres 0640"

rpm -qp --requires "$rpmfile" > "$work/rpm-requires"
grep -qx '(postgresql-server >= 15 or postgresql15-server or postgresql16-server or postgresql17-server or postgresql18-server)' "$work/rpm-requires" ||
  fail "rpm does not require a PostgreSQL server: $(cat "$work/rpm-requires")"
grep -qx 'systemd' "$work/rpm-requires" || fail "rpm does not require systemd"
if grep -E 'GLIBC_2\.(3[5-9]|[4-9][0-9])' "$work/rpm-requires"; then fail "rpm requires a glibc above 2.34"; fi
ok "rpm --requires: PostgreSQL server (AppStream or PGDG), systemd, glibc <= 2.34"

rpm -qp --scripts "$rpmfile" > "$work/rpm-scripts"
grep -q '^postinstall scriptlet' "$work/rpm-scripts" || fail "no %post"
grep -q '^preuninstall scriptlet' "$work/rpm-scripts" || fail "no %preun"
grep -q '^postuninstall scriptlet' "$work/rpm-scripts" || fail "no %postun"
grep -q 'systemctl --no-reload disable --now leasedog.service' "$work/rpm-scripts" || fail "%preun does not stop the agent on erase"
grep -q 'systemctl try-restart leasedog.service' "$work/rpm-scripts" || fail "%postun does not try-restart on upgrade"
if grep -Eq '^\s*systemctl\s+(--\S+\s+)*(enable|start)\b' "$work/rpm-scripts"; then fail "an rpm scriptlet enables or starts the agent"; fi
if grep -Eq 'rm -rf? .*(/var/lib|data)' "$work/rpm-scripts"; then fail "an rpm scriptlet removes data"; fi
ok "rpm --scripts: stop on erase, try-restart on upgrade, never enable or start"

# The scriptlets themselves, taken from the rpm and run as rpm runs them
# (sh, with $1 the count of installed instances after the action), with
# stand-ins logging every call to systemd, tmpfiles and udev.
rstubs="$work/rpm-bin"
stand_ins "$rstubs" systemctl systemd-tmpfiles udevadm
scriptlet() { # TAG ARG: runs it, its calls in $work/systemd-calls, output in $work/scriptlet.out
  : > "$work/systemd-calls"
  rpm -qp --qf "%{$1}" "$rpmfile" > "$work/scriptlet.sh"
  PATH="$rstubs:$PATH" sh "$work/scriptlet.sh" "$2" > "$work/scriptlet.out" 2>&1 ||
    fail "%{$1} with $2 failed: $(cat "$work/scriptlet.out")"
}
scriptlet POSTIN 1
grep -q 'installed, not enabled' "$work/scriptlet.out" || fail "%post on install: no message"
calls | grep -q 'systemd-tmpfiles --create leasedog.conf' || fail "%post: no tmpfiles: $(calls)"
if calls | grep -Eq 'enable|start|restart'; then fail "%post on install started or enabled: $(calls)"; fi
scriptlet POSTIN 2
if grep -q 'installed, not enabled' "$work/scriptlet.out"; then fail "%post on upgrade repeats the install message"; fi
if calls | grep -Eq 'enable|start|restart'; then fail "%post on upgrade started or enabled: $(calls)"; fi
scriptlet PREUN 0
calls | grep -q 'systemctl --no-reload disable --now leasedog.service' || fail "%preun on erase: $(calls)"
scriptlet PREUN 1
if calls | grep -Eq 'disable|stop'; then fail "%preun on upgrade stops the agent: $(calls)"; fi
scriptlet POSTUN 1
calls | grep -q 'systemctl try-restart leasedog.service' || fail "%postun on upgrade: $(calls)"
scriptlet POSTUN 0
if calls | grep -q 'restart'; then fail "%postun on erase restarts: $(calls)"; fi
ok "rpm scriptlets run: install (message, no start), upgrade (try-restart), erase (disable --now)"

root="$work/rpmroot"
mkdir -p "$root"
rpm --root "$root" --dbpath /var/lib/rpm --initdb
rpm --root "$root" -i --nodeps --noscripts "$rpmfile" 2> "$work/rpm-install.err" ||
  { cat "$work/rpm-install.err"; fail "rpm --root -i"; }
[ "$("$root/usr/bin/leasedog" --version)" = "leasedog $version" ] || fail "the binary from the rpm does not run"
[ "$(stat -c %a "$root/etc/leasedog/leasedog.yml")" = 640 ] || fail "rpm config mode"
grep -q '^  bin_dir: /usr/bin$' "$root/etc/leasedog/leasedog.yml" || fail "rpm config lacks Rocky's bin_dir"
rpm --root "$root" -q leasedog >/dev/null || fail "rpm database in the scratch root"
ok "rpm --root -i --nodeps: installed; its leasedog --version runs"

if command -v rpmlint >/dev/null; then
  rpmlint "$rpmfile" > target/package/rpmlint.txt 2>&1 || true
  echo "package-test: rpmlint (advisory; Debian's rpmlint applies openSUSE's defaults, e.g. bz2 man pages):"
  grep -E '^leasedog|checked' target/package/rpmlint.txt | sed 's/^/  /' || true
fi
echo "package-test: all checks passed"
