#!/usr/bin/env bash
# Replicated data-path benchmark: fio over NBD against a tandem resource replicated between two
# replicatords on loopback (protocols A, B and C, release build), and in the same run against
# `qemu-nbd --cache=none --aio=io_uring` (the peer the issue names) and `qemu-nbd
# --cache=writeback` (page cache) serving the same kind of file without replication.
# Prints 4 KiB random writes at QD1 and QD32 and 1 MiB sequential writes, with ratios, once
# per disk layout, then reference figures measured in the same run and the latency budget.
#
#   bash benches/replicated-vs-qemu-nbd.sh          # RUNTIME=10 s per point, SIZE_MIB=1024
#   BIN=/tmp/old bash benches/replicated-vs-qemu-nbd.sh  # prebuilt replicatord+replctl (before/after)
#   LAYOUTS=same PROTOCOLS=C bash benches/replicated-vs-qemu-nbd.sh   # a subset
#
# Layouts: every tandem write goes to the local disk and over TCP to the peer, which writes its
# copy. Two machines have a disk each; here both nodes share one, so
#   same: both replicas on this machine's disk, which then does twice qemu-nbd's disk work
#         (the 1 MiB ratios are bounded by the disk's two-stream bandwidth, printed below);
#   ram:  the peer's replica in /dev/shm, standing in for the peer's own disk (its writes cost
#         CPU and a round trip, not this disk's bandwidth). The Primary's disk is the same as
#         qemu-nbd's.
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

# References, in the same run: the disk's own 4 KiB write latency (what the peer's write
# costs), the same through io_uring on a /dev/shm file (the peer's write in the RAM layout),
# a loopback TCP round trip of 4 KiB (fio's ping-pong), and the disk's 1 MiB bandwidth with
# one and with two writers (two replicas on one disk).
echo "bench: references (disk, loopback round trip)" >&2
disk_fio() { # name rw bs iodepth jobs [dir direct]
    local dir=${6:-$work}
    fio --name="$1" --directory="$dir" --rw="$2" --bs="$3" --iodepth="$4" --numjobs="$5" \
        --size=512M --ioengine=io_uring --direct="${7:-1}" --runtime="$RUNTIME" --time_based \
        --group_reporting --output-format=json 2>"$work/fio.err" | bench_summarize
    rm -f "$dir/$1".*
}
REF_DISK_LAT=$(disk_fio disklat randwrite 4k 1 1 | cut -d' ' -f3)
ram_dir=$(mktemp -d -p /dev/shm tandem-bench.XXXXXX)
trap 'rm -rf /dev/shm/tandem-bench.*; bench_cleanup' EXIT
REF_RAM_LAT=$(disk_fio ramlat randwrite 4k 1 1 "$ram_dir" 0 | cut -d' ' -f3)
rmdir "$ram_dir"
REF_DISK_BW1=$(disk_fio diskbw1 write 1M 8 1 | cut -d' ' -f2)
REF_DISK_BW2=$(disk_fio diskbw2 write 1M 8 2 | cut -d' ' -f2)
fio --name=pong --ioengine=net --protocol=tcp --listen --port=10890 --rw=read --bs=4k \
    --size=64M --pingpong=1 >/dev/null 2>&1 &
pids+=($!)
sleep 1
REF_RTT=$(fio --name=ping --ioengine=net --protocol=tcp --hostname=127.0.0.1 --port=10890 \
    --rw=write --bs=4k --size=64M --pingpong=1 --output-format=json 2>/dev/null | bench_summarize | cut -d' ' -f3)

LAYOUTS=${LAYOUTS:-"same ram"}
port=7790
for layout in $LAYOUTS; do
for proto in $PROTOCOLS; do
    d="$work/$layout-$proto"; mkdir -p "$d"
    peer_dir=$d
    if [ "$layout" = ram ]; then
        peer_dir=$(mktemp -d -p /dev/shm tandem-bench.XXXXXX)
    fi
    mkfile "$d/alpha.img"
    dd if=/dev/zero of="$peer_dir/beta.img" bs=1M count="$SIZE_MIB" status=none
    port=$((port + 2))
    cat >"$d/tandem.conf" <<CONF
resource r0 {
    net { protocol $proto; max-buffers 8k; }
    disk { c-plan-ahead 0; resync-rate 4G; ${EXTRA_DISK:-} }
    on alpha { disk $d/alpha.img; meta-disk internal; address 127.0.0.1:$port; export { nbd 127.0.0.1:10860; } }
    on beta  { disk $peer_dir/beta.img;  meta-disk internal; address 127.0.0.2:$port; export { nbd 127.0.0.2:10860; } }
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
    echo "bench: tandem protocol $proto, peer disk $layout (synced)" >&2
    bench_wait_uri nbd://127.0.0.1:10860/r0
    measure "tandem-$layout-$proto" nbd://127.0.0.1:10860/r0
    for n in alpha beta; do "$BIN/replctl" --run-dir "$d/run-$n" down r0 || true; done
    kill "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
    wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
    rm -f "$d"/*.img "$peer_dir/beta.img"
    [ "$peer_dir" = "$d" ] || rmdir "$peer_dir"
done
done

python3 - "$PROTOCOLS" "$LAYOUTS" "${WORKLOADS[@]}" <<PY
import sys
protocols = sys.argv[1].split()
layouts = sys.argv[2].split()
workloads = sys.argv[3:]
res = {$(for k in "${!RESULT[@]}"; do printf '"%s": "%s",' "$k" "${RESULT[$k]}"; done)}
labels = {"randwrite 4k 1": "4 KiB randwrite QD1", "randwrite 4k 32": "4 KiB randwrite QD32", "write 1M 8": "1 MiB seq write QD8"}
names = {"same": "peer's replica on the same disk", "ram": "peer's replica in RAM (stands in for the peer's own disk)"}
def num(v):
    return list(map(float, v.split()))
def fmt(w, v):
    iops, bw, lat = num(v)
    return ("%.0f IOPS %.0f us" % (iops, lat)) if w.startswith("randwrite") else ("%.0f MiB/s" % bw)
def key(w, v):
    iops, bw, lat = num(v)
    return iops if w.startswith("randwrite") else bw
for layout in layouts:
    print("tandem with the %s" % names[layout])
    print("%-21s %19s %19s" % ("workload", "qemu-nbd none", "qemu-nbd wb") + "".join(" %19s %6s %6s" % ("tandem " + p, "/none", "/wb") for p in protocols))
    for w in workloads:
        q, qw = res["qemu|" + w], res["qemuwb|" + w]
        line = "%-21s %19s %19s" % (labels[w], fmt(w, q), fmt(w, qw))
        for p in protocols:
            t = res["tandem-%s-%s|%s" % (layout, p, w)]
            line += " %19s %5.2fx %5.2fx" % (fmt(w, t), key(w, t) / key(w, q), key(w, t) / key(w, qw))
        print(line)
    print()
print("(/none, /wb: tandem's figure divided by qemu-nbd's; latency = mean completion latency; %s s per point)" % "$RUNTIME")
disk_lat, ram_lat, rtt = float("$REF_DISK_LAT"), float("$REF_RAM_LAT"), float("$REF_RTT")
print("references in this run: 4 KiB QD1 write through io_uring: disk (O_DIRECT) %.0f us, /dev/shm %.0f us;" % (disk_lat, ram_lat))
print("  loopback TCP 4 KiB round trip %.0f us;" % rtt)
print("  disk 1 MiB QD8 O_DIRECT: one writer $REF_DISK_BW1 MiB/s, two writers $REF_DISK_BW2 MiB/s in all")
q_lat = num(res["qemu|randwrite 4k 1"])[2]
for layout in layouts:
    if "C" not in protocols:
        continue
    # The peer's write: on the disk, or on /dev/shm (where io_uring hands it to a worker thread).
    budget = rtt + (disk_lat if layout == "same" else ram_lat)
    c_lat = num(res["tandem-%s-C|randwrite 4k 1" % layout])[2]
    over = c_lat - q_lat
    print("protocol C 4 KiB QD1, peer %s: %.0f us, %.0f us over qemu-nbd; budget (round trip + peer's write) %.0f us: %s"
          % (layout, c_lat, over, budget, "within" if over <= budget else "over by %.0f us" % (over - budget)))
PY
