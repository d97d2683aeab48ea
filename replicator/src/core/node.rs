//! The state machine of one replicated resource on one node.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use bytes::Bytes;

use super::al::{ActivityLog, EXTENT_BYTES};
use super::bitmap::{Bitmap, BLOCK_BYTES};
use super::uuid::{self, SyncDecision, Uuids};
use crate::config::Protocol;
use crate::digest::{block_digests, digest, digest_len};
use crate::md::{flags, UUID_JUST_CREATED};
use crate::wire::{data_flags, uuid_flags, Packet, WireDisk, WireRole};

/// Identifies a client or admin request; chosen by the driver, echoed in the reply.
pub type ReqId = u64;
/// Identifies a local disk IO; chosen by the core.
pub type IoId = u64;

/// errno values the core reports to clients (NBD and SCSI map them).
pub mod errno {
    /// I/O error.
    pub const EIO: i32 = 5;
    /// Not permitted (wrong role).
    pub const EPERM: i32 = 1;
    /// Beyond the end of the device.
    pub const ENOSPC: i32 = 28;
    /// Shutting down.
    pub const ESHUTDOWN: i32 = 108;
}

/// Role, as in DRBD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves the device read-write.
    Primary,
    /// Receives the Primary's writes.
    Secondary,
}

/// Disk state, as in DRBD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskState {
    /// No disk attached.
    Diskless,
    /// Being attached.
    Attaching,
    /// Partly synced.
    Inconsistent,
    /// Consistent, but the peer is known to be newer.
    Outdated,
    /// Not known (peer only).
    DUnknown,
    /// Consistent, freshness not known.
    Consistent,
    /// The newest data.
    UpToDate,
}

/// Connection state, as in DRBD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Not connected and not trying to.
    StandAlone,
    /// Trying to connect.
    Connecting,
    /// Connected.
    Connected,
}

/// Replication state, as in DRBD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplState {
    /// Not connected.
    Off,
    /// Connected, exchanging state.
    WFReportParams,
    /// Exchanging bitmaps before a resync.
    WFBitMap,
    /// Replicating.
    Established,
    /// Sending resync data.
    SyncSource,
    /// Receiving resync data.
    SyncTarget,
    /// Running online verify (asking the peer for digests).
    VerifyS,
    /// Answering the peer's online verify.
    VerifyT,
}

macro_rules! drbd_names {
    ($ty:ty { $($v:ident),+ }) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$v => stringify!($v)),+ })
            }
        }
    };
}
drbd_names!(Role { Primary, Secondary });
drbd_names!(DiskState {
    Diskless,
    Attaching,
    Inconsistent,
    Outdated,
    DUnknown,
    Consistent,
    UpToDate
});
drbd_names!(ConnState {
    StandAlone,
    Connecting,
    Connected
});
drbd_names!(ReplState {
    Off,
    WFReportParams,
    WFBitMap,
    Established,
    SyncSource,
    SyncTarget,
    VerifyS,
    VerifyT
});

impl DiskState {
    fn to_wire(self) -> WireDisk {
        match self {
            DiskState::Diskless => WireDisk::Diskless,
            DiskState::Attaching => WireDisk::Attaching,
            DiskState::Inconsistent => WireDisk::Inconsistent,
            DiskState::Outdated => WireDisk::Outdated,
            DiskState::DUnknown => WireDisk::DUnknown,
            DiskState::Consistent => WireDisk::Consistent,
            DiskState::UpToDate => WireDisk::UpToDate,
        }
    }
    fn from_wire(d: WireDisk) -> DiskState {
        match d {
            WireDisk::Diskless => DiskState::Diskless,
            WireDisk::Attaching => DiskState::Attaching,
            WireDisk::Inconsistent => DiskState::Inconsistent,
            WireDisk::Outdated => DiskState::Outdated,
            WireDisk::DUnknown => DiskState::DUnknown,
            WireDisk::Consistent => DiskState::Consistent,
            WireDisk::UpToDate => DiskState::UpToDate,
        }
    }
}

/// The persistent part of the state (what the superblock holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MdState {
    /// Generation UUIDs.
    pub uuids: Uuids,
    /// `MDF_*` flags.
    pub flags: u32,
    /// The size last agreed with a peer, in sectors (0: never connected).
    pub la_size_sect: u64,
}

/// Settings the core needs, from the validated config.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name.
    pub name: String,
    /// Replication protocol.
    pub protocol: Protocol,
    /// Usable bytes of the backing disk (data area).
    pub backing_bytes: u64,
    /// Most bytes of application writes in flight to the peer before new writes wait.
    pub max_in_flight_bytes: u64,
    /// Writes per epoch before a barrier.
    pub max_epoch_size: u32,
    /// Bytes of the peer's writes this node has in flight to its disk at once (`max-buffers`,
    /// as DRBD bounds its receiver); further ones wait in the receive queue, and the daemon
    /// stops reading the data socket while that queue holds this much (TCP pushes back).
    pub max_rx_bytes: u64,
    /// Idle time before a ping.
    pub ping_int_ms: u64,
    /// A ping must be answered within this.
    pub ping_timeout_ms: u64,
    /// An acknowledgement must arrive within this (times ko-count).
    pub ack_timeout_ms: u64,
    /// Flush the backing disk at barriers and client flushes.
    pub disk_flushes: bool,
    /// Resync bytes in flight: `c-fill-target` with the dynamic controller, a fixed window
    /// without it.
    pub resync_window_bytes: u64,
    /// Largest resync request.
    pub resync_request_bytes: u64,
    /// Resync rate limit (c-max-rate, or resync-rate when c-plan-ahead is 0), bytes per second.
    pub resync_rate_bytes_per_s: u64,
    /// `c-min-rate`: while application IO is active the resync slows to this (0: never).
    pub resync_min_rate_bytes_per_s: u64,
    /// `c-delay-target` when `c-fill-target` is 0: keep this much of the measured rate in
    /// flight (milliseconds); 0 when not used.
    pub resync_delay_target_ms: u64,
    /// `allow-two-primaries`.
    pub allow_two_primaries: bool,
    /// `data-integrity-alg`: every Data and RsDataReply is preceded by its digest.
    pub integrity: Option<crate::config::DigestAlg>,
    /// `al-extents`: hot 4 MiB extents in the activity log.
    pub al_extents: u32,
    /// `verify-alg`.
    pub verify_alg: Option<crate::config::DigestAlg>,
    /// `csums-alg`: the SyncTarget sends digests and only differing blocks are copied.
    pub csums_alg: Option<crate::config::DigestAlg>,
    /// The peer's node name (breaks ties when both sides have out-of-sync bits).
    pub peer_name: String,
    /// `after-sb-0pri`.
    pub after_sb_0pri: crate::config::AfterSb0Pri,
    /// `after-sb-1pri`.
    pub after_sb_1pri: crate::config::AfterSb1Pri,
    /// `after-sb-2pri`.
    pub after_sb_2pri: crate::config::AfterSb2Pri,
    /// `always-asbp`: apply the policies even when the only common ancestor is in the history.
    pub always_asbp: bool,
    /// `fencing`: what happens when a Primary loses its peer.
    pub fencing: crate::config::FencingPolicy,
    /// `rr-conflict`: a Primary that would become SyncTarget.
    pub rr_conflict: crate::config::RrConflict,
}

/// Online-verify requests in flight.
const OV_WINDOW: usize = 64;

/// Transactions in the activity-log ring (one stripe of 8 blocks, as create-md writes it).
pub const AL_RING_SLOTS: u32 = 8;

/// Admin commands (from replctl through the driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Promote; `force` makes a non-UpToDate disk UpToDate (initial sync).
    Primary {
        /// `--force`.
        force: bool,
    },
    /// Demote.
    Secondary,
    /// Start connecting to the peer.
    Connect {
        /// `--discard-my-data`.
        discard_my_data: bool,
    },
    /// Drop the connection and stay StandAlone.
    Disconnect,
    /// Start a new data generation with a clear bitmap (skip the initial sync of two
    /// just-created, identical disks).
    NewCurrentUuidClearBitmap,
    /// Compare every block with the peer's (`verify-alg`) and mark differences out of sync.
    Verify,
    /// Make this node's disk Inconsistent: a full sync from the peer.
    Invalidate,
    /// Make the peer's disk Inconsistent: a full sync to the peer.
    InvalidateRemote,
    /// Mark this Secondary's disk Outdated: it cannot be promoted (without --force).
    Outdate,
}

/// What happens to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An admin command.
    Command {
        /// Reply id.
        req: ReqId,
        /// The command.
        command: Command,
    },
    /// A client write (Primary only). `offset` and `data.len()` are multiples of 512.
    Write {
        /// Reply id.
        req: ReqId,
        /// Byte offset.
        offset: u64,
        /// The data.
        data: Bytes,
        /// Stable before the reply (and everything completed before it).
        fua: bool,
    },
    /// A client flush.
    Flush {
        /// Reply id.
        req: ReqId,
    },
    /// A local IO finished; reads carry their data.
    LocalDone {
        /// The IO.
        io: IoId,
        /// Data of a read, or the errno.
        result: Result<Option<Bytes>, i32>,
    },
    /// Both sockets to the peer are up and authenticated.
    PeerConnected {
        /// Connection generation; events of older generations are ignored.
        gen: u64,
    },
    /// The connection broke.
    PeerLost {
        /// Its generation.
        gen: u64,
        /// Why, for the log.
        reason: String,
    },
    /// A packet from the peer (either socket).
    Packet {
        /// Connection generation.
        gen: u64,
        /// The packet.
        packet: Packet,
    },
    /// Protocol A: a Data packet is in the socket's send buffer.
    Sent {
        /// Connection generation.
        gen: u64,
        /// The write's sequence number.
        seq: u64,
    },
    /// Time passes.
    Tick,
    /// The `fence-peer` handler exited with this code (DRBD's: 3 peer Inconsistent, 4 peer
    /// Outdated, 5 peer unreachable, 6 peer is Primary: outdate myself, 7 peer fenced).
    FencePeerDone {
        /// The exit code (-1 when it could not run or was not configured).
        code: i32,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write to the backing disk; answer with [`Event::LocalDone`].
    LocalWrite {
        /// The IO.
        io: IoId,
        /// Byte offset.
        offset: u64,
        /// Data.
        data: Bytes,
        /// Stable before done (RWF_DSYNC / fdatasync).
        fua: bool,
    },
    /// Read from the backing disk.
    LocalRead {
        /// The IO.
        io: IoId,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// fdatasync the backing disk (ordered after every write submitted before it).
    LocalFlush {
        /// The IO.
        io: IoId,
    },
    /// Send a packet to the peer (the driver picks the socket by packet type).
    Send(Packet),
    /// Close the connection (no [`Event::PeerLost`] is expected for it).
    DropConnection {
        /// Why, for the log.
        reason: String,
    },
    /// Reply to a client write or flush.
    Complete {
        /// The request.
        req: ReqId,
        /// Ok or an errno.
        result: Result<(), i32>,
    },
    /// Reply to an admin command.
    Reply {
        /// The request.
        req: ReqId,
        /// Ok or a one-line error.
        result: Result<(), String>,
    },
    /// Write the superblock (synchronously, before the next action).
    WriteMd(MdState),
    /// Write the bitmap to disk (synchronously, before the next action).
    WriteBitmap,
    /// Write an activity-log transaction into ring slot `index` and make it stable; answer
    /// with [`Event::LocalDone`].
    WriteAl {
        /// The IO.
        io: IoId,
        /// Ring slot.
        index: u32,
        /// The encoded 4 KiB transaction.
        block: Bytes,
    },
    /// A state change worth telling `replctl events` and the log.
    Notify(String),
    /// Run the `fence-peer` handler and answer with [`Event::FencePeerDone`].
    FencePeer,
    /// Run the configured handler (`split-brain`, `pri-lost-after-sb`) if there is one.
    RunHandler {
        /// The handler's DRBD name.
        name: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetWait {
    /// Not replicated (disconnected): out of sync in the bitmap.
    None,
    Sent,
    RecvAck,
    WriteAck,
    Done,
}

#[derive(Debug)]
struct AppWrite {
    req: ReqId,
    offset: u64,
    data: Bytes,
    fua: bool,
    local_done: bool,
    local_err: Option<i32>,
    net: NetWait,
    sent_at_ms: u64,
    started: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum IoPurpose {
    AppWrite {
        seq: u64,
    },
    PeerWrite {
        seq: u64,
        epoch: u32,
        offset: u64,
        len: u64,
        /// The connection it arrived on: acks and epoch counts go only to that one.
        gen: u64,
    },
    BarrierFlush {
        nr: u32,
    },
    ClientFlush {
        flush: u64,
    },
    RsRead {
        id: u64,
        offset: u64,
        len: u32,
        csum: Option<Vec<u8>>,
    },
    RsWrite {
        offset: u64,
        len: u64,
        /// The connection whose resync it belongs to.
        gen: u64,
    },
    ResyncDoneFlush,
    AlTransaction,
    /// The flush before an activity-log transaction that evicts extents.
    AlEvictFlush,
    BitmapFlush,
    CsumRead {
        id: u64,
        offset: u64,
        len: u32,
    },
    OvServe {
        id: u64,
        offset: u64,
        len: u32,
    },
    OvRead {
        id: u64,
        offset: u64,
        len: u32,
        peer: Vec<u8>,
    },
}

#[derive(Debug)]
enum Blocked {
    AppWrite {
        seq: u64,
    },
    PeerWrite {
        seq: u64,
        epoch: u32,
        offset: u64,
        data: Bytes,
        fua: bool,
        gen: u64,
    },
    RsRead {
        id: u64,
        offset: u64,
        len: u32,
        csum: Option<Vec<u8>>,
    },
    RsWrite {
        offset: u64,
        data: Bytes,
        gen: u64,
    },
}

impl Blocked {
    fn range(&self, writes: &BTreeMap<u64, AppWrite>) -> (u64, u64) {
        match self {
            Blocked::AppWrite { seq } => {
                let w = &writes[seq];
                (w.offset, w.data.len() as u64)
            }
            Blocked::PeerWrite { offset, data, .. } | Blocked::RsWrite { offset, data, .. } => {
                (*offset, data.len() as u64)
            }
            Blocked::RsRead { offset, len, .. } => (*offset, u64::from(*len)),
        }
    }
}

#[derive(Debug)]
struct TlEpoch {
    nr: u32,
    ranges: Vec<(u64, u64)>,
}

#[derive(Debug, Default)]
struct RxEpoch {
    pending: u32,
    writes: u32,
    barrier: bool,
    flushing: bool,
}

#[derive(Debug)]
struct ClientFlush {
    req: ReqId,
    local_pending: bool,
    barrier: Option<u32>,
    /// A FUA write waiting for this flush: its completion is this flush's.
    from_write: bool,
}

#[derive(Debug, Default)]
struct Peer {
    role: Option<Role>,
    disk: Option<DiskState>,
    uuids: Option<(Uuids, u64, u32)>,
    sizes: Option<(u64, u64, u64)>,
    bitmap_done: bool,
}

/// Resync progress (SyncTarget drives; SyncSource counts acks).
#[derive(Debug, Clone)]
struct Resync {
    cursor: u64,
    in_flight: HashMap<u64, (u64, u32)>,
    in_flight_bytes: u64,
    total_blocks: u64,
    started_ms: u64,
    /// Tokens for the rate limit, in bytes.
    budget: f64,
    last_refill_ms: u64,
    /// `(time, remaining blocks)` samples for the rate.
    samples: VecDeque<(u64, u64)>,
    finishing: bool,
    /// SyncSource: the target said it is Inconsistent (syncing) since this sync began.
    peer_started: bool,
}

/// Online verify progress (VerifyS).
#[derive(Debug, Clone)]
struct Verify {
    cursor: u64,
    in_flight: HashMap<u64, (u64, u32)>,
    total_blocks: u64,
    done_blocks: u64,
    found_blocks: u64,
    started_ms: u64,
    samples: VecDeque<(u64, u64)>,
}

/// Progress of a resync, for status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Percent done.
    pub done_percent: f64,
    /// Recent rate, KiB/s.
    pub rate_kib_s: u64,
    /// Estimated seconds left.
    pub eta_s: u64,
}

/// A snapshot for `replctl status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Role.
    pub role: Role,
    /// Disk state.
    pub disk: DiskState,
    /// Connection.
    pub connection: ConnState,
    /// Replication.
    pub replication: ReplState,
    /// The peer's role, if known.
    pub peer_role: Option<Role>,
    /// The peer's disk, if known.
    pub peer_disk: DiskState,
    /// Out-of-sync KiB.
    pub out_of_sync_kib: u64,
    /// Resync progress while syncing.
    pub progress: Option<Progress>,
    /// Exported size in bytes.
    pub size_bytes: u64,
    /// Generation UUIDs.
    pub uuids: Uuids,
    /// Why the last connection ended, if it did.
    pub last_error: Option<String>,
    /// KiB out of sync the last online verify found.
    pub last_verify_kib: Option<u64>,
    /// The last split brain and which policy decided what.
    pub split_brain: Option<String>,
}

/// One resource on one node.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    md: MdState,
    role: Role,
    disk: DiskState,
    conn: ConnState,
    repl: ReplState,
    gen: u64,
    peer: Peer,
    bitmap: Bitmap,
    rng: u64,
    next_io: IoId,
    next_seq: u64,
    next_id: u64,
    next_flush: u64,
    ios: HashMap<IoId, IoPurpose>,
    writes: BTreeMap<u64, AppWrite>,
    in_flight_bytes: u64,
    waiting: VecDeque<u64>,
    active: Vec<(u64, u64)>,
    blocked: VecDeque<Blocked>,
    cur_epoch: u32,
    cur_epoch_writes: u32,
    epoch_closed: bool,
    tl: VecDeque<TlEpoch>,
    barrier_acked: u32,
    last_barrier_sent: u32,
    flushes: BTreeMap<u64, ClientFlush>,
    rx_epochs: BTreeMap<u32, RxEpoch>,
    rx_queue: VecDeque<Blocked>,
    /// Bytes of data in `rx_queue`.
    rx_queued_bytes: u64,
    /// Bytes of the peer's writes submitted and not yet completed (max_rx_bytes bounds it).
    rx_active_bytes: u64,
    al: ActivityLog,
    bitmap_flush_pending: bool,
    /// Resync writes completed (their bits cleared in memory) that no flush has made stable
    /// yet, oldest first: the bitmap on disk keeps their bits set, so a crash before the flush
    /// resyncs them again instead of trusting data the disk's cache lost.
    rs_unstable: Vec<(u64, u64)>,
    /// How many of `rs_unstable` the flush in progress covers.
    rs_flushing: usize,
    /// An evicting activity-log transaction waiting for its flush: (number, block).
    al_evicting: Option<(u32, Bytes)>,
    /// Writes whose extents wait for an activity-log transaction.
    al_wait: VecDeque<Blocked>,
    /// After the bitmap exchange: become SyncSource (true) or SyncTarget (false).
    pending_sync: Option<bool>,
    /// A promotion waiting for the connected peer's agreement: (command, force, nonce).
    promoting: Option<(ReqId, bool, u64)>,
    resync: Option<Resync>,
    /// Online verify in progress (VerifyS).
    ov: Option<Verify>,
    /// KiB found out of sync by the last online verify.
    last_verify: Option<u64>,
    /// The last split brain and what decided it.
    split_brain: Option<String>,
    /// resource-and-stonith: new application IO waits until the fence-peer handler answers.
    frozen: bool,
    /// The fence-peer handler is running.
    fencing_peer: bool,
    /// VerifyT: when the last request arrived.
    ov_t_last_ms: u64,
    last_rx_ms: u64,
    ping_sent_ms: Option<u64>,
    discard_my_data: bool,
    /// When application IO was last seen (client writes, or the peer's writes).
    last_app_io_ms: Option<u64>,
    /// The `DataDigest` waiting for its Data or RsDataReply.
    pending_digest: Option<(u64, Vec<u8>)>,
    last_error: Option<String>,
    out: Vec<Action>,
    now_ms: u64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

impl Node {
    /// A node attached to its disk. `seed` makes UUID generation deterministic under test.
    ///
    /// `hot_extents` are the extents the activity log recovered after a crash: they are marked
    /// out of sync. A node that was Primary when it went down uncleanly is a crashed Primary.
    pub fn new(
        cfg: NodeConfig,
        mut md: MdState,
        bitmap_words: &[u64],
        hot_extents: &[u32],
        seed: u64,
    ) -> Node {
        if md.flags & flags::AL_CLEAN == 0 && md.flags & flags::PRIMARY_IND != 0 {
            md.flags |= flags::CRASHED_PRIMARY;
        }
        // The activity log is in use from now on; a clean `down` sets AL_CLEAN again.
        md.flags &= !(flags::AL_CLEAN | flags::PRIMARY_IND);
        let f = md.flags;
        let disk = if f & flags::CONSISTENT == 0 {
            DiskState::Inconsistent
        } else if f & flags::WAS_UP_TO_DATE == 0 {
            DiskState::Outdated
        } else if f & flags::PEER_OUT_DATED != 0 {
            DiskState::UpToDate
        } else {
            DiskState::Consistent
        };
        let mut bitmap = Bitmap::from_words(cfg.backing_bytes, bitmap_words);
        for &e in hot_extents {
            let start = u64::from(e) * EXTENT_BYTES;
            if start < cfg.backing_bytes {
                bitmap.set_range(start, EXTENT_BYTES.min(cfg.backing_bytes - start));
            }
        }
        Node {
            md,
            role: Role::Secondary,
            disk,
            conn: ConnState::StandAlone,
            repl: ReplState::Off,
            gen: 0,
            peer: Peer::default(),
            bitmap,
            rng: seed,
            next_io: 1,
            next_seq: 1,
            next_id: 1,
            next_flush: 1,
            ios: HashMap::new(),
            writes: BTreeMap::new(),
            in_flight_bytes: 0,
            waiting: VecDeque::new(),
            active: Vec::new(),
            blocked: VecDeque::new(),
            cur_epoch: 1,
            cur_epoch_writes: 0,
            epoch_closed: false,
            tl: VecDeque::new(),
            barrier_acked: 0,
            last_barrier_sent: 0,
            flushes: BTreeMap::new(),
            rx_epochs: BTreeMap::new(),
            rx_queue: VecDeque::new(),
            rx_queued_bytes: 0,
            rx_active_bytes: 0,
            al: ActivityLog::new(cfg.al_extents),
            bitmap_flush_pending: false,
            rs_unstable: Vec::new(),
            rs_flushing: 0,
            al_evicting: None,
            al_wait: VecDeque::new(),
            pending_sync: None,
            promoting: None,
            resync: None,
            ov: None,
            last_verify: None,
            split_brain: None,
            frozen: false,
            fencing_peer: false,
            ov_t_last_ms: 0,
            last_rx_ms: 0,
            ping_sent_ms: None,
            discard_my_data: false,
            last_app_io_ms: None,
            pending_digest: None,
            last_error: None,
            out: Vec::new(),
            now_ms: 0,
            cfg,
        }
    }

    /// Role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Disk state.
    pub fn disk(&self) -> DiskState {
        self.disk
    }
    /// Connection state.
    pub fn connection(&self) -> ConnState {
        self.conn
    }
    /// The persistent state.
    pub fn md(&self) -> MdState {
        self.md
    }
    /// The bitmap words, for writing to disk: the in-memory bitmap with the bits of resync
    /// writes that are not yet stable still set.
    pub fn bitmap_words(&self) -> std::borrow::Cow<'_, [u64]> {
        if self.rs_unstable.is_empty() {
            return std::borrow::Cow::Borrowed(self.bitmap.words());
        }
        let mut on_disk = self.bitmap.clone();
        for &(offset, len) in &self.rs_unstable {
            on_disk.set_range(offset, len);
        }
        std::borrow::Cow::Owned(on_disk.words().to_vec())
    }

    /// Flushes the backing disk so the completed resync writes become stable, then writes the
    /// bitmap without their bits.
    fn flush_resync_writes(&mut self) {
        if !self.bitmap_flush_pending {
            self.bitmap_flush_pending = true;
            self.rs_flushing = self.rs_unstable.len();
            let io = self.io(IoPurpose::BitmapFlush);
            self.out.push(Action::LocalFlush { io });
        }
    }
    /// A one-line summary of the queues, for a simulator's failure report.
    pub fn debug_queues(&self) -> String {
        let rs = self.resync.as_ref().map(|r| {
            format!(
                "resync cursor {} in flight {} ({} bytes) finishing {} peer_started {}",
                r.cursor,
                r.in_flight.len(),
                r.in_flight_bytes,
                r.finishing,
                r.peer_started
            )
        });
        format!(
            "active {:?} blocked {} al_wait {} rx_queue {} ios {} al {:?} writes {} flushes {} {rs:?}",
            self.active,
            self.blocked.len(),
            self.al_wait.len(),
            self.rx_queue.len(),
            self.ios.len(),
            self.al,
            self.writes.len(),
            self.flushes.len(),
        )
    }
    /// True while the driver should keep (re)connecting.
    pub fn wants_connection(&self) -> bool {
        self.conn == ConnState::Connecting
    }
    /// The current connection generation.
    pub fn generation(&self) -> u64 {
        self.gen
    }
    /// Writes not yet completed to clients, and flushes.
    pub fn busy(&self) -> bool {
        !self.writes.is_empty() || !self.flushes.is_empty()
    }

    /// The size the device exports, bytes.
    pub fn size_bytes(&self) -> u64 {
        if self.md.la_size_sect > 0 {
            (self.md.la_size_sect * 512).min(self.cfg.backing_bytes)
        } else {
            self.cfg.backing_bytes
        }
    }

    /// A status snapshot.
    pub fn status(&self, now_ms: u64) -> Status {
        let progress = self.resync.as_ref().map(|rs| {
            let left = self.bitmap.count();
            let total = rs.total_blocks.max(1);
            let done = total.saturating_sub(left);
            let rate_blocks_s = match (rs.samples.front(), rs.samples.back()) {
                (Some(&(t0, l0)), Some(&(t1, l1))) if t1 > t0 => {
                    (l0.saturating_sub(l1)) as f64 * 1000.0 / (t1 - t0) as f64
                }
                _ => {
                    let dt = now_ms.saturating_sub(rs.started_ms).max(1);
                    done as f64 * 1000.0 / dt as f64
                }
            };
            // Rates and ETAs are display values; saturating float-to-int casts are what we want.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let rate_kib_s = (rate_blocks_s * 4.0) as u64;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let eta_s = if rate_blocks_s > 0.0 {
                (left as f64 / rate_blocks_s).ceil() as u64
            } else {
                0
            };
            Progress {
                done_percent: done as f64 * 100.0 / total as f64,
                rate_kib_s,
                eta_s,
            }
        });
        let progress = progress.or_else(|| {
            let ov = self.ov.as_ref()?;
            let total = ov.total_blocks.max(1);
            let rate_blocks_s = match (ov.samples.front(), ov.samples.back()) {
                (Some(&(t0, d0)), Some(&(t1, d1))) if t1 > t0 => {
                    (d1 - d0) as f64 * 1000.0 / (t1 - t0) as f64
                }
                _ => {
                    ov.done_blocks as f64 * 1000.0
                        / now_ms.saturating_sub(ov.started_ms).max(1) as f64
                }
            };
            let left = total.saturating_sub(ov.done_blocks);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (rate_kib_s, eta_s) = (
                (rate_blocks_s * 4.0) as u64,
                if rate_blocks_s > 0.0 {
                    (left as f64 / rate_blocks_s).ceil() as u64
                } else {
                    0
                },
            );
            Some(Progress {
                done_percent: ov.done_blocks as f64 * 100.0 / total as f64,
                rate_kib_s,
                eta_s,
            })
        });
        Status {
            role: self.role,
            disk: self.disk,
            connection: self.conn,
            replication: self.repl,
            peer_role: self.peer.role,
            peer_disk: self.peer.disk.unwrap_or(DiskState::DUnknown),
            out_of_sync_kib: self.bitmap.count() * (BLOCK_BYTES / 1024),
            progress,
            size_bytes: self.size_bytes(),
            uuids: self.md.uuids,
            last_error: self.last_error.clone(),
            last_verify_kib: self.last_verify,
            split_brain: self.split_brain.clone(),
        }
    }

    /// Handles one event at time `now_ms`; returns what to do, in order.
    pub fn apply(&mut self, event: Event, now_ms: u64) -> Vec<Action> {
        self.now_ms = now_ms;
        match event {
            Event::Command {
                req,
                command: Command::Primary { force },
            } if self.role == Role::Secondary
                && self.conn == ConnState::Connected
                && !self.cfg.allow_two_primaries =>
            {
                self.ask_to_promote(req, force);
            }
            Event::Command { req, command } => {
                let result = self.command(command);
                self.out.push(Action::Reply { req, result });
            }
            Event::Write {
                req,
                offset,
                data,
                fua,
            } => self.client_write(req, offset, data, fua),
            Event::Flush { req } => self.client_flush(req, false),
            Event::LocalDone { io, result } => self.local_done(io, result),
            Event::PeerConnected { gen } => self.connected(gen),
            Event::PeerLost { gen, reason } => {
                if gen == self.gen && matches!(self.conn, ConnState::Connected) {
                    self.lose_peer(reason, ConnState::Connecting);
                }
            }
            Event::Packet { gen, packet } => {
                if gen == self.gen && self.conn == ConnState::Connected {
                    self.last_rx_ms = now_ms;
                    self.packet(packet);
                }
            }
            Event::Sent { gen, seq } => {
                if gen == self.gen {
                    self.net_ack(seq, NetWait::Sent);
                }
            }
            Event::Tick => self.tick(),
            Event::FencePeerDone { code } => self.fence_peer_done(code),
        }
        std::mem::take(&mut self.out)
    }

    fn new_uuid(&mut self) -> u64 {
        loop {
            let u = splitmix(&mut self.rng) & !1;
            if u > UUID_JUST_CREATED {
                return u | u64::from(self.role == Role::Primary);
            }
        }
    }

    fn persist(&mut self) {
        let mut f = self.md.flags
            & !(flags::CONSISTENT
                | flags::WAS_UP_TO_DATE
                | flags::PRIMARY_IND
                | flags::CONNECTED_IND
                | flags::PEER_OUT_DATED);
        if self.disk >= DiskState::Outdated && self.disk != DiskState::DUnknown {
            f |= flags::CONSISTENT;
        }
        // As DRBD's drbd_md_sync: Consistent counts too, so a Consistent node (a crashed
        // Primary restarted) that crashes again comes back Consistent, not Outdated.
        if self.disk >= DiskState::Consistent {
            f |= flags::WAS_UP_TO_DATE;
        }
        if self.role == Role::Primary {
            f |= flags::PRIMARY_IND;
        }
        if self.conn == ConnState::Connected {
            f |= flags::CONNECTED_IND;
        }
        if self.peer.disk == Some(DiskState::Outdated) {
            f |= flags::PEER_OUT_DATED;
        }
        self.md.flags = f;
        self.out.push(Action::WriteMd(self.md));
    }

    fn notify(&mut self, what: String) {
        self.out.push(Action::Notify(what));
    }

    fn send_state(&mut self) {
        if self.conn == ConnState::Connected {
            let role = if self.role == Role::Primary {
                WireRole::Primary
            } else {
                WireRole::Secondary
            };
            self.out.push(Action::Send(Packet::State {
                role,
                disk: self.disk.to_wire(),
            }));
        }
    }

    /// The refusals of `primary` (none of them changes anything).
    fn promote_check(&self, force: bool) -> Result<(), String> {
        if self.peer.role == Some(Role::Primary) && !self.cfg.allow_two_primaries {
            return Err(
                "the peer is Primary; demote it first (replctl secondary on the peer)".into(),
            );
        }
        if matches!(
            self.repl,
            ReplState::SyncTarget | ReplState::WFBitMap | ReplState::WFReportParams
        ) {
            return Err(format!(
                "cannot promote while {}: the disk is not UpToDate yet",
                self.repl
            ));
        }
        if !self.rx_queue.is_empty() {
            // Replicated writes held back until an earlier epoch is flushed: a write
            // of ours must never be overtaken by one of the peer's older writes
            // (simulator seed 1299: a held peer write landed over a newer local one).
            return Err(format!(
                "{} replicated write(s) from the peer are still being applied; try again in a moment",
                self.rx_queue.len()
            ));
        }
        if self.disk != DiskState::UpToDate {
            if !force {
                return Err(format!(
                    "the disk is {}, not UpToDate; use 'primary --force' only to start the initial sync",
                    self.disk
                ));
            }
            if self.peer.disk == Some(DiskState::UpToDate) {
                return Err(
                    "the peer's disk is UpToDate and mine is not; let it sync first".into(),
                );
            }
        }
        Ok(())
    }

    /// Promotes, once [`Node::promote_check`] passed.
    fn promote_now(&mut self, force: bool) {
        if self.disk != DiskState::UpToDate {
            self.disk = DiskState::UpToDate;
            self.role = Role::Primary;
            self.new_current_uuid();
        } else {
            self.role = Role::Primary;
            if self.conn != ConnState::Connected || self.repl == ReplState::Off {
                self.new_current_uuid();
            }
        }
        self.persist();
        if self.conn == ConnState::Connected && self.repl == ReplState::Established && force {
            // primary --force with a connected peer: a new data generation, so both sides
            // compare UUIDs again and the peer becomes SyncTarget.
            self.rehandshake_fresh();
        } else {
            self.send_state();
        }
        self.notify(format!("role Primary (disk {})", self.disk));
    }

    /// A connected Secondary promotes only with its peer's agreement (DRBD makes a promotion
    /// a cluster-wide state change): two operators promoting the two nodes at the same moment
    /// must not both succeed, even for the time their State packets cross.
    fn ask_to_promote(&mut self, req: ReqId, force: bool) {
        let refused = if self.promoting.is_some() {
            Err("a promotion is already waiting for the peer's answer".to_string())
        } else {
            self.promote_check(force)
        };
        if let Err(e) = refused {
            self.out.push(Action::Reply {
                req,
                result: Err(e),
            });
            return;
        }
        let nonce = self.new_uuid();
        self.promoting = Some((req, force, nonce));
        self.out
            .push(Action::Send(Packet::PromoteRequest { nonce }));
    }

    /// The peer asks to become Primary: agree unless this node is Primary, or is asking too
    /// and wins the tie (the larger nonce).
    fn peer_asks_to_promote(&mut self, nonce: u64) {
        let granted =
            self.role == Role::Secondary && self.promoting.is_none_or(|(_, _, mine)| mine < nonce);
        self.out
            .push(Action::Send(Packet::PromoteReply { granted }));
    }

    /// The peer answered our request. It will not become Primary before it has seen our
    /// State (it sends on the same socket, in order), so checking again here is enough.
    fn peer_answers_promotion(&mut self, granted: bool) {
        let Some((req, force, _)) = self.promoting.take() else {
            return self.protocol_error("PromoteReply without a request".into());
        };
        let result = if !granted {
            Err("the peer refused: it is Primary or is being promoted itself".to_string())
        } else if self.role == Role::Primary {
            Ok(())
        } else {
            self.promote_check(force).map(|()| self.promote_now(force))
        };
        self.out.push(Action::Reply { req, result });
    }

    fn command(&mut self, command: Command) -> Result<(), String> {
        match command {
            Command::Primary { force } => {
                if self.role == Role::Primary {
                    return Ok(());
                }
                self.promote_check(force)?;
                self.promote_now(force);
                Ok(())
            }
            Command::Secondary => {
                if self.role == Role::Secondary {
                    return Ok(());
                }
                if !self.writes.is_empty() || !self.flushes.is_empty() {
                    return Err("writes are still in flight; try again".into());
                }
                self.role = Role::Secondary;
                self.persist();
                self.send_state();
                self.notify("role Secondary".into());
                Ok(())
            }
            Command::Connect { discard_my_data } => {
                if self.conn != ConnState::StandAlone {
                    return Err(format!("already {}", self.conn));
                }
                self.discard_my_data = discard_my_data;
                self.conn = ConnState::Connecting;
                self.notify("connection Connecting".into());
                Ok(())
            }
            Command::Disconnect => {
                match self.conn {
                    ConnState::StandAlone => {}
                    ConnState::Connecting => self.conn = ConnState::StandAlone,
                    ConnState::Connected => {
                        self.out.push(Action::DropConnection {
                            reason: "disconnect requested".into(),
                        });
                        self.lose_peer("disconnect requested".into(), ConnState::StandAlone);
                    }
                }
                self.notify("connection StandAlone".into());
                Ok(())
            }
            Command::NewCurrentUuidClearBitmap => {
                if self.md.uuids[0] != UUID_JUST_CREATED {
                    return Err("the disk has data generations already; --clear-bitmap is only for just-created meta-data".into());
                }
                let connected = self.conn == ConnState::Connected;
                if connected
                    && self
                        .peer
                        .uuids
                        .is_none_or(|(u, _, _)| u[0] != UUID_JUST_CREATED)
                {
                    return Err("the peer's meta-data is not fresh; --clear-bitmap needs two just-created disks".into());
                }
                self.md.uuids = [self.new_uuid(), 0, 0, 0];
                self.bitmap.clear_all();
                self.disk = DiskState::UpToDate;
                self.persist();
                self.out.push(Action::WriteBitmap);
                if connected {
                    // The peer adopts the same generation: both UpToDate, no initial sync.
                    self.out.push(Action::Send(Packet::Uuids {
                        uuids: self.md.uuids,
                        bitmap_bits: 0,
                        flags: uuid_flags::SKIP_INITIAL_SYNC,
                    }));
                    self.peer.disk = Some(DiskState::UpToDate);
                    self.send_state();
                }
                self.notify(
                    "new current UUID with a clear bitmap: the initial sync is skipped".into(),
                );
                Ok(())
            }
            Command::Verify => {
                let Some(_) = self.cfg.verify_alg else {
                    return Err("no verify-alg is configured (net { verify-alg crc32c; })".into());
                };
                if self.conn != ConnState::Connected || self.repl != ReplState::Established {
                    return Err(format!(
                        "verify needs an Established connection (now {}/{})",
                        self.conn, self.repl
                    ));
                }
                if self.disk != DiskState::UpToDate || self.peer.disk != Some(DiskState::UpToDate) {
                    return Err("verify needs both disks UpToDate".into());
                }
                self.repl = ReplState::VerifyS;
                self.ov = Some(Verify {
                    cursor: 0,
                    in_flight: HashMap::new(),
                    total_blocks: self.size_bytes().div_ceil(BLOCK_BYTES),
                    done_blocks: 0,
                    found_blocks: 0,
                    started_ms: self.now_ms,
                    samples: VecDeque::from([(self.now_ms, 0)]),
                });
                self.notify("replication VerifyS: online verify started".into());
                self.ov_pump();
                Ok(())
            }
            Command::Invalidate => {
                if self.role == Role::Primary {
                    return Err("cannot invalidate the Primary's disk; demote it first".into());
                }
                if self.conn == ConnState::Connected && self.peer.disk != Some(DiskState::UpToDate)
                {
                    return Err("the peer's disk is not UpToDate; nothing to sync from".into());
                }
                // A fresh generation on this side: the next UUID comparison makes it SyncTarget
                // of a full sync.
                self.md.uuids = [UUID_JUST_CREATED, 0, 0, 0];
                self.disk = DiskState::Inconsistent;
                self.bitmap.set_all();
                self.persist();
                self.out.push(Action::WriteBitmap);
                if self.conn == ConnState::Connected {
                    self.rehandshake_fresh();
                }
                self.notify("invalidated: full sync from the peer".into());
                Ok(())
            }
            Command::Outdate => {
                if self.role == Role::Primary {
                    return Err("a Primary's disk cannot be outdated; demote it first".into());
                }
                if self.disk < DiskState::Outdated {
                    return Err(format!(
                        "the disk is {}; only a consistent disk can be outdated",
                        self.disk
                    ));
                }
                self.disk = DiskState::Outdated;
                self.persist();
                self.send_state();
                self.notify("disk Outdated".into());
                Ok(())
            }
            Command::InvalidateRemote => {
                if self.conn != ConnState::Connected || self.repl != ReplState::Established {
                    return Err("invalidate-remote needs an Established connection".into());
                }
                if self.peer.role == Some(Role::Primary) {
                    return Err("the peer is Primary; its disk cannot become SyncTarget".into());
                }
                if self.disk != DiskState::UpToDate {
                    return Err(format!("my disk is {}, not UpToDate", self.disk));
                }
                self.bitmap.set_all();
                self.new_current_uuid_as(self.role == Role::Primary);
                self.persist();
                self.out.push(Action::WriteBitmap);
                self.rehandshake_fresh();
                self.notify("invalidate-remote: full sync to the peer".into());
                Ok(())
            }
        }
    }

    /// VerifyS: keeps digest requests in flight in disk order; done when all are answered.
    fn ov_pump(&mut self) {
        let Some(alg) = self.cfg.verify_alg else {
            return;
        };
        let size = self.size_bytes();
        let per_request = (crate::wire::MAX_DIGEST_BYTES / digest_len(alg)).max(1) as u64;
        loop {
            let Some(ov) = self.ov.as_mut() else { return };
            if ov.in_flight.len() >= OV_WINDOW {
                return;
            }
            if ov.cursor >= ov.total_blocks {
                if ov.in_flight.is_empty() {
                    let found = ov.found_blocks;
                    self.ov = None;
                    self.repl = ReplState::Established;
                    self.last_verify = Some(found * 4);
                    self.out.push(Action::WriteBitmap);
                    self.notify(format!(
                        "online verify done: {} KiB out of sync{}",
                        found * 4,
                        if found > 0 {
                            "; disconnect and connect to resync them"
                        } else {
                            ""
                        }
                    ));
                }
                return;
            }
            let offset = ov.cursor * BLOCK_BYTES;
            let blocks = per_request.min(ov.total_blocks - ov.cursor);
            let len =
                u32::try_from((blocks * BLOCK_BYTES).min(size - offset)).expect("small request");
            ov.cursor += blocks;
            let id = self.next_id;
            self.next_id += 1;
            ov.in_flight.insert(id, (offset, len));
            self.out
                .push(Action::Send(Packet::OvRequest { id, offset, len }));
        }
    }

    /// Starts a new data generation: the old current UUID becomes the bitmap UUID (if none).
    ///
    /// Bit 0 of the bitmap UUID records whether this node was already Primary when the new
    /// generation began (it kept serving through a split) or was promoted into it; the
    /// discard-younger/older-primary policies read it.
    ///
    /// When the bitmap UUID is in use (a resync this node was source of is unfinished) it
    /// stays, so an Inconsistent target holding it as its current UUID still resumes from the
    /// bitmaps, and the old current UUID goes into the history: a target that finished unseen
    /// holds it as its current UUID, which makes it older than this node (a full sync from
    /// here), not unrelated (simulator seed 31 with al-extents 3).
    fn new_current_uuid_as(&mut self, was_primary: bool) {
        let current = self.md.uuids[0];
        if current != UUID_JUST_CREATED {
            if self.md.uuids[1] == 0 {
                self.md.uuids[1] = (current & !1) | u64::from(was_primary);
            } else {
                self.md.uuids[3] = self.md.uuids[2];
                self.md.uuids[2] = current & !1;
            }
        }
        self.md.uuids[0] = self.new_uuid();
    }

    fn new_current_uuid(&mut self) {
        self.new_current_uuid_as(false);
    }

    fn replicating(&self) -> bool {
        // Writes made during the bitmap exchange are replicated too: the bitmap this node
        // sent does not hold them, so the resync would never copy them otherwise.
        self.conn == ConnState::Connected
            && matches!(
                self.repl,
                ReplState::Established
                    | ReplState::SyncSource
                    | ReplState::SyncTarget
                    | ReplState::WFBitMap
                    | ReplState::VerifyS
                    | ReplState::VerifyT
            )
            && self.peer.disk.is_some_and(|d| d != DiskState::Diskless)
    }

    fn client_write(&mut self, req: ReqId, offset: u64, data: Bytes, fua: bool) {
        let len = data.len() as u64;
        self.last_app_io_ms = Some(self.now_ms);
        if self.role != Role::Primary {
            self.out.push(Action::Complete {
                req,
                result: Err(errno::EPERM),
            });
            return;
        }
        if offset % 512 != 0
            || len % 512 != 0
            || offset
                .checked_add(len)
                .is_none_or(|e| e > self.size_bytes())
        {
            self.out.push(Action::Complete {
                req,
                result: Err(errno::ENOSPC),
            });
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.writes.insert(
            seq,
            AppWrite {
                req,
                offset,
                data,
                fua,
                local_done: false,
                local_err: None,
                net: NetWait::None,
                sent_at_ms: self.now_ms,
                started: false,
            },
        );
        if len == 0 {
            self.writes.get_mut(&seq).expect("inserted").local_done = true;
            self.maybe_complete(seq);
            return;
        }
        self.waiting.push_back(seq);
        self.start_waiting();
    }

    /// Starts queued client writes while the in-flight limit allows (backpressure).
    fn start_waiting(&mut self) {
        if self.frozen {
            return;
        }
        while let Some(&seq) = self.waiting.front() {
            let len = self.writes[&seq].data.len() as u64;
            if self.in_flight_bytes > 0 && self.in_flight_bytes + len > self.cfg.max_in_flight_bytes
            {
                return;
            }
            self.waiting.pop_front();
            self.in_flight_bytes += len;
            self.submit(Blocked::AppWrite { seq });
        }
    }

    /// Starts `op` now, or queues it behind an overlapping operation in flight, so that
    /// overlapping writes are applied in arrival order and resync never races a write.
    fn submit(&mut self, op: Blocked) {
        let range = op.range(&self.writes);
        let conflict = self.active.iter().any(|&a| overlaps(a, range))
            || self
                .blocked
                .iter()
                .any(|b| overlaps(b.range(&self.writes), range));
        if conflict {
            self.blocked.push_back(op);
        } else {
            self.start(op);
        }
    }

    fn release(&mut self, range: (u64, u64)) {
        if let Some(i) = self.active.iter().position(|&a| a == range) {
            self.active.swap_remove(i);
        }
        let mut i = 0;
        while i < self.blocked.len() {
            let r = self.blocked[i].range(&self.writes);
            let earlier = self
                .blocked
                .iter()
                .take(i)
                .any(|b| overlaps(b.range(&self.writes), r));
            if !earlier && !self.active.iter().any(|&a| overlaps(a, r)) {
                let op = self.blocked.remove(i).expect("index checked");
                self.start(op);
            } else {
                i += 1;
            }
        }
    }

    fn io(&mut self, purpose: IoPurpose) -> IoId {
        let io = self.next_io;
        self.next_io += 1;
        self.ios.insert(io, purpose);
        io
    }

    fn start(&mut self, op: Blocked) {
        let range = op.range(&self.writes);
        self.active.push(range);
        let needs_al = matches!(op, Blocked::AppWrite { .. } | Blocked::PeerWrite { .. });
        if needs_al && !self.al.try_get(range.0, range.1) {
            self.al_wait.push_back(op);
            self.al_pump();
            return;
        }
        self.issue(op);
    }

    /// Writes the next activity-log transaction if writes wait for one.
    fn al_pump(&mut self) {
        let Some((nr, tr, evicts)) = self.al.next_transaction() else {
            // Every slot is busy. Extents held only by replicated writes the peer has not
            // acknowledged yet free up at the next BarrierAck: close the epoch now rather
            // than wait for the client's next flush.
            if !self.al_wait.is_empty()
                && !self.al.busy()
                && self.replicating()
                && self.tl.back().is_some_and(|e| e.nr == self.cur_epoch)
            {
                self.close_epoch();
            }
            return;
        };
        {
            let block = Bytes::copy_from_slice(&tr.encode());
            if evicts {
                // Evicted extents leave the log, so a crash no longer resyncs them: the
                // writes completed in them must be stable first (a flush; the disk's cache
                // would lose them otherwise, simulator seed 14 with al-extents 3), then
                // their bits go to disk, then the transaction.
                self.al_evicting = Some((nr, block));
                let io = self.io(IoPurpose::AlEvictFlush);
                self.out.push(Action::LocalFlush { io });
                return;
            }
            self.write_al(nr, block);
        }
    }

    fn write_al(&mut self, nr: u32, block: Bytes) {
        let io = self.io(IoPurpose::AlTransaction);
        self.out.push(Action::WriteAl {
            io,
            index: nr % AL_RING_SLOTS,
            block,
        });
    }

    /// Drops a write's references on its extents; writes waiting for a slot may get one now
    /// (an extent that was busy when they asked can be evicted once idle).
    fn al_put(&mut self, offset: u64, len: u64) {
        self.al.put(offset, len);
        if !self.al_wait.is_empty() {
            self.al_pump();
        }
    }

    fn al_committed(&mut self) {
        self.al.committed();
        for op in std::mem::take(&mut self.al_wait) {
            let range = op.range(&self.writes);
            if self.al.try_get(range.0, range.1) {
                self.issue(op);
            } else {
                self.al_wait.push_back(op);
            }
        }
        self.al_pump();
    }

    /// The md state a clean `down` writes: the activity log is clean.
    pub fn clean_md(&self) -> MdState {
        MdState {
            flags: self.md.flags | flags::AL_CLEAN,
            ..self.md
        }
    }

    fn issue(&mut self, op: Blocked) {
        let range = op.range(&self.writes);
        match op {
            Blocked::AppWrite { seq } => {
                let io = self.io(IoPurpose::AppWrite { seq });
                let (offset, data) = {
                    let w = &self.writes[&seq];
                    (w.offset, w.data.clone())
                };
                self.out.push(Action::LocalWrite {
                    io,
                    offset,
                    data: data.clone(),
                    fua: false,
                });
                let net = if self.replicating() {
                    if self.epoch_closed {
                        self.close_epoch();
                    }
                    if let Some(alg) = self.cfg.integrity {
                        self.out.push(Action::Send(Packet::DataDigest {
                            seq,
                            digest: digest(alg, &data),
                        }));
                    }
                    self.out.push(Action::Send(Packet::Data {
                        seq,
                        epoch: self.cur_epoch,
                        offset,
                        flags: 0,
                        data: data.clone(),
                    }));
                    // Its extents stay in the activity log until the peer acknowledged the
                    // epoch (BarrierAck: stable there) or the connection is lost (the range
                    // goes into the bitmap): a crash of this node in between must resync
                    // them, whatever the protocol (DRBD keeps the request, and its AL
                    // reference, until the barrier is acknowledged).
                    self.al.hold(range.0, range.1);
                    match self.tl.back_mut() {
                        Some(e) if e.nr == self.cur_epoch => e.ranges.push(range),
                        _ => self.tl.push_back(TlEpoch {
                            nr: self.cur_epoch,
                            ranges: vec![range],
                        }),
                    }
                    self.cur_epoch_writes += 1;
                    if self.cur_epoch_writes >= self.cfg.max_epoch_size {
                        self.epoch_closed = true;
                    }
                    match self.cfg.protocol {
                        Protocol::A => NetWait::Sent,
                        Protocol::B => NetWait::RecvAck,
                        Protocol::C => NetWait::WriteAck,
                    }
                } else {
                    // Not replicated: the peer's copy is stale until a resync.
                    self.bitmap.set_range(offset, data.len() as u64);
                    NetWait::None
                };
                let w = self.writes.get_mut(&seq).expect("write exists");
                w.net = net;
                w.started = true;
                w.sent_at_ms = self.now_ms;
            }
            Blocked::PeerWrite {
                seq,
                epoch,
                offset,
                data,
                fua,
                gen,
            } => {
                let io = self.io(IoPurpose::PeerWrite {
                    seq,
                    epoch,
                    offset,
                    len: range.1,
                    gen,
                });
                self.out.push(Action::LocalWrite {
                    io,
                    offset,
                    data,
                    fua,
                });
            }
            Blocked::RsRead {
                id,
                offset,
                len,
                csum,
            } => {
                let io = self.io(IoPurpose::RsRead {
                    id,
                    offset,
                    len,
                    csum,
                });
                self.out.push(Action::LocalRead { io, offset, len });
            }
            Blocked::RsWrite { offset, data, gen } => {
                let io = self.io(IoPurpose::RsWrite {
                    offset,
                    len: range.1,
                    gen,
                });
                self.out.push(Action::LocalWrite {
                    io,
                    offset,
                    data,
                    fua: false,
                });
            }
        }
    }

    /// Sends the barrier that closes the current epoch and opens the next.
    fn close_epoch(&mut self) {
        let nr = self.cur_epoch;
        self.out
            .push(Action::Send(Packet::Barrier { barrier_nr: nr }));
        if !self.tl.iter().any(|e| e.nr == nr) {
            self.tl.push_back(TlEpoch {
                nr,
                ranges: Vec::new(),
            });
        }
        self.last_barrier_sent = nr;
        self.cur_epoch = nr.wrapping_add(1);
        self.cur_epoch_writes = 0;
        self.epoch_closed = false;
    }

    fn client_flush(&mut self, req: ReqId, from_write: bool) {
        let id = self.next_flush;
        self.next_flush += 1;
        let local_pending = self.cfg.disk_flushes;
        if local_pending {
            let io = self.io(IoPurpose::ClientFlush { flush: id });
            self.out.push(Action::LocalFlush { io });
        }
        let barrier = if self.replicating() {
            let current_has_writes = self.tl.back().is_some_and(|e| e.nr == self.cur_epoch);
            if current_has_writes {
                self.close_epoch();
                Some(self.last_barrier_sent)
            } else if self.last_barrier_sent != self.barrier_acked && !self.tl.is_empty() {
                Some(self.last_barrier_sent)
            } else {
                None
            }
        } else {
            None
        };
        self.flushes.insert(
            id,
            ClientFlush {
                req,
                local_pending,
                barrier,
                from_write,
            },
        );
        self.maybe_complete_flush(id);
    }

    fn maybe_complete_flush(&mut self, id: u64) {
        let Some(f) = self.flushes.get(&id) else {
            return;
        };
        let peer_done = match f.barrier {
            None => true,
            Some(nr) => !self.tl.iter().any(|e| e.nr == nr),
        };
        if !f.local_pending && peer_done {
            let f = self.flushes.remove(&id).expect("exists");
            let _ = f.from_write;
            self.out.push(Action::Complete {
                req: f.req,
                result: Ok(()),
            });
        }
    }

    fn net_ack(&mut self, seq: u64, what: NetWait) {
        let Some(w) = self.writes.get_mut(&seq) else {
            return;
        };
        let satisfied = match (w.net, what) {
            (NetWait::Sent, NetWait::Sent) => true,
            (NetWait::RecvAck, NetWait::RecvAck) => true,
            // A WriteAck implies receipt.
            (NetWait::RecvAck | NetWait::WriteAck, NetWait::WriteAck) => true,
            _ => false,
        };
        if satisfied {
            w.net = NetWait::Done;
            self.maybe_complete(seq);
        }
    }

    fn maybe_complete(&mut self, seq: u64) {
        let Some(w) = self.writes.get(&seq) else {
            return;
        };
        if !w.local_done || !matches!(w.net, NetWait::Done | NetWait::None) {
            return;
        }
        let w = self.writes.remove(&seq).expect("exists");
        self.in_flight_bytes -= w.data.len() as u64;
        if let Some(e) = w.local_err {
            self.out.push(Action::Complete {
                req: w.req,
                result: Err(e),
            });
        } else if w.fua {
            // FUA: stable, with everything completed before it, on every UpToDate replica.
            self.client_flush(w.req, true);
        } else {
            self.out.push(Action::Complete {
                req: w.req,
                result: Ok(()),
            });
        }
        // Epochs close at client flushes (and FUA), not at every completion as DRBD 8.4 does:
        // the export advertises a volatile write cache, so a client may rely on ordering only
        // across a flush, and the Secondary's disk after a crash is a state a disk with a
        // volatile cache could have had. This keeps the Secondary from flushing per write.
        self.start_waiting();
    }

    fn local_done(&mut self, io: IoId, result: Result<Option<Bytes>, i32>) {
        let Some(purpose) = self.ios.remove(&io) else {
            return;
        };
        match purpose {
            IoPurpose::AppWrite { seq } => {
                let range = {
                    let w = self.writes.get_mut(&seq).expect("app write in flight");
                    w.local_done = true;
                    w.local_err = result.err();
                    (w.offset, w.data.len() as u64)
                };
                self.al_put(range.0, range.1);
                self.maybe_complete(seq);
                self.release(range);
            }
            IoPurpose::PeerWrite {
                seq,
                epoch,
                offset,
                len,
                gen,
            } => {
                let ok = result.is_ok();
                self.rx_active_bytes -= len;
                self.al_put(offset, len);
                self.release((offset, len));
                // A write from an older connection: the epochs and sequence numbers of the
                // current one are not its own.
                let current = gen == self.gen && self.conn == ConnState::Connected;
                if current {
                    if !ok {
                        self.out.push(Action::Send(Packet::NegAck { seq }));
                    } else if self.cfg.protocol == Protocol::C {
                        self.out.push(Action::Send(Packet::WriteAck { seq }));
                    }
                }
                if let Some(e) = self.rx_epochs.get_mut(&epoch).filter(|_| current) {
                    e.pending -= 1;
                }
                self.try_ack_barriers();
                self.start_rx_writes();
            }
            IoPurpose::BarrierFlush { nr } => {
                if let Some(e) = self.rx_epochs.remove(&nr) {
                    if self.conn == ConnState::Connected {
                        self.out.push(Action::Send(Packet::BarrierAck {
                            barrier_nr: nr,
                            set_size: e.writes,
                        }));
                    }
                }
                self.try_ack_barriers();
                self.start_rx_writes();
            }
            IoPurpose::ClientFlush { flush } => {
                if let Some(f) = self.flushes.get_mut(&flush) {
                    f.local_pending = false;
                    if let Err(e) = result {
                        let f = self.flushes.remove(&flush).expect("exists");
                        self.out.push(Action::Complete {
                            req: f.req,
                            result: Err(e),
                        });
                        return;
                    }
                }
                self.maybe_complete_flush(flush);
            }
            IoPurpose::RsRead {
                id,
                offset,
                len,
                csum,
            } => {
                if self.conn == ConnState::Connected {
                    match result {
                        Ok(Some(data))
                            if csum.as_ref().is_some_and(|c| {
                                self.cfg
                                    .csums_alg
                                    .is_some_and(|alg| block_digests(alg, &data) == *c)
                            }) =>
                        {
                            // csums-alg: the target already has this data.
                            self.bitmap.clear_range(offset, u64::from(len));
                            self.out
                                .push(Action::Send(Packet::RsIsInSync { id, offset, len }));
                        }
                        Ok(Some(data)) => {
                            if let Some(alg) = self.cfg.integrity {
                                self.out.push(Action::Send(Packet::DataDigest {
                                    seq: id,
                                    digest: digest(alg, &data),
                                }));
                            }
                            self.out
                                .push(Action::Send(Packet::RsDataReply { id, offset, data }))
                        }
                        _ => self
                            .out
                            .push(Action::Send(Packet::RsNegAck { offset, len })),
                    }
                }
                // Only after the reply is queued: a write that waited for this read sends its
                // Data behind the reply, so the target applies the older data first.
                self.release((offset, u64::from(len)));
            }
            IoPurpose::RsWrite {
                offset,
                len: len64,
                gen,
            } => {
                let range = (offset, len64);
                self.release(range);
                if gen != self.gen || self.resync.is_none() {
                    // A resync write of an earlier connection (slow IO outlived it): the data
                    // it wrote may be older than the source's now, so its bit stays set for
                    // the current resync, and the new connection hears nothing of it (simulator
                    // seed 867: its ack cleared the source's bit of a newer write).
                    return;
                }
                let len = u32::try_from(len64).expect("resync requests are small");
                if result.is_ok() {
                    self.bitmap.clear_range(range.0, range.1);
                    self.rs_unstable.push(range);
                    if self.conn == ConnState::Connected {
                        self.out.push(Action::Send(Packet::RsWriteAck {
                            offset: range.0,
                            len,
                        }));
                    }
                }
                if let Some(rs) = self.resync.as_mut() {
                    rs.in_flight_bytes = rs.in_flight_bytes.saturating_sub(range.1);
                }
                self.rs_pump();
            }
            IoPurpose::ResyncDoneFlush => {
                if result.is_ok() {
                    // Issued once no resync write was in flight: it covers all of them.
                    self.rs_unstable.clear();
                }
                self.finish_sync_target();
            }
            IoPurpose::CsumRead { id, offset, len } => match (result, self.cfg.csums_alg) {
                (Ok(Some(data)), Some(alg)) if self.conn == ConnState::Connected => {
                    let digest = block_digests(alg, &data);
                    self.out.push(Action::Send(Packet::CsumRsRequest {
                        id,
                        offset,
                        len,
                        digest,
                    }));
                }
                (Ok(_), _) => {}
                (Err(_), _) => {
                    // Our copy is unreadable: ask for the data itself.
                    if self.conn == ConnState::Connected {
                        self.out
                            .push(Action::Send(Packet::RsDataRequest { id, offset, len }));
                    }
                }
            },
            IoPurpose::OvServe { id, offset, len } => {
                if let (Ok(Some(data)), Some(alg), ConnState::Connected) =
                    (result, self.cfg.verify_alg, self.conn)
                {
                    let digest = block_digests(alg, &data);
                    self.out.push(Action::Send(Packet::OvReply {
                        id,
                        offset,
                        len,
                        digest,
                    }));
                }
            }
            IoPurpose::OvRead {
                id,
                offset,
                len,
                peer,
            } => {
                let Some(alg) = self.cfg.verify_alg else {
                    return;
                };
                let Some(ov) = self.ov.as_mut() else { return };
                ov.in_flight.remove(&id);
                let blocks = u64::from(len).div_ceil(BLOCK_BYTES);
                ov.done_blocks += blocks;
                let mine = match result {
                    Ok(Some(data)) => block_digests(alg, &data),
                    _ => Vec::new(),
                };
                let n = digest_len(alg);
                for (b, block) in (0..blocks).zip(0usize..) {
                    let r = (block * n)..((block + 1) * n);
                    if mine.get(r.clone()) != peer.get(r) {
                        ov.found_blocks += 1;
                        self.bitmap.set_range(offset + b * BLOCK_BYTES, BLOCK_BYTES);
                    }
                }
                self.ov_pump();
            }
            IoPurpose::BitmapFlush => {
                self.bitmap_flush_pending = false;
                let covered = std::mem::take(&mut self.rs_flushing).min(self.rs_unstable.len());
                if result.is_ok() {
                    self.rs_unstable.drain(..covered);
                    self.out.push(Action::WriteBitmap);
                }
            }
            IoPurpose::AlEvictFlush => {
                if let Err(e) = result {
                    self.last_error = Some(format!(
                        "flushing the disk before an activity-log eviction failed (errno {e})"
                    ));
                }
                if let Some((nr, block)) = self.al_evicting.take() {
                    self.out.push(Action::WriteBitmap);
                    self.write_al(nr, block);
                }
            }
            IoPurpose::AlTransaction => {
                if let Err(e) = result {
                    self.last_error = Some(format!("writing the activity log failed (errno {e})"));
                }
                self.al_committed();
            }
        }
    }
}

impl Node {
    /// Acknowledges closed epochs in order once their writes are done (and flushed).
    fn try_ack_barriers(&mut self) {
        while let Some((&nr, e)) = self.rx_epochs.iter_mut().next() {
            if !e.barrier || e.pending > 0 || e.flushing {
                return;
            }
            if self.cfg.disk_flushes {
                e.flushing = true;
                let io = self.io(IoPurpose::BarrierFlush { nr });
                self.out.push(Action::LocalFlush { io });
                return;
            }
            let e = self.rx_epochs.remove(&nr).expect("exists");
            if self.conn == ConnState::Connected {
                self.out.push(Action::Send(Packet::BarrierAck {
                    barrier_nr: nr,
                    set_size: e.writes,
                }));
            }
        }
    }

    /// Submits received writes whose earlier epochs are all stable: writes of one epoch run
    /// concurrently, but never before the barrier of the previous epoch is flushed, so the
    /// Secondary's disk is crash-consistent at every epoch boundary.
    /// While connected, at most `max_rx_bytes` of them are in flight (one bigger write goes
    /// alone).
    fn start_rx_writes(&mut self) {
        while let Some(Blocked::PeerWrite { epoch, data, .. }) = self.rx_queue.front() {
            let (epoch, len) = (*epoch, data.len() as u64);
            let connected = self.conn == ConnState::Connected;
            if connected
                && self
                    .rx_epochs
                    .keys()
                    .next()
                    .is_some_and(|&first| first < epoch)
            {
                return;
            }
            // Once the connection is gone, everything queued goes to the disk now (uncapped):
            // a write of the old connection still queued would land after the next
            // connection's resync wrote newer data there (simulator seeds 1293, 2843).
            if connected
                && self.rx_active_bytes > 0
                && self.rx_active_bytes + len > self.cfg.max_rx_bytes
            {
                return;
            }
            let op = self.rx_queue.pop_front().expect("front exists");
            self.rx_queued_bytes -= len;
            self.rx_active_bytes += len;
            self.submit(op);
        }
    }

    /// Bytes of the peer's writes received and waiting to be submitted. The daemon stops
    /// reading the peer's data socket while this is at least `max_rx_bytes`.
    pub fn rx_backlog_bytes(&self) -> u64 {
        self.rx_queued_bytes
    }

    /// True while the daemon should leave the peer's data socket unread (see
    /// [`Node::rx_backlog_bytes`]).
    pub fn rx_full(&self) -> bool {
        self.rx_queued_bytes >= self.cfg.max_rx_bytes
    }

    fn protocol_error(&mut self, what: String) {
        let reason = format!("protocol error from the peer: {what}");
        self.out.push(Action::DropConnection {
            reason: reason.clone(),
        });
        self.lose_peer(reason, ConnState::Connecting);
    }

    /// With `data-integrity-alg`, checks `data` against the digest that preceded it.
    fn integrity_ok(&mut self, seq: u64, offset: u64, data: &[u8]) -> bool {
        let Some(alg) = self.cfg.integrity else {
            if self.pending_digest.take().is_some() {
                self.protocol_error(
                    "the peer sends data-integrity digests but data-integrity-alg is not set here"
                        .into(),
                );
                return false;
            }
            return true;
        };
        match self.pending_digest.take() {
            Some((s, d)) if s == seq => {
                if d == digest(alg, data) {
                    return true;
                }
                self.protocol_error(format!(
                    "data integrity check ({alg}) failed for {} bytes at offset {offset}: the data was corrupted in transit",
                    data.len()
                ));
            }
            _ => self.protocol_error(format!("data at offset {offset} came without its {alg} digest (is data-integrity-alg set on the peer?)")),
        }
        false
    }

    fn packet(&mut self, packet: Packet) {
        match packet {
            Packet::DataDigest { seq, digest } => self.pending_digest = Some((seq, digest)),
            Packet::Sizes {
                backing_sect,
                user_sect,
                current_sect,
            } => {
                self.peer.sizes = Some((backing_sect, user_sect, current_sect));
                self.maybe_handshake();
            }
            Packet::Uuids {
                uuids,
                bitmap_bits,
                flags,
            } => {
                self.peer.uuids = Some((uuids, bitmap_bits, flags));
                if flags & uuid_flags::SKIP_INITIAL_SYNC != 0
                    && self.md.uuids[0] == UUID_JUST_CREATED
                    && self.repl == ReplState::Established
                {
                    // new-current-uuid --clear-bitmap on the peer: adopt its generation.
                    self.md.uuids = uuids;
                    self.bitmap.clear_all();
                    self.disk = DiskState::UpToDate;
                    self.peer.disk = Some(DiskState::UpToDate);
                    self.persist();
                    self.out.push(Action::WriteBitmap);
                    self.send_state();
                    self.notify("the peer skipped the initial sync: disk UpToDate".into());
                    return;
                }
                if self.repl == ReplState::Established && uuids[0] & !1 != self.md.uuids[0] & !1 {
                    // The peer started a new data generation while connected (primary --force).
                    self.rehandshake();
                }
                self.maybe_handshake();
            }
            Packet::State { role, disk } => {
                let role = if role == WireRole::Primary {
                    Role::Primary
                } else {
                    Role::Secondary
                };
                let disk = DiskState::from_wire(disk);
                self.peer.role = Some(role);
                self.peer.disk = Some(disk);
                if self.repl != ReplState::WFReportParams
                    && role == Role::Primary
                    && self.role == Role::Primary
                    && !self.cfg.allow_two_primaries
                {
                    let reason = "both nodes are Primary; dropping the connection".to_string();
                    self.out.push(Action::DropConnection {
                        reason: reason.clone(),
                    });
                    self.lose_peer(reason, ConnState::StandAlone);
                    return;
                }
                if self.repl == ReplState::SyncSource {
                    if let Some(rs) = self.resync.as_mut() {
                        // Only an UpToDate *after* the target said Inconsistent ends the sync (an
                        // older State may still be on the wire).
                        if disk == DiskState::Inconsistent {
                            rs.peer_started = true;
                        } else if disk == DiskState::UpToDate && rs.peer_started {
                            self.finish_sync_source();
                        }
                    }
                }
                self.notify(format!("peer {role}/{disk}"));
                self.maybe_handshake();
            }
            Packet::Bitmap {
                offset_words,
                words,
                last,
            } => {
                self.bitmap.merge_words(offset_words, &words);
                if last {
                    self.peer.bitmap_done = true;
                    self.maybe_start_pending_sync();
                }
            }
            Packet::Data {
                seq,
                epoch,
                offset,
                flags,
                data,
            } => {
                if self.role == Role::Primary && !self.cfg.allow_two_primaries {
                    return self
                        .protocol_error("a write arrived while this node is Primary".into());
                }
                if offset + data.len() as u64 > self.cfg.backing_bytes {
                    return self.protocol_error(format!("write at {offset} beyond the disk"));
                }
                if !self.integrity_ok(seq, offset, &data) {
                    return;
                }
                self.last_app_io_ms = Some(self.now_ms);
                if self.cfg.protocol == Protocol::B {
                    self.out.push(Action::Send(Packet::RecvAck { seq }));
                }
                let e = self.rx_epochs.entry(epoch).or_default();
                e.pending += 1;
                e.writes += 1;
                let fua = flags & data_flags::FUA != 0;
                self.rx_queued_bytes += data.len() as u64;
                self.rx_queue.push_back(Blocked::PeerWrite {
                    seq,
                    epoch,
                    offset,
                    data,
                    fua,
                    gen: self.gen,
                });
                self.start_rx_writes();
            }
            Packet::RecvAck { seq } => self.net_ack(seq, NetWait::RecvAck),
            Packet::WriteAck { seq } => self.net_ack(seq, NetWait::WriteAck),
            Packet::NegAck { seq } => {
                if let Some(w) = self.writes.get(&seq) {
                    self.bitmap.set_range(w.offset, w.data.len() as u64);
                    if let Some(w) = self.writes.get_mut(&seq) {
                        w.net = NetWait::Done;
                    }
                    self.maybe_complete(seq);
                }
            }
            Packet::Barrier { barrier_nr } => {
                self.rx_epochs.entry(barrier_nr).or_default().barrier = true;
                self.try_ack_barriers();
            }
            Packet::BarrierAck { barrier_nr, .. } => {
                while self.tl.front().is_some_and(|e| e.nr <= barrier_nr) {
                    let e = self.tl.pop_front().expect("checked");
                    for (offset, len) in e.ranges {
                        self.al_put(offset, len);
                    }
                }
                self.barrier_acked = barrier_nr;
                let ids: Vec<u64> = self.flushes.keys().copied().collect();
                for id in ids {
                    self.maybe_complete_flush(id);
                }
            }
            Packet::RsDataRequest { id, offset, len } => {
                if self.repl != ReplState::SyncSource {
                    return self.protocol_error("resync request while not SyncSource".into());
                }
                if offset + u64::from(len) > self.cfg.backing_bytes {
                    return self
                        .protocol_error(format!("resync request at {offset} beyond the disk"));
                }
                self.submit(Blocked::RsRead {
                    id,
                    offset,
                    len,
                    csum: None,
                });
            }
            Packet::RsDataReply { id, offset, data } => {
                if !self.integrity_ok(id, offset, &data) {
                    return;
                }
                let Some(rs) = self.resync.as_mut() else {
                    return self.protocol_error("resync data while not SyncTarget".into());
                };
                if rs.in_flight.remove(&id).is_none() {
                    return self.protocol_error(format!("resync data for unknown request {id}"));
                }
                let gen = self.gen;
                self.submit(Blocked::RsWrite { offset, data, gen });
            }
            Packet::RsWriteAck { offset, len } => {
                self.bitmap.clear_range(offset, u64::from(len));
            }
            Packet::RsNegAck { offset, len } => {
                self.last_error =
                    Some(format!("the peer could not resync {len} bytes at {offset}"));
                if let Some(rs) = self.resync.as_mut() {
                    let key = rs
                        .in_flight
                        .iter()
                        .find(|(_, &(o, _))| o == offset)
                        .map(|(&k, _)| k);
                    if let Some(k) = key {
                        rs.in_flight.remove(&k);
                        rs.in_flight_bytes = rs.in_flight_bytes.saturating_sub(u64::from(len));
                    }
                }
            }
            Packet::Ping => self.out.push(Action::Send(Packet::PingAck)),
            Packet::CsumRsRequest {
                id,
                offset,
                len,
                digest,
            } => {
                if self.repl != ReplState::SyncSource || self.cfg.csums_alg.is_none() {
                    return self.protocol_error("checksum resync request while not a csums-alg SyncSource (is csums-alg the same on both nodes?)".into());
                }
                if offset + u64::from(len) > self.cfg.backing_bytes {
                    return self
                        .protocol_error(format!("resync request at {offset} beyond the disk"));
                }
                self.submit(Blocked::RsRead {
                    id,
                    offset,
                    len,
                    csum: Some(digest),
                });
            }
            Packet::RsIsInSync { id, offset, len } => {
                let Some(rs) = self.resync.as_mut() else {
                    return self.protocol_error("RsIsInSync while not SyncTarget".into());
                };
                if rs.in_flight.remove(&id).is_none() {
                    return self.protocol_error(format!("RsIsInSync for unknown request {id}"));
                }
                rs.in_flight_bytes = rs.in_flight_bytes.saturating_sub(u64::from(len));
                self.bitmap.clear_range(offset, u64::from(len));
                self.rs_pump();
            }
            Packet::OvRequest { id, offset, len } => {
                if !matches!(self.repl, ReplState::Established | ReplState::VerifyT)
                    || self.cfg.verify_alg.is_none()
                {
                    return self.protocol_error(
                        "online verify request while not Established (is verify-alg set here?)"
                            .into(),
                    );
                }
                if offset + u64::from(len) > self.cfg.backing_bytes {
                    return self
                        .protocol_error(format!("verify request at {offset} beyond the disk"));
                }
                if self.repl == ReplState::Established {
                    self.repl = ReplState::VerifyT;
                    self.notify("replication VerifyT: answering the peer's online verify".into());
                }
                self.ov_t_last_ms = self.now_ms;
                let io = self.io(IoPurpose::OvServe { id, offset, len });
                self.out.push(Action::LocalRead { io, offset, len });
            }
            Packet::OvReply {
                id,
                offset,
                len,
                digest,
            } => {
                let known = self
                    .ov
                    .as_ref()
                    .is_some_and(|ov| ov.in_flight.get(&id) == Some(&(offset, len)));
                if !known {
                    return self.protocol_error(format!("verify reply for unknown request {id}"));
                }
                let io = self.io(IoPurpose::OvRead {
                    id,
                    offset,
                    len,
                    peer: digest,
                });
                self.out.push(Action::LocalRead { io, offset, len });
            }
            Packet::PingAck => self.ping_sent_ms = None,
            Packet::PromoteRequest { nonce } => self.peer_asks_to_promote(nonce),
            Packet::PromoteReply { granted } => self.peer_answers_promotion(granted),
            Packet::SyncUuid { uuid } => {
                if self.repl == ReplState::SyncTarget {
                    self.md.uuids[0] = uuid;
                    self.md.uuids[1] = 0;
                    self.persist();
                }
            }
            other => self.protocol_error(format!("unexpected {other:?}")),
        }
    }

    fn connected(&mut self, gen: u64) {
        if self.conn != ConnState::Connecting {
            self.out.push(Action::DropConnection {
                reason: format!("not connecting ({})", self.conn),
            });
            return;
        }
        self.gen = gen;
        self.conn = ConnState::Connected;
        if self.frozen {
            // The peer is back: it cannot be running on its own any more.
            self.frozen = false;
            self.notify("IO resumed: the peer reconnected".into());
            self.start_waiting();
        }
        self.repl = ReplState::WFReportParams;
        self.peer = Peer::default();
        self.last_rx_ms = self.now_ms;
        self.ping_sent_ms = None;
        self.pending_digest = None;
        self.last_error = None;
        self.cur_epoch_writes = 0;
        self.epoch_closed = false;
        self.rehandshake();
        self.notify("connection Connected".into());
    }

    /// DRBD's after-sb-0pri rule: `Some(true)` when this node keeps its data (SyncSource),
    /// `Some(false)` when it discards its changes, `None` to stay disconnected; with why.
    fn after_sb_0pri(&self, peer_bitmap_uuid: u64, peer_bits: u64) -> (Option<bool>, String) {
        use crate::config::AfterSb0Pri as P;
        let policy = &self.cfg.after_sb_0pri;
        let (me, peer) = (self.md.uuids[1] & 1 == 1, peer_bitmap_uuid & 1 == 1);
        let (ch_self, ch_peer) = (self.bitmap.count(), peer_bits);
        // Ties go to the node whose name sorts higher, on both sides alike.
        let resolve = self.cfg.name < self.cfg.peer_name;
        let why = |s: &str| format!("after-sb-0pri {policy}: {s}");
        let least = |s: &str| {
            let v = if ch_self != ch_peer {
                ch_self > ch_peer
            } else {
                !resolve
            };
            (Some(v), why(&format!("{s}the node with fewer changed blocks ({ch_self} here, {ch_peer} there) discards")))
        };
        match policy {
            P::Disconnect => (None, why("no automatic recovery")),
            P::DiscardNode(n) if *n == self.cfg.name => (Some(false), why("this node discards")),
            P::DiscardNode(_) => (Some(true), why("the peer discards")),
            P::DiscardYoungerPrimary | P::DiscardOlderPrimary if me != peer => {
                let younger_discards = *policy == P::DiscardYoungerPrimary;
                // Bit 0 of a bitmap UUID: it was made by a Primary when the nodes split.
                let keep = if younger_discards { me } else { peer };
                (
                    Some(keep),
                    why(if keep {
                        "the peer discards"
                    } else {
                        "this node discards"
                    }),
                )
            }
            P::DiscardYoungerPrimary | P::DiscardOlderPrimary => {
                least("no primary history to decide by; ")
            }
            P::DiscardZeroChanges => match (ch_self, ch_peer) {
                (0, 0) => (Some(!resolve), why("neither changed anything")),
                (_, 0) => (Some(true), why("the peer changed nothing and discards")),
                (0, _) => (Some(false), why("this node changed nothing and discards")),
                _ => (
                    None,
                    why(&format!("both changed ({ch_self} and {ch_peer} blocks)")),
                ),
            },
            P::DiscardLeastChanges => least(""),
        }
    }

    /// Picks the split-brain policy by the number of Primaries and applies it.
    fn after_split_brain(
        &self,
        p_role: Role,
        peer_bitmap_uuid: u64,
        peer_bits: u64,
    ) -> (Option<bool>, String) {
        use crate::config::{AfterSb1Pri as P1, AfterSb2Pri as P2};
        let primaries =
            usize::from(self.role == Role::Primary) + usize::from(p_role == Role::Primary);
        match primaries {
            0 => self.after_sb_0pri(peer_bitmap_uuid, peer_bits),
            1 => {
                let policy = self.cfg.after_sb_1pri;
                let i_am_primary = self.role == Role::Primary;
                match policy {
                    P1::Disconnect => (None, format!("after-sb-1pri {policy}")),
                    P1::DiscardSecondary => (
                        Some(i_am_primary),
                        format!("after-sb-1pri {policy}: the Secondary discards"),
                    ),
                    P1::Consensus => {
                        let (v, why) = self.after_sb_0pri(peer_bitmap_uuid, peer_bits);
                        // Only if after-sb-0pri would discard the Secondary too.
                        match v {
                            Some(keep) if keep == i_am_primary => {
                                (v, format!("after-sb-1pri consensus with {why}"))
                            }
                            _ => (
                                None,
                                format!(
                                    "after-sb-1pri consensus: {why} does not discard the Secondary"
                                ),
                            ),
                        }
                    }
                    P1::CallPriLostAfterSb | P1::ViolentlyAs0p => {
                        let (v, why) = self.after_sb_0pri(peer_bitmap_uuid, peer_bits);
                        (v, format!("after-sb-1pri {policy} with {why}"))
                    }
                }
            }
            _ => {
                let policy = self.cfg.after_sb_2pri;
                match policy {
                    P2::Disconnect => (None, format!("after-sb-2pri {policy}")),
                    P2::CallPriLostAfterSb | P2::ViolentlyAs0p => {
                        let (v, why) = self.after_sb_0pri(peer_bitmap_uuid, peer_bits);
                        (v, format!("after-sb-2pri {policy} with {why}"))
                    }
                }
            }
        }
    }

    /// Exchanges sizes, UUIDs and state again and decides the sync direction anew.
    /// A rehandshake this node starts (its UUIDs changed): what it knew of the peer is stale
    /// until the peer answers with its own.
    fn rehandshake_fresh(&mut self) {
        self.peer = Peer {
            disk: self.peer.disk,
            ..Peer::default()
        };
        self.rehandshake();
    }

    fn rehandshake(&mut self) {
        self.repl = ReplState::WFReportParams;
        self.out.push(Action::Send(Packet::Sizes {
            backing_sect: self.cfg.backing_bytes / 512,
            user_sect: 0,
            current_sect: self.md.la_size_sect,
        }));
        self.send_uuids();
        self.send_state();
    }

    fn send_uuids(&mut self) {
        let mut flags = 0;
        if self.discard_my_data {
            flags |= uuid_flags::DISCARD_MY_DATA;
        }
        if self.md.flags & flags::CRASHED_PRIMARY != 0 {
            flags |= uuid_flags::CRASHED_PRIMARY;
        }
        if self.disk == DiskState::Inconsistent {
            flags |= uuid_flags::INCONSISTENT;
        }
        self.out.push(Action::Send(Packet::Uuids {
            uuids: self.md.uuids,
            bitmap_bits: self.bitmap.count(),
            flags,
        }));
    }

    fn refuse(&mut self, reason: String) {
        self.out.push(Action::DropConnection {
            reason: reason.clone(),
        });
        self.lose_peer(reason, ConnState::StandAlone);
    }

    fn maybe_handshake(&mut self) {
        if self.repl != ReplState::WFReportParams {
            return;
        }
        let (Some((p_backing, p_user, p_current)), Some((p_uuids, p_bits, p_flags)), Some(p_role)) =
            (self.peer.sizes, self.peer.uuids, self.peer.role)
        else {
            return;
        };
        let my_sect = self.cfg.backing_bytes / 512;
        let mut agreed = my_sect.min(p_backing);
        if p_user > 0 {
            agreed = agreed.min(p_user);
        }
        let la = self.md.la_size_sect.max(p_current);
        if la > 0 && agreed < la {
            return self.refuse(format!(
                "the peer's disk is too small: {} bytes usable, but the device is {} bytes",
                agreed * 512,
                la * 512
            ));
        }
        let decision = uuid::compare(
            &self.md.uuids,
            &p_uuids,
            self.md.flags & flags::CRASHED_PRIMARY != 0,
            p_flags & uuid_flags::CRASHED_PRIMARY != 0,
        );
        // DRBD's rule: when exactly one side is Inconsistent, disk states beat generations and
        // the Inconsistent side is the target (else a SyncTarget interrupted after its peer
        // crashed, with more bits than the peer, would be picked as source and refuse forever).
        // As in DRBD this comes before split-brain handling: an Inconsistent side's data was
        // already given up, so a split brain has nothing left to decide. With a common bitmap
        // UUID the blocks of both bitmaps are copied, else everything (simulator seed 2527: a
        // split-brain resync cut before the target got the SyncUuid left the target's bitmap
        // UUID only in the source's history, and the pair stayed StandAlone for good).
        let p_disk = self.peer.disk.unwrap_or(DiskState::DUnknown);
        let has_data = |d: DiskState| d > DiskState::Inconsistent && d != DiskState::DUnknown;
        let by_disk_state = if self.disk == DiskState::Inconsistent && has_data(p_disk) {
            Some(false)
        } else if p_disk == DiskState::Inconsistent && has_data(self.disk) {
            Some(true)
        } else {
            None
        };
        let decision = match (decision, by_disk_state) {
            (SyncDecision::SplitBrain | SyncDecision::SplitBrainDisconnect, Some(source)) => {
                let full = decision == SyncDecision::SplitBrainDisconnect;
                self.notify(format!(
                    "both sides changed, but {} Inconsistent: becoming sync {}{} due to disk states",
                    if source { "the peer is" } else { "this node is" },
                    if source { "source" } else { "target" },
                    if full { " of everything" } else { "" }
                ));
                match (source, full) {
                    (true, false) => SyncDecision::SourceBitmap,
                    (true, true) => SyncDecision::SourceFull,
                    (false, false) => SyncDecision::TargetBitmap,
                    (false, true) => SyncDecision::TargetFull,
                }
            }
            (d, _) => d,
        };
        let split_brain = matches!(
            decision,
            SyncDecision::SplitBrain | SyncDecision::SplitBrainDisconnect
        );
        if !split_brain
            && p_role == Role::Primary
            && self.role == Role::Primary
            && !self.cfg.allow_two_primaries
        {
            return self.refuse("both nodes are Primary; refusing to connect".into());
        }
        if la == 0 || self.md.la_size_sect != la {
            self.md.la_size_sect = if la == 0 { agreed } else { la };
            self.persist();
        }
        let i_am_source = match decision {
            SyncDecision::NoSync if self.bitmap.count() > 0 || p_bits > 0 => {
                // Same generation but blocks marked out of sync (online verify found them):
                // resync exactly those, from the Primary, else from the side that has bits.
                // An UpToDate side beats a Consistent one (a crashed Secondary's hot extents
                // are suspect on its own disk, not on the peer's; simulator seed 10 with
                // writes during the handshake: the crashed side had more bits and overwrote
                // an acknowledged write).
                let my_bits = self.bitmap.count();
                let (me_up, peer_up) = (
                    self.disk == DiskState::UpToDate,
                    p_disk == DiskState::UpToDate,
                );
                self.role == Role::Primary
                    || (p_role != Role::Primary
                        && (me_up && !peer_up
                            || (me_up == peer_up
                                && (my_bits > p_bits
                                    || (my_bits == p_bits && self.cfg.name < self.cfg.peer_name)))))
            }
            SyncDecision::NoSync => {
                let usable = |d: DiskState| d >= DiskState::Outdated && d != DiskState::DUnknown;
                if usable(self.disk) && usable(p_disk) {
                    self.disk = DiskState::UpToDate;
                    self.peer.disk = Some(DiskState::UpToDate);
                    self.persist();
                }
                self.repl = ReplState::Established;
                self.send_state();
                self.notify(format!("replication Established (peer {p_role}/{p_disk})"));
                return;
            }
            SyncDecision::SourceFull | SyncDecision::SourceBitmap => true,
            SyncDecision::TargetFull | SyncDecision::TargetBitmap => false,
            SyncDecision::SplitBrain | SyncDecision::SplitBrainDisconnect => {
                self.out.push(Action::RunHandler {
                    name: "split-brain",
                });
                let auto = decision == SyncDecision::SplitBrain || self.cfg.always_asbp;
                let (mut verdict, mut why) = if auto {
                    self.after_split_brain(p_role, p_uuids[1], p_bits)
                } else {
                    (
                        None,
                        "no common bitmap UUID, no automatic recovery".to_string(),
                    )
                };
                // Manual recovery: `connect --discard-my-data` on the victim.
                let peer_discards = p_flags & uuid_flags::DISCARD_MY_DATA != 0;
                let mut told = false;
                match (self.discard_my_data, peer_discards) {
                    (true, false) => {
                        told = true;
                        (verdict, why) =
                            (Some(false), "this node was told --discard-my-data".into())
                    }
                    (false, true) => {
                        (verdict, why) = (Some(true), "the peer was told --discard-my-data".into())
                    }
                    _ => {}
                }
                let Some(source) = verdict else {
                    self.split_brain = Some(format!(
                        "split-brain: {why}; StandAlone until resolved by hand"
                    ));
                    return self.refuse(format!(
                        "Split-Brain detected, dropping connection! ({why})"
                    ));
                };
                let outcome = if source {
                    "the peer discards its changes and resyncs from this node"
                } else {
                    "this node discards its changes and resyncs from the peer"
                };
                self.split_brain = Some(format!("split-brain resolved: {why}: {outcome}"));
                self.notify(format!(
                    "split-brain detected and resolved ({why}): {outcome}"
                ));
                // A Primary told to discard its data meets rr-conflict below, as in DRBD; one
                // a policy made the loser runs pri-lost-after-sb.
                if !source && self.role == Role::Primary && !told {
                    self.out.push(Action::RunHandler {
                        name: "pri-lost-after-sb",
                    });
                    return self.refuse(format!(
                        "Split-Brain: this Primary lost ({why}); demote it, then connect again"
                    ));
                }
                source
            }
            SyncDecision::UnrelatedData => {
                return self.refuse("Unrelated data, aborting! (the peer's data has no common generation with mine)".into());
            }
        };
        // Disk states beat generations (see by_disk_state above).
        let i_am_source = if split_brain {
            i_am_source
        } else {
            by_disk_state.unwrap_or(i_am_source)
        };
        if !i_am_source && self.role == Role::Primary {
            let why = "I am Primary but the peer has newer data: I would become SyncTarget";
            if self.cfg.rr_conflict == crate::config::RrConflict::RetryConnect {
                let reason = format!("{why} (rr-conflict retry-connect)");
                self.out.push(Action::DropConnection {
                    reason: reason.clone(),
                });
                return self.lose_peer(reason, ConnState::Connecting);
            }
            if self.cfg.rr_conflict == crate::config::RrConflict::CallPriLost {
                self.out.push(Action::RunHandler { name: "pri-lost" });
            }
            return self.refuse(format!("{why} (rr-conflict {})", self.cfg.rr_conflict));
        }
        if i_am_source && self.disk < DiskState::Outdated {
            return self.refuse(format!(
                "the sync would copy my {} disk to the peer; refusing",
                self.disk
            ));
        }
        match decision {
            SyncDecision::SourceFull | SyncDecision::TargetFull => {
                self.bitmap.set_all();
                if i_am_source {
                    self.start_sync_source();
                } else {
                    self.start_sync_target();
                }
            }
            _ => {
                self.repl = ReplState::WFBitMap;
                self.pending_sync = Some(i_am_source);
                self.send_bitmap();
                self.maybe_start_pending_sync();
            }
        }
    }

    fn send_bitmap(&mut self) {
        let words = self.bitmap.words().to_vec();
        let chunk = crate::wire::MAX_BITMAP_WORDS_PER_PACKET;
        let n = words.len().div_ceil(chunk).max(1);
        for i in 0..n {
            let slice = &words[(i * chunk).min(words.len())..((i + 1) * chunk).min(words.len())];
            self.out.push(Action::Send(Packet::Bitmap {
                offset_words: (i * chunk) as u64,
                words: slice.to_vec(),
                last: i + 1 == n,
            }));
        }
    }

    fn maybe_start_pending_sync(&mut self) {
        if self.repl != ReplState::WFBitMap || !self.peer.bitmap_done {
            return;
        }
        match self.pending_sync.take() {
            Some(true) => self.start_sync_source(),
            Some(false) => self.start_sync_target(),
            None => {}
        }
    }

    fn new_resync(&self) -> Resync {
        Resync {
            cursor: 0,
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            total_blocks: self.bitmap.count(),
            started_ms: self.now_ms,
            budget: self.cfg.resync_window_bytes as f64,
            last_refill_ms: self.now_ms,
            samples: VecDeque::from([(self.now_ms, self.bitmap.count())]),
            finishing: false,
            peer_started: false,
        }
    }

    fn start_sync_source(&mut self) {
        self.repl = ReplState::SyncSource;
        self.peer.disk = Some(DiskState::Inconsistent);
        self.resync = Some(self.new_resync());
        // A new bitmap UUID that the target takes as its current one: if the resync is
        // interrupted, the next connection finds "target current == source bitmap" and resumes
        // from the bitmaps instead of starting over (DRBD's P_SYNC_UUID).
        let bm = self.md.uuids[1];
        let resuming = bm != 0
            && self
                .peer
                .uuids
                .is_some_and(|(p, _, _)| p[0] & !1 == bm & !1);
        let uuid = if resuming {
            // The target already holds this sync UUID (an interrupted resync resumes): keep
            // it, so repeated interruptions do not push the history's generations out.
            bm
        } else if bm != 0 && bm != UUID_JUST_CREATED {
            // The old bitmap UUID goes into the history (DRBD's drbd_uuid_set): a target that
            // never got the SyncUuid still finds its current UUID here and is not "unrelated".
            self.md.uuids[3] = self.md.uuids[2];
            self.md.uuids[2] = bm;
            bm.wrapping_add(1 << 48)
        } else {
            self.new_uuid()
        };
        self.md.uuids[1] = uuid;
        self.persist();
        self.out.push(Action::WriteBitmap);
        self.out.push(Action::Send(Packet::SyncUuid { uuid }));
        self.notify(format!(
            "replication SyncSource ({} KiB to sync)",
            self.bitmap.count() * 4
        ));
    }

    fn start_sync_target(&mut self) {
        self.repl = ReplState::SyncTarget;
        self.disk = DiskState::Inconsistent;
        self.resync = Some(self.new_resync());
        self.persist();
        self.out.push(Action::WriteBitmap);
        self.send_state();
        self.notify(format!(
            "replication SyncTarget ({} KiB to sync)",
            self.bitmap.count() * 4
        ));
        self.rs_pump();
    }

    /// SyncTarget: requests out-of-sync ranges in disk order, within the window and the rate.
    fn rs_pump(&mut self) {
        if self.repl != ReplState::SyncTarget || self.conn != ConnState::Connected {
            return;
        }
        let size = self.size_bytes();
        let mut max_blocks = (self.cfg.resync_request_bytes / BLOCK_BYTES).max(1);
        if let Some(alg) = self.cfg.csums_alg {
            // One digest per block, all in one packet.
            max_blocks =
                max_blocks.min((crate::wire::MAX_DIGEST_BYTES / digest_len(alg)).max(1) as u64);
        }
        let now = self.now_ms;
        // Application IO comes first: while it is active (within the last second) the resync
        // runs at c-min-rate at most.
        let app_active = self
            .last_app_io_ms
            .is_some_and(|t| now.saturating_sub(t) < 1000);
        let mut rate = self.cfg.resync_rate_bytes_per_s;
        if app_active && self.cfg.resync_min_rate_bytes_per_s > 0 {
            rate = rate.min(self.cfg.resync_min_rate_bytes_per_s);
        }
        let rate = rate as f64;
        let mut window = self.cfg.resync_window_bytes;
        if window == 0 && self.cfg.resync_delay_target_ms > 0 {
            // c-delay-target: in flight = the measured rate times the target delay.
            let measured = self.status(now).progress.map_or(0, |p| p.rate_kib_s) * 1024;
            window = measured * self.cfg.resync_delay_target_ms / 1000;
        }
        let window = window.max(BLOCK_BYTES);
        // The bucket holds at least one full request so a slow rate still makes progress.
        let bucket = window.max(max_blocks * BLOCK_BYTES) as f64;
        let mut restarted = false;
        loop {
            let Some(rs) = self.resync.as_mut() else {
                return;
            };
            if rs.finishing {
                return;
            }
            let dt = now.saturating_sub(rs.last_refill_ms) as f64 / 1000.0;
            rs.budget = (rs.budget + dt * rate).min(bucket);
            rs.last_refill_ms = now;
            if rs.in_flight_bytes >= window {
                return;
            }
            let Some((first, blocks)) = self.bitmap.next_run(rs.cursor, max_blocks) else {
                if rs.in_flight_bytes == 0 && rs.in_flight.is_empty() {
                    if self.bitmap.count() > 0 && !restarted {
                        rs.cursor = 0;
                        restarted = true;
                        continue;
                    }
                    rs.finishing = true;
                    let io = self.io(IoPurpose::ResyncDoneFlush);
                    self.out.push(Action::LocalFlush { io });
                }
                return;
            };
            let offset = first * BLOCK_BYTES;
            if offset >= size {
                // Blocks past the agreed size do not exist on the device.
                self.bitmap
                    .clear_range(offset, (blocks * BLOCK_BYTES).max(u64::MAX / 4 - offset));
                continue;
            }
            let len = (blocks * BLOCK_BYTES).min(size - offset);
            if rs.budget < len as f64 {
                return; // the next tick refills the bucket
            }
            rs.budget -= len as f64;
            rs.cursor = first + blocks;
            let id = self.next_id;
            self.next_id += 1;
            rs.in_flight.insert(
                id,
                (offset, u32::try_from(len).expect("resync request size")),
            );
            rs.in_flight_bytes += len;
            let len = u32::try_from(len).expect("resync request size");
            if self.cfg.csums_alg.is_some() {
                // csums-alg: read our copy, send its digests; the source sends data only if
                // they differ.
                let io = self.io(IoPurpose::CsumRead { id, offset, len });
                self.out.push(Action::LocalRead { io, offset, len });
            } else {
                self.out
                    .push(Action::Send(Packet::RsDataRequest { id, offset, len }));
            }
        }
    }

    fn finish_sync_target(&mut self) {
        if self.repl != ReplState::SyncTarget {
            return;
        }
        self.discard_my_data = false;
        self.resync = None;
        self.repl = ReplState::Established;
        self.disk = DiskState::UpToDate;
        if let Some((p, _, _)) = self.peer.uuids {
            let history = if p[1] != 0 { p[1] } else { p[2] };
            self.md.uuids = [p[0], 0, history, if p[1] != 0 { p[2] } else { p[3] }];
        }
        self.bitmap.clear_all();
        self.persist();
        self.out.push(Action::WriteBitmap);
        self.send_state();
        self.send_uuids();
        self.notify("resync finished: disk UpToDate".into());
    }

    fn finish_sync_source(&mut self) {
        self.resync = None;
        self.md.flags &= !flags::CRASHED_PRIMARY;
        self.repl = ReplState::Established;
        if self.md.uuids[1] != 0 {
            self.md.uuids[3] = self.md.uuids[2];
            self.md.uuids[2] = self.md.uuids[1];
            self.md.uuids[1] = 0;
        }
        self.bitmap.clear_all();
        // A Consistent source (a crashed Primary restarted) now has a peer holding exactly its
        // data: both are the newest there is, as DRBD's resync-finished makes both UpToDate.
        let was_consistent = self.disk == DiskState::Consistent;
        if was_consistent {
            self.disk = DiskState::UpToDate;
        }
        self.persist();
        self.out.push(Action::WriteBitmap);
        if was_consistent {
            self.send_state();
        }
        self.send_uuids();
        self.notify("resync finished: peer UpToDate".into());
    }

    /// Interprets the fence-peer handler's exit code as DRBD does.
    fn fence_peer_done(&mut self, code: i32) {
        self.fencing_peer = false;
        let (resume, what) = match code {
            3 => (true, "the peer's disk is Inconsistent"),
            4 => (true, "the peer's disk was outdated"),
            5 => (self.disk == DiskState::UpToDate, "the peer is unreachable"),
            6 => {
                // The peer is Primary: this node's data is the stale one.
                self.disk = DiskState::Outdated;
                self.persist();
                (false, "the peer is Primary; this node outdated itself")
            }
            7 => (true, "the peer was fenced"),
            _ => (false, "the fence-peer handler failed"),
        };
        if matches!(code, 3 | 4 | 7) {
            self.md.flags |= flags::PEER_OUT_DATED;
            self.out.push(Action::WriteMd(self.md));
        }
        if self.frozen && resume {
            self.frozen = false;
            self.notify(format!("fence-peer exit {code}: {what}; IO resumed"));
            self.start_waiting();
        } else {
            self.notify(format!(
                "fence-peer exit {code}: {what}{}",
                if self.frozen { "; IO stays frozen" } else { "" }
            ));
        }
    }

    /// True while new application IO is held (resource-and-stonith fencing).
    pub fn io_frozen(&self) -> bool {
        self.frozen
    }

    fn lose_peer(&mut self, reason: String, next: ConnState) {
        let was_up_to_date_peer = self.peer.disk == Some(DiskState::UpToDate);
        let was_sync_source = self.repl == ReplState::SyncSource;
        self.conn = next;
        self.repl = ReplState::Off;
        let mut released = Vec::new();
        for e in std::mem::take(&mut self.tl) {
            for (offset, len) in e.ranges {
                self.bitmap.set_range(offset, len);
                released.push((offset, len));
            }
        }
        // The bitmap covers them now (written before any eviction).
        for (offset, len) in released {
            self.al_put(offset, len);
        }
        self.barrier_acked = self.last_barrier_sent;
        self.cur_epoch_writes = 0;
        self.epoch_closed = false;
        let waiting: Vec<u64> = self
            .writes
            .iter()
            .filter(|(_, w)| w.started && !matches!(w.net, NetWait::Done | NetWait::None))
            .map(|(&s, _)| s)
            .collect();
        for seq in waiting {
            let w = self.writes.get_mut(&seq).expect("exists");
            w.net = NetWait::None;
            self.maybe_complete(seq);
        }
        for f in self.flushes.values_mut() {
            f.barrier = None;
        }
        let ids: Vec<u64> = self.flushes.keys().copied().collect();
        for id in ids {
            self.maybe_complete_flush(id);
        }
        self.rx_epochs.clear();
        self.start_rx_writes();
        self.resync = None;
        self.ov = None;
        self.pending_sync = None;
        if let Some((req, _, _)) = self.promoting.take() {
            self.out.push(Action::Reply {
                req,
                result: Err(format!(
                    "the connection was lost while the peer was asked to agree ({reason}); try again"
                )),
            });
        }
        if !self.rs_unstable.is_empty() {
            self.flush_resync_writes();
        }
        if self.role == Role::Primary
            && self.cfg.fencing != crate::config::FencingPolicy::DontCare
            && !self.fencing_peer
            && self.peer.disk.is_none_or(|d| d >= DiskState::Consistent)
        {
            // The peer may still be writable: ask the fence-peer handler to outdate or fence
            // it; with resource-and-stonith no new write starts until it answers.
            self.fencing_peer = true;
            self.frozen = self.cfg.fencing == crate::config::FencingPolicy::ResourceAndStonith;
            self.out.push(Action::FencePeer);
            if self.frozen {
                self.notify("IO frozen: the peer is being fenced (fence-peer handler)".into());
            }
        }
        // A new generation when a Primary loses a peer that holds its data (DRBD's rule), and
        // also when it loses its SyncTarget: the target may have finished unseen, taken this
        // generation and gone on (promoted) without us; keeping the generation would make our
        // later writes look like the target's past and be discarded silently on reconnect
        // (simulator seed 464). The unfinished target still resumes from the bitmaps (see
        // new_current_uuid_as).
        if self.role == Role::Primary
            && self.disk == DiskState::UpToDate
            && ((was_up_to_date_peer && self.md.uuids[1] == 0)
                || (was_sync_source && self.md.uuids[1] != 0))
        {
            self.new_current_uuid_as(true);
        }
        self.peer = Peer::default();
        self.persist();
        self.out.push(Action::WriteBitmap);
        self.notify(format!("connection {next}: {reason}"));
        self.last_error = Some(reason);
    }

    fn tick(&mut self) {
        let now = self.now_ms;
        if self.conn == ConnState::Connected {
            match self.ping_sent_ms {
                Some(sent)
                    if now.saturating_sub(sent)
                        > self.cfg.ping_timeout_ms.max(self.cfg.ping_int_ms) =>
                {
                    let reason = "the peer did not answer a ping in time".to_string();
                    self.out.push(Action::DropConnection {
                        reason: reason.clone(),
                    });
                    return self.lose_peer(reason, ConnState::Connecting);
                }
                None if now.saturating_sub(self.last_rx_ms) >= self.cfg.ping_int_ms => {
                    self.ping_sent_ms = Some(now);
                    self.out.push(Action::Send(Packet::Ping));
                }
                _ => {}
            }
            let stalled = self.writes.values().any(|w| {
                w.started
                    && matches!(w.net, NetWait::Sent | NetWait::RecvAck | NetWait::WriteAck)
                    && now.saturating_sub(w.sent_at_ms) > self.cfg.ack_timeout_ms
            });
            if stalled {
                let reason = format!(
                    "the peer did not acknowledge a write within {} ms",
                    self.cfg.ack_timeout_ms
                );
                self.out.push(Action::DropConnection {
                    reason: reason.clone(),
                });
                return self.lose_peer(reason, ConnState::Connecting);
            }
        }
        if self.repl == ReplState::VerifyT && now.saturating_sub(self.ov_t_last_ms) > 2000 {
            self.repl = ReplState::Established;
        }
        if let Some(ov) = self.ov.as_mut() {
            if ov.samples.back().is_none_or(|&(t, _)| now >= t + 1000) {
                ov.samples.push_back((now, ov.done_blocks));
                while ov.samples.len() > 10 {
                    ov.samples.pop_front();
                }
            }
        }
        let count = self.bitmap.count();
        let mut persist_progress = false;
        if let Some(rs) = self.resync.as_mut() {
            if rs.samples.back().is_none_or(|&(t, _)| now >= t + 1000) {
                rs.samples.push_back((now, count));
                while rs.samples.len() > 10 {
                    rs.samples.pop_front();
                }
                persist_progress = true;
            }
        }
        if persist_progress
            || self
                .ov
                .as_ref()
                .is_some_and(|ov| ov.samples.back().is_some_and(|&(t, _)| t == now))
        {
            if let Some(p) = self.status(now).progress {
                self.notify(format!(
                    "{} done:{:.1}% rate:{}KiB/s eta:{}s",
                    self.repl, p.done_percent, p.rate_kib_s, p.eta_s
                ));
            }
        }
        if persist_progress {
            // Resync progress survives a crash: once a second the bitmap goes to disk; on the
            // SyncTarget only after a flush, so no bit is cleared before its data is stable.
            if self.repl == ReplState::SyncTarget {
                self.flush_resync_writes();
            } else {
                self.out.push(Action::WriteBitmap);
            }
        }
        self.rs_pump();
    }
}
