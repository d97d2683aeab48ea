#!/usr/bin/env bash
# The demo: two replicated nodes on loopback with file-backed disks, no config needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --locked --bins -q
exec build/release/replctl demo "$@"
