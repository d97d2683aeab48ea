#!/usr/bin/env bash
# Runs every test of tandem on a fresh Debian machine: installs what is missing, checks
# formatting and lints, builds, runs unit, property and end-to-end tests, then each fuzz target
# briefly. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (binaries the end-to-end tests drive)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked
echo "== fuzz smoke"
bash scripts/fuzz-smoke.sh
