//! Stage two of the configuration: the validated, typed form.
//!
//! Every value here has passed its range check. `common` has been merged into each resource
//! (a resource's own option wins). Sizes are bytes, rates bytes per second and times carry
//! their unit in the field name, whatever unit DRBD's syntax used.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::syntax::Span;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The `global` section.
    pub global: Global,
    /// Every resource, in file order.
    pub resources: Vec<Resource>,
    /// The `cluster` block, if any (DESIGN §8).
    pub cluster: Option<Cluster>,
    /// The `targetd` block, if any: `targetd`'s exports, validated here too so that every
    /// binary agrees on the file and `dump` prints it back.
    pub targetd: Option<target::conf::targetd::Targetd>,
    /// Options that DRBD knows but tandem does not implement yet, with where they were.
    pub warnings: Vec<Warning>,
}

pub use target::conf::Warning;

/// An option or section DRBD knows that tandem accepts and ignores (with a warning), kept as
/// written so that `dump` can print it back.
pub type Unimplemented = super::syntax::Item;

/// The `global` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Global {
    /// `usage-count`: tandem never reports usage; kept only so dump can show it.
    pub usage_count: Option<String>,
    /// Global options not implemented.
    pub unimplemented: Vec<Unimplemented>,
}

/// Replication protocol: when a write is complete (DESIGN §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Local disk done and data queued to the peer's socket.
    A,
    /// Also received by the peer (RECV_ACK).
    B,
    /// Also written by the peer (WRITE_ACK).
    #[default]
    C,
}

/// `after-sb-0pri`: split brain detected, no Primary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AfterSb0Pri {
    /// Stay StandAlone; a human decides.
    #[default]
    Disconnect,
    /// Discard the data of the node that became Primary last.
    DiscardYoungerPrimary,
    /// Discard the data of the node that became Primary first.
    DiscardOlderPrimary,
    /// A node with no changes since the split loses.
    DiscardZeroChanges,
    /// The node with fewer changed blocks loses.
    DiscardLeastChanges,
    /// The named node always loses.
    DiscardNode(String),
}

/// `after-sb-1pri`: split brain detected, one Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSb1Pri {
    /// Stay StandAlone.
    #[default]
    Disconnect,
    /// Discard the Secondary only if the after-sb-0pri rule would discard it too.
    Consensus,
    /// Discard the Secondary's data.
    DiscardSecondary,
    /// Apply after-sb-0pri; if the Primary loses, call `pri-lost-after-sb`.
    CallPriLostAfterSb,
    /// Discard the Secondary's data (DRBD's alias used with violently-as0p).
    ViolentlyAs0p,
}

/// `after-sb-2pri`: split brain detected, two Primaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSb2Pri {
    /// Stay StandAlone.
    #[default]
    Disconnect,
    /// Apply after-sb-0pri; the loser calls `pri-lost-after-sb`.
    CallPriLostAfterSb,
    /// Apply after-sb-0pri even to a Primary (dangerous; DRBD's violently-as0p).
    ViolentlyAs0p,
}

/// `rr-conflict`: the sync decision would make a Primary the SyncTarget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RrConflict {
    /// Stay StandAlone.
    #[default]
    Disconnect,
    /// Drop the connection and try again.
    RetryConnect,
    /// Call `pri-lost` on the Primary that would be the target.
    CallPriLost,
    /// Sync anyway (dangerous).
    Violently,
}

/// Digest algorithms for `verify-alg`, `csums-alg` and `data-integrity-alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    /// CRC-32C (Castagnoli); fast, for integrity, not against an attacker.
    Crc32c,
    /// MD5.
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
}

/// HMAC hash for `cram-hmac-alg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlg {
    /// HMAC-MD5.
    Md5,
    /// HMAC-SHA1.
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// `fencing`: what to do about the peer when the connection is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FencingPolicy {
    /// Do nothing.
    #[default]
    DontCare,
    /// Call the fence-peer handler; keep IO going.
    ResourceOnly,
    /// Freeze IO, call the fence-peer handler, resume by its answer.
    ResourceAndStonith,
}

/// `on-io-error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnIoError {
    /// Report the error to the upper layer.
    PassOn,
    /// Run the local-io-error handler.
    CallLocalIoError,
    /// Detach the disk and go Diskless, serving from the peer.
    #[default]
    Detach,
}

/// The `net` section.
#[derive(Debug, Clone, PartialEq)]
pub struct NetOptions {
    /// `protocol`.
    pub protocol: Protocol,
    /// `after-sb-0pri`.
    pub after_sb_0pri: AfterSb0Pri,
    /// `after-sb-1pri`.
    pub after_sb_1pri: AfterSb1Pri,
    /// `after-sb-2pri`.
    pub after_sb_2pri: AfterSb2Pri,
    /// `rr-conflict`.
    pub rr_conflict: RrConflict,
    /// `always-asbp`: apply the policies even without a common ancestor.
    pub always_asbp: bool,
    /// `allow-two-primaries`.
    pub allow_two_primaries: bool,
    /// `verify-alg`.
    pub verify_alg: Option<DigestAlg>,
    /// `csums-alg`.
    pub csums_alg: Option<DigestAlg>,
    /// `data-integrity-alg`.
    pub data_integrity_alg: Option<DigestAlg>,
    /// `cram-hmac-alg`.
    pub cram_hmac_alg: Option<HmacAlg>,
    /// `shared-secret`.
    pub shared_secret: Option<String>,
    /// `sndbuf-size`; 0 lets the kernel tune it.
    pub sndbuf_size_bytes: u64,
    /// `rcvbuf-size`; 0 lets the kernel tune it.
    pub rcvbuf_size_bytes: u64,
    /// `max-buffers`: in-flight 4 KiB buffers per peer.
    pub max_buffers: u32,
    /// `max-epoch-size`: writes per epoch before a barrier.
    pub max_epoch_size: u32,
    /// `timeout`: the peer must answer within this.
    pub timeout_ms: u32,
    /// `connect-int`: retry interval while connecting.
    pub connect_int_ms: u32,
    /// `ping-int`: idle time before a ping.
    pub ping_int_ms: u32,
    /// `ping-timeout`: a ping must be answered within this.
    pub ping_timeout_ms: u32,
    /// `ko-count`: a peer that stalls a write this many timeouts is dropped (0 = never).
    pub ko_count: u32,
    /// `fencing` (DRBD 9 puts it in `net`, 8.4 in `disk`; both are accepted).
    pub fencing: FencingPolicy,
    /// Known, not implemented.
    pub unimplemented: Vec<Unimplemented>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            protocol: Protocol::C,
            after_sb_0pri: AfterSb0Pri::Disconnect,
            after_sb_1pri: AfterSb1Pri::Disconnect,
            after_sb_2pri: AfterSb2Pri::Disconnect,
            rr_conflict: RrConflict::Disconnect,
            always_asbp: false,
            allow_two_primaries: false,
            verify_alg: None,
            csums_alg: None,
            data_integrity_alg: None,
            cram_hmac_alg: None,
            shared_secret: None,
            sndbuf_size_bytes: 0,
            rcvbuf_size_bytes: 0,
            max_buffers: 2048,
            max_epoch_size: 2048,
            timeout_ms: 6_000,
            connect_int_ms: 10_000,
            ping_int_ms: 10_000,
            ping_timeout_ms: 500,
            ko_count: 7,
            fencing: FencingPolicy::DontCare,
            unimplemented: Vec::new(),
        }
    }
}

/// The `disk` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskOptions {
    /// `size`: use only this much of the backing disk.
    pub size_bytes: Option<u64>,
    /// `on-io-error`.
    pub on_io_error: OnIoError,
    /// `disk-flushes`: flush the backing disk at barriers.
    pub disk_flushes: bool,
    /// `md-flushes`: flush after metadata and AL writes.
    pub md_flushes: bool,
    /// `resync-rate`: fixed resync rate when `c-plan-ahead` is 0.
    pub resync_rate_bytes_per_s: u64,
    /// `c-plan-ahead`: the controller's horizon; 0 disables the dynamic controller.
    pub c_plan_ahead_ms: u32,
    /// `c-fill-target`: resync data to keep in flight.
    pub c_fill_target_bytes: u64,
    /// `c-delay-target`: the resync reply delay to aim for (used when fill target is 0).
    pub c_delay_target_ms: u32,
    /// `c-max-rate`.
    pub c_max_rate_bytes_per_s: u64,
    /// `c-min-rate`: resync is slowed to this while application IO is active.
    pub c_min_rate_bytes_per_s: u64,
    /// `al-extents`: hot 4 MiB extents in the activity log.
    pub al_extents: u32,
    /// Known, not implemented.
    pub unimplemented: Vec<Unimplemented>,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            size_bytes: None,
            on_io_error: OnIoError::Detach,
            disk_flushes: true,
            md_flushes: true,
            resync_rate_bytes_per_s: 250 * 1024,
            c_plan_ahead_ms: 2_000,
            c_fill_target_bytes: 50 * 1024,
            c_delay_target_ms: 1_000,
            c_max_rate_bytes_per_s: 100 * 1024 * 1024,
            c_min_rate_bytes_per_s: 250 * 1024,
            al_extents: 1237,
            unimplemented: Vec::new(),
        }
    }
}

/// A section tandem accepts but does not implement any option of (`startup`, `options`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtherOptions {
    /// Everything given, in order.
    pub unimplemented: Vec<Unimplemented>,
}

/// The `handlers` section: event name to shell command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handlers {
    /// `(name, command)` in file order; names are DRBD's.
    pub commands: Vec<(String, String)>,
}

impl Handlers {
    /// The command for handler `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.commands
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_str())
    }
}

/// tandem's own `export` section: where the Primary serves the resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exports {
    /// `nbd ADDR` (port 10809 when ADDR has none).
    pub nbd: Option<SocketAddr>,
    /// `iscsi ADDR` (port 3260 when ADDR has none).
    pub iscsi: Option<SocketAddr>,
}

/// The backing disk of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingDisk {
    /// `disk none;`: a diskless node.
    None,
    /// A file or block device.
    Path(PathBuf),
}

/// Where a volume's metadata lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaDisk {
    /// At the end of the backing disk.
    Internal,
    /// In a separate file or device: the whole of it (flexible), or the 128 MiB slot `index`.
    External {
        /// The metadata file or device.
        path: PathBuf,
        /// `meta-disk PATH [INDEX]`: DRBD's fixed-size indexed external metadata.
        index: Option<u32>,
    },
}

/// One volume of a host (DRBD 8.4 style configs have exactly one, number 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The volume number.
    pub number: u32,
    /// `device`: the block device name users see (an NBD device with tandem); informational.
    pub device: Option<String>,
    /// `disk`.
    pub disk: BackingDisk,
    /// `meta-disk`; `None` only for a diskless volume.
    pub meta_disk: Option<MetaDisk>,
}

/// The replication endpoint of a host: `address [ipv4|ipv6] IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// IP and port.
    pub addr: SocketAddr,
}

/// An `on HOST` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host name as written; matched against `--node`.
    pub name: String,
    /// Where the section starts.
    pub span: Span,
    /// `node-id` (DRBD 9).
    pub node_id: Option<u32>,
    /// `address`.
    pub address: Option<Address>,
    /// The volumes, at least one.
    pub volumes: Vec<Volume>,
    /// `export { ... }` inside `on HOST`: where this host serves the resource, overriding the
    /// resource's `export` (tandem's extension, for nodes that need different addresses).
    pub export: Option<Exports>,
}

impl Host {
    /// Volume 0, or the first volume.
    pub fn first_volume(&self) -> &Volume {
        self.volumes
            .iter()
            .find(|v| v.number == 0)
            .unwrap_or(&self.volumes[0])
    }
}

/// A replicated resource, with `common` merged in.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource name (`r0`).
    pub name: String,
    /// Where the resource section starts.
    pub span: Span,
    /// `net`.
    pub net: NetOptions,
    /// `disk` (the options section).
    pub disk: DiskOptions,
    /// `startup`.
    pub startup: OtherOptions,
    /// `options`.
    pub options: OtherOptions,
    /// `handlers`.
    pub handlers: Handlers,
    /// `export`.
    pub export: Exports,
    /// The `on` sections, in file order.
    pub hosts: Vec<Host>,
    /// Resource-level statements DRBD knows and tandem ignores (`connection-mesh`, ...).
    pub unimplemented: Vec<Unimplemented>,
}

impl Resource {
    /// The `on NAME` section, compared as DRBD does (exact).
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// A resource seen from one node: this node's section and its peers'.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// The resource.
    pub resource: &'a Resource,
    /// This node's `on` section.
    pub local: &'a Host,
}

impl<'a> NodeView<'a> {
    /// Every other host, in file order.
    pub fn peers(&self) -> impl Iterator<Item = &'a Host> + 'a {
        let local = self.local.name.clone();
        self.resource.hosts.iter().filter(move |h| h.name != local)
    }
}

/// A fence method for a cluster node, tried in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceMethod {
    /// Switch the node's port off by SNMP IF-MIB.
    Ifmib {
        /// The switch's address (host or IP, port 161 unless given as `ip:port`).
        switch: String,
        /// SNMP community (v1/v2c).
        community: String,
        /// The port: an ifIndex number or an ifDescr name.
        port: String,
    },
    /// Write a poison pill into the node's SBD slot.
    Sbd,
}

/// A node of the cluster block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's name (matches `on NAME` sections and `--node`).
    pub name: String,
    /// Heartbeat addresses, one per link.
    pub addresses: Vec<std::net::IpAddr>,
    /// Fence methods in order.
    pub fence: Vec<FenceMethod>,
}

/// The cluster's `sbd` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSbd {
    /// The SBD device: a path or `iscsi://HOST[:PORT]/IQN/LUN`.
    pub device: String,
    /// The watchdog device.
    pub watchdog: PathBuf,
    /// `watchdog-timeout`: the watchdog fires this long after the last feed.
    pub watchdog_timeout_s: u32,
    /// `msgwait`: a poison pill counts as delivered after this long (at least twice the
    /// watchdog timeout).
    pub msgwait_s: u32,
}

/// A resource group that clusterd runs on the Primary of a replicated resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterResource {
    /// The replicated resource's name.
    pub name: String,
    /// Start the NBD export.
    pub export_nbd: bool,
    /// Start the iSCSI export.
    pub export_iscsi: bool,
    /// OCF agents: `(class:provider:type or provider:type, [(key, value)])`, in start order.
    pub ocf: Vec<(String, Vec<(String, String)>)>,
    /// Floating IPs with prefix length.
    pub vips: Vec<(std::net::IpAddr, u8)>,
    /// Failed monitors before the group moves (`migration-threshold`).
    pub migration_threshold: u32,
    /// `op start|stop|monitor ...;`: the OCF agents' operation timeouts and monitor interval.
    pub ops: OcfOps,
}

/// The operations of a cluster resource's OCF agents, as Pacemaker's `op` lines:
/// `op monitor interval=10s timeout=20s; op start timeout=90s; op stop timeout=90s;`. They
/// apply to every agent of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcfOps {
    /// `op start timeout=`.
    pub start_timeout_ms: u64,
    /// `op stop timeout=`.
    pub stop_timeout_ms: u64,
    /// `op monitor interval=`: how often a started group is monitored.
    pub monitor_interval_ms: u64,
    /// `op monitor timeout=`.
    pub monitor_timeout_ms: u64,
}

impl OcfOps {
    /// Without `op` lines: every operation 60 s, a monitor every 5 s.
    pub const DEFAULT: OcfOps = OcfOps {
        start_timeout_ms: 60_000,
        stop_timeout_ms: 60_000,
        monitor_interval_ms: 5_000,
        monitor_timeout_ms: 60_000,
    };
    /// The shortest interval or timeout `op` takes.
    pub const MIN_MS: u64 = 1_000;
    /// The longest interval or timeout `op` takes (a day).
    pub const MAX_MS: u64 = 86_400_000;
}

impl Default for OcfOps {
    fn default() -> OcfOps {
        OcfOps::DEFAULT
    }
}

/// The `cluster NAME { ... }` block (DESIGN §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster name.
    pub name: String,
    /// The nodes.
    pub nodes: Vec<ClusterNode>,
    /// `sbd`.
    pub sbd: Option<ClusterSbd>,
    /// `quorum { two-node yes; }`.
    pub two_node: bool,
    /// `quorum { wait-for-all yes; }` (implied by two-node unless set).
    pub wait_for_all: bool,
    /// `token`: silence after which a node is lost.
    pub token_ms: u32,
    /// `shared-secret`: the heartbeats' HMAC key. Without it the key is made of the cluster's
    /// resources' `shared-secret`s (and of nothing but the cluster name if none has one).
    pub shared_secret: Option<String>,
    /// Resource groups.
    pub resources: Vec<ClusterResource>,
    /// Alert programs.
    pub alerts: Vec<String>,
}

macro_rules! keyword_enum {
    ($ty:ty { $($variant:path => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every keyword this option accepts, for error messages.
            pub const KEYWORDS: &'static [&'static str] = &[$($text),+];
            /// Parses DRBD's keyword.
            pub fn from_keyword(s: &str) -> Option<Self> {
                match s { $($text => Some($variant),)+ _ => None }
            }
            /// DRBD's keyword.
            pub fn keyword(&self) -> &'static str {
                match self { $($variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.keyword())
            }
        }
    };
}

keyword_enum!(Protocol { Protocol::A => "A", Protocol::B => "B", Protocol::C => "C" });
keyword_enum!(AfterSb1Pri {
    AfterSb1Pri::Disconnect => "disconnect",
    AfterSb1Pri::Consensus => "consensus",
    AfterSb1Pri::DiscardSecondary => "discard-secondary",
    AfterSb1Pri::CallPriLostAfterSb => "call-pri-lost-after-sb",
    AfterSb1Pri::ViolentlyAs0p => "violently-as0p",
});
keyword_enum!(AfterSb2Pri {
    AfterSb2Pri::Disconnect => "disconnect",
    AfterSb2Pri::CallPriLostAfterSb => "call-pri-lost-after-sb",
    AfterSb2Pri::ViolentlyAs0p => "violently-as0p",
});
keyword_enum!(RrConflict {
    RrConflict::Disconnect => "disconnect",
    RrConflict::RetryConnect => "retry-connect",
    RrConflict::CallPriLost => "call-pri-lost",
    RrConflict::Violently => "violently",
});
keyword_enum!(DigestAlg {
    DigestAlg::Crc32c => "crc32c",
    DigestAlg::Md5 => "md5",
    DigestAlg::Sha1 => "sha1",
    DigestAlg::Sha256 => "sha256",
});
keyword_enum!(HmacAlg {
    HmacAlg::Md5 => "md5",
    HmacAlg::Sha1 => "sha1",
    HmacAlg::Sha256 => "sha256",
    HmacAlg::Sha512 => "sha512",
});
keyword_enum!(FencingPolicy {
    FencingPolicy::DontCare => "dont-care",
    FencingPolicy::ResourceOnly => "resource-only",
    FencingPolicy::ResourceAndStonith => "resource-and-stonith",
});
keyword_enum!(OnIoError {
    OnIoError::PassOn => "pass_on",
    OnIoError::CallLocalIoError => "call-local-io-error",
    OnIoError::Detach => "detach",
});

impl AfterSb0Pri {
    /// Every keyword this option accepts, for error messages.
    pub const KEYWORDS: &'static [&'static str] = &[
        "disconnect",
        "discard-younger-primary",
        "discard-older-primary",
        "discard-zero-changes",
        "discard-least-changes",
        "discard-node-NAME",
    ];
    /// Parses DRBD's keyword, including `discard-node-NAME`.
    pub fn from_keyword(s: &str) -> Option<Self> {
        Some(match s {
            "disconnect" => AfterSb0Pri::Disconnect,
            "discard-younger-primary" => AfterSb0Pri::DiscardYoungerPrimary,
            "discard-older-primary" => AfterSb0Pri::DiscardOlderPrimary,
            "discard-zero-changes" => AfterSb0Pri::DiscardZeroChanges,
            "discard-least-changes" => AfterSb0Pri::DiscardLeastChanges,
            _ => {
                let node = s.strip_prefix("discard-node-")?;
                if node.is_empty() {
                    return None;
                }
                AfterSb0Pri::DiscardNode(node.to_string())
            }
        })
    }
}

impl fmt::Display for AfterSb0Pri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AfterSb0Pri::Disconnect => f.write_str("disconnect"),
            AfterSb0Pri::DiscardYoungerPrimary => f.write_str("discard-younger-primary"),
            AfterSb0Pri::DiscardOlderPrimary => f.write_str("discard-older-primary"),
            AfterSb0Pri::DiscardZeroChanges => f.write_str("discard-zero-changes"),
            AfterSb0Pri::DiscardLeastChanges => f.write_str("discard-least-changes"),
            AfterSb0Pri::DiscardNode(n) => write!(f, "discard-node-{n}"),
        }
    }
}
