#!/usr/bin/env bash
# Builds the Debian package of orders_sync for the server scripts/pg_env.sh names:
#
#   scripts/package.sh [OUT_DIR]     -> OUT_DIR/postgresql-15-orders-sync_<version>_amd64.deb
#
# `cargo pgrx package` (release build) lays the files out under the server's own paths
# (`pg_config --pkglibdir`, `--sharedir`/extension: the .so, the control file, the install
# script and every upgrade script sql/orders_sync--A--B.sql); dpkg-deb wraps that tree with
# control metadata. The host installing the package needs no Rust, clang or cargo-pgrx.
# OUT_DIR defaults to the repository root.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=pg_env.sh
source scripts/pg_env.sh
out_dir="$(mkdir -p "${1:-$repo}" && cd "${1:-$repo}" && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"

version="$(cargo metadata --no-deps --format-version 1 |
  sed -n 's/.*"name":"orders_sync","version":"\([^"]*\)".*/\1/p')"
[ -n "$version" ] || { echo "package.sh: cannot read the crate version" >&2; exit 1; }
arch="$(dpkg --print-architecture)"
name="postgresql-${PG_MAJOR}-orders-sync"
deb="$out_dir/${name}_${version}_${arch}.deb"

tree="$target/release/orders_sync-pg${PG_MAJOR}"
rm -rf "$tree"
cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$tree" >&2

pkglibdir="$("$PG_CONFIG" --pkglibdir)"
extdir="$("$PG_CONFIG" --sharedir)/extension"
so="$tree$pkglibdir/orders_sync.so"
[ -f "$so" ] || { echo "package.sh: $so was not built" >&2; exit 1; }
# Every upgrade script in sql/ must be in the package: an ALTER EXTENSION UPDATE from any
# released version needs the whole chain.
for script in sql/orders_sync--*--*.sql; do
  [ -f "$tree$extdir/$(basename "$script")" ] ||
    install -m 644 "$script" "$tree$extdir/"
done
[ -f "$tree$extdir/orders_sync--${version}.sql" ] ||
  { echo "package.sh: install script orders_sync--${version}.sql missing" >&2; exit 1; }
# cargo pgrx package may leave build leftovers beside the server paths; ship only those.
find "$tree" -mindepth 1 -maxdepth 1 ! -name usr -exec rm -rf {} +
strip --strip-unneeded "$so"

# Shared libraries the .so links (libc, libssl, ...) become Depends, resolved by dpkg itself.
shlib_depends="$(
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/debian"
  printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$name" "$name" > "$scratch/debian/control"
  cd "$scratch" && dpkg-shlibdeps -O "$so" 2>/dev/null | sed -n 's/^shlibs:Depends=//p'
)"

mkdir -p "$tree/DEBIAN" "$tree/usr/share/doc/$name"
install -m 644 README.md "$tree/usr/share/doc/$name/README.md"
# The exporter queries and alert rules, for prometheus-postgres-exporter and Prometheus.
mkdir -p "$tree/usr/share/$name"
install -m 644 metrics/queries.yaml metrics/alerts.yaml "$tree/usr/share/$name/"
installed_size="$(du -sk --exclude=DEBIAN "$tree" | cut -f1)"
cat > "$tree/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: orders_sync maintainers <orders-sync@localhost>
Section: database
Priority: optional
Installed-Size: $installed_size
Depends: postgresql-${PG_MAJOR}, postgresql-${PG_MAJOR}-cron${shlib_depends:+, $shlib_depends}
Homepage: https://github.com/orders-sync/orders_sync
Description: PostgreSQL ${PG_MAJOR} extension keeping per-store order data in sync
 orders_sync plans which date windows of which stores are missing or stale,
 fetches them from HTTP sources in background workers, and writes rows and
 the sync log in the same transactions. Schedules run through pg_cron; health
 is visible in views and through prometheus-postgres-exporter.
 .
 Add 'pg_cron,orders_sync' to shared_preload_libraries, restart, then run
 CREATE EXTENSION orders_sync CASCADE.
EOF
(cd "$tree" && find usr -type f -exec md5sum {} + > DEBIAN/md5sums)

dpkg-deb --root-owner-group --build "$tree" "$deb" >&2
echo "$deb"
