#!/usr/bin/env bash
# Throughput of the reference source simulator on one core.
#
# Builds the release binary and the bench client, starts the simulator pinned to CPU 0 on an
# ephemeral loopback port, follows one page chain for ROWS rows (PAGE_SIZE rows per page) with
# the client pinned to CPU 1, prints `simulator: N rows in S s = R rows/s`, and stops the server.
#
# Env: ROWS (default 1000000), PAGE_SIZE (default 10000), CARGO_TARGET_DIR (default ./target).
set -euo pipefail

ROWS="${ROWS:-1000000}"
PAGE_SIZE="${PAGE_SIZE:-10000}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"

cd "$repo"
cargo build --quiet --release -p orders_sync_simulator --bin orders_sync_simulator --example bench_client
server_bin="$target/release/orders_sync_simulator"
client_bin="$target/release/examples/bench_client"

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Pin when the machine has the CPUs; the rate is meant to be the one-core figure.
server_pin=()
client_pin=()
if command -v taskset >/dev/null 2>&1; then
  server_pin=(taskset -c 0)
  if [ "$(nproc)" -gt 1 ]; then
    client_pin=(taskset -c 1)
  fi
fi

# 5000 rows/day: the 1,000,000 rows span 200 days of one store's chain.
"${server_pin[@]}" "$server_bin" --listen 127.0.0.1:0 --threads 1 --rows-per-day 5000 \
  --max-page-size "$PAGE_SIZE" >"$tmp/stdout" &
server_pid=$!

addr=""
for _ in $(seq 1 200); do
  if line="$(head -n 1 "$tmp/stdout" 2>/dev/null)" && [ -n "$line" ]; then
    addr="${line#listening on }"
    break
  fi
  kill -0 "$server_pid" 2>/dev/null || { echo "bench: simulator exited early" >&2; exit 1; }
  sleep 0.05
done
[ -n "$addr" ] || { echo "bench: simulator did not report its port" >&2; exit 1; }

"${client_pin[@]}" "$client_bin" "$addr" "$ROWS" "$PAGE_SIZE"
