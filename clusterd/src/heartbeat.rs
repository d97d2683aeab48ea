//! The heartbeat datagram, sans-IO: bytes in, [`Heartbeat`] out, and back.
//!
//! clusterd sends one heartbeat per link (one per address of every node) every
//! [`INTERVAL_MS`]-ish, over UDP to [`DEFAULT_PORT`]. A heartbeat says who sent it, on which
//! of its links, a sequence number, which resources the sender is Primary for and which of its
//! replicas are UpToDate, and the cluster's administrative state (standby nodes, moves) as the
//! sender knows it, versioned by an epoch so the newest wins. Version 2 adds which nodes the
//! sender hears (a one-way partition must make both sides see the other lost: see
//! [`crate::core::Event::PeerHears`]).
//!
//! Layout (integers big-endian; a name is a length byte then that many UTF-8 bytes):
//!
//! ```text
//!  0  4  magic "TDHB"
//!  4  1  version (2; 1 is still decoded: it has no hears list)
//!  5  1  flags: bit 0 the sender has quorum; the others must be 0
//!  6  2  sender's node id (its index in the cluster block)
//!  8  8  incarnation (the sender's start time, ms since the Unix epoch)
//! 16  8  sequence number (per incarnation, from 0)
//! 24  1  link: index of the sender's address this datagram left from
//! 25     name  cluster name
//!        name  sender's node name
//!        1     resource count, then per resource: name, 1 state byte
//!              (bit 0 Primary, bit 1 UpToDate)
//!        8     admin epoch
//!        1     standby count, then per standby node: 2 node id
//!        1     move count, then per move: name (resource), 2 node id (target)
//!        1     version 2 only: hears count, then per node the sender heard within `token`:
//!              2 node id
//! end-32 32    HMAC-SHA256 over every byte before it, keyed by [`key`]
//! ```
//!
//! The key is derived from the cluster name and its secrets (see [`key`]). Without any secret
//! the MAC still rejects corrupted datagrams and other clusters' heartbeats, but not a forger.
//!
//! A version 1 datagram (clusterd before the hears list) decodes with [`Heartbeat::hears`]
//! `None` (the receiver takes the sender as hearing everyone, as before), and a heartbeat
//! without a hears list encodes as version 1, so the encoding stays canonical; clusterd itself
//! always sends version 2. A version 1 clusterd refuses version 2 (rolling upgrades lose the
//! old nodes' view of the new ones: upgrade every node together).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The UDP port heartbeats go to unless `clusterd --heartbeat-port` says otherwise (corosync's).
pub const DEFAULT_PORT: u16 = 5405;
/// The largest datagram accepted or built (fits a 1500-byte MTU).
pub const MAX_HEARTBEAT_BYTES: usize = 1400;
/// Longest node, cluster or resource name.
pub const MAX_NAME_BYTES: usize = 63;
/// Most resources, standby nodes or moves in one heartbeat.
pub const MAX_ENTRIES: usize = 32;
const MAGIC: &[u8; 4] = b"TDHB";
/// The version sent; [`VERSION_1`] is still decoded.
const VERSION: u8 = 2;
/// The version before the hears list.
const VERSION_1: u8 = 1;
const MAC_BYTES: usize = 32;
const FLAG_QUORATE: u8 = 1;
const FIXED_BYTES: usize = 25;

/// One resource as the sender sees its own replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    /// The resource.
    pub name: String,
    /// The sender's replica is Primary.
    pub primary: bool,
    /// The sender's replica is UpToDate.
    pub up_to_date: bool,
}

/// The cluster's administrative state: what `clusterctl standby` and `move` asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admin {
    /// Bumped on every change; the highest epoch wins.
    pub epoch: u64,
    /// Nodes in standby (by id).
    pub standby: Vec<u16>,
    /// Resources moved to a node: (resource, node id).
    pub moves: Vec<(String, u16)>,
}

/// A decoded heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's node id.
    pub node_id: u16,
    /// When the sender started (ms since the epoch): tells a restarted sender apart.
    pub incarnation: u64,
    /// Sequence number within the incarnation.
    pub seq: u64,
    /// Which of the sender's links.
    pub link: u8,
    /// The sender has quorum (a node joining a quorate partition shares its quorum, as
    /// corosync's wait-for-all allows).
    pub quorate: bool,
    /// The cluster name.
    pub cluster: String,
    /// The sender's node name.
    pub node: String,
    /// The sender's replicas.
    pub resources: Vec<ResourceState>,
    /// The admin state as the sender knows it.
    pub admin: Admin,
    /// The nodes the sender heard within `token` (by id); `None` in a version 1 heartbeat,
    /// which says nothing about it.
    pub hears: Option<Vec<u16>>,
}

/// Why a datagram is not a heartbeat of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// Too short or too long to be one.
    #[error("datagram of {0} bytes is not a heartbeat (25..=1400 bytes)")]
    Size(usize),
    /// Wrong magic.
    #[error("not a tandem heartbeat (bad magic)")]
    Magic,
    /// A version we do not speak.
    #[error("heartbeat version {0} (this clusterd speaks 1 and 2)")]
    Version(u8),
    /// Flags we do not know.
    #[error("heartbeat flags {0:#x} unknown")]
    Flags(u8),
    /// The MAC does not match: another cluster, another secret, or corruption.
    #[error("heartbeat authentication failed (another cluster or a different shared secret)")]
    Mac,
    /// A field runs past the end.
    #[error("heartbeat truncated in {0}")]
    Truncated(&'static str),
    /// A name is not UTF-8 or too long.
    #[error("heartbeat {0} is not a valid name")]
    Name(&'static str),
    /// Too many entries in a list.
    #[error("heartbeat has more than 32 {0}")]
    TooMany(&'static str),
    /// Bytes left between the last field and the MAC.
    #[error("heartbeat has trailing bytes")]
    Trailing,
    /// Unknown bits in a resource state.
    #[error("heartbeat resource state {0:#x} unknown")]
    State(u8),
}

/// Why a heartbeat cannot be encoded (a bug or a config beyond the limits).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A name over [`MAX_NAME_BYTES`].
    #[error("name {0:?} is longer than 63 bytes")]
    Name(String),
    /// A list over [`MAX_ENTRIES`].
    #[error("more than 32 {0}")]
    TooMany(&'static str),
    /// The whole over [`MAX_HEARTBEAT_BYTES`].
    #[error("heartbeat of {0} bytes exceeds 1400")]
    Size(usize),
}

/// The MAC key of a cluster: `"tandem-heartbeat\0" cluster-name "\0"` followed by each given
/// secret and a NUL (the `shared-secret`s of the cluster's resources, in config order).
pub fn key<'a>(cluster: &str, secrets: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut k = b"tandem-heartbeat\0".to_vec();
    k.extend_from_slice(cluster.as_bytes());
    k.push(0);
    for s in secrets {
        k.extend_from_slice(s.as_bytes());
        k.push(0);
    }
    k
}

/// `body` with its MAC appended: what [`Heartbeat::decode`] checks (for tests and the fuzz
/// target, which must reach the body's parser with well-signed garbage).
pub fn sign(body: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    out.extend_from_slice(&mac(key, body));
    out
}

fn mac(key: &[u8], body: &[u8]) -> [u8; MAC_BYTES] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(body);
    m.finalize().into_bytes().into()
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), EncodeError> {
    let len = u8::try_from(name.len())
        .ok()
        .filter(|&l| usize::from(l) <= MAX_NAME_BYTES)
        .ok_or_else(|| EncodeError::Name(name.to_string()))?;
    out.push(len);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn count(n: usize, what: &'static str) -> Result<u8, EncodeError> {
    if n > MAX_ENTRIES {
        return Err(EncodeError::TooMany(what));
    }
    Ok(u8::try_from(n).expect("at most 32"))
}

impl Heartbeat {
    /// Encodes and signs with `key`.
    pub fn encode(&self, key: &[u8]) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.push(if self.hears.is_some() {
            VERSION
        } else {
            VERSION_1
        });
        out.push(u8::from(self.quorate));
        out.extend_from_slice(&self.node_id.to_be_bytes());
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.push(self.link);
        put_name(&mut out, &self.cluster)?;
        put_name(&mut out, &self.node)?;
        out.push(count(self.resources.len(), "resources")?);
        for r in &self.resources {
            put_name(&mut out, &r.name)?;
            out.push(u8::from(r.primary) | (u8::from(r.up_to_date) << 1));
        }
        out.extend_from_slice(&self.admin.epoch.to_be_bytes());
        out.push(count(self.admin.standby.len(), "standby nodes")?);
        for n in &self.admin.standby {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.push(count(self.admin.moves.len(), "moves")?);
        for (r, n) in &self.admin.moves {
            put_name(&mut out, r)?;
            out.extend_from_slice(&n.to_be_bytes());
        }
        if let Some(hears) = &self.hears {
            out.push(count(hears.len(), "heard nodes")?);
            for n in hears {
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        let m = mac(key, &out);
        out.extend_from_slice(&m);
        if out.len() > MAX_HEARTBEAT_BYTES {
            return Err(EncodeError::Size(out.len()));
        }
        debug_assert!(out.len() >= FIXED_BYTES + MAC_BYTES);
        Ok(out)
    }

    /// Checks the MAC with `key` and decodes.
    pub fn decode(bytes: &[u8], key: &[u8]) -> Result<Heartbeat, HeartbeatError> {
        if bytes.len() < FIXED_BYTES + MAC_BYTES || bytes.len() > MAX_HEARTBEAT_BYTES {
            return Err(HeartbeatError::Size(bytes.len()));
        }
        if &bytes[..4] != MAGIC {
            return Err(HeartbeatError::Magic);
        }
        let version = bytes[4];
        if version != VERSION && version != VERSION_1 {
            return Err(HeartbeatError::Version(version));
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_BYTES);
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        m.update(body);
        // verify_slice compares in constant time.
        m.verify_slice(tag).map_err(|_| HeartbeatError::Mac)?;
        if body[5] & !FLAG_QUORATE != 0 {
            return Err(HeartbeatError::Flags(body[5]));
        }
        let quorate = body[5] & FLAG_QUORATE != 0;
        let mut r = Reader { buf: body, pos: 6 };
        let node_id = r.u16("node id")?;
        let incarnation = r.u64("incarnation")?;
        let seq = r.u64("sequence")?;
        let link = r.u8("link")?;
        let cluster = r.name("cluster name")?;
        let node = r.name("node name")?;
        let n = r.count("resources")?;
        let mut resources = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.name("resource name")?;
            let state = r.u8("resource state")?;
            if state & !3 != 0 {
                return Err(HeartbeatError::State(state));
            }
            resources.push(ResourceState {
                name,
                primary: state & 1 != 0,
                up_to_date: state & 2 != 0,
            });
        }
        let epoch = r.u64("admin epoch")?;
        let n = r.count("standby nodes")?;
        let mut standby = Vec::with_capacity(n);
        for _ in 0..n {
            standby.push(r.u16("standby node")?);
        }
        let n = r.count("moves")?;
        let mut moves = Vec::with_capacity(n);
        for _ in 0..n {
            let res = r.name("move resource")?;
            moves.push((res, r.u16("move node")?));
        }
        let hears = if version == VERSION_1 {
            None
        } else {
            let n = r.count("heard nodes")?;
            let mut hears = Vec::with_capacity(n);
            for _ in 0..n {
                hears.push(r.u16("heard node")?);
            }
            Some(hears)
        };
        if r.pos != body.len() {
            return Err(HeartbeatError::Trailing);
        }
        Ok(Heartbeat {
            node_id,
            incarnation,
            seq,
            link,
            quorate,
            cluster,
            node,
            resources,
            admin: Admin {
                epoch,
                standby,
                moves,
            },
            hears,
        })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], HeartbeatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(HeartbeatError::Truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, HeartbeatError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, HeartbeatError> {
        Ok(u16::from_be_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, HeartbeatError> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn count(&mut self, what: &'static str) -> Result<usize, HeartbeatError> {
        let n = usize::from(self.u8(what)?);
        if n > MAX_ENTRIES {
            return Err(HeartbeatError::TooMany(what));
        }
        Ok(n)
    }
    fn name(&mut self, what: &'static str) -> Result<String, HeartbeatError> {
        let len = usize::from(self.u8(what)?);
        if len > MAX_NAME_BYTES {
            return Err(HeartbeatError::Name(what));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| HeartbeatError::Name(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Heartbeat {
        Heartbeat {
            node_id: 1,
            incarnation: 1_790_000_000_000,
            seq: 42,
            link: 1,
            quorate: true,
            cluster: "pi".into(),
            node: "beta".into(),
            resources: vec![
                ResourceState {
                    name: "r0".into(),
                    primary: true,
                    up_to_date: true,
                },
                ResourceState {
                    name: "r1".into(),
                    primary: false,
                    up_to_date: false,
                },
            ],
            admin: Admin {
                epoch: 3,
                standby: vec![0],
                moves: vec![("r0".into(), 1)],
            },
            hears: Some(vec![0, 2]),
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let k = key("pi", ["s3cret"]);
        let hb = sample();
        let bytes = hb.encode(&k).unwrap();
        assert_eq!(&bytes[..6], b"TDHB\x02\x01", "version 2, quorate");
        assert_eq!(&bytes[6..8], &[0, 1]);
        assert_eq!(bytes[24], 1, "link");
        assert_eq!(&bytes[25..28], b"\x02pi");
        let body = &bytes[..bytes.len() - 32];
        assert_eq!(
            &body[body.len() - 5..],
            &[2, 0, 0, 0, 2],
            "hears alpha and gamma"
        );
        assert_eq!(Heartbeat::decode(&bytes, &k).unwrap(), hb);
    }

    /// A clusterd from before the hears list sends version 1: it still decodes, with no
    /// hears list, and a heartbeat without one encodes to exactly those bytes.
    #[test]
    fn version_1_without_a_hears_list_still_decodes() {
        let k = key("pi", ["s3cret"]);
        let hb = Heartbeat {
            hears: None,
            ..sample()
        };
        let v1 = hb.encode(&k).unwrap();
        assert_eq!(v1[4], 1);
        let v2 = sample().encode(&k).unwrap();
        assert_eq!(v1.len() + 5, v2.len(), "one count byte and two node ids");
        assert_eq!(
            v1[5..v1.len() - 32],
            v2[5..v1.len() - 32],
            "version 2 is version 1 plus the hears list"
        );
        assert_eq!(Heartbeat::decode(&v1, &k).unwrap(), hb);
        // A version 1 body with a hears list appended has trailing bytes.
        let mut body = v2[..v2.len() - 32].to_vec();
        body[4] = 1;
        assert_eq!(
            Heartbeat::decode(&sign(&body, &k), &k),
            Err(HeartbeatError::Trailing)
        );
        // And a version 2 body without one is truncated.
        let mut body = v1[..v1.len() - 32].to_vec();
        body[4] = 2;
        assert_eq!(
            Heartbeat::decode(&sign(&body, &k), &k),
            Err(HeartbeatError::Truncated("heard nodes"))
        );
    }

    #[test]
    fn another_key_or_a_flipped_bit_is_refused() {
        let bytes = sample().encode(&key("pi", ["s3cret"])).unwrap();
        assert_eq!(
            Heartbeat::decode(&bytes, &key("pi", ["other"])),
            Err(HeartbeatError::Mac)
        );
        assert_eq!(
            Heartbeat::decode(&bytes, &key("other-cluster", ["s3cret"])),
            Err(HeartbeatError::Mac)
        );
        let k = key("pi", ["s3cret"]);
        for i in 5..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(Heartbeat::decode(&b, &k).is_err(), "bit flip at {i}");
        }
    }

    #[test]
    fn sizes_magic_and_version_are_checked_first() {
        let k = key("pi", []);
        assert_eq!(
            Heartbeat::decode(&[0; 10], &k),
            Err(HeartbeatError::Size(10))
        );
        assert_eq!(
            Heartbeat::decode(&[0; 1401], &k),
            Err(HeartbeatError::Size(1401))
        );
        let mut b = sample().encode(&k).unwrap();
        b[0] = b'X';
        assert_eq!(Heartbeat::decode(&b, &k), Err(HeartbeatError::Magic));
        let mut b = sample().encode(&k).unwrap();
        b[4] = 3;
        assert_eq!(Heartbeat::decode(&b, &k), Err(HeartbeatError::Version(3)));
    }

    #[test]
    fn limits_are_enforced_when_encoding() {
        let k = key("pi", []);
        let mut hb = sample();
        hb.node = "n".repeat(64);
        assert!(matches!(hb.encode(&k), Err(EncodeError::Name(_))));
        let mut hb = sample();
        hb.admin.standby = vec![0; 33];
        assert_eq!(hb.encode(&k), Err(EncodeError::TooMany("standby nodes")));
        let mut hb = sample();
        hb.hears = Some(vec![0; 33]);
        assert_eq!(hb.encode(&k), Err(EncodeError::TooMany("heard nodes")));
    }

    #[test]
    fn a_well_signed_but_malformed_body_is_an_error_not_a_panic() {
        let k = key("pi", []);
        // Signed garbage: the MAC is right, the lengths are not.
        let mut body = b"TDHB\x01\x00".to_vec();
        body.extend_from_slice(&[0; 19]);
        body.push(200); // cluster name length over the limit
        assert_eq!(
            Heartbeat::decode(&sign(&body, &k), &k),
            Err(HeartbeatError::Name("cluster name"))
        );
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9-]{0,20}"
    }

    proptest! {
        #[test]
        fn any_heartbeat_round_trips(
            node_id in any::<u16>(), incarnation in any::<u64>(), seq in any::<u64>(),
            link in any::<u8>(), quorate in any::<bool>(), cluster in name(), node in name(),
            resources in prop::collection::vec((name(), any::<bool>(), any::<bool>()), 0..8),
            epoch in any::<u64>(), standby in prop::collection::vec(any::<u16>(), 0..4),
            moves in prop::collection::vec((name(), any::<u16>()), 0..4),
            hears in prop::option::of(prop::collection::vec(any::<u16>(), 0..4)),
        ) {
            let hb = Heartbeat {
                node_id, incarnation, seq, link, quorate, cluster, node,
                resources: resources.into_iter().map(|(name, primary, up_to_date)| {
                    ResourceState { name, primary, up_to_date }
                }).collect(),
                admin: Admin { epoch, standby, moves },
                hears,
            };
            let k = key("c", ["x"]);
            let bytes = hb.encode(&k).unwrap();
            prop_assert_eq!(Heartbeat::decode(&bytes, &k).unwrap(), hb);
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Heartbeat::decode(&bytes, b"k");
        }
    }
}
