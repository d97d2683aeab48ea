#!/usr/bin/env bash
# Resync benchmark: a full resync of a volume of random data between two replicatords on
# loopback, side by side in the same run with nbdcopy copying the same data between the same
# kind of files through NBD (qemu-nbd on both ends) and with the raw read rate of the disk;
# then the time to resync 1%, 10% and 100% of the blocks dirtied while disconnected.
#
#   bash benches/resync.sh                 # SIZE_MIB=4096 (the issue's 4 GiB)
#   SIZE_MIB=1024 bash benches/resync.sh   # quicker
# Needs: qemu-utils, libnbd-bin, fio (scripts/deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-4096}
source benches/lib.sh
bench_need qemu-nbd nbdcopy nbdinfo fio python3
echo "bench: building (release)" >&2
cargo build --release --quiet -p replicator --bins
BIN=build/release
bench_init resync-bench
now() { date +%s.%N; }
mibs() { python3 -c "import sys; print('%.0f' % (float(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2]))))" "$@"; }
secs() { python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$@"; }

echo "bench: writing ${SIZE_MIB} MiB of random data" >&2
fio --name=fill --filename="$work/alpha.img" --rw=write --bs=1M --size="${SIZE_MIB}M" \
    --refill_buffers --ioengine=psync --output=/dev/null
cp --sparse=never "$work/alpha.img" "$work/src.img"
truncate -s "${SIZE_MIB}M" "$work/beta.img" "$work/dst.img"
sync

# Raw read rate of the source file, O_DIRECT.
t0=$(now); dd if="$work/src.img" of=/dev/null bs=4M iflag=direct status=none; t1=$(now)
raw=$(mibs "$SIZE_MIB" "$t0" "$t1")

# nbdcopy between two qemu-nbd exports of the same kind of files.
qemu-nbd -f raw -x s -b 127.0.0.1 -p 10841 -t -e 8 --cache=writeback "$work/src.img" 2>/dev/null & pids+=($!)
qemu-nbd -f raw -x d -b 127.0.0.1 -p 10842 -t -e 8 --cache=writeback "$work/dst.img" 2>/dev/null & pids+=($!)
bench_wait_uri nbd://127.0.0.1:10841/s; bench_wait_uri nbd://127.0.0.1:10842/d
t0=$(now); nbdcopy --flush nbd://127.0.0.1:10841/s nbd://127.0.0.1:10842/d; t1=$(now)
nbdcopy_rate=$(mibs "$SIZE_MIB" "$t0" "$t1")

# tandem: full resync alpha -> beta.
cat >"$work/tandem.conf" <<CONF
resource r0 {
    net { protocol C; }
    disk { c-plan-ahead 0; resync-rate 4G; }
    on alpha { disk $work/alpha.img; meta-disk internal; address 127.0.0.1:7900; export { nbd 127.0.0.1:10850; } }
    on beta  { disk $work/beta.img;  meta-disk internal; address 127.0.0.2:7900; export { nbd 127.0.0.2:10850; } }
}
CONF
for n in alpha beta; do
    "$BIN/replctl" -c "$work/tandem.conf" --node $n create-md --force r0 >/dev/null 2>&1
    "$BIN/replicatord" -c "$work/tandem.conf" --node $n --run-dir "$work/run-$n" 2>"$work/$n.log" & pids+=($!)
done
for n in alpha beta; do
    for _ in $(seq 100); do [ -S "$work/run-$n/replicatord.sock" ] && break; sleep 0.1; done
    "$BIN/replctl" --run-dir "$work/run-$n" up r0
done
ctl() { "$BIN/replctl" --run-dir "$work/run-$1" "${@:2}"; }
wait_synced() {
    for _ in $(seq 36000); do
        ctl beta status r0 | grep -q "disk:UpToDate" && ctl alpha status r0 | grep -q "replication:Established" && return 0
        sleep 0.05
    done
    echo "bench: resync did not finish" >&2; exit 1
}
for _ in $(seq 100); do ctl alpha status r0 | grep -q "connection:Connected" && break; sleep 0.1; done
t0=$(now); ctl alpha primary --force r0; wait_synced; t1=$(now)
full=$(mibs "$SIZE_MIB" "$t0" "$t1")
full_s=$(secs "$t0" "$t1")

declare -A dirty
for pct in 1 10 100; do
    ctl alpha disconnect r0
    bytes=$((SIZE_MIB * pct / 100))
    # Scattered 64 KiB writes covering pct% of the volume, through the Primary's export.
    fio --name=dirty --ioengine=nbd --uri=nbd://127.0.0.1:10850/r0 --rw=randwrite --bs=64k \
        --size=$((SIZE_MIB - 8))M --io_size=${bytes}M --norandommap=0 --randrepeat=0 --iodepth=16 \
        --output=/dev/null
    oos=$(ctl alpha status --json r0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["peers"][0]["out-of-sync-kib"]//1024)')
    t0=$(now); ctl alpha connect r0; wait_synced; t1=$(now)
    dirty[$pct]="$(secs "$t0" "$t1") s for ${oos} MiB"
done

printf '\n%-42s %10s\n' "full resync of ${SIZE_MIB} MiB of random data" "MiB/s"
printf '%-42s %10s\n' "raw read rate of the disk (dd O_DIRECT)" "$raw"
printf '%-42s %10s\n' "nbdcopy via qemu-nbd -> qemu-nbd" "$nbdcopy_rate"
printf '%-42s %10s  (%s s; %.2fx nbdcopy)\n' "tandem full resync (protocol C, loopback)" "$full" "$full_s" \
    "$(python3 -c "print($full / $nbdcopy_rate)")"
for pct in 1 10 100; do printf '%-42s %s\n' "resync after ${pct}% dirty" "${dirty[$pct]}"; done
