#!/usr/bin/env bash
# One-time machine setup for orders_sync on Debian 12 (bookworm) with PostgreSQL $PG_MAJOR
# (scripts/pg_env.sh).
# Idempotent: every step checks first, so a second run takes seconds.
#
#   scripts/setup.sh [--with-citus]
#
# --with-citus also builds and installs Citus (the scale-out tests and scripts/bench_citus.sh
# need it) from ../shared/vendor/citus-*.tar.gz (or $ORDERS_SYNC_CITUS_TARBALL) when the
# server does not have that version yet. Debian's archive has no Citus package; a DBA installs
# Citus's own packages (postgresql-15-citus-13.2) instead.
set -euo pipefail

with_citus=0
for arg in "$@"; do
  case "$arg" in
    --with-citus) with_citus=1 ;;
    *) echo "setup: unknown argument '$arg' (known: --with-citus)" >&2; exit 2 ;;
  esac
done

# shellcheck source=pg_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg_env.sh"
# shellcheck source=apt_packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_packages.sh"
PGRX_VERSION=0.18.0
APT_PACKAGES=(
  "postgresql-${PG_MAJOR}"            # the server the extension runs in
  "postgresql-server-dev-${PG_MAJOR}" # headers and pg_config for pgrx/bindgen
  "postgresql-${PG_MAJOR}-cron"       # pg_cron, the scheduler orders_sync registers jobs with
  libclang-dev clang                  # bindgen
  pkg-config libssl-dev               # build deps of common -sys crates
  sudo                                # cargo pgrx test --runas postgres
  shellcheck                          # scripts/test.sh lints scripts/*.sh with it
  dpkg-dev fakeroot                   # scripts/package.sh: dpkg-shlibdeps, dpkg-deb
  prometheus-postgres-exporter        # metrics/queries.yaml is tested against the real exporter
  prometheus                          # promtool checks metrics/alerts.yaml
  python3-yaml                        # scripts/bench_metrics.sh reads metrics/queries.yaml
  linux-perf                          # perf: where the benchmarks' time goes (docs/design.md#writing)
)

log() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

apt_install_missing "${APT_PACKAGES[@]}"

# The exporter and Prometheus packages enable services of their own (the exporter on :9187,
# with an empty DATA_SOURCE_NAME). The tests run their own exporter on a private port and
# need neither, so they are stopped and disabled rather than left failing in the background.
for service in prometheus-postgres-exporter prometheus; do
  if systemctl is-enabled "$service" >/dev/null 2>&1; then
    log "stopping and disabling the packaged $service service"
    $SUDO systemctl disable --now "$service" >/dev/null 2>&1 ||
      $SUDO systemctl disable "$service" >/dev/null 2>&1 || true
  fi
done

# Debian's postgresql package starts a cluster on 5432; the project never uses it, and tests
# start private clusters on their own ports, so nothing here depends on it running or not.

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

# scripts/test.sh's lint steps run cargo fmt and cargo clippy.
if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
  log "rustfmt and clippy present"
elif command -v rustup >/dev/null 2>&1; then
  log "rustup component add rustfmt clippy"
  rustup component add rustfmt clippy
else
  echo "setup: cargo fmt / cargo clippy not found; install the rustfmt and clippy components" >&2
  exit 1
fi

if cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
  log "cargo-pgrx ${PGRX_VERSION} present"
else
  log "installing cargo-pgrx ${PGRX_VERSION} (takes a few minutes)"
  cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked --quiet
fi

PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if grep -qs "pg${PG_MAJOR} = \"${PG_CONFIG}\"" "${PGRX_HOME}/config.toml"; then
  log "cargo pgrx already initialised against ${PG_CONFIG}"
else
  log "cargo pgrx init --pg${PG_MAJOR} ${PG_CONFIG}"
  cargo pgrx init --pg${PG_MAJOR} "${PG_CONFIG}"
fi

if [ "$with_citus" = 1 ]; then
  bash "$(dirname "${BASH_SOURCE[0]}")/setup_citus.sh"
fi

# `cargo pgrx install` writes into the server's lib and extension directories.
log "done"
