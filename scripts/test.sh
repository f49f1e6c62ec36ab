#!/usr/bin/env bash
# Runs every check: formatting, clippy, unit tests, the deterministic
# simulation, the integration and partition tests on real etcd + PostgreSQL
# 15, patronictl against a leasedog cluster, the packages (.deb installed
# for real, .rpm into a scratch root), and the QEMU watchdog test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
# Integration tests start real clusters with tight timings: one at a time.
cargo test -- --test-threads=1
# Patroni 4.1.5's patronictl (PyPI, throwaway venv) reads a leasedog cluster.
bash scripts/patroni-compat.sh
# Both packages built and checked; the .deb installed, upgraded and purged.
bash scripts/package-test.sh
# The .deb under a real systemd, in a QEMU guest with a watchdog.
bash scripts/vm-systemd-test.sh
# A real kernel watchdog driver (QEMU i6300esb) fencing a frozen leader.
bash scripts/vm-test.sh
