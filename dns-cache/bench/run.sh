#!/bin/sh
# dns-cache benchmark: builds the release binary and the bench command, then runs the bench
# inside a fresh test world (needs root, dnsperf, unbound, dnsmasq, dig, sqlite3).
#   dns-cache/bench/run.sh [SECONDS_PER_RUN] [ROUNDS]
# Not a test: it prints figures (min/median/max and ratios), it asserts nothing.
set -eu
cd "$(dirname "$0")/../.."
: "${CARGO_TARGET_DIR:=target}"
export CARGO_TARGET_DIR
cargo build --release -p outsock-dns-cache --bin outsock-dns-cache --example bench
exec "$CARGO_TARGET_DIR/release/examples/bench" "$@"
