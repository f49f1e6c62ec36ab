#!/usr/bin/env bash
# Installs what leasedog needs to build, test and demo on Debian 12, when
# missing: etcd, PostgreSQL 15, protoc (etcd-client's build), HAProxy, and
# nftables for the partition test, and the Rust components used by the
# checks. Safe to run again.
set -euo pipefail

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
command -v protoc >/dev/null || need+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto), only recommended by
# protobuf-compiler: etcd-client's build imports them.
[ -e /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v haproxy >/dev/null || need+=(haproxy)
command -v setpriv >/dev/null || need+=(util-linux)
command -v nft >/dev/null || need+=(nftables)
command -v openssl >/dev/null || need+=(openssl)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v busybox >/dev/null || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v curl >/dev/null || need+=(curl)
command -v ip >/dev/null || need+=(iproute2)
# Packaging checks (scripts/package-test.sh).
command -v lintian >/dev/null || need+=(lintian)
command -v rpm >/dev/null || need+=(rpm)
command -v rpmlint >/dev/null || need+=(rpmlint)
command -v man >/dev/null || need+=(man-db)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v objdump >/dev/null || need+=(binutils)
# Patroni's patronictl in a throwaway venv (scripts/patroni-compat.sh).
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
# Debian starts a default cluster on 5432 and an etcd on 2379 when it installs
# them; leasedog's tests and demo use their own ports and do not need them.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
fi
command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
id postgres >/dev/null 2>&1 || { echo "setup: the postgres user is missing (it comes with postgresql-15)"; exit 1; }
