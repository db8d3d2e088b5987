#!/usr/bin/env bash
# The Debian package, tested the way a DBA uses it (scripts/test.sh runs this as its own step):
#
#   1. build it (scripts/package.sh) and check its metadata and file list;
#   2. remove what `cargo pgrx install` put into the server's directories, install the package
#      with apt-get (no cargo on PATH), and in a fresh cluster CREATE EXTENSION orders_sync
#      CASCADE (the launcher must come up from the packaged .so) and ALTER EXTENSION UPDATE
#      from the released 0.1.0;
#   3. apt-get remove must leave no orders_sync file in the server's directories;
#   4. restore the development install (cargo pgrx install) for the steps that follow.
#
# Steps 2-4 hold the machine-wide install lock ($INSTALL_LOCK): they swap the server's .so.
# Env: ORDERS_SYNC_WORK (scratch dir), ORDERS_SYNC_PKG_PORT (cluster port, default 54339).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=pg_env.sh
source scripts/pg_env.sh
work="${ORDERS_SYNC_WORK:-/var/tmp/orders_sync}/package"
port="${ORDERS_SYNC_PKG_PORT:-54339}"
db=orders_sync_pkg
name="postgresql-${PG_MAJOR}-orders-sync"
pkglibdir="$("$PG_CONFIG" --pkglibdir)"
extdir="$("$PG_CONFIG" --sharedir)/extension"
cargo_bin="$(command -v cargo)"

fail() { echo "test_package.sh: FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }
# Every orders_sync file in the server's directories, one a line.
server_files() { find "$pkglibdir" "$extdir" -maxdepth 1 -name 'orders_sync*' | sort; }

mkdir -p "$work"
chown postgres: "$work" "$(dirname "$work")" 2>/dev/null || true
deb="$(bash scripts/package.sh "$work")"
version="$(dpkg-deb -f "$deb" Version)"

# 1. Metadata and contents.
depends="$(dpkg-deb -f "$deb" Depends)"
for dep in "postgresql-${PG_MAJOR}" "postgresql-${PG_MAJOR}-cron"; do
  [[ ", $depends," == *", $dep,"* ]] || fail "Depends lacks $dep: $depends"
done
[ -n "$(dpkg-deb -f "$deb" Description)" ] || fail "no Description"
[ "$(basename "$deb")" = "${name}_${version}_$(dpkg --print-architecture).deb" ] || fail "file name $deb"
contents="$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')"
for file in "$pkglibdir/orders_sync.so" "$extdir/orders_sync.control" "$extdir/orders_sync--${version}.sql"; do
  grep -qx "$file" <<<"$contents" || fail "package lacks $file"
done
for script in sql/orders_sync--*--*.sql; do
  grep -qx "$extdir/$(basename "$script")" <<<"$contents" || fail "package lacks upgrade script $script"
done
! grep -q 'orders_sync--0\.1\.0\.sql$' <<<"$contents" || fail "package ships the 0.1.0 install script"
pass "package $(basename "$deb"): Depends $depends; .so, control, install and every upgrade script"

restore() {
  local status=$?
  scripts/pg_cluster.sh stop "$work/cluster" || true
  rm -f "$extdir/orders_sync--0.1.0.sql"
  if dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed"; then
    apt-get remove -y -qq "$name" >/dev/null || true
  fi
  echo "restoring the development install (cargo pgrx install)"
  "$cargo_bin" pgrx install --pg-config "$PG_CONFIG" >/dev/null || status=1
  exit "$status"
}

exec 9>"$INSTALL_LOCK"
flock 9
trap restore EXIT

# 2. Install from the package only: nothing of cargo's left, cargo not on PATH.
if dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed"; then
  apt-get remove -y -qq "$name" >/dev/null
fi
rm -f "$pkglibdir/orders_sync.so" "$extdir"/orders_sync*
[ -z "$(server_files)" ] || fail "files left after removing the cargo install: $(server_files)"
PATH="/usr/sbin:/usr/bin:/sbin:/bin" DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq "$deb" >/dev/null
installed="$(server_files)"
[ -f "$pkglibdir/orders_sync.so" ] || fail "apt-get install did not put the .so in $pkglibdir"
for script in sql/orders_sync--*--*.sql; do
  grep -qx "$extdir/$(basename "$script")" <<<"$installed" || fail "$script not installed"
done
pass "apt-get install $(basename "$deb"): $(wc -l <<<"$installed") files in the server's directories"

rm -rf "$work/cluster"
dsn="$(scripts/pg_cluster.sh start "$work/cluster" "$port" "$db" "fsync = off" 9>&-)"  # the server must not inherit the lock
sql() { "$PG_BIN/psql" "$dsn" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }

sql "CREATE EXTENSION orders_sync CASCADE"
got="$(sql "SELECT extversion FROM pg_extension WHERE extname = 'orders_sync'")"
[ "$got" = "$version" ] || fail "CREATE EXTENSION gave version $got, not $version"
[ "$(sql "SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'")" = 1 ] || fail "CASCADE did not create pg_cron"
launcher=0
for _ in $(seq 1 60); do
  launcher="$(sql "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'orders_sync launcher'")"
  [ "$launcher" -ge 1 ] && break
  sleep 0.5
done
[ "$launcher" -ge 1 ] || fail "the packaged .so's launcher did not start"
pass "CREATE EXTENSION orders_sync CASCADE: version $got, pg_cron created, launcher running"

# The released 0.1.0 script is not shipped; copied in only for this test.
install -m 644 pg_test/fixtures/orders_sync--0.1.0.sql "$extdir/"
sql "DROP EXTENSION orders_sync; DROP SCHEMA orders_sync"
sql "CREATE EXTENSION orders_sync VERSION '0.1.0' CASCADE"
sql "ALTER EXTENSION orders_sync UPDATE"
got="$(sql "SELECT extversion FROM pg_extension WHERE extname = 'orders_sync'")"
[ "$got" = "$version" ] || fail "ALTER EXTENSION UPDATE from 0.1.0 gave $got, not $version"
sql "SELECT count(*) FROM orders_sync.scheduler_health" >/dev/null
pass "ALTER EXTENSION orders_sync UPDATE from 0.1.0 to $got"
scripts/pg_cluster.sh stop "$work/cluster"
rm -f "$extdir/orders_sync--0.1.0.sql"

# 3. Removal leaves the server clean.
apt-get remove -y -qq "$name" >/dev/null
left="$(server_files)"
[ -z "$left" ] || fail "apt-get remove left: $left"
pass "apt-get remove $name: no orders_sync file left in $pkglibdir or $extdir"
rm -rf "$work/cluster"
# 4. restore runs on EXIT.
