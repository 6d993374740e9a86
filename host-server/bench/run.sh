#!/bin/sh
# Builds host-server and dns-cache in release mode and runs the relay/fd-passing benchmark in
# the test world (needs root; everything runs inside the world's namespaces).
set -eu
cd "$(dirname "$0")/../.."
cargo build --release -p outsock-host-server -p outsock-dns-cache
cargo run --release -p outsock-host-server --example relay-bench
