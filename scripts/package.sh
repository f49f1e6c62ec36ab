#!/usr/bin/env bash
# Builds the Debian 12 .deb and the Rocky Linux 9 .rpm into target/package/:
# a stripped release binary (checked against Rocky 9's glibc 2.34), the man
# page and shell completions rendered from the CLI definition, then
# cargo-deb and cargo-generate-rpm (installed from crates.io when missing).
# LEASEDOG_MAX_GLIBC overrides the glibc floor.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/package
max_glibc=${LEASEDOG_MAX_GLIBC:-2.34}

need_tool() { # cargo subcommand, crate, version
  if ! cargo "$1" --version >/dev/null 2>&1; then
    echo "package: installing $2 $3 from crates.io"
    cargo install --locked "$2" --version "$3"
  fi
}
need_tool deb cargo-deb 3.8.0
need_tool generate-rpm cargo-generate-rpm 0.21.1

cargo build --release
bash scripts/glibc-floor.sh target/release/leasedog "$max_glibc"

rm -rf "$out"
mkdir -p "$out"
cargo run --quiet --release --example gen-docs -- "$out"
mkdir "$out/man"
for page in "$out"/*.1; do gzip -9n -c "$page" > "$out/man/$(basename "$page").gz"; done

version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
when=$(git log -1 --format=%cD 2>/dev/null || date -R)
cat > "$out/changelog" <<CHANGES
leasedog ($version-1) unstable; urgency=medium

  * Release $version: see the project's git history for the changes.

 -- leasedog developers <leasedog@lists.leasedog.org>  $when
CHANGES

# Rocky Linux: PostgreSQL's home is /var/lib/pgsql and AppStream's binaries
# are in /usr/bin (PGDG's in /usr/pgsql-NN/bin).
sed -e 's|^  data_dir: /var/lib/postgresql/15/leasedog$|  data_dir: /var/lib/pgsql/leasedog|' \
    -e 's|^  bin_dir: /usr/lib/postgresql/15/bin$|  # AppStream: /usr/bin; PGDG: /usr/pgsql-16/bin (or your version)\n  bin_dir: /usr/bin|' \
    config/leasedog.yml > "$out/leasedog.rpm.yml"
grep -q '^  data_dir: /var/lib/pgsql/leasedog$' "$out/leasedog.rpm.yml" &&
  grep -q '^  bin_dir: /usr/bin$' "$out/leasedog.rpm.yml" ||
  { echo "package: config/leasedog.yml changed: update the Rocky paths in scripts/package.sh" >&2; exit 1; }

deb=$(cargo deb --no-build --no-strip --output "$out/" | tail -1)
# cargo-deb writes no md5sums: add them (conffiles excluded, as dh_md5sums
# does) so that `dpkg --verify leasedog` can tell a modified file.
unpacked="$out/deb-root"
rm -rf "$unpacked"
dpkg-deb -R "$deb" "$unpacked"
(cd "$unpacked" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print |
  sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) > "$unpacked/DEBIAN/md5sums"
chmod 644 "$unpacked/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz -b "$unpacked" "$deb" >/dev/null
rm -rf "$unpacked"
cargo generate-rpm --output "$out/"
echo "package: built"
ls -l "$out"/*.deb "$out"/*.rpm
