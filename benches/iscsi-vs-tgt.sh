#!/usr/bin/env bash
# iSCSI macro benchmark: targetd (release build) against tgt's tgtd, each serving a file of the
# same size on the same filesystem, measured in the same run, as a table with ratios.
#
#   bash benches/iscsi-vs-tgt.sh              # RUNTIME=10 s per point, SIZE_MIB=1024
#   RUNTIME=30 SIZE_MIB=4096 DIR=/srv bash benches/iscsi-vs-tgt.sh
#
# Reads go through libiscsi's own `iscsi-perf` (READ16, sequential 128 KiB at QD16 and random
# 4 KiB at QD32). libiscsi ships no write benchmark, so writes go through fio's nbd engine via
# `qemu-nbd` serving the `iscsi://` URL (qemu's libiscsi driver): the same extra hop for both
# targets, so the ratio still compares the targets. Both targets write through the page cache
# (tgt's default rdwr backing store, targetd's io_uring without O_DIRECT). The files are written
# out with zeroes first, so neither target pays for allocation.
# Needs: libiscsi-bin, tgt, qemu-utils, qemu-block-extra, fio, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-10}
SIZE_MIB=${SIZE_MIB:-1024}
DIR=${DIR:-}
PORT_OURS=${PORT_OURS:-3270}
PORT_TGT=${PORT_TGT:-3271}
PORT_NBD=${PORT_NBD:-10830}
TGT_CONTROL=${TGT_CONTROL:-7731}

for t in iscsi-perf tgtd tgtadm qemu-nbd fio nbdinfo python3; do
    command -v "$t" >/dev/null || { echo "bench: $t is missing (bash scripts/deps.sh; apt-get install qemu-block-extra)" >&2; exit 1; }
done

echo "bench: building targetd (release)" >&2
cargo build --release --quiet -p target --bin targetd
TARGETD=build/release/targetd

work=$(mktemp -d -p "${DIR:-${TMPDIR:-/tmp}}" iscsi-bench.XXXXXX)
pids=()
nbd_pid=
tgtd_pid=
cleanup() {
    [ -n "$nbd_pid" ] && kill "$nbd_pid" 2>/dev/null || true
    # tgtd ignores SIGTERM (it wants `tgtadm --op delete --mode system`).
    [ -n "$tgtd_pid" ] && kill -KILL "$tgtd_pid" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -f "/var/run/tgtd/socket.$TGT_CONTROL" "/var/run/tgtd/socket.$TGT_CONTROL.lock"
    rm -rf "$work"
}
trap cleanup EXIT

echo "bench: writing two ${SIZE_MIB} MiB files in $work" >&2
for f in ours.img tgt.img; do
    dd if=/dev/zero of="$work/$f" bs=1M count="$SIZE_MIB" status=none
done
sync

"$TARGETD" --run-dir "$work/run" --iscsi "127.0.0.1:$PORT_OURS" "$work/ours.img" 2>"$work/targetd.log" &
pids+=($!)
tgtd -f -C "$TGT_CONTROL" --iscsi "portal=127.0.0.1:$PORT_TGT" >"$work/tgtd.log" 2>&1 &
tgtd_pid=$!
pids+=($!)
tgtadm_() { tgtadm -C "$TGT_CONTROL" --lld iscsi "$@"; }
for _ in $(seq 100); do tgtadm_ --op show --mode sys >/dev/null 2>&1 && break; sleep 0.1; done
tgtadm_ --op new --mode target --tid 1 -T iqn.2026-11.org.tandem:tgt.img
tgtadm_ --op new --mode logicalunit --tid 1 --lun 1 -b "$work/tgt.img"
tgtadm_ --op bind --mode target --tid 1 -I ALL

url_ours="iscsi://127.0.0.1:$PORT_OURS/iqn.2026-11.org.tandem:ours.img/0"
url_tgt="iscsi://127.0.0.1:$PORT_TGT/iqn.2026-11.org.tandem:tgt.img/1"
for _ in $(seq 100); do iscsi-inq "$url_ours" >/dev/null 2>&1 && break; sleep 0.1; done

# iscsi-perf URL BLOCKS QD [-r] -> MiB/s and IOPS from its "iops average" line
perf() {
    local url=$1 blocks=$2 qd=$3 extra=${4:-}
    # shellcheck disable=SC2086
    iscsi-perf -t "$RUNTIME" -b "$blocks" -m "$qd" $extra "$url" 2>&1 | tr '\r' '\n' |
        python3 -c '
import re, sys
text = sys.stdin.read()
m = re.findall(r"iops average (\d+) \((\d+) MB/s\)\s*$", text, re.M)
if not m:
    sys.exit("iscsi-perf printed no average:\n" + text[-2000:])
iops, mbs = m[-1]
print(iops, mbs)
'
}

# fio through qemu-nbd serving URL -> "iops MiB/s"
fio_write() {
    local url=$1 rw=$2 bs=$3 qd=$4
    qemu-nbd -f raw -x bench -b 127.0.0.1 -p "$PORT_NBD" -t -e 4 "$url" 2>"$work/qemu-nbd.log" &
    nbd_pid=$!
    for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$PORT_NBD/bench" >/dev/null 2>&1 && break; sleep 0.1; done
    fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:$PORT_NBD/bench" --rw="$rw" --bs="$bs" \
        --iodepth="$qd" --size="$((SIZE_MIB / 2))M" --time_based --runtime="$RUNTIME" \
        --output-format=json 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):])
w = j["jobs"][0]["write"]
print("%.0f %.0f" % (w["iops"], w["bw"] / 1024))
'
    kill "$nbd_pid"; wait "$nbd_pid" 2>/dev/null || true; nbd_pid=
}

rows=()
measure() {
    local label=$1; shift
    local a b
    a=$("$@" "$url_ours")
    b=$("$@" "$url_tgt")
    rows+=("$label|$a|$b")
}
seq_read() { perf "$1" 256 16; }
rand_read() { perf "$1" 8 32 -r; }
seq_write() { fio_write "$1" write 1M 8; }
rand_write() { fio_write "$1" randwrite 4k 32; }

echo "bench: $RUNTIME s per point" >&2
measure "sequential read 128 KiB QD16 (iscsi-perf)" seq_read
measure "random read 4 KiB QD32 (iscsi-perf)" rand_read
measure "sequential write 1 MiB QD8 (fio via qemu-nbd)" seq_write
measure "random write 4 KiB QD32 (fio via qemu-nbd)" rand_write

printf '\n%-48s %10s %9s %10s %9s %7s\n' "workload" "ours IOPS" "ours MiB/s" "tgt IOPS" "tgt MiB/s" "ratio"
for r in "${rows[@]}"; do
    IFS='|' read -r label a b <<<"$r"
    read -r ai am <<<"$a"
    read -r bi bm <<<"$b"
    ratio=$(python3 -c "print('%.2f' % ($ai / $bi if $bi else float('nan')))")
    printf '%-48s %10s %9s %10s %9s %7s\n' "$label" "$ai" "$am" "$bi" "$bm" "$ratio"
done
echo "(ratio = ours / tgt IOPS; above 1.00 is faster than tgt)"
