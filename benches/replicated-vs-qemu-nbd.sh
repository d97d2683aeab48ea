#!/usr/bin/env bash
# Replicated data-path benchmark: fio over NBD against a tandem resource replicated between two
# replicatords on loopback (protocols A, B and C, release build), and in the same run against
# `qemu-nbd --cache=none --aio=io_uring` (the peer the issue names) and `qemu-nbd
# --cache=writeback` (page-cache like tandem) serving the same kind of file without replication.
# Prints 4 KiB random writes at QD1 and QD32 and 1 MiB sequential writes, with ratios.
#
#   bash benches/replicated-vs-qemu-nbd.sh          # RUNTIME=10 s per point, SIZE_MIB=1024
#   BIN=/tmp/old bash benches/replicated-vs-qemu-nbd.sh  # prebuilt replicatord+replctl (before/after)
#
# Every tandem write goes to the local disk and over TCP to the peer, which writes its copy;
# both files live on the same filesystem of this one machine, so the replicated runs do twice
# the disk work of the unreplicated ones on the same device.
# Needs: fio, qemu-utils, libnbd-bin, python3 (scripts/deps.sh installs the first three).
# Measured figures and what they mean: docs/replicator.md, "The write path and what it costs".
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-10}
SIZE_MIB=${SIZE_MIB:-1024}
PROTOCOLS=${PROTOCOLS:-"A B C"}
source benches/lib.sh
bench_need fio qemu-nbd nbdinfo python3
if [ -z "${BIN:-}" ]; then
    echo "bench: building replicatord and replctl (release)" >&2
    cargo build --release --quiet -p replicator --bins
fi
BIN=${BIN:-build/release}

bench_init repl-bench

mkfile() { dd if=/dev/zero of="$1" bs=1M count="$SIZE_MIB" oflag=direct status=none; }

WORKLOADS=("randwrite 4k 1" "randwrite 4k 32" "write 1M 8")
declare -A RESULT

measure() { # name uri
    for w in "${WORKLOADS[@]}"; do
        RESULT["$1|$w"]=$(bench_fio "$2" $w "$((SIZE_MIB / 2))M")
    done
}

# Unreplicated peers.
mkfile "$work/qemu.img"; mkfile "$work/qemu-wb.img"
qemu-nbd --cache=none --aio=io_uring -f raw -x q -b 127.0.0.1 -p 10821 -t -e 64 "$work/qemu.img" 2>"$work/qemu.log" &
pids+=($!)
qemu-nbd --cache=writeback --aio=threads -f raw -x q -b 127.0.0.1 -p 10822 -t -e 64 "$work/qemu-wb.img" 2>"$work/qemu-wb.log" &
pids+=($!)
bench_wait_uri nbd://127.0.0.1:10821/q; bench_wait_uri nbd://127.0.0.1:10822/q
echo "bench: qemu-nbd none+io_uring" >&2; measure qemu nbd://127.0.0.1:10821/q
echo "bench: qemu-nbd writeback" >&2; measure qemuwb nbd://127.0.0.1:10822/q

port=7790
for proto in $PROTOCOLS; do
    d="$work/$proto"; mkdir -p "$d"
    mkfile "$d/alpha.img"; mkfile "$d/beta.img"
    port=$((port + 2))
    cat >"$d/tandem.conf" <<CONF
resource r0 {
    net { protocol $proto; max-buffers 8k; }
    disk { c-plan-ahead 0; resync-rate 4G; ${EXTRA_DISK:-} }
    on alpha { disk $d/alpha.img; meta-disk internal; address 127.0.0.1:$port; export { nbd 127.0.0.1:10860; } }
    on beta  { disk $d/beta.img;  meta-disk internal; address 127.0.0.2:$port; export { nbd 127.0.0.2:10860; } }
}
CONF
    for n in alpha beta; do
        "$BIN/replctl" -c "$d/tandem.conf" --node $n create-md --force r0 >/dev/null
        "$BIN/replicatord" -c "$d/tandem.conf" --node $n --run-dir "$d/run-$n" 2>"$d/$n.log" &
        pids+=($!)
    done
    for n in alpha beta; do
        for _ in $(seq 100); do [ -S "$d/run-$n/replicatord.sock" ] && break; sleep 0.1; done
        "$BIN/replctl" --run-dir "$d/run-$n" up r0
    done
    for _ in $(seq 100); do
        "$BIN/replctl" --run-dir "$d/run-alpha" status r0 | grep -q "connection:Connected" && break; sleep 0.1
    done
    "$BIN/replctl" --run-dir "$d/run-alpha" primary --force r0
    for _ in $(seq 600); do
        "$BIN/replctl" --run-dir "$d/run-beta" status r0 | grep -q "disk:UpToDate" && break; sleep 0.2
    done
    echo "bench: tandem protocol $proto (synced)" >&2
    bench_wait_uri nbd://127.0.0.1:10860/r0
    measure "tandem-$proto" nbd://127.0.0.1:10860/r0
    for n in alpha beta; do "$BIN/replctl" --run-dir "$d/run-$n" down r0 || true; done
    for p in "${pids[@]}"; do :; done
    kill "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
    wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
    rm -f "$d"/*.img
done

python3 - "$PROTOCOLS" "${WORKLOADS[@]}" <<PY
import sys
protocols = sys.argv[1].split()
workloads = sys.argv[2:]
res = {$(for k in "${!RESULT[@]}"; do printf '"%s": "%s",' "$k" "${RESULT[$k]}"; done)}
labels = {"randwrite 4k 1": "4 KiB randwrite QD1", "randwrite 4k 32": "4 KiB randwrite QD32", "write 1M 8": "1 MiB seq write QD8"}
def fmt(w, v):
    iops, bw, lat = map(float, v.split())
    return ("%.0f IOPS %.0f us" % (iops, lat)) if w.startswith("randwrite") else ("%.0f MiB/s" % bw)
def key(w, v):
    iops, bw, lat = map(float, v.split())
    return iops if w.startswith("randwrite") else bw
print("%-21s %19s %19s" % ("workload", "qemu-nbd none", "qemu-nbd wb") + "".join(" %19s %6s %6s" % ("tandem " + p, "/none", "/wb") for p in protocols))
for w in workloads:
    q, qw = res["qemu|" + w], res["qemuwb|" + w]
    line = "%-21s %19s %19s" % (labels[w], fmt(w, q), fmt(w, qw))
    for p in protocols:
        t = res["tandem-%s|%s" % (p, w)]
        line += " %19s %5.2fx %5.2fx" % (fmt(w, t), key(w, t) / key(w, q), key(w, t) / key(w, qw))
    print(line)
print("(/none, /wb: tandem's figure divided by qemu-nbd's; latency = mean completion latency; %s s per point)" % "$RUNTIME")
PY
