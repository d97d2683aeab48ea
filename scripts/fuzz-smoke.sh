#!/usr/bin/env bash
# Runs every cargo-fuzz target briefly (a smoke test that the targets build and the parsers
# survive a few thousand inputs). Long runs are for developers:
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${FUZZ_RUNS:-20000}
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked -q
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
targets=$(cargo fuzz list)
pass=0
fail=0
for t in $targets; do
    mkdir -p "corpus/$t"
    if [ -d "seeds/$t" ]; then cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true; fi
    echo "fuzz: $t ($RUNS runs)"
    if cargo fuzz run "$t" "corpus/$t" -- -runs="$RUNS" -max_total_time=60 >"/tmp/fuzz-$t.log" 2>&1; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        tail -n 40 "/tmp/fuzz-$t.log" >&2
    fi
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
