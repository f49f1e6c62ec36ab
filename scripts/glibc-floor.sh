#!/usr/bin/env bash
# Fails when BINARY needs a newer glibc than MAX (default 2.34, Rocky Linux
# 9's), naming the symbols that raise it. Usage: glibc-floor.sh BINARY [MAX]
set -euo pipefail
bin=${1:?usage: glibc-floor.sh BINARY [MAX]}
max=${2:-2.34}
[ -f "$bin" ] || { echo "glibc-floor: $bin: no such file" >&2; exit 1; }
# Dynamic symbols, with the glibc version each one binds to.
syms=$(objdump -T "$bin" | awk '/GLIBC_[0-9]/ { for (i = 1; i <= NF; i++) if ($i ~ /GLIBC_[0-9]/) { v = $i; gsub(/[()]/, "", v); print v, $NF } }')
need=$(printf '%s\n' "$syms" | awk '{ print $1 }' | sed 's/GLIBC_//' | sort -uV | tail -1)
if [ -z "$need" ]; then
  echo "glibc-floor: $bin needs no versioned glibc symbol"
  exit 0
fi
if [ "$(printf '%s\n%s\n' "$need" "$max" | sort -V | tail -1)" != "$max" ]; then
  echo "glibc-floor: $bin needs glibc $need, above the floor $max (Rocky Linux 9). Symbols above it:" >&2
  printf '%s\n' "$syms" | while read -r v s; do
    [ "$(printf '%s\n%s\n' "${v#GLIBC_}" "$max" | sort -V | tail -1)" = "$max" ] || echo "  $s@$v" >&2
  done | sort -u >&2
  exit 1
fi
echo "glibc-floor: $bin needs glibc $need (floor $max): ok"
