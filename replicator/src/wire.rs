//! The replication protocol between two replicatords: a sans-IO codec.
//!
//! Every packet is a 12-byte header followed by its payload, all integers big-endian:
//!
//! | offset | field |
//! |---|---|
//! | 0 | u32 magic [`MAGIC`] |
//! | 4 | u16 packet type ([`PacketType`]) |
//! | 6 | u16 reserved, zero |
//! | 8 | u32 payload length (at most [`MAX_PAYLOAD_BYTES`]) |
//!
//! Two TCP connections per peer: the *data* socket carries state exchange, application writes,
//! barriers and resync data; the *meta* socket carries acknowledgements and pings, so acks never
//! wait behind bulk data. Both start with [`Hello`] and the cram-hmac challenge-response. The
//! full protocol (order of packets, who sends what when) is in `docs/replication-protocol.md`.
//! Each [`Packet`] variant documents its payload layout (offsets relative to the payload).
//!
//! [`decode`] is a pure frame parser: given a buffer it answers "not a whole frame yet"
//! (`Ok(None)`, nothing consumed), a packet (exactly its frame consumed) or an error (nothing
//! consumed; the peer is to be disconnected). It checks the header, the length limits and every
//! size derived from the length as soon as the 12 header bytes are there, before waiting for or
//! allocating the payload. Write data is never copied: a decoded [`Packet::Data`] holds a slice
//! of the receive buffer, and [`encode_head`] lets a sender write header and fixed fields into
//! one buffer and the data `Bytes` after it (a vectored write).
//!
//! The encoding is canonical: every field has one valid spelling (reserved bits and bytes zero,
//! enums and flags only their defined values), so a decoded packet encodes back to exactly the
//! bytes it came from. [`encode`] panics on a packet [`Packet::validate`] refuses: sending one
//! would be our bug and would get us disconnected by the peer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Packet magic: "TNDR".
pub const MAGIC: u32 = 0x544e_4452;
/// Version of this protocol; peers with a different major version are refused.
pub const PROTOCOL_VERSION: u16 = 2;
/// Header size.
pub const HEADER_BYTES: usize = 12;
/// The largest application write (NBD allows 32 MiB) plus room for the fixed fields.
pub const MAX_PAYLOAD_BYTES: usize = 32 * 1024 * 1024 + 4096;
/// Size of an authentication challenge (DRBD's CHALLENGE_LEN).
pub const CHALLENGE_BYTES: usize = 64;
/// Longest HMAC digest (SHA-512).
pub const MAX_DIGEST_BYTES: usize = 64;
/// Longest resource or node name in a [`Hello`].
pub const MAX_NAME_BYTES: usize = 255;
/// Most bitmap words in one [`Packet::Bitmap`] (1 MiB of payload).
pub const MAX_BITMAP_WORDS_PER_PACKET: usize = 128 * 1024;
/// Disk offsets and lengths on the wire are multiples of this (a sector).
pub const SECTOR_BYTES: u64 = 512;
/// The most data one [`Packet::Data`] or [`Packet::RsDataReply`] carries (NBD's largest
/// request), and so the longest range a resync request, ack or digest may name: a SyncSource
/// never has to buffer more than this for one request.
pub const MAX_DATA_BYTES: usize = 32 * 1024 * 1024;

/// Bytes of [`Hello`] besides the two names (the names' u16 lengths included).
const HELLO_FIXED_BYTES: usize = 16;
/// Bytes of [`Packet::Bitmap`] before the words.
const BITMAP_FIXED_BYTES: usize = 12;
/// Bytes of [`Packet::Data`] before the data.
const DATA_FIXED_BYTES: usize = 24;
/// Bytes of [`Packet::RsDataReply`] before the data.
const RS_DATA_REPLY_FIXED_BYTES: usize = 16;
/// Bytes of a range request (id, offset, len) and of the part of a digest packet before the digest.
const RANGE_REQUEST_BYTES: usize = 20;
/// Bytes of a range ack (offset, len).
const RANGE_ACK_BYTES: usize = 12;
/// [`data_flags`] a peer may set.
const DATA_FLAGS_KNOWN: u32 = data_flags::FUA;
/// [`uuid_flags`] a peer may set.
const UUID_FLAGS_KNOWN: u32 = uuid_flags::DISCARD_MY_DATA
    | uuid_flags::CRASHED_PRIMARY
    | uuid_flags::INCONSISTENT
    | uuid_flags::SKIP_INITIAL_SYNC;
/// The only flag of a [`Packet::Bitmap`]: the last slice.
const BITMAP_FLAG_LAST: u32 = 1;

// The data of the largest write plus its fixed fields fits the frame limit.
const _: () = assert!(DATA_FIXED_BYTES + MAX_DATA_BYTES <= MAX_PAYLOAD_BYTES);
const _: () = assert!(BITMAP_FIXED_BYTES + 8 * MAX_BITMAP_WORDS_PER_PACKET <= MAX_PAYLOAD_BYTES);
// Name lengths are u16 on the wire.
const _: () = assert!(MAX_NAME_BYTES <= u16::MAX as usize);

/// Which of the two connections a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// State, data, barriers, resync data.
    Data = 0,
    /// Acks and pings.
    Meta = 1,
}

/// The first packet on each socket, both directions.
///
/// Payload (16 bytes plus the names); this layout stays the same in every protocol version, so
/// that a version mismatch can be reported instead of failing to parse:
///
/// | offset | field |
/// |---|---|
/// | 0 | u16 version |
/// | 2 | u8 socket ([`SocketKind`]) |
/// | 3 | u8 protocol (0, 1, 2) |
/// | 4 | u64 session_id |
/// | 12 | u16 resource length r (1..=[`MAX_NAME_BYTES`]) |
/// | 14 | resource, r bytes of UTF-8 |
/// | 14 + r | u16 node length n (1..=[`MAX_NAME_BYTES`]) |
/// | 16 + r | node, n bytes of UTF-8 |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Which socket this is.
    pub socket: SocketKind,
    /// Random per connection attempt, chosen by the dialing side; pairs the data and meta
    /// sockets of one connection.
    pub session_id: u64,
    /// The resource name; must match.
    pub resource: String,
    /// The sender's node name (its `on NAME`).
    pub node: String,
    /// The sender's replication protocol (`A`, `B` or `C` as 0, 1, 2); must match.
    pub protocol: u8,
}

/// Role on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireRole {
    /// Secondary.
    Secondary = 0,
    /// Primary.
    Primary = 1,
}

/// Disk state on the wire (DRBD's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireDisk {
    /// No disk.
    Diskless = 0,
    /// Being attached.
    Attaching = 1,
    /// Partly synced; not usable as a source.
    Inconsistent = 2,
    /// Consistent but known older than the peer's.
    Outdated = 3,
    /// Unknown (peer only).
    DUnknown = 4,
    /// Consistent, freshness unknown.
    Consistent = 5,
    /// The newest data.
    UpToDate = 6,
}

/// Flags of a [`Packet::Data`] write.
pub mod data_flags {
    /// Force unit access: stable before the write is acknowledged.
    pub const FUA: u32 = 1;
}

/// Flags of a [`Packet::Uuids`].
pub mod uuid_flags {
    /// The sender was told `connect --discard-my-data`.
    pub const DISCARD_MY_DATA: u32 = 1;
    /// The sender crashed while Primary.
    pub const CRASHED_PRIMARY: u32 = 2;
    /// The sender's disk is Inconsistent.
    pub const INCONSISTENT: u32 = 4;
    /// `new-current-uuid --clear-bitmap` on two fresh disks: adopt these UUIDs, no sync.
    pub const SKIP_INITIAL_SYNC: u32 = 8;
}

/// Every packet of the protocol.
///
/// Payload layouts are given as `offset: field`, big-endian, relative to the end of the header.
/// Disk offsets and lengths ("ranges") are byte counts, multiples of [`SECTOR_BYTES`]; lengths
/// are at least one sector and at most [`MAX_DATA_BYTES`], and `offset + length` fits a u64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// First packet on each socket (type 1).
    ///
    /// Payload: see [`Hello`].
    Hello(Hello),
    /// cram-hmac: a random challenge for the peer to sign (type 2).
    ///
    /// Payload (64 bytes): 0: challenge.
    AuthChallenge {
        /// [`CHALLENGE_BYTES`] random bytes.
        challenge: [u8; CHALLENGE_BYTES],
    },
    /// cram-hmac: HMAC(shared-secret, the peer's challenge) (type 3).
    ///
    /// Payload (0..=64 bytes): 0: digest, the whole payload.
    AuthResponse {
        /// The digest, at most [`MAX_DIGEST_BYTES`].
        digest: Vec<u8>,
    },
    /// cram-hmac: the sender accepted the peer's response (type 4).
    ///
    /// Payload: empty.
    AuthOk,
    /// Sizes of the sender's disk (type 10, data socket).
    ///
    /// Payload (24 bytes): 0: u64 backing_sect, 8: u64 user_sect, 16: u64 current_sect.
    Sizes {
        /// Usable backing size, sectors.
        backing_sect: u64,
        /// `disk { size }` of the sender, sectors; 0 if unset.
        user_sect: u64,
        /// The size the sender last agreed on with a peer (la-size-sect).
        current_sect: u64,
    },
    /// Generation UUIDs and the bitmap weight (type 11, data socket).
    ///
    /// Payload (44 bytes): 0: u64 uuids\[4\], 32: u64 bitmap_bits, 40: u32 flags (only
    /// [`uuid_flags`] bits).
    Uuids {
        /// current, bitmap, history\[0\], history\[1\].
        uuids: [u64; 4],
        /// Bits set in the sender's bitmap.
        bitmap_bits: u64,
        /// [`uuid_flags`].
        flags: u32,
    },
    /// The sender's role and disk state (type 12, data socket); sent on every change.
    ///
    /// Payload (2 bytes): 0: u8 role ([`WireRole`]), 1: u8 disk ([`WireDisk`]).
    State {
        /// Role.
        role: WireRole,
        /// Disk state.
        disk: WireDisk,
    },
    /// A slice of the sender's bitmap, for the union before a resync (type 13, data socket).
    ///
    /// Payload (12 + 8·n bytes): 0: u64 offset_words, 8: u32 flags (bit 0: last; the other
    /// bits zero), 12: u64 words\[n\], n <= [`MAX_BITMAP_WORDS_PER_PACKET`], n may be 0.
    /// `offset_words + n` fits a u64.
    Bitmap {
        /// Index of the first 64-bit word.
        offset_words: u64,
        /// The words, at most [`MAX_BITMAP_WORDS_PER_PACKET`].
        words: Vec<u64>,
        /// True on the last slice.
        last: bool,
    },
    /// The SyncSource's new bitmap UUID, sent before resync starts (type 14, data socket).
    ///
    /// Payload (8 bytes): 0: u64 uuid.
    SyncUuid {
        /// The UUID.
        uuid: u64,
    },
    /// A connected Secondary asks its peer to agree to its promotion (type 15, data socket).
    ///
    /// Payload (8 bytes): 0: u64 nonce, random; when both nodes ask at once, the larger
    /// nonce wins and the other is refused (equal nonces: both are refused).
    PromoteRequest {
        /// Tie-breaker.
        nonce: u64,
    },
    /// The answer to a [`Packet::PromoteRequest`] (type 16, data socket).
    ///
    /// Payload (4 bytes): 0: u32 granted (1) or refused (0); other values are invalid.
    PromoteReply {
        /// The peer agrees: it is not Primary and will not become Primary before it has seen
        /// this node's new role.
        granted: bool,
    },
    /// An application write (type 20, data socket).
    ///
    /// Payload (24 + len bytes): 0: u64 seq, 8: u64 offset, 16: u32 epoch, 20: u32 flags (only
    /// [`data_flags`] bits), 24: data, the rest of the payload (a range length).
    Data {
        /// Sequence number, unique per connection; acks refer to it.
        seq: u64,
        /// Epoch (barrier number) the write belongs to.
        epoch: u32,
        /// Byte offset on the device.
        offset: u64,
        /// [`data_flags`].
        flags: u32,
        /// The data (not copied: a slice of the receive buffer).
        data: Bytes,
    },
    /// Protocol B: the write was received (type 21, meta socket).
    ///
    /// Payload (8 bytes): 0: u64 seq.
    RecvAck {
        /// The write's sequence number.
        seq: u64,
    },
    /// Protocol C: the write is on the peer's disk (type 22, meta socket).
    ///
    /// Payload (8 bytes): 0: u64 seq.
    WriteAck {
        /// The write's sequence number.
        seq: u64,
    },
    /// The peer failed the write (type 23, meta socket).
    ///
    /// Payload (8 bytes): 0: u64 seq.
    NegAck {
        /// The write's sequence number.
        seq: u64,
    },
    /// Closes epoch `barrier_nr` (type 24, data socket).
    ///
    /// Payload (4 bytes): 0: u32 barrier_nr.
    Barrier {
        /// The epoch closed.
        barrier_nr: u32,
    },
    /// Every write of the epoch is stable on the peer (type 25, meta socket).
    ///
    /// Payload (8 bytes): 0: u32 barrier_nr, 4: u32 set_size.
    BarrierAck {
        /// The epoch.
        barrier_nr: u32,
        /// Writes it held.
        set_size: u32,
    },
    /// `data-integrity-alg`: the digest of the `Data` or `RsDataReply` that follows it on the
    /// data socket, whose `seq` (or request id) it names (type 26, data socket).
    ///
    /// Payload (8 + digest bytes): 0: u64 seq, 8: digest (at most [`MAX_DIGEST_BYTES`]).
    DataDigest {
        /// The sequence number (or resync request id) of the packet it covers.
        seq: u64,
        /// The digest of that packet's data.
        digest: Vec<u8>,
    },
    /// SyncTarget asks for a block range (type 30, data socket).
    ///
    /// Payload (20 bytes): 0: u64 id, 8: u64 offset, 16: u32 len.
    RsDataRequest {
        /// Request id, echoed in the reply.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// SyncSource sends the data (type 31, data socket).
    ///
    /// Payload (16 + len bytes): 0: u64 id, 8: u64 offset, 16: data, the rest of the payload
    /// (a range length).
    RsDataReply {
        /// The request's id.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// The data.
        data: Bytes,
    },
    /// SyncTarget wrote resync data (type 32, meta socket).
    ///
    /// Payload (12 bytes): 0: u64 offset, 8: u32 len.
    RsWriteAck {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// The source could not read (or the target could not write) a range (type 33, meta).
    ///
    /// Payload (12 bytes): 0: u64 offset, 8: u32 len.
    RsNegAck {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// csums-alg: SyncTarget asks for a range, sending its digest (type 34, data socket).
    ///
    /// Payload (20 + d bytes): 0: u64 id, 8: u64 offset, 16: u32 len, 20: digest, the rest of
    /// the payload (d <= [`MAX_DIGEST_BYTES`]).
    CsumRsRequest {
        /// Request id.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
        /// Digest of the target's data.
        digest: Vec<u8>,
    },
    /// csums-alg: the range is already equal (type 35, data socket).
    ///
    /// Payload (20 bytes): 0: u64 id, 8: u64 offset, 16: u32 len.
    RsIsInSync {
        /// The request's id.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// Online verify: VerifyS asks for the digest of a range (type 36, data socket).
    ///
    /// Payload (20 bytes): 0: u64 id, 8: u64 offset, 16: u32 len.
    OvRequest {
        /// Request id.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// Online verify: VerifyT's digest (type 37, data socket).
    ///
    /// Payload (20 + d bytes): 0: u64 id, 8: u64 offset, 16: u32 len, 20: digest, the rest of
    /// the payload (d <= [`MAX_DIGEST_BYTES`]).
    OvReply {
        /// The request's id.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
        /// Digest of the VerifyT's data.
        digest: Vec<u8>,
    },
    /// Keepalive (type 40, meta socket).
    ///
    /// Payload: empty.
    Ping,
    /// Keepalive answer (type 41, meta socket).
    ///
    /// Payload: empty.
    PingAck,
}

/// The packet type numbers of the header; the names are [`Packet`]'s variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum PacketType {
    /// [`Packet::Hello`].
    Hello = 1,
    /// [`Packet::AuthChallenge`].
    AuthChallenge = 2,
    /// [`Packet::AuthResponse`].
    AuthResponse = 3,
    /// [`Packet::AuthOk`].
    AuthOk = 4,
    /// [`Packet::Sizes`].
    Sizes = 10,
    /// [`Packet::Uuids`].
    Uuids = 11,
    /// [`Packet::State`].
    State = 12,
    /// [`Packet::Bitmap`].
    Bitmap = 13,
    /// [`Packet::SyncUuid`].
    SyncUuid = 14,
    /// [`Packet::PromoteRequest`].
    PromoteRequest = 15,
    /// [`Packet::PromoteReply`].
    PromoteReply = 16,
    /// [`Packet::Data`].
    Data = 20,
    /// [`Packet::RecvAck`].
    RecvAck = 21,
    /// [`Packet::WriteAck`].
    WriteAck = 22,
    /// [`Packet::NegAck`].
    NegAck = 23,
    /// [`Packet::Barrier`].
    Barrier = 24,
    /// [`Packet::BarrierAck`].
    BarrierAck = 25,
    /// [`Packet::DataDigest`].
    DataDigest = 26,
    /// [`Packet::RsDataRequest`].
    RsDataRequest = 30,
    /// [`Packet::RsDataReply`].
    RsDataReply = 31,
    /// [`Packet::RsWriteAck`].
    RsWriteAck = 32,
    /// [`Packet::RsNegAck`].
    RsNegAck = 33,
    /// [`Packet::CsumRsRequest`].
    CsumRsRequest = 34,
    /// [`Packet::RsIsInSync`].
    RsIsInSync = 35,
    /// [`Packet::OvRequest`].
    OvRequest = 36,
    /// [`Packet::OvReply`].
    OvReply = 37,
    /// [`Packet::Ping`].
    Ping = 40,
    /// [`Packet::PingAck`].
    PingAck = 41,
}

/// How a packet's payload length is constrained, known from the header alone.
#[derive(Debug, Clone, Copy)]
enum PayloadShape {
    /// Exactly this many bytes.
    Fixed(usize),
    /// [`Hello`]: fixed part plus two names.
    Hello,
    /// A digest after `fixed` bytes (the whole payload for AuthResponse).
    Digest { fixed: usize },
    /// [`Packet::Bitmap`]: fixed part plus u64 words.
    Bitmap,
    /// Disk data after `fixed` bytes.
    Data { fixed: usize },
}

impl PacketType {
    /// Every packet type, in type-number order.
    pub const ALL: [PacketType; 28] = [
        PacketType::Hello,
        PacketType::AuthChallenge,
        PacketType::AuthResponse,
        PacketType::AuthOk,
        PacketType::Sizes,
        PacketType::Uuids,
        PacketType::State,
        PacketType::Bitmap,
        PacketType::SyncUuid,
        PacketType::PromoteRequest,
        PacketType::PromoteReply,
        PacketType::Data,
        PacketType::RecvAck,
        PacketType::WriteAck,
        PacketType::NegAck,
        PacketType::Barrier,
        PacketType::BarrierAck,
        PacketType::DataDigest,
        PacketType::RsDataRequest,
        PacketType::RsDataReply,
        PacketType::RsWriteAck,
        PacketType::RsNegAck,
        PacketType::CsumRsRequest,
        PacketType::RsIsInSync,
        PacketType::OvRequest,
        PacketType::OvReply,
        PacketType::Ping,
        PacketType::PingAck,
    ];

    /// The type with this number, if there is one.
    pub fn from_u16(number: u16) -> Option<PacketType> {
        PacketType::ALL.into_iter().find(|t| *t as u16 == number)
    }

    /// The name used in logs and errors (the [`Packet`] variant's name).
    pub fn name(self) -> &'static str {
        match self {
            PacketType::Hello => "Hello",
            PacketType::AuthChallenge => "AuthChallenge",
            PacketType::AuthResponse => "AuthResponse",
            PacketType::AuthOk => "AuthOk",
            PacketType::Sizes => "Sizes",
            PacketType::Uuids => "Uuids",
            PacketType::State => "State",
            PacketType::Bitmap => "Bitmap",
            PacketType::SyncUuid => "SyncUuid",
            PacketType::PromoteRequest => "PromoteRequest",
            PacketType::PromoteReply => "PromoteReply",
            PacketType::Data => "Data",
            PacketType::RecvAck => "RecvAck",
            PacketType::WriteAck => "WriteAck",
            PacketType::NegAck => "NegAck",
            PacketType::Barrier => "Barrier",
            PacketType::BarrierAck => "BarrierAck",
            PacketType::DataDigest => "DataDigest",
            PacketType::RsDataRequest => "RsDataRequest",
            PacketType::RsDataReply => "RsDataReply",
            PacketType::RsWriteAck => "RsWriteAck",
            PacketType::RsNegAck => "RsNegAck",
            PacketType::CsumRsRequest => "CsumRsRequest",
            PacketType::RsIsInSync => "RsIsInSync",
            PacketType::OvRequest => "OvRequest",
            PacketType::OvReply => "OvReply",
            PacketType::Ping => "Ping",
            PacketType::PingAck => "PingAck",
        }
    }

    /// The socket packets of this type travel on; `None` for the handshake (Hello and the
    /// cram-hmac packets), which runs on both.
    pub fn socket(self) -> Option<SocketKind> {
        match self {
            PacketType::Hello
            | PacketType::AuthChallenge
            | PacketType::AuthResponse
            | PacketType::AuthOk => None,
            PacketType::Sizes
            | PacketType::Uuids
            | PacketType::State
            | PacketType::Bitmap
            | PacketType::SyncUuid
            | PacketType::PromoteRequest
            | PacketType::PromoteReply
            | PacketType::Data
            | PacketType::DataDigest
            | PacketType::Barrier
            | PacketType::RsDataRequest
            | PacketType::RsDataReply
            | PacketType::CsumRsRequest
            | PacketType::RsIsInSync
            | PacketType::OvRequest
            | PacketType::OvReply => Some(SocketKind::Data),
            PacketType::RecvAck
            | PacketType::WriteAck
            | PacketType::NegAck
            | PacketType::BarrierAck
            | PacketType::RsWriteAck
            | PacketType::RsNegAck
            | PacketType::Ping
            | PacketType::PingAck => Some(SocketKind::Meta),
        }
    }

    /// The largest payload a packet of this type can have (at most [`MAX_PAYLOAD_BYTES`]).
    pub fn max_payload_bytes(self) -> usize {
        match self.shape() {
            PayloadShape::Fixed(n) => n,
            PayloadShape::Hello => HELLO_FIXED_BYTES + 2 * MAX_NAME_BYTES,
            PayloadShape::Digest { fixed } => fixed + MAX_DIGEST_BYTES,
            PayloadShape::Bitmap => BITMAP_FIXED_BYTES + 8 * MAX_BITMAP_WORDS_PER_PACKET,
            PayloadShape::Data { fixed } => fixed + MAX_DATA_BYTES,
        }
    }

    fn shape(self) -> PayloadShape {
        match self {
            PacketType::Hello => PayloadShape::Hello,
            PacketType::AuthChallenge => PayloadShape::Fixed(CHALLENGE_BYTES),
            PacketType::AuthResponse => PayloadShape::Digest { fixed: 0 },
            PacketType::AuthOk | PacketType::Ping | PacketType::PingAck => PayloadShape::Fixed(0),
            PacketType::Sizes => PayloadShape::Fixed(24),
            PacketType::Uuids => PayloadShape::Fixed(44),
            PacketType::State => PayloadShape::Fixed(2),
            PacketType::Bitmap => PayloadShape::Bitmap,
            PacketType::SyncUuid
            | PacketType::PromoteRequest
            | PacketType::RecvAck
            | PacketType::WriteAck
            | PacketType::NegAck
            | PacketType::BarrierAck => PayloadShape::Fixed(8),
            PacketType::Barrier | PacketType::PromoteReply => PayloadShape::Fixed(4),
            PacketType::Data => PayloadShape::Data {
                fixed: DATA_FIXED_BYTES,
            },
            PacketType::RsDataReply => PayloadShape::Data {
                fixed: RS_DATA_REPLY_FIXED_BYTES,
            },
            PacketType::RsDataRequest | PacketType::RsIsInSync | PacketType::OvRequest => {
                PayloadShape::Fixed(RANGE_REQUEST_BYTES)
            }
            PacketType::RsWriteAck | PacketType::RsNegAck => PayloadShape::Fixed(RANGE_ACK_BYTES),
            PacketType::CsumRsRequest | PacketType::OvReply => PayloadShape::Digest {
                fixed: RANGE_REQUEST_BYTES,
            },
            PacketType::DataDigest => PayloadShape::Digest { fixed: 8 },
        }
    }
}

impl std::fmt::Display for PacketType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes from a peer are not a valid packet. Every error means the peer broke the format:
/// the connection is closed and the error logged. `packet` is the packet type's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The header does not start with [`MAGIC`].
    #[error(
        "bad magic {found:#010x} (expected {MAGIC:#010x}): the peer is not a tandem replicatord"
    )]
    BadMagic {
        /// The first four bytes, big-endian.
        found: u32,
    },
    /// The header's packet type number is not one of [`PacketType`].
    #[error("unknown packet type {type_nr}")]
    UnknownType {
        /// The number.
        type_nr: u16,
    },
    /// [`decode_bulk`] got a head and data that do not make the frame the header describes.
    #[error("{packet}: a head of {head_bytes} bytes and {data_bytes} bytes of data are not the frame the header describes")]
    BulkMismatch {
        /// Packet type.
        packet: &'static str,
        /// Bytes of the head given.
        head_bytes: usize,
        /// Bytes of data given.
        data_bytes: usize,
    },
    /// The header's reserved field is not zero.
    #[error("{packet}: header field reserved is {value:#06x}, must be 0")]
    ReservedNotZero {
        /// Packet type.
        packet: &'static str,
        /// The field's value.
        value: u16,
    },
    /// The payload length exceeds [`MAX_PAYLOAD_BYTES`] or the largest payload of its type.
    #[error("{packet}: payload length {len_bytes} exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        /// Packet type.
        packet: &'static str,
        /// The header's length.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The payload ends inside a field.
    #[error(
        "{packet}: payload of {len_bytes} bytes ends inside field {field} (needs {needed_bytes})"
    )]
    Truncated {
        /// Packet type.
        packet: &'static str,
        /// The field cut short.
        field: &'static str,
        /// The payload length.
        len_bytes: usize,
        /// The length the field needs.
        needed_bytes: usize,
    },
    /// The payload is longer than its fields.
    #[error("{packet}: payload is {len_bytes} bytes but its fields end at {expected_bytes}: trailing bytes")]
    TrailingBytes {
        /// Packet type.
        packet: &'static str,
        /// The payload length.
        len_bytes: usize,
        /// Where the fields end.
        expected_bytes: usize,
    },
    /// An enum field holds a number that is none of its values.
    #[error("{packet}: field {field} has invalid value {value}")]
    BadValue {
        /// Packet type.
        packet: &'static str,
        /// The field.
        field: &'static str,
        /// The number found.
        value: u64,
    },
    /// A flags field has bits this protocol version does not define.
    #[error("{packet}: field {field} has unknown bits set ({flags:#x})")]
    UnknownFlags {
        /// Packet type.
        packet: &'static str,
        /// The field.
        field: &'static str,
        /// The whole flags value.
        flags: u32,
    },
    /// A disk offset or length is not a multiple of its unit (512, or 8 for bitmap words).
    #[error("{packet}: {field} {value} is not a multiple of {align}")]
    Misaligned {
        /// Packet type.
        packet: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The unit.
        align: u64,
    },
    /// A range length is zero.
    #[error("{packet}: {field} is 0; a range is at least one {SECTOR_BYTES}-byte sector")]
    ZeroLength {
        /// Packet type.
        packet: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A range is longer than [`MAX_DATA_BYTES`].
    #[error("{packet}: {field} {len_bytes} exceeds the limit of {max_bytes} bytes")]
    RangeTooLong {
        /// Packet type.
        packet: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        len_bytes: u64,
        /// The limit.
        max_bytes: usize,
    },
    /// A range's start plus its length does not fit a u64.
    #[error("{packet}: {field} {start} plus its length {len} overflows u64")]
    Overflow {
        /// Packet type.
        packet: &'static str,
        /// The start field.
        field: &'static str,
        /// Its value.
        start: u64,
        /// The length added.
        len: u64,
    },
    /// A [`Hello`] name is empty or longer than [`MAX_NAME_BYTES`].
    #[error("Hello: {field} name is {len_bytes} bytes; must be 1..={MAX_NAME_BYTES}")]
    BadNameLength {
        /// `resource` or `node`.
        field: &'static str,
        /// Its length.
        len_bytes: usize,
    },
    /// A [`Hello`] name is not UTF-8.
    #[error("Hello: {field} name is not valid UTF-8")]
    NameNotUtf8 {
        /// `resource` or `node`.
        field: &'static str,
    },
    /// A digest is longer than [`MAX_DIGEST_BYTES`].
    #[error("{packet}: digest is {len_bytes} bytes; the limit is {MAX_DIGEST_BYTES}")]
    DigestTooLong {
        /// Packet type.
        packet: &'static str,
        /// Its length.
        len_bytes: usize,
    },
    /// A bitmap slice has more than [`MAX_BITMAP_WORDS_PER_PACKET`] words.
    #[error("Bitmap: words holds {words} words; the limit is {MAX_BITMAP_WORDS_PER_PACKET}")]
    TooManyBitmapWords {
        /// Its word count.
        words: usize,
    },
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Hello(_) => PacketType::Hello,
            Packet::AuthChallenge { .. } => PacketType::AuthChallenge,
            Packet::AuthResponse { .. } => PacketType::AuthResponse,
            Packet::AuthOk => PacketType::AuthOk,
            Packet::Sizes { .. } => PacketType::Sizes,
            Packet::Uuids { .. } => PacketType::Uuids,
            Packet::State { .. } => PacketType::State,
            Packet::Bitmap { .. } => PacketType::Bitmap,
            Packet::SyncUuid { .. } => PacketType::SyncUuid,
            Packet::PromoteRequest { .. } => PacketType::PromoteRequest,
            Packet::PromoteReply { .. } => PacketType::PromoteReply,
            Packet::Data { .. } => PacketType::Data,
            Packet::RecvAck { .. } => PacketType::RecvAck,
            Packet::WriteAck { .. } => PacketType::WriteAck,
            Packet::NegAck { .. } => PacketType::NegAck,
            Packet::Barrier { .. } => PacketType::Barrier,
            Packet::BarrierAck { .. } => PacketType::BarrierAck,
            Packet::DataDigest { .. } => PacketType::DataDigest,
            Packet::RsDataRequest { .. } => PacketType::RsDataRequest,
            Packet::RsDataReply { .. } => PacketType::RsDataReply,
            Packet::RsWriteAck { .. } => PacketType::RsWriteAck,
            Packet::RsNegAck { .. } => PacketType::RsNegAck,
            Packet::CsumRsRequest { .. } => PacketType::CsumRsRequest,
            Packet::RsIsInSync { .. } => PacketType::RsIsInSync,
            Packet::OvRequest { .. } => PacketType::OvRequest,
            Packet::OvReply { .. } => PacketType::OvReply,
            Packet::Ping => PacketType::Ping,
            Packet::PingAck => PacketType::PingAck,
        }
    }

    /// Checks what the types do not: name, digest, bitmap and range limits, alignment, flags
    /// and the protocol number. [`decode`] only returns packets that pass; [`encode`] panics
    /// on one that does not.
    pub fn validate(&self) -> Result<(), WireError> {
        let packet = self.packet_type().name();
        match self {
            Packet::Hello(hello) => {
                check_name_len("resource", hello.resource.len())?;
                check_name_len("node", hello.node.len())?;
                check_protocol(hello.protocol)
            }
            Packet::AuthResponse { digest }
            | Packet::CsumRsRequest { digest, .. }
            | Packet::OvReply { digest, .. }
            | Packet::DataDigest { digest, .. }
                if digest.len() > MAX_DIGEST_BYTES =>
            {
                Err(WireError::DigestTooLong {
                    packet,
                    len_bytes: digest.len(),
                })
            }
            Packet::Uuids { flags, .. } => check_flags(packet, "flags", *flags, UUID_FLAGS_KNOWN),
            Packet::Bitmap {
                offset_words,
                words,
                ..
            } => check_bitmap(*offset_words, words.len()),
            Packet::Data {
                offset,
                flags,
                data,
                ..
            } => {
                check_range(packet, *offset, "data length", data.len() as u64)?;
                check_flags(packet, "flags", *flags, DATA_FLAGS_KNOWN)
            }
            Packet::RsDataReply { offset, data, .. } => {
                check_range(packet, *offset, "data length", data.len() as u64)
            }
            Packet::RsDataRequest { offset, len, .. }
            | Packet::RsWriteAck { offset, len }
            | Packet::RsNegAck { offset, len }
            | Packet::CsumRsRequest { offset, len, .. }
            | Packet::RsIsInSync { offset, len, .. }
            | Packet::OvRequest { offset, len, .. }
            | Packet::OvReply { offset, len, .. } => {
                check_range(packet, *offset, "len", u64::from(*len))
            }
            Packet::AuthChallenge { .. }
            | Packet::AuthResponse { .. }
            | Packet::DataDigest { .. }
            | Packet::AuthOk
            | Packet::Sizes { .. }
            | Packet::State { .. }
            | Packet::SyncUuid { .. }
            | Packet::PromoteRequest { .. }
            | Packet::PromoteReply { .. }
            | Packet::RecvAck { .. }
            | Packet::WriteAck { .. }
            | Packet::NegAck { .. }
            | Packet::Barrier { .. }
            | Packet::BarrierAck { .. }
            | Packet::Ping
            | Packet::PingAck => Ok(()),
        }
    }

    /// Payload length of the encoded packet (header excluded).
    pub fn payload_len(&self) -> usize {
        match self {
            Packet::Hello(hello) => HELLO_FIXED_BYTES + hello.resource.len() + hello.node.len(),
            Packet::AuthResponse { digest } => digest.len(),
            Packet::Bitmap { words, .. } => BITMAP_FIXED_BYTES + 8 * words.len(),
            Packet::Data { data, .. } => DATA_FIXED_BYTES + data.len(),
            Packet::RsDataReply { data, .. } => RS_DATA_REPLY_FIXED_BYTES + data.len(),
            Packet::CsumRsRequest { digest, .. } | Packet::OvReply { digest, .. } => {
                RANGE_REQUEST_BYTES + digest.len()
            }
            Packet::DataDigest { digest, .. } => 8 + digest.len(),
            _ => match self.packet_type().shape() {
                PayloadShape::Fixed(n) => n,
                shape => unreachable!("{shape:?} is handled above"),
            },
        }
    }

    /// Size of the encoded frame, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.payload_len()
    }
}

/// The packet's name for logs ("Data", "WriteAck", ...): its [`PacketType::name`].
pub fn packet_name(packet: &Packet) -> &'static str {
    packet.packet_type().name()
}

/// The socket a packet travels on. A [`Hello`] names its socket; the cram-hmac packets run on
/// both sockets and give `None`.
pub fn socket_of(packet: &Packet) -> Option<SocketKind> {
    match packet {
        Packet::Hello(hello) => Some(hello.socket),
        _ => packet.packet_type().socket(),
    }
}

/// Appends the whole frame of `packet` to `out`.
///
/// # Panics
/// If [`Packet::validate`] refuses the packet: that is a bug in the caller.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    out.reserve(packet.encoded_len());
    if let Some(data) = encode_head(packet, out) {
        out.extend_from_slice(&data);
    }
}

/// Appends the frame of `packet` to `out` except for the data of a [`Packet::Data`] or
/// [`Packet::RsDataReply`], which it returns instead of copying (a reference-counted clone).
///
/// The caller sends `out` and then the returned `Bytes` (one vectored write); the two together
/// are exactly what [`encode`] writes. For every other packet the frame is complete in `out`
/// and the result is `None`.
///
/// # Panics
/// If [`Packet::validate`] refuses the packet: that is a bug in the caller.
pub fn encode_head(packet: &Packet, out: &mut BytesMut) -> Option<Bytes> {
    if let Err(e) = packet.validate() {
        panic!("refusing to encode an invalid packet (a bug in its sender): {e}");
    }
    let payload_len = packet.payload_len();
    let len =
        u32::try_from(payload_len).expect("validate bounds every payload by MAX_PAYLOAD_BYTES");
    debug_assert!(payload_len <= packet.packet_type().max_payload_bytes());
    // Bulk data is the caller's to write (returned below), not room to make here.
    let bulk = match packet {
        Packet::Data { data, .. } | Packet::RsDataReply { data, .. } => data.len(),
        _ => 0,
    };
    out.reserve(HEADER_BYTES + payload_len - bulk);
    out.put_u32(MAGIC);
    out.put_u16(packet.packet_type() as u16);
    out.put_u16(0);
    out.put_u32(len);
    match packet {
        Packet::Hello(hello) => {
            out.put_u16(hello.version);
            out.put_u8(hello.socket as u8);
            out.put_u8(hello.protocol);
            out.put_u64(hello.session_id);
            for name in [&hello.resource, &hello.node] {
                out.put_u16(u16::try_from(name.len()).expect("validated <= MAX_NAME_BYTES"));
                out.put_slice(name.as_bytes());
            }
        }
        Packet::AuthChallenge { challenge } => out.put_slice(challenge),
        Packet::AuthResponse { digest } => out.put_slice(digest),
        Packet::AuthOk | Packet::Ping | Packet::PingAck => {}
        Packet::Sizes {
            backing_sect,
            user_sect,
            current_sect,
        } => {
            out.put_u64(*backing_sect);
            out.put_u64(*user_sect);
            out.put_u64(*current_sect);
        }
        Packet::Uuids {
            uuids,
            bitmap_bits,
            flags,
        } => {
            for uuid in uuids {
                out.put_u64(*uuid);
            }
            out.put_u64(*bitmap_bits);
            out.put_u32(*flags);
        }
        Packet::State { role, disk } => {
            out.put_u8(*role as u8);
            out.put_u8(*disk as u8);
        }
        Packet::Bitmap {
            offset_words,
            words,
            last,
        } => {
            out.put_u64(*offset_words);
            out.put_u32(if *last { BITMAP_FLAG_LAST } else { 0 });
            for word in words {
                out.put_u64(*word);
            }
        }
        Packet::SyncUuid { uuid } => out.put_u64(*uuid),
        Packet::PromoteRequest { nonce } => out.put_u64(*nonce),
        Packet::PromoteReply { granted } => out.put_u32(u32::from(*granted)),
        Packet::Data {
            seq,
            epoch,
            offset,
            flags,
            data,
        } => {
            out.put_u64(*seq);
            out.put_u64(*offset);
            out.put_u32(*epoch);
            out.put_u32(*flags);
            return Some(data.clone());
        }
        Packet::RecvAck { seq } | Packet::WriteAck { seq } | Packet::NegAck { seq } => {
            out.put_u64(*seq);
        }
        Packet::Barrier { barrier_nr } => out.put_u32(*barrier_nr),
        Packet::DataDigest { seq, digest } => {
            out.put_u64(*seq);
            out.put_slice(digest);
        }
        Packet::BarrierAck {
            barrier_nr,
            set_size,
        } => {
            out.put_u32(*barrier_nr);
            out.put_u32(*set_size);
        }
        Packet::RsDataRequest { id, offset, len }
        | Packet::RsIsInSync { id, offset, len }
        | Packet::OvRequest { id, offset, len } => {
            out.put_u64(*id);
            out.put_u64(*offset);
            out.put_u32(*len);
        }
        Packet::RsDataReply { id, offset, data } => {
            out.put_u64(*id);
            out.put_u64(*offset);
            return Some(data.clone());
        }
        Packet::RsWriteAck { offset, len } | Packet::RsNegAck { offset, len } => {
            out.put_u64(*offset);
            out.put_u32(*len);
        }
        Packet::CsumRsRequest {
            id,
            offset,
            len,
            digest,
        }
        | Packet::OvReply {
            id,
            offset,
            len,
            digest,
        } => {
            out.put_u64(*id);
            out.put_u64(*offset);
            out.put_u32(*len);
            out.put_slice(digest);
        }
    }
    None
}

/// Checks the header at the start of `buf` and returns the size of the whole frame (header
/// included), or `None` if the 12 header bytes have not all arrived.
///
/// Everything that can be judged from the header is judged here, before anyone waits for or
/// allocates the payload: magic, type, reserved field, [`MAX_PAYLOAD_BYTES`], the type's own
/// limit (exact size of fixed-size packets, digest and bitmap limits), and the length and
/// alignment of write and resync data. A driver may use the size to reserve buffer space.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(header) = buf.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let magic = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes"));
    if magic != MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    let type_nr = u16::from_be_bytes(header[4..6].try_into().expect("2 bytes"));
    let ty = PacketType::from_u16(type_nr).ok_or(WireError::UnknownType { type_nr })?;
    let packet = ty.name();
    let reserved = u16::from_be_bytes(header[6..8].try_into().expect("2 bytes"));
    if reserved != 0 {
        return Err(WireError::ReservedNotZero {
            packet,
            value: reserved,
        });
    }
    let len = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    // A u32 always fits the usize of the 64-bit targets we build for; saturate elsewhere,
    // which the limit check below refuses.
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD_BYTES {
        return Err(WireError::TooLarge {
            packet,
            len_bytes: len,
            max_bytes: MAX_PAYLOAD_BYTES,
        });
    }
    match ty.shape() {
        // Shorter payloads are reported by the parser, which can name the cut field.
        PayloadShape::Fixed(fixed) if len > fixed => {
            return Err(WireError::TrailingBytes {
                packet,
                len_bytes: len,
                expected_bytes: fixed,
            });
        }
        PayloadShape::Fixed(_) => {}
        PayloadShape::Hello if len > ty.max_payload_bytes() => {
            return Err(WireError::TooLarge {
                packet,
                len_bytes: len,
                max_bytes: ty.max_payload_bytes(),
            });
        }
        PayloadShape::Hello => {}
        PayloadShape::Digest { fixed } if len > fixed + MAX_DIGEST_BYTES => {
            return Err(WireError::DigestTooLong {
                packet,
                len_bytes: len - fixed,
            });
        }
        PayloadShape::Digest { .. } => {}
        PayloadShape::Bitmap => {
            if let Some(words_bytes) = len.checked_sub(BITMAP_FIXED_BYTES) {
                if words_bytes % 8 != 0 {
                    return Err(WireError::Misaligned {
                        packet,
                        field: "words length",
                        value: words_bytes as u64,
                        align: 8,
                    });
                }
                check_bitmap_words(words_bytes / 8)?;
            }
        }
        PayloadShape::Data { fixed } => {
            if let Some(data_len) = len.checked_sub(fixed) {
                check_len(packet, "data length", data_len as u64)?;
            }
        }
    }
    Ok(Some(HEADER_BYTES + len))
}

/// The packet type of a header [`frame_len`] accepted.
fn frame_type(buf: &[u8]) -> PacketType {
    PacketType::from_u16(u16::from_be_bytes([buf[4], buf[5]])).expect("frame_len checked")
}

/// Where the bulk data of a Data or RsDataReply frame starts, once `buf` holds its head (the
/// header and the fixed fields): `(head_bytes, data_bytes)`. A reader can then take the data
/// straight off the socket into a buffer of its choice (an aligned one, for O_DIRECT) and hand
/// both to [`decode_bulk`]. `None` while the head is incomplete, and for other packets.
/// Errors as [`decode`]'s, from the header alone.
pub fn bulk_layout(buf: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
    let Some(frame_bytes) = frame_len(buf)? else {
        return Ok(None);
    };
    let ty = frame_type(buf);
    let PayloadShape::Data { fixed } = ty.shape() else {
        return Ok(None);
    };
    let head = HEADER_BYTES + fixed;
    // A payload shorter than the fixed fields is reported by the parser once it is all here.
    let data = frame_bytes.checked_sub(head);
    Ok(data.filter(|_| buf.len() >= head).map(|data| (head, data)))
}

/// Decodes a Data or RsDataReply frame from its head (`head_bytes` of [`bulk_layout`]) and its
/// data, read separately. The same checks as [`decode`] apply.
pub fn decode_bulk(head: &[u8], data: Bytes) -> Result<Packet, WireError> {
    let (head_bytes, data_bytes) = match bulk_layout(head)? {
        Some((h, d)) if h == head.len() && d == data.len() => (h, d),
        _ => {
            return Err(WireError::BulkMismatch {
                // A head that holds a header passed frame_len, so its type is known.
                packet: if head.len() >= HEADER_BYTES {
                    frame_type(head).name()
                } else {
                    "(no header)"
                },
                head_bytes: head.len(),
                data_bytes: data.len(),
            });
        }
    };
    let ty = frame_type(head);
    let mut packet = parse_payload(ty, &head[HEADER_BYTES..head_bytes], data_bytes)?;
    match &mut packet {
        Packet::Data { data: d, .. } | Packet::RsDataReply { data: d, .. } => *d = data,
        _ => unreachable!("bulk_layout only lays out Data and RsDataReply"),
    }
    Ok(packet)
}

/// Takes one packet off the front of `buf`.
///
/// - `Ok(None)`: `buf` does not hold a whole frame yet; nothing is consumed. Once the header is
///   there, room for the rest of the frame is reserved (after the limits are checked).
/// - `Ok(Some(packet))`: exactly the packet's frame is consumed. Data of a [`Packet::Data`] or
///   [`Packet::RsDataReply`] is a slice of `buf`'s memory, not a copy.
/// - `Err(_)`: the peer broke the format; nothing is consumed. Close the connection.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Packet>, WireError> {
    let Some(frame_bytes) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < frame_bytes {
        buf.reserve(frame_bytes - buf.len());
        return Ok(None);
    }
    let ty = frame_type(buf);
    let mut packet = parse_payload(ty, &buf[HEADER_BYTES..frame_bytes], 0)?;
    let mut frame = buf.split_to(frame_bytes);
    match &mut packet {
        Packet::Data { data, .. } => {
            frame.advance(HEADER_BYTES + DATA_FIXED_BYTES);
            *data = frame.freeze();
        }
        Packet::RsDataReply { data, .. } => {
            frame.advance(HEADER_BYTES + RS_DATA_REPLY_FIXED_BYTES);
            *data = frame.freeze();
        }
        _ => {}
    }
    Ok(Some(packet))
}

/// Reads named big-endian fields off a payload, reporting the field a short payload cuts.
struct Reader<'a> {
    packet: &'static str,
    payload: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos + n;
        let bytes = self
            .payload
            .get(self.pos..end)
            .ok_or(WireError::Truncated {
                packet: self.packet,
                field,
                len_bytes: self.payload.len(),
                needed_bytes: end,
            })?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        Ok(self.take(field, N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// The rest of the payload.
    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.payload[self.pos..];
        self.pos = self.payload.len();
        rest
    }

    /// Fails if bytes are left after the last field.
    fn finish(self) -> Result<(), WireError> {
        if self.pos == self.payload.len() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                packet: self.packet,
                len_bytes: self.payload.len(),
                expected_bytes: self.pos,
            })
        }
    }

    fn name(&mut self, field: &'static str) -> Result<String, WireError> {
        let len = usize::from(self.u16(field)?);
        check_name_len(field, len)?;
        let bytes = self.take(field, len)?;
        let name = std::str::from_utf8(bytes).map_err(|_| WireError::NameNotUtf8 { field })?;
        Ok(name.to_owned())
    }
}

/// Parses a whole payload of type `ty`. The data of Data and RsDataReply is checked but left
/// empty: [`decode`] fills it with a slice of the frame. `bulk_bytes`: data that follows
/// `payload` but was read elsewhere ([`decode_bulk`]); 0 when `payload` is the whole payload.
fn parse_payload(ty: PacketType, payload: &[u8], bulk_bytes: usize) -> Result<Packet, WireError> {
    let packet = ty.name();
    let mut r = Reader {
        packet,
        payload,
        pos: 0,
    };
    let parsed = match ty {
        PacketType::Hello => {
            let version = r.u16("version")?;
            let socket = match r.u8("socket")? {
                0 => SocketKind::Data,
                1 => SocketKind::Meta,
                other => return Err(bad_value(packet, "socket", other)),
            };
            let protocol = r.u8("protocol")?;
            check_protocol(protocol)?;
            let session_id = r.u64("session_id")?;
            let resource = r.name("resource")?;
            let node = r.name("node")?;
            Packet::Hello(Hello {
                version,
                socket,
                session_id,
                resource,
                node,
                protocol,
            })
        }
        PacketType::AuthChallenge => Packet::AuthChallenge {
            challenge: r.array("challenge")?,
        },
        PacketType::AuthResponse => Packet::AuthResponse {
            digest: r.rest().to_vec(),
        },
        PacketType::AuthOk => Packet::AuthOk,
        PacketType::Sizes => Packet::Sizes {
            backing_sect: r.u64("backing_sect")?,
            user_sect: r.u64("user_sect")?,
            current_sect: r.u64("current_sect")?,
        },
        PacketType::Uuids => Packet::Uuids {
            uuids: [
                r.u64("uuids")?,
                r.u64("uuids")?,
                r.u64("uuids")?,
                r.u64("uuids")?,
            ],
            bitmap_bits: r.u64("bitmap_bits")?,
            flags: r.u32("flags")?,
        },
        PacketType::State => {
            let role = match r.u8("role")? {
                0 => WireRole::Secondary,
                1 => WireRole::Primary,
                other => return Err(bad_value(packet, "role", other)),
            };
            let disk = match r.u8("disk")? {
                0 => WireDisk::Diskless,
                1 => WireDisk::Attaching,
                2 => WireDisk::Inconsistent,
                3 => WireDisk::Outdated,
                4 => WireDisk::DUnknown,
                5 => WireDisk::Consistent,
                6 => WireDisk::UpToDate,
                other => return Err(bad_value(packet, "disk", other)),
            };
            Packet::State { role, disk }
        }
        PacketType::Bitmap => {
            let offset_words = r.u64("offset_words")?;
            let flags = r.u32("flags")?;
            check_flags(packet, "flags", flags, BITMAP_FLAG_LAST)?;
            let words = r
                .rest()
                .chunks(8)
                .map(|w| {
                    // frame_len checked that the words are whole.
                    u64::from_be_bytes(w.try_into().expect("8-byte word"))
                })
                .collect();
            Packet::Bitmap {
                offset_words,
                words,
                last: flags & BITMAP_FLAG_LAST != 0,
            }
        }
        PacketType::SyncUuid => Packet::SyncUuid {
            uuid: r.u64("uuid")?,
        },
        PacketType::PromoteRequest => Packet::PromoteRequest {
            nonce: r.u64("nonce")?,
        },
        PacketType::PromoteReply => match r.u32("granted")? {
            0 => Packet::PromoteReply { granted: false },
            1 => Packet::PromoteReply { granted: true },
            other => {
                return Err(WireError::BadValue {
                    packet,
                    field: "granted",
                    value: u64::from(other),
                })
            }
        },
        PacketType::Data => {
            let seq = r.u64("seq")?;
            let offset = r.u64("offset")?;
            let epoch = r.u32("epoch")?;
            let flags = r.u32("flags")?;
            let data_len = r.rest().len() + bulk_bytes;
            check_range(packet, offset, "data length", data_len as u64)?;
            check_flags(packet, "flags", flags, DATA_FLAGS_KNOWN)?;
            Packet::Data {
                seq,
                epoch,
                offset,
                flags,
                data: Bytes::new(),
            }
        }
        PacketType::RecvAck => Packet::RecvAck { seq: r.u64("seq")? },
        PacketType::WriteAck => Packet::WriteAck { seq: r.u64("seq")? },
        PacketType::NegAck => Packet::NegAck { seq: r.u64("seq")? },
        PacketType::Barrier => Packet::Barrier {
            barrier_nr: r.u32("barrier_nr")?,
        },
        PacketType::BarrierAck => Packet::BarrierAck {
            barrier_nr: r.u32("barrier_nr")?,
            set_size: r.u32("set_size")?,
        },
        PacketType::DataDigest => Packet::DataDigest {
            seq: r.u64("seq")?,
            digest: r.rest().to_vec(),
        },
        PacketType::RsDataRequest => Packet::RsDataRequest {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        PacketType::RsDataReply => {
            let id = r.u64("id")?;
            let offset = r.u64("offset")?;
            let data_len = r.rest().len() + bulk_bytes;
            check_range(packet, offset, "data length", data_len as u64)?;
            Packet::RsDataReply {
                id,
                offset,
                data: Bytes::new(),
            }
        }
        PacketType::RsWriteAck => Packet::RsWriteAck {
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        PacketType::RsNegAck => Packet::RsNegAck {
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        PacketType::CsumRsRequest => Packet::CsumRsRequest {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
            digest: r.rest().to_vec(),
        },
        PacketType::RsIsInSync => Packet::RsIsInSync {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        PacketType::OvRequest => Packet::OvRequest {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
        },
        PacketType::OvReply => Packet::OvReply {
            id: r.u64("id")?,
            offset: r.u64("offset")?,
            len: r.u32("len")?,
            digest: r.rest().to_vec(),
        },
        PacketType::Ping => Packet::Ping,
        PacketType::PingAck => Packet::PingAck,
    };
    r.finish()?;
    if !matches!(parsed, Packet::Data { .. } | Packet::RsDataReply { .. }) {
        // Data and RsDataReply were checked above, with their data's length.
        parsed.validate()?;
    }
    Ok(parsed)
}

fn bad_value(packet: &'static str, field: &'static str, value: u8) -> WireError {
    WireError::BadValue {
        packet,
        field,
        value: u64::from(value),
    }
}

fn check_protocol(protocol: u8) -> Result<(), WireError> {
    if protocol <= 2 {
        Ok(())
    } else {
        Err(bad_value("Hello", "protocol", protocol))
    }
}

fn check_name_len(field: &'static str, len: usize) -> Result<(), WireError> {
    if (1..=MAX_NAME_BYTES).contains(&len) {
        Ok(())
    } else {
        Err(WireError::BadNameLength {
            field,
            len_bytes: len,
        })
    }
}

fn check_flags(
    packet: &'static str,
    field: &'static str,
    flags: u32,
    known: u32,
) -> Result<(), WireError> {
    if flags & !known == 0 {
        Ok(())
    } else {
        Err(WireError::UnknownFlags {
            packet,
            field,
            flags,
        })
    }
}

fn check_bitmap_words(words: usize) -> Result<(), WireError> {
    if words <= MAX_BITMAP_WORDS_PER_PACKET {
        Ok(())
    } else {
        Err(WireError::TooManyBitmapWords { words })
    }
}

fn check_bitmap(offset_words: u64, words: usize) -> Result<(), WireError> {
    check_bitmap_words(words)?;
    let words = words as u64;
    if offset_words.checked_add(words).is_none() {
        return Err(WireError::Overflow {
            packet: "Bitmap",
            field: "offset_words",
            start: offset_words,
            len: words,
        });
    }
    Ok(())
}

/// A range length: at least a sector, whole sectors, at most [`MAX_DATA_BYTES`].
fn check_len(packet: &'static str, field: &'static str, len: u64) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::ZeroLength { packet, field });
    }
    if len > MAX_DATA_BYTES as u64 {
        return Err(WireError::RangeTooLong {
            packet,
            field,
            len_bytes: len,
            max_bytes: MAX_DATA_BYTES,
        });
    }
    if len % SECTOR_BYTES != 0 {
        return Err(WireError::Misaligned {
            packet,
            field,
            value: len,
            align: SECTOR_BYTES,
        });
    }
    Ok(())
}

/// A disk range: a sector-aligned offset, a valid length (field `len_field`), no overflow.
fn check_range(
    packet: &'static str,
    offset: u64,
    len_field: &'static str,
    len: u64,
) -> Result<(), WireError> {
    if offset % SECTOR_BYTES != 0 {
        return Err(WireError::Misaligned {
            packet,
            field: "offset",
            value: offset,
            align: SECTOR_BYTES,
        });
    }
    check_len(packet, len_field, len)?;
    if offset.checked_add(len).is_none() {
        return Err(WireError::Overflow {
            packet,
            field: "offset",
            start: offset,
            len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Packet {
        Packet::Hello(Hello {
            version: PROTOCOL_VERSION,
            socket: SocketKind::Meta,
            session_id: 0x0102_0304_0506_0708,
            resource: "r0".to_owned(),
            node: "alice".to_owned(),
            protocol: 2,
        })
    }

    fn data_packet() -> Packet {
        Packet::Data {
            seq: 7,
            epoch: 3,
            offset: 4096,
            flags: data_flags::FUA,
            data: Bytes::from(vec![0xab; 512]),
        }
    }

    #[test]
    fn bulk_data_read_apart_decodes_like_the_whole_frame() {
        let mut bulk = 0;
        for packet in one_of_each() {
            let mut frame = BytesMut::new();
            encode(&packet, &mut frame);
            let Some((head, data)) = bulk_layout(&frame).unwrap() else {
                assert!(!matches!(
                    packet,
                    Packet::Data { .. } | Packet::RsDataReply { .. }
                ));
                continue;
            };
            bulk += 1;
            assert_eq!(head + data, frame.len());
            // Only the head is needed to lay the frame out.
            assert_eq!(bulk_layout(&frame[..head]).unwrap(), Some((head, data)));
            assert_eq!(bulk_layout(&frame[..head - 1]).unwrap(), None);
            let payload = Bytes::copy_from_slice(&frame[head..]);
            assert_eq!(
                decode_bulk(&frame[..head], payload.clone()).unwrap(),
                packet
            );
            assert!(matches!(
                decode_bulk(&frame[..head], payload.slice(1..)),
                Err(WireError::BulkMismatch { .. })
            ));
            // A head cut inside the header is refused, not indexed past its end.
            assert!(matches!(
                decode_bulk(&frame[..5], payload.clone()),
                Err(WireError::BulkMismatch { .. })
            ));
        }
        assert_eq!(bulk, 2, "Data and RsDataReply");
        // The head's checks still apply: a misaligned offset is refused.
        let mut frame = BytesMut::new();
        encode(&data_packet(), &mut frame);
        let (head, _) = bulk_layout(&frame).unwrap().unwrap();
        frame[HEADER_BYTES + 8..HEADER_BYTES + 16].copy_from_slice(&4097u64.to_be_bytes());
        let data = Bytes::copy_from_slice(&frame[head..]);
        assert!(matches!(
            decode_bulk(&frame[..head], data),
            Err(WireError::Misaligned { .. })
        ));
    }

    /// One packet of every type, with nonzero fields where possible.
    fn one_of_each() -> Vec<Packet> {
        let mut challenge = [0u8; CHALLENGE_BYTES];
        for (i, b) in challenge.iter_mut().enumerate() {
            *b = u8::try_from(i).unwrap();
        }
        vec![
            hello(),
            Packet::AuthChallenge { challenge },
            Packet::AuthResponse {
                digest: vec![0x5a; 32],
            },
            Packet::AuthOk,
            Packet::Sizes {
                backing_sect: 2_097_152,
                user_sect: 0,
                current_sect: 2_097_144,
            },
            Packet::Uuids {
                uuids: [0x1111, 0x2222, 0x3333, 0x4444],
                bitmap_bits: 99,
                flags: uuid_flags::CRASHED_PRIMARY | uuid_flags::INCONSISTENT,
            },
            Packet::State {
                role: WireRole::Primary,
                disk: WireDisk::UpToDate,
            },
            Packet::Bitmap {
                offset_words: 1024,
                words: vec![0, u64::MAX, 0x8000_0000_0000_0001],
                last: true,
            },
            Packet::SyncUuid {
                uuid: 0xdead_beef_cafe_f00d,
            },
            Packet::PromoteRequest { nonce: 7 },
            Packet::PromoteReply { granted: true },
            data_packet(),
            Packet::RecvAck { seq: 1 },
            Packet::WriteAck { seq: 2 },
            Packet::NegAck { seq: 3 },
            Packet::Barrier { barrier_nr: 4 },
            Packet::BarrierAck {
                barrier_nr: 4,
                set_size: 17,
            },
            Packet::DataDigest {
                seq: 1,
                digest: vec![0xab; 4],
            },
            Packet::RsDataRequest {
                id: 5,
                offset: 8192,
                len: 4096,
            },
            Packet::RsDataReply {
                id: 5,
                offset: 8192,
                data: Bytes::from(
                    (0..4096u32)
                        .map(|i| (i % 251).to_le_bytes()[0])
                        .collect::<Vec<_>>(),
                ),
            },
            Packet::RsWriteAck {
                offset: 8192,
                len: 4096,
            },
            Packet::RsNegAck {
                offset: 0,
                len: 512,
            },
            Packet::CsumRsRequest {
                id: 6,
                offset: 1 << 40,
                len: 1 << 20,
                digest: vec![1; 20],
            },
            Packet::RsIsInSync {
                id: 6,
                offset: 1 << 40,
                len: 1 << 20,
            },
            Packet::OvRequest {
                id: 7,
                offset: 512,
                len: 4096,
            },
            Packet::OvReply {
                id: 7,
                offset: 512,
                len: 4096,
                digest: vec![],
            },
            Packet::Ping,
            Packet::PingAck,
        ]
    }

    fn encoded(packet: &Packet) -> BytesMut {
        let mut out = BytesMut::new();
        encode(packet, &mut out);
        out
    }

    /// A header for `type_nr` with payload length `len`.
    fn header(type_nr: u16, len: u32) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(MAGIC);
        b.put_u16(type_nr);
        b.put_u16(0);
        b.put_u32(len);
        b
    }

    /// A frame with an arbitrary (possibly invalid) payload.
    fn frame(ty: PacketType, payload: &[u8]) -> BytesMut {
        let mut b = header(ty as u16, u32::try_from(payload.len()).unwrap());
        b.put_slice(payload);
        b
    }

    /// Decodes `bytes`, expecting an error; checks that nothing was consumed.
    fn decode_err(bytes: &[u8]) -> WireError {
        let mut buf = BytesMut::from(bytes);
        let e = decode(&mut buf).expect_err("must be refused");
        assert_eq!(&buf[..], bytes, "an error must not consume");
        e
    }

    #[test]
    fn every_type_round_trips() {
        let all = one_of_each();
        let types: Vec<PacketType> = all.iter().map(Packet::packet_type).collect();
        assert_eq!(
            types,
            PacketType::ALL,
            "one_of_each covers every type, in order"
        );
        for p in all {
            let bytes = encoded(&p);
            assert_eq!(bytes.len(), p.encoded_len(), "{}", packet_name(&p));
            let mut buf = bytes.clone();
            assert_eq!(decode(&mut buf).unwrap(), Some(p.clone()));
            assert!(buf.is_empty(), "{} consumed exactly", packet_name(&p));
        }
    }

    #[test]
    fn type_numbers_match_the_doc_comments() {
        let numbers: Vec<u16> = PacketType::ALL.iter().map(|t| *t as u16).collect();
        assert_eq!(
            numbers,
            [
                1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 20, 21, 22, 23, 24, 25, 26, 30, 31, 32, 33,
                34, 35, 36, 37, 40, 41
            ]
        );
        for t in PacketType::ALL {
            assert_eq!(PacketType::from_u16(t as u16), Some(t));
            assert!(t.max_payload_bytes() <= MAX_PAYLOAD_BYTES);
        }
        assert_eq!(PacketType::from_u16(0), None);
        assert_eq!(PacketType::from_u16(5), None);
    }

    #[test]
    fn names_and_sockets() {
        assert_eq!(packet_name(&data_packet()), "Data");
        assert_eq!(packet_name(&Packet::WriteAck { seq: 0 }), "WriteAck");
        assert_eq!(PacketType::BarrierAck.to_string(), "BarrierAck");
        assert_eq!(socket_of(&data_packet()), Some(SocketKind::Data));
        assert_eq!(
            socket_of(&Packet::WriteAck { seq: 0 }),
            Some(SocketKind::Meta)
        );
        assert_eq!(socket_of(&Packet::Ping), Some(SocketKind::Meta));
        assert_eq!(
            socket_of(&Packet::Barrier { barrier_nr: 1 }),
            Some(SocketKind::Data)
        );
        assert_eq!(
            socket_of(&Packet::RsWriteAck {
                offset: 0,
                len: 512
            }),
            Some(SocketKind::Meta)
        );
        assert_eq!(socket_of(&Packet::AuthOk), None);
        assert_eq!(socket_of(&hello()), Some(SocketKind::Meta));
        assert_eq!(PacketType::Hello.socket(), None);
        for p in one_of_each() {
            assert_eq!(
                packet_name(&p),
                format!("{p:?}").split([' ', '(']).next().unwrap()
            );
        }
    }

    #[test]
    fn golden_hello() {
        let expected: &[u8] = &[
            0x54, 0x4e, 0x44, 0x52, // magic "TNDR"
            0x00, 0x01, // type 1
            0x00, 0x00, // reserved
            0x00, 0x00, 0x00, 0x17, // payload 23 bytes
            0x00, 0x02, // version 2
            0x01, // socket Meta
            0x02, // protocol C
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // session_id
            0x00, 0x02, b'r', b'0', // resource
            0x00, 0x05, b'a', b'l', b'i', b'c', b'e', // node
        ];
        assert_eq!(&encoded(&hello())[..], expected);
        assert_eq!(
            decode(&mut BytesMut::from(expected)).unwrap(),
            Some(hello())
        );
    }

    #[test]
    fn golden_data() {
        let mut expected = vec![
            0x54, 0x4e, 0x44, 0x52, // magic
            0x00, 0x14, // type 20
            0x00, 0x00, // reserved
            0x00, 0x00, 0x02, 0x18, // payload 24 + 512
            0, 0, 0, 0, 0, 0, 0, 7, // seq
            0, 0, 0, 0, 0, 0, 0x10, 0, // offset 4096
            0, 0, 0, 3, // epoch
            0, 0, 0, 1, // flags FUA
        ];
        expected.extend([0xab; 512]);
        assert_eq!(&encoded(&data_packet())[..], &expected[..]);
        assert_eq!(
            decode(&mut BytesMut::from(&expected[..])).unwrap(),
            Some(data_packet())
        );
    }

    #[test]
    fn golden_barrier_ack() {
        let p = Packet::BarrierAck {
            barrier_nr: 0x0102_0304,
            set_size: 9,
        };
        let expected: &[u8] = &[
            0x54, 0x4e, 0x44, 0x52, 0x00, 0x19, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, // header
            0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x09,
        ];
        assert_eq!(&encoded(&p)[..], expected);
        assert_eq!(decode(&mut BytesMut::from(expected)).unwrap(), Some(p));
    }

    #[test]
    fn promote_reply_is_granted_or_refused() {
        let refused = Packet::PromoteReply { granted: false };
        assert_eq!(
            decode(&mut BytesMut::from(&encoded(&refused)[..])).unwrap(),
            Some(refused)
        );
        let mut bad = encoded(&Packet::PromoteReply { granted: true });
        bad[HEADER_BYTES + 3] = 2;
        assert_eq!(
            decode_err(&bad),
            WireError::BadValue {
                packet: "PromoteReply",
                field: "granted",
                value: 2
            }
        );
    }

    #[test]
    fn encode_head_leaves_the_data_uncopied() {
        for p in [data_packet(), one_of_each()[19].clone()] {
            let mut head = BytesMut::new();
            let data = encode_head(&p, &mut head).expect("data packets return their data");
            let (Packet::Data { data: own, .. } | Packet::RsDataReply { data: own, .. }) = &p
            else {
                unreachable!()
            };
            assert_eq!(data.as_ptr(), own.as_ptr(), "the same memory, not a copy");
            head.extend_from_slice(&data);
            assert_eq!(head, encoded(&p));
        }
        let mut head = BytesMut::new();
        assert_eq!(encode_head(&Packet::Ping, &mut head), None);
        assert_eq!(head, encoded(&Packet::Ping));
    }

    #[test]
    fn decoded_data_is_a_slice_of_the_receive_buffer() {
        let mut buf = encoded(&data_packet());
        buf.extend_from_slice(&encoded(&Packet::Ping));
        let base = buf.as_ptr() as usize;
        let Some(Packet::Data { data, .. }) = decode(&mut buf).unwrap() else {
            panic!("expected Data")
        };
        assert_eq!(
            data.as_ptr() as usize,
            base + HEADER_BYTES + DATA_FIXED_BYTES
        );
        assert_eq!(data.len(), 512);
        assert_eq!(decode(&mut buf).unwrap(), Some(Packet::Ping));
        assert_eq!(decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn partial_frames_wait_without_consuming() {
        for p in one_of_each() {
            let bytes = encoded(&p);
            for split in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..split]);
                assert_eq!(
                    decode(&mut buf).unwrap(),
                    None,
                    "{} at {split}",
                    packet_name(&p)
                );
                assert_eq!(&buf[..], &bytes[..split]);
                // The rest arrives: the packet decodes.
                buf.extend_from_slice(&bytes[split..]);
                assert_eq!(decode(&mut buf).unwrap(), Some(p.clone()));
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn back_to_back_frames_decode_one_at_a_time() {
        let all = one_of_each();
        let mut buf = BytesMut::new();
        for p in &all {
            encode(p, &mut buf);
        }
        for p in &all {
            assert_eq!(decode(&mut buf).unwrap().as_ref(), Some(p));
        }
        assert_eq!(decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn bad_magic() {
        let mut b = encoded(&Packet::Ping);
        b[0] = b'X';
        assert_eq!(decode_err(&b), WireError::BadMagic { found: 0x584e_4452 });
        assert!(decode_err(&b).to_string().contains("not a tandem"));
    }

    #[test]
    fn unknown_type() {
        for type_nr in [0, 5, 17, 27, 38, 42, u16::MAX] {
            assert_eq!(
                decode_err(&header(type_nr, 0)),
                WireError::UnknownType { type_nr }
            );
        }
    }

    #[test]
    fn reserved_field_must_be_zero() {
        let mut b = encoded(&Packet::WriteAck { seq: 1 });
        b[7] = 1;
        let e = decode_err(&b);
        assert_eq!(
            e,
            WireError::ReservedNotZero {
                packet: "WriteAck",
                value: 1
            }
        );
        assert_eq!(
            e.to_string(),
            "WriteAck: header field reserved is 0x0001, must be 0"
        );
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        // Only the 12 header bytes are there: no waiting for 4 GiB.
        for ty in PacketType::ALL {
            for len in [MAX_PAYLOAD_BYTES + 1, u32::MAX as usize] {
                let e = decode_err(&header(ty as u16, u32::try_from(len).unwrap()));
                assert_eq!(
                    e,
                    WireError::TooLarge {
                        packet: ty.name(),
                        len_bytes: len,
                        max_bytes: MAX_PAYLOAD_BYTES
                    }
                );
            }
        }
        let e = decode_err(&header(PacketType::Data as u16, u32::MAX));
        assert_eq!(
            e.to_string(),
            "Data: payload length 4294967295 exceeds the limit of 33558528 bytes"
        );
    }

    #[test]
    fn per_type_limits_are_checked_from_the_header_alone() {
        let cases = [
            // A fixed-size packet announcing more than its fields.
            (
                PacketType::WriteAck,
                12,
                WireError::TrailingBytes {
                    packet: "WriteAck",
                    len_bytes: 12,
                    expected_bytes: 8,
                },
            ),
            (
                PacketType::Ping,
                1,
                WireError::TrailingBytes {
                    packet: "Ping",
                    len_bytes: 1,
                    expected_bytes: 0,
                },
            ),
            (
                PacketType::Hello,
                1 << 20,
                WireError::TooLarge {
                    packet: "Hello",
                    len_bytes: 1 << 20,
                    max_bytes: 526,
                },
            ),
            (
                PacketType::AuthResponse,
                65,
                WireError::DigestTooLong {
                    packet: "AuthResponse",
                    len_bytes: 65,
                },
            ),
            (
                PacketType::CsumRsRequest,
                20 + 65,
                WireError::DigestTooLong {
                    packet: "CsumRsRequest",
                    len_bytes: 65,
                },
            ),
            (
                PacketType::OvReply,
                20 + 1000,
                WireError::DigestTooLong {
                    packet: "OvReply",
                    len_bytes: 1000,
                },
            ),
            (
                PacketType::Bitmap,
                12 + 8 * (128 * 1024 + 1),
                WireError::TooManyBitmapWords {
                    words: 128 * 1024 + 1,
                },
            ),
            (
                PacketType::Bitmap,
                12 + 7,
                WireError::Misaligned {
                    packet: "Bitmap",
                    field: "words length",
                    value: 7,
                    align: 8,
                },
            ),
            (
                PacketType::Data,
                24,
                WireError::ZeroLength {
                    packet: "Data",
                    field: "data length",
                },
            ),
            (
                PacketType::Data,
                24 + 100,
                WireError::Misaligned {
                    packet: "Data",
                    field: "data length",
                    value: 100,
                    align: 512,
                },
            ),
            (
                PacketType::Data,
                24 + MAX_DATA_BYTES + 512,
                WireError::RangeTooLong {
                    packet: "Data",
                    field: "data length",
                    len_bytes: (MAX_DATA_BYTES + 512) as u64,
                    max_bytes: MAX_DATA_BYTES,
                },
            ),
            (
                PacketType::RsDataReply,
                16 + 513,
                WireError::Misaligned {
                    packet: "RsDataReply",
                    field: "data length",
                    value: 513,
                    align: 512,
                },
            ),
        ];
        for (ty, len, expected) in cases {
            assert_eq!(
                decode_err(&header(ty as u16, u32::try_from(len).unwrap())),
                expected,
                "{ty} len {len}"
            );
        }
    }

    #[test]
    fn the_largest_write_is_accepted() {
        let p = Packet::Data {
            seq: 1,
            epoch: 1,
            offset: 0,
            flags: 0,
            data: Bytes::from(vec![7u8; MAX_DATA_BYTES]),
        };
        let mut buf = encoded(&p);
        assert_eq!(
            frame_len(&buf).unwrap(),
            Some(HEADER_BYTES + 24 + MAX_DATA_BYTES)
        );
        assert_eq!(decode(&mut buf).unwrap(), Some(p));
    }

    #[test]
    fn truncated_fixed_fields() {
        let cases: [(PacketType, &[u8], &str, usize); 6] = [
            (PacketType::WriteAck, &[0; 4], "seq", 8),
            (PacketType::BarrierAck, &[0; 6], "set_size", 8),
            (PacketType::Sizes, &[0; 20], "current_sect", 24),
            (PacketType::Data, &[0; 10], "offset", 16),
            (PacketType::RsDataRequest, &[0; 19], "len", 20),
            (PacketType::AuthChallenge, &[0; 63], "challenge", 64),
        ];
        for (ty, payload, field, needed) in cases {
            assert_eq!(
                decode_err(&frame(ty, payload)),
                WireError::Truncated {
                    packet: ty.name(),
                    field,
                    len_bytes: payload.len(),
                    needed_bytes: needed
                }
            );
        }
        // Hello whose name length points past the end of the payload.
        let mut b = encoded(&hello());
        b[HEADER_BYTES + 13] = 30; // resource length 30 in a 23-byte payload
        assert!(matches!(
            decode_err(&b),
            WireError::Truncated {
                packet: "Hello",
                field: "resource",
                ..
            }
        ));
    }

    #[test]
    fn trailing_bytes_after_the_last_field() {
        // Hello's names end before its payload does.
        let mut b = encoded(&hello());
        b[HEADER_BYTES - 1] += 2;
        b.put_slice(&[0, 0]);
        assert_eq!(
            decode_err(&b),
            WireError::TrailingBytes {
                packet: "Hello",
                len_bytes: 25,
                expected_bytes: 23
            }
        );
    }

    #[test]
    fn bad_enum_values() {
        let mut b = encoded(&hello());
        b[HEADER_BYTES + 2] = 2;
        assert_eq!(
            decode_err(&b),
            WireError::BadValue {
                packet: "Hello",
                field: "socket",
                value: 2
            }
        );
        let mut b = encoded(&hello());
        b[HEADER_BYTES + 3] = 3;
        let e = decode_err(&b);
        assert_eq!(
            e,
            WireError::BadValue {
                packet: "Hello",
                field: "protocol",
                value: 3
            }
        );
        assert_eq!(e.to_string(), "Hello: field protocol has invalid value 3");
        assert_eq!(
            decode_err(&frame(PacketType::State, &[2, 6])),
            WireError::BadValue {
                packet: "State",
                field: "role",
                value: 2
            }
        );
        assert_eq!(
            decode_err(&frame(PacketType::State, &[1, 7])),
            WireError::BadValue {
                packet: "State",
                field: "disk",
                value: 7
            }
        );
    }

    #[test]
    fn unknown_flags() {
        let mut b = encoded(&data_packet());
        b[HEADER_BYTES + 23] = 3; // FUA and an undefined bit
        assert_eq!(
            decode_err(&b),
            WireError::UnknownFlags {
                packet: "Data",
                field: "flags",
                flags: 3
            }
        );
        let mut uuids = vec![0u8; 44];
        uuids[43] = 16;
        assert_eq!(
            decode_err(&frame(PacketType::Uuids, &uuids)),
            WireError::UnknownFlags {
                packet: "Uuids",
                field: "flags",
                flags: 16
            }
        );
        let mut bitmap = vec![0u8; 12];
        bitmap[11] = 2; // only bit 0 (last) is defined
        assert_eq!(
            decode_err(&frame(PacketType::Bitmap, &bitmap)),
            WireError::UnknownFlags {
                packet: "Bitmap",
                field: "flags",
                flags: 2
            }
        );
    }

    #[test]
    fn misaligned_offsets_and_lengths() {
        let mut b = encoded(&data_packet());
        b[HEADER_BYTES + 15] = 1; // offset 4097
        assert_eq!(
            decode_err(&b),
            WireError::Misaligned {
                packet: "Data",
                field: "offset",
                value: 4097,
                align: 512
            }
        );
        let request = |offset: u64, len: u32| {
            let mut payload = Vec::new();
            payload.extend(9u64.to_be_bytes());
            payload.extend(offset.to_be_bytes());
            payload.extend(len.to_be_bytes());
            payload
        };
        for ty in [
            PacketType::RsDataRequest,
            PacketType::RsIsInSync,
            PacketType::OvRequest,
            PacketType::CsumRsRequest,
            PacketType::OvReply,
        ] {
            let packet = ty.name();
            assert_eq!(
                decode_err(&frame(ty, &request(100, 512))),
                WireError::Misaligned {
                    packet,
                    field: "offset",
                    value: 100,
                    align: 512
                }
            );
            assert_eq!(
                decode_err(&frame(ty, &request(512, 1000))),
                WireError::Misaligned {
                    packet,
                    field: "len",
                    value: 1000,
                    align: 512
                }
            );
            assert_eq!(
                decode_err(&frame(ty, &request(512, 0))),
                WireError::ZeroLength {
                    packet,
                    field: "len"
                }
            );
            let too_long = u32::try_from(MAX_DATA_BYTES + 512).unwrap();
            assert_eq!(
                decode_err(&frame(ty, &request(512, too_long))),
                WireError::RangeTooLong {
                    packet,
                    field: "len",
                    len_bytes: u64::from(too_long),
                    max_bytes: MAX_DATA_BYTES
                }
            );
            let last_sector = u64::MAX - 511;
            assert_eq!(
                decode_err(&frame(ty, &request(last_sector, 1024))),
                WireError::Overflow {
                    packet,
                    field: "offset",
                    start: last_sector,
                    len: 1024
                }
            );
        }
        for ty in [PacketType::RsWriteAck, PacketType::RsNegAck] {
            let mut payload = Vec::new();
            payload.extend(512u64.to_be_bytes());
            payload.extend(511u32.to_be_bytes());
            assert_eq!(
                decode_err(&frame(ty, &payload)),
                WireError::Misaligned {
                    packet: ty.name(),
                    field: "len",
                    value: 511,
                    align: 512
                }
            );
        }
        let mut reply = encoded(&one_of_each()[19]);
        reply[HEADER_BYTES + 15] = 8; // offset 8192 + 8
        assert_eq!(
            decode_err(&reply),
            WireError::Misaligned {
                packet: "RsDataReply",
                field: "offset",
                value: 8200,
                align: 512
            }
        );
    }

    #[test]
    fn bad_names() {
        let hello_with = |resource: &[u8], node: &[u8]| {
            let mut payload = vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            for name in [resource, node] {
                payload.extend(u16::try_from(name.len()).unwrap().to_be_bytes());
                payload.extend(name);
            }
            frame(PacketType::Hello, &payload)
        };
        assert_eq!(
            decode(&mut hello_with(b"r", b"n"))
                .unwrap()
                .map(|p| packet_name(&p)),
            Some("Hello")
        );
        assert_eq!(
            decode_err(&hello_with(b"", b"n")),
            WireError::BadNameLength {
                field: "resource",
                len_bytes: 0
            }
        );
        assert_eq!(
            decode_err(&hello_with(b"r", &[b'n'; 256])),
            WireError::BadNameLength {
                field: "node",
                len_bytes: 256
            }
        );
        assert_eq!(
            decode_err(&hello_with(b"r\xff", b"n")),
            WireError::NameNotUtf8 { field: "resource" }
        );
        let longest = hello_with(&[b'r'; 255], &[b'n'; 255]);
        assert_eq!(
            longest.len(),
            HEADER_BYTES + PacketType::Hello.max_payload_bytes()
        );
        assert!(decode(&mut longest.clone()).unwrap().is_some());
    }

    #[test]
    fn bitmap_word_offset_must_not_overflow() {
        let mut payload = Vec::new();
        payload.extend(u64::MAX.to_be_bytes());
        payload.extend(0u32.to_be_bytes());
        payload.extend(1u64.to_be_bytes());
        assert_eq!(
            decode_err(&frame(PacketType::Bitmap, &payload)),
            WireError::Overflow {
                packet: "Bitmap",
                field: "offset_words",
                start: u64::MAX,
                len: 1
            }
        );
    }

    #[test]
    fn validate_refuses_what_decode_refuses() {
        let bad = [
            Packet::AuthResponse {
                digest: vec![0; 65],
            },
            Packet::Bitmap {
                offset_words: 0,
                words: vec![0; MAX_BITMAP_WORDS_PER_PACKET + 1],
                last: false,
            },
            Packet::Data {
                seq: 0,
                epoch: 0,
                offset: 0,
                flags: 0,
                data: Bytes::new(),
            },
            Packet::RsWriteAck {
                offset: 1,
                len: 512,
            },
            Packet::Hello(Hello {
                node: String::new(),
                ..match hello() {
                    Packet::Hello(h) => h,
                    _ => unreachable!(),
                }
            }),
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| encoded(&p)));
            assert!(result.is_err(), "encode must refuse {}", packet_name(&p));
        }
    }

    fn arb_range() -> impl Strategy<Value = (u64, u32)> {
        (1u32..=64, any::<u64>()).prop_map(|(sectors, raw)| {
            let len = sectors * 512;
            let max_start_sector = (u64::MAX - u64::from(len)) / 512;
            (raw % (max_start_sector + 1) * 512, len)
        })
    }

    fn arb_data() -> impl Strategy<Value = (u64, Bytes)> {
        (arb_range(), any::<u8>()).prop_map(|((offset, len), fill)| {
            let data: Vec<u8> = (0..len)
                .map(|i| fill.wrapping_add(i.to_le_bytes()[0]))
                .collect();
            (offset, Bytes::from(data))
        })
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.é-]{1,60}".prop_filter("name fits", |s| s.len() <= MAX_NAME_BYTES)
    }

    fn arb_digest() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..=MAX_DIGEST_BYTES)
    }

    fn arb_packet() -> impl Strategy<Value = Packet> {
        let role = prop_oneof![Just(WireRole::Secondary), Just(WireRole::Primary)];
        let disk = (0u8..=6).prop_map(|d| match d {
            0 => WireDisk::Diskless,
            1 => WireDisk::Attaching,
            2 => WireDisk::Inconsistent,
            3 => WireDisk::Outdated,
            4 => WireDisk::DUnknown,
            5 => WireDisk::Consistent,
            _ => WireDisk::UpToDate,
        });
        prop_oneof![
            (
                any::<u16>(),
                any::<bool>(),
                any::<u64>(),
                arb_name(),
                arb_name(),
                0u8..=2
            )
                .prop_map(|(version, meta, session_id, resource, node, protocol)| {
                    Packet::Hello(Hello {
                        version,
                        socket: if meta {
                            SocketKind::Meta
                        } else {
                            SocketKind::Data
                        },
                        session_id,
                        resource,
                        node,
                        protocol,
                    })
                }),
            prop::collection::vec(any::<u8>(), CHALLENGE_BYTES).prop_map(|c| {
                Packet::AuthChallenge {
                    challenge: c.try_into().unwrap(),
                }
            }),
            arb_digest().prop_map(|digest| Packet::AuthResponse { digest }),
            Just(Packet::AuthOk),
            any::<(u64, u64, u64)>().prop_map(|(backing_sect, user_sect, current_sect)| {
                Packet::Sizes {
                    backing_sect,
                    user_sect,
                    current_sect,
                }
            }),
            (any::<[u64; 4]>(), any::<u64>(), 0u32..8).prop_map(|(uuids, bitmap_bits, flags)| {
                Packet::Uuids {
                    uuids,
                    bitmap_bits,
                    flags,
                }
            }),
            (role, disk).prop_map(|(role, disk)| Packet::State { role, disk }),
            (
                any::<u64>(),
                prop::collection::vec(any::<u64>(), 0..100),
                any::<bool>()
            )
                .prop_map(|(offset, words, last)| Packet::Bitmap {
                    offset_words: offset.min(u64::MAX - words.len() as u64),
                    words,
                    last
                }),
            any::<u64>().prop_map(|uuid| Packet::SyncUuid { uuid }),
            any::<u64>().prop_map(|nonce| Packet::PromoteRequest { nonce }),
            any::<bool>().prop_map(|granted| Packet::PromoteReply { granted }),
            (any::<u64>(), any::<u32>(), arb_data(), 0u32..=1).prop_map(
                |(seq, epoch, (offset, data), flags)| Packet::Data {
                    seq,
                    epoch,
                    offset,
                    flags,
                    data
                }
            ),
            any::<u64>().prop_map(|seq| Packet::RecvAck { seq }),
            any::<u64>().prop_map(|seq| Packet::WriteAck { seq }),
            any::<u64>().prop_map(|seq| Packet::NegAck { seq }),
            any::<u32>().prop_map(|barrier_nr| Packet::Barrier { barrier_nr }),
            any::<(u32, u32)>().prop_map(|(barrier_nr, set_size)| Packet::BarrierAck {
                barrier_nr,
                set_size
            }),
            (any::<u64>(), arb_digest())
                .prop_map(|(seq, digest)| Packet::DataDigest { seq, digest }),
            (any::<u64>(), arb_range()).prop_map(|(id, (offset, len))| Packet::RsDataRequest {
                id,
                offset,
                len
            }),
            (any::<u64>(), arb_data()).prop_map(|(id, (offset, data))| Packet::RsDataReply {
                id,
                offset,
                data
            }),
            arb_range().prop_map(|(offset, len)| Packet::RsWriteAck { offset, len }),
            arb_range().prop_map(|(offset, len)| Packet::RsNegAck { offset, len }),
            (any::<u64>(), arb_range(), arb_digest()).prop_map(|(id, (offset, len), digest)| {
                Packet::CsumRsRequest {
                    id,
                    offset,
                    len,
                    digest,
                }
            }),
            (any::<u64>(), arb_range()).prop_map(|(id, (offset, len))| Packet::RsIsInSync {
                id,
                offset,
                len
            }),
            (any::<u64>(), arb_range()).prop_map(|(id, (offset, len))| Packet::OvRequest {
                id,
                offset,
                len
            }),
            (any::<u64>(), arb_range(), arb_digest()).prop_map(|(id, (offset, len), digest)| {
                Packet::OvReply {
                    id,
                    offset,
                    len,
                    digest,
                }
            }),
            Just(Packet::Ping),
            Just(Packet::PingAck),
        ]
    }

    /// What the fuzz target checks: whatever decodes re-encodes to exactly the bytes consumed,
    /// and errors and "need more" consume nothing.
    fn check_decode_is_canonical(bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        let mut consumed = 0;
        loop {
            match decode(&mut buf) {
                Ok(Some(p)) => {
                    let used = bytes.len() - consumed - buf.len();
                    assert_eq!(&encoded(&p)[..], &bytes[consumed..consumed + used]);
                    consumed += used;
                }
                Ok(None) | Err(_) => {
                    assert_eq!(&buf[..], &bytes[consumed..]);
                    return;
                }
            }
        }
    }

    proptest! {
        #[test]
        fn packets_round_trip(p in arb_packet()) {
            prop_assert!(p.validate().is_ok());
            let bytes = encoded(&p);
            prop_assert_eq!(bytes.len(), p.encoded_len());
            prop_assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len()));
            let mut buf = bytes.clone();
            prop_assert_eq!(decode(&mut buf).unwrap(), Some(p.clone()));
            prop_assert!(buf.is_empty());
            let mut head = BytesMut::new();
            if let Some(data) = encode_head(&p, &mut head) {
                head.extend_from_slice(&data);
            }
            prop_assert_eq!(head, bytes);
        }

        #[test]
        fn packet_streams_round_trip_in_any_chunking(
            packets in prop::collection::vec(arb_packet(), 1..8),
            chunk in 1usize..700,
        ) {
            let mut stream = BytesMut::new();
            for p in &packets {
                encode(p, &mut stream);
            }
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(p) = decode(&mut buf).unwrap() {
                    decoded.push(p);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(decoded, packets);
        }

        #[test]
        fn corrupted_frames_are_refused_or_canonical(
            p in arb_packet(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encoded(&p).to_vec();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            check_decode_is_canonical(&bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            check_decode_is_canonical(&bytes);
            let mut with_magic = MAGIC.to_be_bytes().to_vec();
            with_magic.extend(&bytes);
            check_decode_is_canonical(&with_magic);
        }
    }
}
