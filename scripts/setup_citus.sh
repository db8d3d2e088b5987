#!/usr/bin/env bash
# Builds and installs Citus into the PostgreSQL of scripts/pg_env.sh from the vendored source
# tarball, unless that Citus version is installed already (then it takes a second). Called by
# `scripts/setup.sh --with-citus`; only the Citus tests and scripts/bench_citus.sh need it.
#
# Env: ORDERS_SYNC_CITUS_TARBALL (default ../shared/vendor/citus-13.2.2-pg15.20.tar.gz beside
#      the checkout), ORDERS_SYNC_CITUS_BUILD (build directory, default
#      /var/tmp/orders_sync-citus-build; about 300 MB, removed after a successful install).
set -euo pipefail

# shellcheck source=pg_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg_env.sh"
# shellcheck source=apt_packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_packages.sh"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CITUS_VERSION=13.2.2
tarball="${ORDERS_SYNC_CITUS_TARBALL:-$repo/../shared/vendor/citus-${CITUS_VERSION}-pg15.20.tar.gz}"
build="${ORDERS_SYNC_CITUS_BUILD:-/var/tmp/orders_sync-citus-build}"
# Citus's configure checks for these (compression of columnar storage, libcurl for its
# statistics collector, GSSAPI for its connections).
APT_PACKAGES=(libcurl4-openssl-dev liblz4-dev libzstd-dev libkrb5-dev)

log() { printf 'setup (citus): %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

pkglibdir="$("$PG_CONFIG" --pkglibdir)"
control="$("$PG_CONFIG" --sharedir)/extension/citus.control"
# The installed control file names the SQL version (13.2-1 for 13.2.x); the .so must be there.
if [ -f "$pkglibdir/citus.so" ] && grep -qs "default_version = '${CITUS_VERSION%.*}-" "$control"; then
  log "Citus ${CITUS_VERSION%.*} present ($pkglibdir/citus.so)"
  exit 0
fi

if [ ! -f "$tarball" ]; then
  echo "setup: Citus source not found at $tarball" >&2
  echo "hint: set ORDERS_SYNC_CITUS_TARBALL, or install Citus's own package postgresql-${PG_MAJOR}-citus-13.2" >&2
  exit 1
fi

apt_install_missing "${APT_PACKAGES[@]}"

log "building Citus ${CITUS_VERSION} from $tarball in $build (2-3 minutes on 2 cores)"
started=$(date +%s)
rm -rf "$build"
mkdir -p "$build"
tar -xzf "$tarball" -C "$build"
src="$(find "$build" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
(
  cd "$src"
  ./configure PG_CONFIG="$PG_CONFIG" >"$build/configure.log" 2>&1 ||
    { tail -n 30 "$build/configure.log" >&2; exit 1; }
  make -j"$(nproc)" >"$build/make.log" 2>&1 || { tail -n 30 "$build/make.log" >&2; exit 1; }
)
# make install writes into the server's lib and extension directories, as `cargo pgrx install`
# does: under the same machine-wide lock (no running cluster loads citus.so from another
# checkout's test while it is replaced).
(
  flock 9
  $SUDO make -C "$src" install >"$build/install.log" 2>&1 || { tail -n 30 "$build/install.log" >&2; exit 1; }
) 9>"$INSTALL_LOCK"
rm -rf "$build"
log "Citus ${CITUS_VERSION} installed in $(($(date +%s) - started)) s"
