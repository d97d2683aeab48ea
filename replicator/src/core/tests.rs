//! Two nodes wired together in memory: a small deterministic harness for the core.
//!
//! Each direction has two FIFO sockets (data and meta) that a seeded random scheduler
//! interleaves, local IO completes in random order, and filters can hold packets back to prove
//! when a write completes. This is the seed of the full simulator of the split-brain issue.

#![allow(clippy::cast_possible_truncation)] // a test harness on 64-bit hosts

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::*;
use crate::config::Protocol;
use crate::md::{flags, UUID_JUST_CREATED};
use crate::wire::{socket_of, Packet, SocketKind};

const DISK: u64 = 4 << 20;

fn config(name: &str, protocol: Protocol) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        protocol,
        backing_bytes: DISK,
        max_in_flight_bytes: 1 << 20,
        max_epoch_size: 2048,
        max_rx_bytes: 1 << 20,
        ping_int_ms: 10_000,
        ping_timeout_ms: 500,
        ack_timeout_ms: 60_000,
        disk_flushes: true,
        resync_window_bytes: 256 << 10,
        resync_request_bytes: 64 << 10,
        resync_rate_bytes_per_s: 1 << 40,
        resync_min_rate_bytes_per_s: 0,
        resync_delay_target_ms: 0,
        allow_two_primaries: false,
        integrity: None,
        al_extents: 61,
        verify_alg: Some(crate::config::DigestAlg::Crc32c),
        csums_alg: None,
        peer_name: if name == "alpha" {
            "beta".into()
        } else {
            "alpha".into()
        },
        after_sb_0pri: crate::config::AfterSb0Pri::Disconnect,
        after_sb_1pri: crate::config::AfterSb1Pri::Disconnect,
        after_sb_2pri: crate::config::AfterSb2Pri::Disconnect,
        always_asbp: false,
        fencing: crate::config::FencingPolicy::DontCare,
        rr_conflict: crate::config::RrConflict::Disconnect,
    }
}

type Hold = Box<dyn Fn(usize, &Packet) -> bool>;
type Corrupt = Box<dyn Fn(usize, &mut Packet)>;

struct Harness {
    nodes: Vec<Node>,
    disks: Vec<Vec<u8>>,
    /// inbox[to][0 data, 1 meta]
    inbox: Vec<[VecDeque<Packet>; 2]>,
    io: Vec<Vec<Action>>,
    events: VecDeque<(usize, Event)>,
    gen: u64,
    connected: bool,
    hold: Option<Hold>,
    corrupt: Option<Corrupt>,
    fence_calls: [u32; 2],
    pending_lost: Option<(usize, String)>,
    held: Vec<(usize, Packet)>,
    /// Data writes of node i stay queued (its disk is stalled); other IO still completes.
    stall_writes: [bool; 2],
    completed: HashMap<ReqId, Result<(), i32>>,
    replies: HashMap<ReqId, Result<(), String>>,
    rng: u64,
    now: u64,
    next_req: ReqId,
}

impl Harness {
    fn new(protocol: Protocol, seed: u64) -> Harness {
        Harness::with(protocol, seed, |_| {})
    }

    fn with(protocol: Protocol, seed: u64, tune: impl Fn(&mut NodeConfig)) -> Harness {
        let configs = ["alpha", "beta"].map(|n| {
            let mut c = config(n, protocol);
            tune(&mut c);
            c
        });
        let md = MdState {
            uuids: [UUID_JUST_CREATED, 0, 0, 0],
            flags: flags::AL_CLEAN,
            la_size_sect: 0,
        };
        let words = vec![0u64; (DISK / 4096 / 64) as usize];
        Harness {
            nodes: {
                let [a, b] = configs;
                vec![
                    Node::new(a, md, &words, &[], seed ^ 1),
                    Node::new(b, md, &words, &[], seed ^ 2),
                ]
            },
            disks: vec![vec![0; DISK as usize], vec![0; DISK as usize]],
            inbox: vec![Default::default(), Default::default()],
            io: vec![Vec::new(), Vec::new()],
            events: VecDeque::new(),
            gen: 0,
            connected: false,
            hold: None,
            corrupt: None,
            fence_calls: [0, 0],
            pending_lost: None,
            held: Vec::new(),
            stall_writes: [false; 2],
            completed: HashMap::new(),
            replies: HashMap::new(),
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            now: 1,
            next_req: 1,
        }
    }

    fn rand(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    fn feed(&mut self, i: usize, e: Event) {
        let actions = self.nodes[i].apply(e, self.now);
        for a in actions {
            match a {
                Action::LocalWrite { .. }
                | Action::LocalRead { .. }
                | Action::LocalFlush { .. } => self.io[i].push(a),
                Action::Send(mut p) => {
                    if !self.connected {
                        continue;
                    }
                    if let Some(c) = &self.corrupt {
                        c(i, &mut p);
                    }
                    if let Packet::Data { seq, .. } = &p {
                        self.events.push_back((
                            i,
                            Event::Sent {
                                gen: self.gen,
                                seq: *seq,
                            },
                        ));
                    }
                    if self.hold.as_ref().is_some_and(|h| h(i, &p)) {
                        self.held.push((i, p));
                    } else {
                        let socket = usize::from(socket_of(&p) == Some(SocketKind::Meta));
                        self.inbox[1 - i][socket].push_back(p);
                    }
                }
                Action::DropConnection { reason } => {
                    if self.connected {
                        // What the peer had already sent to i is gone; what i had sent is
                        // still delivered (TCP), then the peer sees the connection close.
                        self.connected = false;
                        self.inbox[i] = Default::default();
                        self.held.clear();
                        self.pending_lost = Some((1 - i, reason));
                    }
                }
                Action::Complete { req, result } => {
                    assert!(
                        self.completed.insert(req, result).is_none(),
                        "request {req} completed twice"
                    );
                }
                Action::Reply { req, result } => {
                    self.replies.insert(req, result);
                }
                Action::WriteAl { io, .. } => self.io[i].push(Action::LocalFlush { io }),
                Action::WriteMd(_)
                | Action::WriteBitmap
                | Action::Notify(_)
                | Action::RunHandler { .. } => {}
                Action::FencePeer => self.fence_calls[i] += 1,
            }
        }
    }

    /// Runs until nothing is left to do (or only held packets remain).
    fn run(&mut self) {
        for _ in 0..10_000_000 {
            if let Some((i, e)) = self.events.pop_front() {
                self.feed(i, e);
                continue;
            }
            let mut choices = Vec::new();
            for i in 0..2 {
                for s in 0..2 {
                    if !self.inbox[i][s].is_empty() {
                        choices.push((0, i, s));
                    }
                }
                if self.io_ready(i).next().is_some() {
                    choices.push((1, i, 0));
                }
            }
            if let Some((to, _)) = &self.pending_lost {
                if self.inbox[*to].iter().all(VecDeque::is_empty) {
                    let (to, reason) = self.pending_lost.take().expect("checked");
                    self.events.push_back((
                        to,
                        Event::PeerLost {
                            gen: self.gen,
                            reason,
                        },
                    ));
                    continue;
                }
            }
            if choices.is_empty() {
                return;
            }
            let (kind, i, s) = choices[self.rand(choices.len())];
            if kind == 0 {
                let p = self.inbox[i][s].pop_front().expect("non-empty");
                self.events.push_back((
                    i,
                    Event::Packet {
                        gen: self.gen,
                        packet: p,
                    },
                ));
            } else {
                let ready: Vec<usize> = self.io_ready(i).collect();
                let k = ready[self.rand(ready.len())];
                let a = self.io[i].remove(k);
                self.do_io(i, a);
            }
            self.now += 1;
        }
        panic!("harness did not quiesce");
    }

    /// Indices of node i's IO that may complete now.
    fn io_ready(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let stalled = self.stall_writes[i];
        self.io[i]
            .iter()
            .enumerate()
            .filter(move |(_, a)| !(stalled && matches!(a, Action::LocalWrite { .. })))
            .map(|(k, _)| k)
    }

    fn do_io(&mut self, i: usize, a: Action) {
        match a {
            Action::LocalWrite {
                io, offset, data, ..
            } => {
                let o = offset as usize;
                self.disks[i][o..o + data.len()].copy_from_slice(&data);
                self.events.push_back((
                    i,
                    Event::LocalDone {
                        io,
                        result: Ok(None),
                    },
                ));
            }
            Action::LocalRead { io, offset, len } => {
                let o = offset as usize;
                let data = Bytes::copy_from_slice(&self.disks[i][o..o + len as usize]);
                self.events.push_back((
                    i,
                    Event::LocalDone {
                        io,
                        result: Ok(Some(data)),
                    },
                ));
            }
            Action::LocalFlush { io } => self.events.push_back((
                i,
                Event::LocalDone {
                    io,
                    result: Ok(None),
                },
            )),
            _ => unreachable!(),
        }
    }

    fn command(&mut self, i: usize, command: Command) -> Result<(), String> {
        let req = self.next_req;
        self.next_req += 1;
        self.feed(i, Event::Command { req, command });
        self.run();
        self.replies.remove(&req).expect("commands reply at once")
    }

    fn connect(&mut self) {
        for i in 0..2 {
            if self.nodes[i].connection() == ConnState::StandAlone {
                self.command(
                    i,
                    Command::Connect {
                        discard_my_data: false,
                    },
                )
                .unwrap();
            }
        }
        assert!(self.nodes.iter().all(Node::wants_connection));
        self.gen += 1;
        self.connected = true;
        self.feed(0, Event::PeerConnected { gen: self.gen });
        self.feed(1, Event::PeerConnected { gen: self.gen });
        self.run();
    }

    fn cut(&mut self) {
        self.connected = false;
        self.inbox = vec![Default::default(), Default::default()];
        self.held.clear();
        for i in 0..2 {
            self.feed(
                i,
                Event::PeerLost {
                    gen: self.gen,
                    reason: "cable pulled".into(),
                },
            );
        }
        self.run();
    }

    fn write(&mut self, i: usize, offset: u64, fill: u8, len: usize) -> ReqId {
        let req = self.next_req;
        self.next_req += 1;
        self.feed(
            i,
            Event::Write {
                req,
                offset,
                data: Bytes::from(vec![fill; len]),
                fua: false,
            },
        );
        req
    }

    fn release_held(&mut self) {
        for (from, p) in std::mem::take(&mut self.held) {
            let socket = usize::from(socket_of(&p) == Some(SocketKind::Meta));
            self.inbox[1 - from][socket].push_back(p);
        }
        self.run();
    }

    /// A synced, connected pair with alpha Primary.
    fn synced(protocol: Protocol, seed: u64) -> Harness {
        let mut h = Harness::new(protocol, seed);
        h.connect();
        h.command(0, Command::Primary { force: true }).unwrap();
        h.run();
        assert_eq!(
            h.nodes[1].disk(),
            DiskState::UpToDate,
            "initial sync finished"
        );
        h
    }
}

#[test]
fn initial_full_sync_copies_everything() {
    let mut h = Harness::new(Protocol::C, 7);
    h.disks[0][12345] = 0xab;
    h.disks[0][DISK as usize - 1] = 0xcd;
    h.connect();
    assert_eq!(h.nodes[0].status(0).replication, ReplState::Established);
    assert_eq!(
        h.nodes[0].disk(),
        DiskState::Inconsistent,
        "two fresh disks wait for primary --force"
    );
    let e = h.command(0, Command::Primary { force: false }).unwrap_err();
    assert!(e.contains("Inconsistent"), "{e}");
    h.command(0, Command::Primary { force: true }).unwrap();
    assert_eq!(h.nodes[0].disk(), DiskState::UpToDate);
    assert_eq!(h.nodes[1].disk(), DiskState::UpToDate);
    assert_eq!(h.nodes[1].status(0).replication, ReplState::Established);
    assert!(
        h.disks[0] == h.disks[1],
        "replicas identical after the full sync"
    );
    assert_eq!(h.nodes[0].md().uuids[0], h.nodes[1].md().uuids[0]);
    assert_eq!(h.nodes[0].status(0).out_of_sync_kib, 0);
    let e = h.command(1, Command::Primary { force: false }).unwrap_err();
    assert!(e.contains("peer is Primary"), "{e}");
}

#[test]
fn protocol_c_completes_on_write_ack_only() {
    let mut h = Harness::synced(Protocol::C, 1);
    h.hold = Some(Box::new(|from, p| {
        from == 1 && matches!(p, Packet::WriteAck { .. })
    }));
    let req = h.write(0, 8192, 7, 4096);
    h.run();
    assert!(
        h.disks[1][8192..12288].iter().all(|&b| b == 7),
        "the peer wrote it"
    );
    assert!(
        !h.completed.contains_key(&req),
        "protocol C must wait for WRITE_ACK"
    );
    h.hold = None;
    h.release_held();
    assert_eq!(h.completed.get(&req), Some(&Ok(())));
}

#[test]
fn protocol_b_completes_on_recv_ack_before_the_peer_writes() {
    let mut h = Harness::synced(Protocol::B, 2);
    h.hold = Some(Box::new(|from, p| {
        from == 1 && matches!(p, Packet::RecvAck { .. })
    }));
    let req = h.write(0, 0, 9, 4096);
    h.run();
    assert!(
        !h.completed.contains_key(&req),
        "protocol B must wait for RECV_ACK"
    );
    h.hold = None;
    h.release_held();
    assert_eq!(h.completed.get(&req), Some(&Ok(())));

    // With the peer's disk write withheld, B still completes on receipt.
    let mut h = Harness::synced(Protocol::B, 3);
    h.hold = Some(Box::new(|from, p| {
        from == 0 && matches!(p, Packet::Data { .. })
    }));
    let req = h.write(0, 0, 9, 4096);
    h.run();
    assert!(!h.completed.contains_key(&req));
}

#[test]
fn the_receiver_writes_at_most_max_buffers_at_once() {
    let mut h = Harness::with(Protocol::A, 5, |c| c.max_rx_bytes = 8192);
    h.connect();
    h.command(0, Command::Primary { force: true }).unwrap();
    h.run();
    h.stall_writes[1] = true;
    let reqs: Vec<ReqId> = (0..6u8)
        .map(|k| h.write(0, u64::from(k) << 14, k + 1, 4096))
        .collect();
    h.run();
    assert!(
        reqs.iter().all(|r| h.completed.get(r) == Some(&Ok(()))),
        "protocol A completed them all"
    );
    let writing = h.io[1]
        .iter()
        .filter(|a| matches!(a, Action::LocalWrite { .. }))
        .count();
    assert_eq!(writing, 2, "8 KiB of max-buffers: two 4 KiB writes at once");
    assert_eq!(h.nodes[1].rx_backlog_bytes(), 4 * 4096);
    assert!(
        h.nodes[1].rx_full(),
        "the daemon stops reading the data socket"
    );
    h.stall_writes[1] = false;
    h.run();
    assert_eq!(h.nodes[1].rx_backlog_bytes(), 0);
    assert!(!h.nodes[1].rx_full());
    assert!(h.disks[0] == h.disks[1], "every queued write was applied");
}

#[test]
fn protocol_a_completes_without_any_ack() {
    let mut h = Harness::synced(Protocol::A, 4);
    h.hold = Some(Box::new(|from, p| {
        from == 1 && matches!(p, Packet::RecvAck { .. } | Packet::WriteAck { .. })
    }));
    let req = h.write(0, 4096, 3, 8192);
    h.run();
    assert_eq!(h.completed.get(&req), Some(&Ok(())));
}

#[test]
fn flush_waits_for_the_barrier_ack() {
    let mut h = Harness::synced(Protocol::A, 5);
    let w = h.write(0, 0, 1, 4096);
    h.run();
    assert!(h.completed.contains_key(&w));
    h.hold = Some(Box::new(|from, p| {
        from == 1 && matches!(p, Packet::BarrierAck { .. })
    }));
    let req = h.next_req;
    h.next_req += 1;
    h.feed(0, Event::Flush { req });
    h.run();
    assert!(
        !h.completed.contains_key(&req),
        "a flush needs the peer's barrier ack"
    );
    h.hold = None;
    h.release_held();
    assert_eq!(h.completed.get(&req), Some(&Ok(())));
}

#[test]
fn disconnect_marks_bitmap_and_reconnect_resyncs_only_changes() {
    let mut h = Harness::synced(Protocol::C, 6);
    h.cut();
    assert_eq!(h.nodes[0].connection(), ConnState::Connecting);
    let reqs: Vec<ReqId> = (0..5)
        .map(|k| h.write(0, k * 65536, 0x40 + k as u8, 4096))
        .collect();
    h.run();
    for r in reqs {
        assert_eq!(
            h.completed.get(&r),
            Some(&Ok(())),
            "degraded writes complete locally"
        );
    }
    assert_eq!(h.nodes[0].status(0).out_of_sync_kib, 20);
    assert!(h.disks[0] != h.disks[1]);
    h.connect();
    assert_eq!(h.nodes[1].disk(), DiskState::UpToDate);
    assert_eq!(h.nodes[0].status(0).out_of_sync_kib, 0);
    assert!(
        h.disks[0] == h.disks[1],
        "the resync copied the changed blocks"
    );
}

#[test]
fn split_brain_is_detected_and_never_merged() {
    let mut h = Harness::synced(Protocol::C, 8);
    h.cut();
    h.command(1, Command::Primary { force: false }).unwrap();
    h.write(0, 0, 0x11, 4096);
    h.write(1, 4096, 0x22, 4096);
    h.run();
    let before = h.disks.clone();
    h.connect();
    for n in &h.nodes {
        assert_eq!(n.connection(), ConnState::StandAlone);
        assert!(n.status(0).last_error.unwrap().contains("Split-Brain"));
    }
    assert!(h.disks == before, "nothing was synced");
}

#[test]
fn random_overlapping_writes_leave_identical_replicas() {
    for seed in 0..40 {
        let mut h = Harness::synced(Protocol::C, seed);
        let mut reqs = Vec::new();
        for k in 0..60u64 {
            let block = h.rand(16) as u64;
            let len = 512 * (1 + h.rand(16));
            let fill = (seed as u8).wrapping_add(k as u8);
            reqs.push(h.write(0, block * 2048, fill, len));
            if h.rand(4) == 0 {
                h.run();
            }
            if k == 30 && seed % 3 == 0 {
                h.run();
                h.cut();
            }
            if k == 45 && seed % 3 == 0 {
                h.connect();
            }
        }
        h.run();
        for r in &reqs {
            assert_eq!(h.completed.get(r), Some(&Ok(())), "seed {seed}");
        }
        assert!(h.disks[0] == h.disks[1], "seed {seed}: replicas diverged");
        assert_eq!(h.nodes[1].disk(), DiskState::UpToDate, "seed {seed}");
    }
}

#[test]
fn data_integrity_mismatch_disconnects_and_marks_out_of_sync() {
    let mut h = Harness::with(Protocol::C, 9, |c| {
        c.integrity = Some(crate::config::DigestAlg::Crc32c)
    });
    h.connect();
    h.command(0, Command::Primary { force: true }).unwrap();
    assert_eq!(
        h.nodes[1].disk(),
        DiskState::UpToDate,
        "resync data passed the integrity check"
    );
    h.corrupt = Some(Box::new(|from, p| {
        if let (0, Packet::Data { data, .. }) = (from, p) {
            let mut v = data.to_vec();
            v[100] ^= 0xff;
            *data = Bytes::from(v);
        }
    }));
    let req = h.write(0, 65536, 0x5a, 4096);
    h.run();
    assert_eq!(
        h.completed.get(&req),
        Some(&Ok(())),
        "the write completes locally"
    );
    assert!(h.nodes[1]
        .status(0)
        .last_error
        .unwrap()
        .contains("data integrity check (crc32c) failed"));
    assert!(
        h.disks[1][65536..65536 + 4096].iter().all(|&b| b == 0),
        "the corrupted write was not applied"
    );
    assert_eq!(
        h.nodes[0].status(0).out_of_sync_kib,
        4,
        "marked out of sync on the Primary"
    );
    h.corrupt = None;
    h.connect();
    assert!(h.disks[0] == h.disks[1], "the resync repaired the block");
}

#[test]
fn interrupted_full_sync_resumes_from_the_bitmaps() {
    use std::cell::Cell;
    use std::rc::Rc;
    let mut h = Harness::new(Protocol::C, 10);
    h.disks[0]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 251) as u8);
    h.connect();
    let replies = Rc::new(Cell::new(0u32));
    let r = replies.clone();
    h.hold = Some(Box::new(move |_, p| {
        if matches!(p, Packet::RsDataReply { .. }) {
            r.set(r.get() + 1);
            return r.get() > 20;
        }
        false
    }));
    h.command(0, Command::Primary { force: true }).unwrap();
    let left_kib = h.nodes[1].status(0).out_of_sync_kib;
    assert!(
        left_kib > 0 && left_kib < DISK / 1024,
        "{left_kib} KiB left"
    );
    h.hold = None;
    h.cut();
    let requested = Rc::new(Cell::new(0u64));
    let q = requested.clone();
    h.hold = Some(Box::new(move |_, p| {
        if let Packet::RsDataRequest { len, .. } = p {
            q.set(q.get() + u64::from(*len));
        }
        false
    }));
    h.connect();
    assert_eq!(h.nodes[1].disk(), DiskState::UpToDate);
    assert!(h.disks[0] == h.disks[1]);
    assert_eq!(
        requested.get(),
        left_kib * 1024,
        "only what was left is copied again"
    );
}

/// Counts the bytes of resync data requested, and of data that actually crossed.
fn count_resync(
    h: &mut Harness,
) -> (
    std::rc::Rc<std::cell::Cell<u64>>,
    std::rc::Rc<std::cell::Cell<u64>>,
) {
    use std::cell::Cell;
    use std::rc::Rc;
    let (requested, sent) = (Rc::new(Cell::new(0u64)), Rc::new(Cell::new(0u64)));
    let (q, d) = (requested.clone(), sent.clone());
    h.hold = Some(Box::new(move |_, p| {
        match p {
            Packet::RsDataRequest { len, .. } | Packet::CsumRsRequest { len, .. } => {
                q.set(q.get() + u64::from(*len))
            }
            Packet::RsDataReply { data, .. } => d.set(d.get() + data.len() as u64),
            _ => {}
        }
        false
    }));
    (requested, sent)
}

#[test]
fn online_verify_finds_differences_and_reconnect_resyncs_exactly_them() {
    let mut h = Harness::synced(Protocol::C, 11);
    h.disks[1][3 * 4096 + 7] ^= 0xff; // silent corruption on beta
    h.disks[1][700 * 4096] ^= 0x01;
    h.command(0, Command::Verify).unwrap();
    assert_eq!(h.nodes[0].status(0).last_verify_kib, Some(8));
    assert_eq!(h.nodes[0].status(0).out_of_sync_kib, 8);
    assert_eq!(h.nodes[0].status(0).replication, ReplState::Established);
    h.cut();
    let (requested, sent) = count_resync(&mut h);
    h.connect();
    assert_eq!(requested.get(), 8192, "exactly the two blocks");
    assert_eq!(sent.get(), 8192);
    assert!(h.disks[0] == h.disks[1]);
}

#[test]
fn csums_resync_sends_only_blocks_that_differ() {
    let mut h = Harness::with(Protocol::C, 12, |c| {
        c.csums_alg = Some(crate::config::DigestAlg::Md5)
    });
    h.connect();
    h.command(0, Command::Primary { force: true }).unwrap();
    h.run();
    h.cut();
    // 16 blocks rewritten with what they already hold, 2 changed.
    let same = h.disks[0][0..16 * 4096].to_vec();
    let req = h.next_req;
    h.next_req += 1;
    h.feed(
        0,
        Event::Write {
            req,
            offset: 0,
            data: Bytes::from(same),
            fua: false,
        },
    );
    h.write(0, 100 * 4096, 0x77, 8192);
    h.run();
    assert_eq!(h.nodes[0].status(0).out_of_sync_kib, 18 * 4);
    let (requested, sent) = count_resync(&mut h);
    h.connect();
    assert_eq!(requested.get(), 18 * 4096, "digests for every marked block");
    assert_eq!(sent.get(), 8192, "data only where the digests differ");
    assert!(h.disks[0] == h.disks[1]);
}

#[test]
fn invalidate_and_invalidate_remote_copy_everything() {
    let mut h = Harness::synced(Protocol::C, 13);
    let e = h.command(0, Command::Invalidate).unwrap_err();
    assert!(e.contains("Primary"), "{e}");
    let (requested, _) = count_resync(&mut h);
    h.command(1, Command::Invalidate).unwrap();
    h.run();
    assert_eq!(requested.get(), DISK, "beta took everything from alpha");
    assert_eq!(h.nodes[1].disk(), DiskState::UpToDate);
    let (requested, _) = count_resync(&mut h);
    h.command(0, Command::InvalidateRemote).unwrap();
    h.run();
    assert_eq!(requested.get(), DISK, "alpha pushed everything to beta");
    assert_eq!(h.nodes[1].disk(), DiskState::UpToDate);
    assert!(h.disks[0] == h.disks[1]);
}

#[test]
fn clear_bitmap_skips_the_initial_sync() {
    let mut h = Harness::new(Protocol::C, 14);
    h.connect();
    let (requested, _) = count_resync(&mut h);
    h.command(0, Command::NewCurrentUuidClearBitmap).unwrap();
    h.run();
    for n in &h.nodes {
        assert_eq!(n.disk(), DiskState::UpToDate);
    }
    assert_eq!(h.nodes[0].md().uuids[0], h.nodes[1].md().uuids[0]);
    assert_eq!(requested.get(), 0);
    h.command(0, Command::Primary { force: false }).unwrap();
    let e = h
        .command(1, Command::NewCurrentUuidClearBitmap)
        .unwrap_err();
    assert!(e.contains("just-created"), "{e}");
}

/// How a split brain ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Both StandAlone, nothing merged.
    StandAlone,
    /// This node's data survived on both.
    Kept(&'static str),
}

struct Split {
    /// Writes (blocks) on alpha and beta while split.
    writes: (u64, u64),
    /// Roles when they reconnect.
    primary_at_reconnect: (bool, bool),
}

/// alpha Primary and synced; the link breaks; beta is promoted (the younger Primary); each
/// writes its blocks; roles are set; they reconnect under `tune`'s policies.
fn split_brain(seed: u64, split: Split, tune: impl Fn(&mut NodeConfig)) -> (Harness, Outcome) {
    let mut h = Harness::with(Protocol::C, seed, tune);
    h.connect();
    h.command(0, Command::Primary { force: true }).unwrap();
    h.run();
    h.cut();
    h.command(1, Command::Primary { force: false }).unwrap();
    for k in 0..split.writes.0 {
        h.write(0, k * 8192, 0xaa, 4096);
    }
    for k in 0..split.writes.1 {
        h.write(1, 4096 + k * 8192, 0xbb, 4096);
    }
    h.run();
    for (i, primary) in [split.primary_at_reconnect.0, split.primary_at_reconnect.1]
        .into_iter()
        .enumerate()
    {
        if !primary {
            h.command(i, Command::Secondary).unwrap();
        }
    }
    let before = h.disks.clone();
    h.connect();
    // A policy that resolves nothing leaves the deciding node StandAlone (its peer may keep
    // trying to connect); either way nothing is merged.
    let standalone = h
        .nodes
        .iter()
        .any(|n| n.connection() == ConnState::StandAlone);
    let outcome = if standalone {
        assert!(h.disks == before, "nothing merged while StandAlone");
        Outcome::StandAlone
    } else {
        assert!(h.disks[0] == h.disks[1], "resynced replicas are identical");
        if h.disks[0] == before[0] {
            Outcome::Kept("alpha")
        } else {
            assert!(h.disks[1] == before[1]);
            Outcome::Kept("beta")
        }
    };
    (h, outcome)
}

#[test]
fn split_brain_policies_decide_as_drbd_does() {
    use crate::config::{AfterSb0Pri as P0, AfterSb1Pri as P1, AfterSb2Pri as P2};
    let none = (false, false);
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, P0, P1, P2, (u64, u64), (bool, bool), Outcome)> = vec![
        (
            "0pri disconnect",
            P0::Disconnect,
            P1::Disconnect,
            P2::Disconnect,
            (2, 1),
            none,
            Outcome::StandAlone,
        ),
        (
            "0pri zero-changes: beta changed nothing",
            P0::DiscardZeroChanges,
            P1::Disconnect,
            P2::Disconnect,
            (2, 0),
            none,
            Outcome::Kept("alpha"),
        ),
        (
            "0pri zero-changes: alpha changed nothing",
            P0::DiscardZeroChanges,
            P1::Disconnect,
            P2::Disconnect,
            (0, 2),
            none,
            Outcome::Kept("beta"),
        ),
        (
            "0pri zero-changes: both changed",
            P0::DiscardZeroChanges,
            P1::Disconnect,
            P2::Disconnect,
            (2, 1),
            none,
            Outcome::StandAlone,
        ),
        (
            "0pri least-changes",
            P0::DiscardLeastChanges,
            P1::Disconnect,
            P2::Disconnect,
            (3, 1),
            none,
            Outcome::Kept("alpha"),
        ),
        (
            "0pri least-changes other way",
            P0::DiscardLeastChanges,
            P1::Disconnect,
            P2::Disconnect,
            (1, 4),
            none,
            Outcome::Kept("beta"),
        ),
        (
            "0pri younger primary (beta) discards",
            P0::DiscardYoungerPrimary,
            P1::Disconnect,
            P2::Disconnect,
            (1, 3),
            none,
            Outcome::Kept("alpha"),
        ),
        (
            "0pri older primary (alpha) discards",
            P0::DiscardOlderPrimary,
            P1::Disconnect,
            P2::Disconnect,
            (3, 1),
            none,
            Outcome::Kept("beta"),
        ),
        (
            "0pri discard-node-alpha",
            P0::DiscardNode("alpha".into()),
            P1::Disconnect,
            P2::Disconnect,
            (3, 1),
            none,
            Outcome::Kept("beta"),
        ),
        (
            "1pri disconnect",
            P0::DiscardLeastChanges,
            P1::Disconnect,
            P2::Disconnect,
            (1, 1),
            (true, false),
            Outcome::StandAlone,
        ),
        (
            "1pri discard-secondary",
            P0::Disconnect,
            P1::DiscardSecondary,
            P2::Disconnect,
            (1, 3),
            (true, false),
            Outcome::Kept("alpha"),
        ),
        (
            "1pri discard-secondary, beta Primary",
            P0::Disconnect,
            P1::DiscardSecondary,
            P2::Disconnect,
            (3, 1),
            (false, true),
            Outcome::Kept("beta"),
        ),
        (
            "1pri consensus agrees",
            P0::DiscardZeroChanges,
            P1::Consensus,
            P2::Disconnect,
            (2, 0),
            (true, false),
            Outcome::Kept("alpha"),
        ),
        (
            "1pri consensus disagrees",
            P0::DiscardLeastChanges,
            P1::Consensus,
            P2::Disconnect,
            (1, 3),
            (true, false),
            Outcome::StandAlone,
        ),
        (
            "2pri disconnect",
            P0::DiscardLeastChanges,
            P1::Disconnect,
            P2::Disconnect,
            (2, 1),
            (true, true),
            Outcome::StandAlone,
        ),
        (
            "2pri call-pri-lost-after-sb: the losing Primary refuses",
            P0::DiscardLeastChanges,
            P1::Disconnect,
            P2::CallPriLostAfterSb,
            (2, 1),
            (true, true),
            Outcome::StandAlone,
        ),
    ];
    for (seed, (name, p0, p1, p2, writes, prim, want)) in cases.into_iter().enumerate() {
        let (h, got) = split_brain(
            seed as u64 + 100,
            Split {
                writes,
                primary_at_reconnect: prim,
            },
            |c| {
                c.after_sb_0pri = p0.clone();
                c.after_sb_1pri = p1;
                c.after_sb_2pri = p2;
            },
        );
        assert_eq!(got, want, "{name}");
        let said = h.nodes[0].status(0).split_brain.unwrap_or_default();
        assert!(said.contains("split-brain"), "{name}: {said}");
    }
}

#[test]
fn manual_split_brain_recovery_resyncs_only_the_changes() {
    let (mut h, outcome) = split_brain(
        200,
        Split {
            writes: (2, 3),
            primary_at_reconnect: (true, false),
        },
        |_| {},
    );
    assert_eq!(outcome, Outcome::StandAlone);
    // On the victim (beta, already Secondary): connect --discard-my-data; on the survivor: connect.
    h.command(
        1,
        Command::Connect {
            discard_my_data: true,
        },
    )
    .unwrap();
    h.command(
        0,
        Command::Connect {
            discard_my_data: false,
        },
    )
    .unwrap();
    let (requested, _) = count_resync(&mut h);
    let alpha_before = h.disks[0].clone();
    h.connect();
    assert!(
        h.disks[0] == alpha_before && h.disks[1] == alpha_before,
        "beta took alpha's data"
    );
    assert_eq!(
        requested.get(),
        5 * 4096,
        "the union of both sides' changes, not the disk"
    );
    assert_eq!(h.nodes[1].disk(), DiskState::UpToDate);
}

#[test]
fn resource_and_stonith_freezes_io_until_the_peer_is_fenced() {
    use crate::config::FencingPolicy;
    let mut h = Harness::with(Protocol::C, 15, |c| {
        c.fencing = FencingPolicy::ResourceAndStonith
    });
    h.connect();
    h.command(0, Command::Primary { force: true }).unwrap();
    h.run();
    h.cut();
    assert_eq!(
        h.fence_calls,
        [1, 0],
        "the Primary calls fence-peer, the Secondary does not"
    );
    assert!(h.nodes[0].io_frozen());
    let req = h.write(0, 0, 0x42, 4096);
    h.run();
    assert!(
        !h.completed.contains_key(&req),
        "IO is frozen while the handler runs"
    );
    h.feed(0, Event::FencePeerDone { code: 1 });
    h.run();
    assert!(
        !h.completed.contains_key(&req),
        "a failed handler keeps IO frozen"
    );
    h.feed(0, Event::FencePeerDone { code: 7 });
    h.run();
    assert_eq!(
        h.completed.get(&req),
        Some(&Ok(())),
        "exit 7: the peer was fenced, IO resumes"
    );
    assert!(h.nodes[0].md().flags & flags::PEER_OUT_DATED != 0);

    // Exit 6: the peer is Primary, this node outdates itself and stays frozen.
    let mut h = Harness::with(Protocol::C, 16, |c| {
        c.fencing = FencingPolicy::ResourceAndStonith
    });
    h.connect();
    h.command(0, Command::Primary { force: true }).unwrap();
    h.run();
    h.cut();
    h.feed(0, Event::FencePeerDone { code: 6 });
    assert_eq!(h.nodes[0].disk(), DiskState::Outdated);
    assert!(h.nodes[0].io_frozen());
    // Exit 5 (unreachable) resumes only an UpToDate node: this one is Outdated now.
    h.feed(0, Event::FencePeerDone { code: 5 });
    assert!(h.nodes[0].io_frozen());
}

#[test]
fn resource_only_fences_without_freezing_and_outdate_blocks_promotion() {
    use crate::config::FencingPolicy;
    let mut h = Harness::with(Protocol::C, 17, |c| c.fencing = FencingPolicy::ResourceOnly);
    h.connect();
    h.command(0, Command::Primary { force: true }).unwrap();
    h.run();
    h.cut();
    assert_eq!(h.fence_calls[0], 1);
    assert!(!h.nodes[0].io_frozen());
    let req = h.write(0, 0, 1, 4096);
    h.run();
    assert_eq!(h.completed.get(&req), Some(&Ok(())));
    // The Secondary is outdated: it cannot be promoted without --force.
    let e = h.command(0, Command::Outdate).unwrap_err();
    assert!(e.contains("Primary"), "{e}");
    h.command(1, Command::Outdate).unwrap();
    assert_eq!(h.nodes[1].disk(), DiskState::Outdated);
    let e = h.command(1, Command::Primary { force: false }).unwrap_err();
    assert!(e.contains("Outdated"), "{e}");
}

/// rr-conflict, as DRBD defines it: a Primary that the resync decision would make SyncTarget
/// (here: told `connect --discard-my-data` after a split brain while still Primary) never
/// becomes one. `disconnect` leaves it StandAlone; `retry-connect` drops the connection and
/// keeps connecting, so once it is demoted the next connection resyncs it from the peer.
#[test]
fn rr_conflict_keeps_a_primary_from_becoming_sync_target() {
    use crate::config::RrConflict;
    for policy in [RrConflict::Disconnect, RrConflict::RetryConnect] {
        let (mut h, outcome) = split_brain(
            300,
            Split {
                writes: (2, 3),
                primary_at_reconnect: (true, false),
            },
            |c| c.rr_conflict = policy,
        );
        assert_eq!(outcome, Outcome::StandAlone);
        let before = h.disks.clone();
        h.command(
            0,
            Command::Connect {
                discard_my_data: true,
            },
        )
        .unwrap();
        h.connect();
        assert!(h.disks == before, "{policy}: nothing resynced");
        assert_eq!(h.nodes[0].role(), Role::Primary);
        let said = h.nodes[0].status(0).last_error.unwrap_or_default();
        assert!(
            said.contains(&format!("rr-conflict {policy}")),
            "{policy}: {said}"
        );
        match policy {
            RrConflict::Disconnect => {
                assert_eq!(h.nodes[0].connection(), ConnState::StandAlone, "{policy}");
            }
            RrConflict::RetryConnect => {
                assert_eq!(h.nodes[0].connection(), ConnState::Connecting, "{policy}");
                // The operator demotes the victim; the next connection resyncs it.
                h.cut();
                h.command(0, Command::Secondary).unwrap();
                h.connect();
                assert!(
                    h.disks[0] == before[1] && h.disks[1] == before[1],
                    "alpha took beta's data"
                );
            }
            _ => unreachable!(),
        }
    }
}
