# shellcheck shell=bash
# The PostgreSQL server orders_sync is built against, installed into and tested with, named in
# this one place. Sourced, not run, by the scripts here; it exports
#
#   PG_MAJOR   the server's major version
#   PG_CONFIG  its pg_config (package postgresql-server-dev-$PG_MAJOR)
#   PG_BIN     its programs (initdb, pg_ctl, psql): `pg_config --bindir`; empty until
#              scripts/setup.sh has installed pg_config
#   INSTALL_LOCK  the machine-wide lock held while the extension is installed into this server
#              and while a cluster that loads it runs: an install swaps the .so under it
#
# PG_CONFIG and PG_BIN already set in the environment are kept (they must be this version's).
PG_MAJOR=15
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config}"
if [ -z "${PG_BIN:-}" ] && [ -x "$PG_CONFIG" ]; then
  PG_BIN="$("$PG_CONFIG" --bindir)"
fi
PG_BIN="${PG_BIN:-}"
INSTALL_LOCK=/var/tmp/orders_sync-install.lock
export PG_MAJOR PG_CONFIG PG_BIN INSTALL_LOCK
