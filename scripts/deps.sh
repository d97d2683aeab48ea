#!/usr/bin/env bash
# Installs what tandem's demo and tests need on a fresh Debian machine. Idempotent: packages that
# are already installed are not touched, and apt-get update runs only when something is missing.
set -euo pipefail

# Debian packages: the real peers the end-to-end tests drive, and the tools they need.
TANDEM_APT_PACKAGES=(
    drbd-utils      # drbdmeta: metadata interop
    e2fsprogs       # mkfs.ext4, e2fsck
    util-linux      # losetup, mount, wipefs
    iproute2        # network namespaces, veth
    sbd             # ClusterLabs sbd: SBD interop
    snmpd           # net-snmp agent: the "switch" in the IF-MIB fencing tests
    fence-agents    # metadata.rng: the schema the fence agents' metadata must validate against
    libxml2-utils   # xmllint: validates that metadata
    libiscsi-dev    # libiscsi: SBD over iSCSI without a kernel initiator (fencing links it)
    tgt             # tgtd: the iSCSI target serving the SBD LUN in the tests
    libnbd-bin      # nbdinfo, nbdcopy, nbdfuse: NBD interop
    qemu-utils      # qemu-img, qemu-nbd: NBD interop and the NBD benchmark's peer
    fio             # fio --ioengine=nbd: NBD verify and benchmark
    fuse3           # fusermount3, /dev/fuse for nbdfuse
    mount           # mount, umount
    qemu-block-extra # qemu's iscsi:// driver: writes in the iSCSI benchmark (qemu-nbd serving a LUN)
    libiscsi-bin    # iscsi-ls, iscsi-inq, iscsi-readcapacity16, iscsi-test-cu, iscsi-perf: iSCSI interop
    resource-agents # ocf:heartbeat:Dummy, Filesystem, IPaddr2: clusterd's OCF runner against real agents
    iputils-arping  # arping: clusterd's gratuitous ARP for a floating IP
    tcpdump         # sees that gratuitous ARP on the peer's side in the floating-IP test
)

missing=()
for pkg in "${TANDEM_APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "deps: cargo is not installed; install Rust (rustup) first" >&2
    exit 1
fi
