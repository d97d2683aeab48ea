#!/usr/bin/env bash
# NBD macro benchmark: fio over NBD against targetd (release build) and, in the same run,
# against `qemu-nbd --cache=none --aio=io_uring` serving the same kind of file on the same
# filesystem. Prints a table of 4 KiB random writes at QD1 and QD32 and 1 MiB sequential writes,
# with targetd/qemu-nbd ratios.
#
#   bash benches/nbd-vs-qemu-nbd.sh            # RUNTIME=10 s per point, SIZE=1G files
#   RUNTIME=30 SIZE=4G DIR=/srv bash benches/nbd-vs-qemu-nbd.sh
#
# targetd writes through the page cache (pread/pwrite, fdatasync on FLUSH/FUA) while
# `--cache=none` is O_DIRECT, so the script also measures `qemu-nbd --cache=writeback
# --aio=threads`, which caches like targetd: that column is the like-for-like comparison.
#
# All servers are reached over TCP on loopback by fio's nbd engine (libnbd), one connection per
# job. The files are written out with zeroes first, so no server pays for allocation.
# Needs: fio, qemu-utils, libnbd-bin, python3 (scripts/deps.sh installs the first three).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-10}
SIZE_MIB=${SIZE_MIB:-1024}
DIR=${DIR:-}
PORT_TARGETD=${PORT_TARGETD:-10810}
PORT_QEMU=${PORT_QEMU:-10811}
PORT_QEMU_WB=${PORT_QEMU_WB:-10812}

source benches/lib.sh
bench_need fio qemu-nbd nbdinfo python3

echo "bench: building targetd (release)" >&2
cargo build --release --quiet -p target --bin targetd
TARGETD=build/release/targetd

bench_init nbd-bench

echo "bench: writing three ${SIZE_MIB} MiB files in $work" >&2
for f in targetd.img qemu.img qemu-wb.img; do
    dd if=/dev/zero of="$work/$f" bs=1M count="$SIZE_MIB" oflag=direct status=none
done
sync

"$TARGETD" --run-dir "$work/run" --nbd "127.0.0.1:$PORT_TARGETD" "$work/targetd.img" \
    2>"$work/targetd.log" &
pids+=($!)
qemu-nbd --cache=none --aio=io_uring -f raw -x qemu.img -b 127.0.0.1 -p "$PORT_QEMU" \
    -t -e 64 "$work/qemu.img" 2>"$work/qemu-nbd.log" &
pids+=($!)
qemu-nbd --cache=writeback --aio=threads -f raw -x qemu-wb.img -b 127.0.0.1 -p "$PORT_QEMU_WB" \
    -t -e 64 "$work/qemu-wb.img" 2>"$work/qemu-nbd-wb.log" &
pids+=($!)

uri_targetd="nbd://127.0.0.1:$PORT_TARGETD/targetd.img"
uri_qemu="nbd://127.0.0.1:$PORT_QEMU/qemu.img"
uri_qemu_wb="nbd://127.0.0.1:$PORT_QEMU_WB/qemu-wb.img"
for uri in "$uri_targetd" "$uri_qemu" "$uri_qemu_wb"; do
    bench_wait_uri "$uri"
done

run_fio() { # uri rw bs iodepth
    bench_fio "$1" "$2" "$3" "$4" "${SIZE_MIB}M"
}

printf '%-22s %20s %20s %7s %20s %7s\n' "workload" "targetd" "qemu-nbd none+uring" "ratio" \
    "qemu-nbd writeback" "ratio"
row() { # label rw bs iodepth metric(iops|bw)
    local t q w
    t=$(run_fio "$uri_targetd" "$2" "$3" "$4")
    q=$(run_fio "$uri_qemu" "$2" "$3" "$4")
    w=$(run_fio "$uri_qemu_wb" "$2" "$3" "$4")
    python3 - "$1" "$5" "$t" "$q" "$w" <<'PY'
import sys
label, metric, t, q, w = sys.argv[1:]
t, q, w = ([float(x) for x in v.split()] for v in (t, q, w))
if metric == "iops":
    fmt = lambda v: "%.0f IOPS %.0f us" % (v[0], v[2])
    key = 0
else:
    fmt = lambda v: "%.0f MiB/s" % v[1]
    key = 1
print("%-22s %20s %20s %6.2fx %20s %6.2fx"
      % (label, fmt(t), fmt(q), t[key] / q[key], fmt(w), t[key] / w[key]))
PY
}
row "4 KiB randwrite QD1" randwrite 4k 1 iops
row "4 KiB randwrite QD32" randwrite 4k 32 iops
row "1 MiB seq write QD8" write 1M 8 bw
echo "(ratio = targetd / that qemu-nbd; latency = mean completion latency seen by fio; ${RUNTIME} s per point)"
