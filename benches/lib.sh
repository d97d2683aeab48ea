# Shared pieces of the benchmark scripts (sourced, not run).
# After `bench_init`, $work is a scratch directory and every PID added to `pids` is killed (and
# the directory removed) when the script exits.

bench_init() { # name
    work=$(mktemp -d -p "${DIR:-${TMPDIR:-/tmp}}" "$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}

bench_need() { # tools...
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "bench: $t is missing (bash scripts/deps.sh)" >&2; exit 1; }
    done
}

bench_wait_uri() { # uri
    for _ in $(seq 200); do nbdinfo --size "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "bench: $1 does not answer" >&2
    exit 1
}

# fio JSON on stdin -> "iops bw_mib_s clat_mean_us" of the writes
bench_summarize() {
    python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):])
w = j["jobs"][0]["write"]
print("%.0f %.1f %.1f" % (w["iops"], w["bw"] / 1024, w["clat_ns"]["mean"] / 1000))
'
}

bench_fio() { # uri rw bs iodepth size
    fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" \
        --size="$5" --runtime="$RUNTIME" --ramp_time=2 --time_based \
        --group_reporting --output-format=json 2>"$work/fio.err" | bench_summarize
}
