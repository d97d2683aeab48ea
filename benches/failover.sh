#!/usr/bin/env bash
# Failover time of clusterd (issue 8's benchmark): the median of RUNS pulled-plug runs.
#
#   bash benches/failover.sh            # RUNS=10
#
# ifmib: the e2e test `pulled_plug_the_client_writes_through_the_vip...` (tests/e2e/clusterd.rs)
# cuts alpha's switch port and kills its processes while a client writes through the VIP; the
# time is from the cut to the client's first acknowledged write through the VIP on beta (token
# 1000 ms, priority delay 2 s, IF-MIB fence, promotion, VIP).
# sbd: `sbd_poison_pill_kills_alpha...`: from alpha's death (its watchdog fired on a poison pill)
# to beta's replica Primary (token, priority delay 2 s + msgwait 3 s, SBD fence waiting msgwait).
# Pacemaker + Corosync with their defaults take 10-20 s for the same sequence (token 3000 ms,
# consensus, stonith-timeout, the DC's transition); it is not installed here, so there is no
# measured column for it.
# Needs root (network namespaces), snmpd, qemu-utils, iputils-arping (scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
cargo build -q --workspace --bins
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
run() { # $1 test filter, $2 line prefix
    for _ in $(seq "$RUNS"); do
        cargo test -q -p tandem-tests --test clusterd "$1" -- --nocapture 2>&1 |
            sed -n "s/^$2 \([0-9.]*\)\(m\?s\) .*/\1 \2/p" |
            awk '{print ($2 == "ms") ? $1 / 1000 : $1}'
    done
}
ifmib=$(run pulled_plug_the "pulled plug: first acknowledged write through the VIP" | median)
sbd=$(run sbd_poison_pill "sbd: beta Primary" | median)
printf '%-8s %-48s %s\n' fencing "measured" "median of $RUNS (s)"
printf '%-8s %-48s %s\n' ifmib "cut -> first client write through the VIP" "$ifmib"
printf '%-8s %-48s %s\n' sbd "alpha dead -> r0 Primary on beta" "$sbd"
