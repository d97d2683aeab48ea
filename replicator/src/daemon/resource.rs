//! One resource's task: it owns the replication core ([`Node`]) and is the only place its
//! state changes. Clients (NBD through [`ReplicatedVolume`]), `replctl` and the peer connection
//! talk to it through one channel; it turns the core's actions into disk IO, packets and
//! replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use target::iscsi::server::IscsiServer;
use target::nbd::server::NbdServer;
use target::volume::{Access, Capabilities, Extent, Volume, VolumeError, VolumeFuture, ZeroFlags};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::backing::{Backing, IoOp};
use super::peer::{self, Connection, Established, NetEvent, PeerParams};
use crate::control::{EventLine, PeerStatus, ResourceStatus};
use crate::core::{errno, Action, Command, Event, IoId, MdState, Node, ReqId, Role};
use crate::md::disk::{self, MdDevice};
use crate::md::{Layout, Superblock, MAGIC_V08};

/// The core's timer period.
const TICK: Duration = Duration::from_millis(100);
/// First retry delay when dialing fails; doubles up to connect-int.
const DIAL_BACKOFF_START: Duration = Duration::from_millis(100);
/// At most this many queued messages are handled in one round before its packets and IO
/// leave (and the tick and new connections get their turn).
const ROUND_EVENTS: usize = 256;
/// Largest write passed to the core in one piece.
const MAX_WRITE_BYTES: u64 = 32 * 1024 * 1024;

/// Messages to a resource task.
pub enum Msg {
    /// An admin command.
    Cmd {
        /// The command.
        command: Command,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A client write.
    Write {
        /// Byte offset.
        offset: u64,
        /// The data.
        data: Bytes,
        /// Force unit access.
        fua: bool,
        /// Completion.
        reply: oneshot::Sender<Result<(), i32>>,
    },
    /// A client flush.
    Flush {
        /// Completion.
        reply: oneshot::Sender<Result<(), i32>>,
    },
    /// A local IO finished.
    IoDone {
        /// Which.
        io: IoId,
        /// Its result.
        result: Result<Option<Bytes>, i32>,
    },
    /// Dialing succeeded.
    Dialed(Established),
    /// Dialing failed.
    DialFailed(String),
    /// The fence-peer handler exited.
    FenceDone(i32),
    /// A status snapshot, please.
    Status {
        /// Where it goes.
        reply: oneshot::Sender<ResourceStatus>,
    },
    /// Demote, disconnect, write the meta-data and stop.
    Down {
        /// Ok once stopped.
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What a resource task needs to start.
pub struct Spec {
    /// The resource name.
    pub name: String,
    /// The core's settings.
    pub node_config: crate::core::NodeConfig,
    /// The meta-data as attached.
    pub attached: disk::Attached,
    /// The backing disk.
    pub backing: Backing,
    /// Peer connection parameters.
    pub peer: PeerParams,
    /// `connect-int`.
    pub connect_int: Duration,
    /// The `handlers` section: (DRBD handler name, shell command).
    pub handlers: Vec<(String, String)>,
    /// The daemon's NBD server.
    pub nbd: Arc<NbdServer>,
    /// The daemon's iSCSI target, when the resource asks to be exported over iSCSI.
    pub iscsi: Option<Arc<IscsiServer>>,
    /// The daemon's event stream.
    pub events: broadcast::Sender<EventLine>,
    /// A seed for UUIDs.
    pub seed: u64,
}

/// A running resource.
pub struct Handle {
    /// Its channel.
    pub tx: mpsc::UnboundedSender<Msg>,
    /// Its task.
    pub task: JoinHandle<()>,
}

fn secondary_reason(name: &str) -> String {
    format!("{name} is Secondary; only the Primary serves it (replctl primary {name})")
}

/// Starts a resource: binds its replication address, exports it (refused while Secondary)
/// and runs its task.
pub async fn spawn(spec: Spec) -> Result<Handle, String> {
    let listener = TcpListener::bind(spec.peer.local_addr).await.map_err(|e| {
        format!(
            "cannot listen on {} for the peer: {e}",
            spec.peer.local_addr
        )
    })?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (est_tx, est_rx) = mpsc::unbounded_channel();
    let accepting = Arc::new(AtomicBool::new(false));
    let listen_task = tokio::spawn(peer::listen(
        listener,
        spec.peer.clone(),
        accepting.clone(),
        est_tx,
    ));
    let mut sb = spec.attached.sb;
    let dev = Arc::new(spec.attached.dev);
    let layout = spec.attached.layout;
    // After a crash the activity log names the extents that may differ from the peer.
    let hot = if sb.flags & crate::md::flags::AL_CLEAN == 0 {
        let ring =
            disk::read_al(&dev, &layout).map_err(|e| format!("reading the activity log: {e}"))?;
        let hot = crate::core::al::recover(&ring, sb.al_nr_extents.max(1));
        tracing::warn!(
            resource = %spec.name,
            "unclean shutdown: the activity log names {} hot extent(s) ({} MiB) to resync",
            hot.len(),
            hot.len() * 4
        );
        hot
    } else {
        Vec::new()
    };
    sb.al_nr_extents = spec.node_config.al_extents;
    let md = MdState {
        uuids: sb.uuids,
        flags: sb.flags,
        la_size_sect: sb.la_size_sect,
    };
    let node = Node::new(
        spec.node_config,
        md,
        &spec.attached.bitmap_words,
        &hot,
        spec.seed,
    );
    // Hot extents are in the bitmap on disk before the old log is wiped; then the log is in use.
    disk::write_bitmap(&dev, &layout, &node.bitmap_words())
        .map_err(|e| format!("writing the bitmap: {e}"))?;
    disk::reset_al(&dev, &layout).map_err(|e| format!("resetting the activity log: {e}"))?;
    let in_use = node.md();
    disk::write_superblock(
        &dev,
        &layout,
        &Superblock {
            la_size_sect: in_use.la_size_sect,
            uuids: in_use.uuids,
            flags: in_use.flags,
            magic: MAGIC_V08,
            ..sb
        },
    )
    .map_err(|e| format!("writing the meta-data: {e}"))?;
    let access = Arc::new(Mutex::new(Access::Refused(secondary_reason(&spec.name))));
    let volume: Arc<dyn Volume> = Arc::new(ReplicatedVolume {
        name: spec.name.clone(),
        tx: tx.clone(),
        size: node.size_bytes(),
        backing: spec.backing.clone(),
        access: access.clone(),
    });
    spec.nbd
        .add_export(
            &spec.name,
            volume.clone(),
            &format!("tandem replicated resource {}", spec.name),
        )
        .map_err(|e| format!("cannot export {}: {e}", spec.name))?;
    spec.nbd
        .set_access(&spec.name, Access::Refused(secondary_reason(&spec.name)))
        .map_err(|e| e.to_string())?;
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    let task = Task {
        name: spec.name,
        node,
        backing: spec.backing,
        md_dev: dev,
        layout,
        sb_base: sb,
        conn: None,
        gen: 0,
        dialing: false,
        last_dial_error: None,
        backoff: DIAL_BACKOFF_START,
        next_dial: Instant::now(),
        connect_int: spec.connect_int,
        connected_at: None,
        accepting,
        handlers: spec.handlers,
        peer: spec.peer,
        tx: tx.clone(),
        net_tx,
        io_batch: Vec::new(),
        writes: HashMap::new(),
        cmds: HashMap::new(),
        next_req: 1,
        start: Instant::now(),
        nbd: spec.nbd,
        iscsi: spec.iscsi,
        volume,
        access,
        role: Role::Secondary,
        events: spec.events,
    };
    let task = tokio::spawn(task.run(rx, net_rx, est_rx, listen_task));
    Ok(Handle { tx, task })
}

struct Task {
    name: String,
    node: Node,
    backing: Backing,
    md_dev: Arc<MdDevice>,
    layout: Layout,
    sb_base: Superblock,
    conn: Option<Connection>,
    gen: u64,
    dialing: bool,
    last_dial_error: Option<String>,
    backoff: Duration,
    next_dial: Instant,
    connect_int: Duration,
    /// When the current connection was established.
    connected_at: Option<Instant>,
    /// Whether the listener hands connections to us (shared with it).
    accepting: Arc<AtomicBool>,
    handlers: Vec<(String, String)>,
    peer: PeerParams,
    tx: mpsc::UnboundedSender<Msg>,
    net_tx: mpsc::UnboundedSender<NetEvent>,
    /// Local IO queued this round, submitted together by [`Task::flush_out`].
    io_batch: Vec<(IoOp, super::backing::Done)>,
    writes: HashMap<ReqId, oneshot::Sender<Result<(), i32>>>,
    cmds: HashMap<ReqId, oneshot::Sender<Result<(), String>>>,
    next_req: ReqId,
    start: Instant,
    nbd: Arc<NbdServer>,
    iscsi: Option<Arc<IscsiServer>>,
    volume: Arc<dyn Volume>,
    access: Arc<Mutex<Access>>,
    role: Role,
    events: broadcast::Sender<EventLine>,
}

impl Task {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut net_rx: mpsc::UnboundedReceiver<NetEvent>,
        mut est_rx: mpsc::UnboundedReceiver<Established>,
        listen_task: JoinHandle<()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut down_reply = None;
        'events: loop {
            tokio::select! {
                m = rx.recv() => match m {
                    None => break,
                    Some(m) => if let Some(reply) = self.message_or_down(m) {
                        down_reply = Some(reply);
                        break;
                    },
                },
                Some(e) = net_rx.recv() => self.net(e),
                Some(est) = est_rx.recv() => self.established(est),
                _ = tick.tick() => self.apply(Event::Tick),
            }
            // Take everything else already queued before acting, so that the packets and IO
            // of this whole round leave together (one writer wakeup, one ring submission).
            let mut budget = ROUND_EVENTS;
            loop {
                let before = budget;
                while budget > 0 {
                    let Ok(e) = net_rx.try_recv() else { break };
                    self.net(e);
                    budget -= 1;
                }
                while budget > 0 {
                    let Ok(m) = rx.try_recv() else { break };
                    budget -= 1;
                    if let Some(reply) = self.message_or_down(m) {
                        down_reply = Some(reply);
                        break 'events;
                    }
                }
                if budget == before || budget == 0 {
                    break;
                }
            }
            self.flush_out();
            self.accepting.store(
                self.node.wants_connection() && self.conn.is_none(),
                Ordering::Relaxed,
            );
            self.maybe_dial();
        }
        self.flush_out();
        listen_task.abort();
        self.conn = None;
        let _ = self.nbd.remove_export(&self.name);
        if let Some(iscsi) = &self.iscsi {
            let _ = iscsi.remove_target(&self.name);
        }
        if let Some(reply) = down_reply {
            let _ = reply.send(Ok(()));
        }
    }

    /// Handles `m`; for a `Down` that succeeded, returns its reply (sent once stopped).
    fn message_or_down(&mut self, m: Msg) -> Option<oneshot::Sender<Result<(), String>>> {
        match m {
            Msg::Down { reply } => match self.down() {
                Ok(()) => Some(reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    None
                }
            },
            m => {
                self.message(m);
                None
            }
        }
    }

    /// Hands this round's packets to the connection's writers and its IO to the ring, and
    /// pauses reading the peer's writes while the core's receive queue is full.
    fn flush_out(&mut self) {
        // Data packets the socket took at once are sent (protocol A's completion point);
        // telling the core may queue more packets, so until nothing more was sent.
        while let Some(c) = &mut self.conn {
            let sent = c.flush();
            if sent.is_empty() {
                break;
            }
            for seq in sent {
                self.apply(Event::Sent { gen: self.gen, seq });
            }
        }
        if let Some(c) = &self.conn {
            c.pause_rx(self.node.rx_full());
        }
        if !self.io_batch.is_empty() {
            self.backing
                .submit_batch(std::mem::take(&mut self.io_batch));
        }
    }

    fn message(&mut self, m: Msg) {
        match m {
            Msg::Cmd { command, reply } => {
                if command == Command::Secondary && self.node.role() == Role::Primary {
                    let clients = self.nbd.connections(&self.name);
                    if clients > 0 {
                        let _ = reply.send(Err(format!(
                            "{} is in use by {clients} NBD client(s); disconnect them (umount) first",
                            self.name
                        )));
                        return;
                    }
                }
                if matches!(command, Command::Connect { .. }) {
                    // The admin asks for a connection now: no backoff from earlier failures.
                    self.backoff = DIAL_BACKOFF_START;
                    self.next_dial = Instant::now();
                }
                let req = self.req();
                self.cmds.insert(req, reply);
                self.apply(Event::Command { req, command });
            }
            Msg::Write {
                offset,
                data,
                fua,
                reply,
            } => {
                let req = self.req();
                self.writes.insert(req, reply);
                self.apply(Event::Write {
                    req,
                    offset,
                    data,
                    fua,
                });
            }
            Msg::Flush { reply } => {
                let req = self.req();
                self.writes.insert(req, reply);
                self.apply(Event::Flush { req });
            }
            Msg::IoDone { io, result } => self.apply(Event::LocalDone { io, result }),
            Msg::Dialed(est) => self.established(est),
            Msg::FenceDone(code) => self.apply(Event::FencePeerDone { code }),
            Msg::DialFailed(reason) => {
                self.dialing = false;
                // A refused TCP connect is normal while the peer is down; a failed handshake
                // (wrong secret, resource or protocol) is worth a warning, once per reason.
                if reason.starts_with("connect")
                    || self.last_dial_error.as_deref() == Some(reason.as_str())
                {
                    tracing::debug!(resource = %self.name, "connecting to {}: {reason}", self.peer.peer_addr);
                } else {
                    tracing::warn!(resource = %self.name, peer = %self.peer.peer_node, "refused by the peer: {reason}");
                }
                self.last_dial_error = Some(reason);
                self.backoff = (self.backoff * 2).min(self.connect_int);
                self.next_dial = Instant::now() + self.backoff;
            }
            Msg::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Msg::Down { .. } => unreachable!("handled in run"),
        }
    }

    fn req(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    fn net(&mut self, e: NetEvent) {
        match e {
            NetEvent::Packets { gen, packets } => {
                for packet in packets {
                    self.apply(Event::Packet { gen, packet });
                }
            }
            NetEvent::Sent { gen, seqs } => {
                for seq in seqs {
                    self.apply(Event::Sent { gen, seq });
                }
            }
            NetEvent::Lost { gen, reason } => {
                if gen == self.gen && self.conn.is_some() {
                    tracing::warn!(resource = %self.name, peer = %self.peer.peer_node, "connection lost: {reason}");
                    self.conn = None;
                    self.connection_ended();
                    self.apply(Event::PeerLost { gen, reason });
                }
            }
        }
    }

    fn established(&mut self, est: Established) {
        self.dialing = false;
        if self.conn.is_some() || !self.node.wants_connection() {
            return; // dropping `est` closes both sockets
        }
        self.gen += 1;
        self.connected_at = Some(Instant::now());
        self.last_dial_error = None;
        tracing::info!(resource = %self.name, peer = %self.peer.peer_node, "connected");
        self.conn = Some(peer::start(self.gen, est, self.net_tx.clone()));
        self.apply(Event::PeerConnected { gen: self.gen });
    }

    /// A connection ended: one that lasted reconnects soon; one that ended right after it was
    /// made (the peer found a split brain, or refuses our data) waits longer each time, up to
    /// connect-int, so two nodes that cannot agree do not reconnect in a tight loop.
    fn connection_ended(&mut self) {
        let lasted = self
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() >= self.connect_int);
        self.backoff = if lasted {
            DIAL_BACKOFF_START
        } else {
            (self.backoff * 2).min(self.connect_int)
        };
        self.next_dial = Instant::now() + self.backoff;
    }

    fn maybe_dial(&mut self) {
        if !self.node.wants_connection()
            || self.conn.is_some()
            || self.dialing
            || !self.peer.dials()
        {
            return;
        }
        if Instant::now() < self.next_dial {
            return;
        }
        self.dialing = true;
        let (p, tx) = (self.peer.clone(), self.tx.clone());
        tokio::spawn(async move {
            match peer::dial(&p).await {
                Ok(est) => {
                    let _ = tx.send(Msg::Dialed(est));
                }
                Err(e) => {
                    let _ = tx.send(Msg::DialFailed(e));
                }
            }
        });
    }

    fn apply(&mut self, event: Event) {
        let actions = self.node.apply(event, self.now_ms());
        for a in actions {
            self.action(a);
        }
        self.sync_access();
    }

    fn action(&mut self, a: Action) {
        match a {
            Action::LocalWrite {
                io,
                offset,
                data,
                fua,
            } => self.io(io, IoOp::Write { offset, data, fua }),
            Action::LocalRead { io, offset, len } => self.io(io, IoOp::Read { offset, len }),
            Action::LocalFlush { io } => self.io(io, IoOp::Flush),
            Action::Send(p) => {
                if let Some(c) = &mut self.conn {
                    c.send(p);
                }
            }
            Action::DropConnection { reason } => {
                if self.conn.take().is_some() {
                    self.connection_ended();
                    tracing::warn!(resource = %self.name, peer = %self.peer.peer_node, "dropping the connection: {reason}");
                }
            }
            Action::Complete { req, result } => {
                if let Some(r) = self.writes.remove(&req) {
                    let _ = r.send(result);
                }
            }
            Action::Reply { req, result } => {
                if let Some(r) = self.cmds.remove(&req) {
                    let _ = r.send(result);
                }
            }
            Action::WriteMd(md) => {
                let sb = Superblock {
                    la_size_sect: md.la_size_sect,
                    uuids: md.uuids,
                    flags: md.flags,
                    magic: MAGIC_V08,
                    ..self.sb_base
                };
                if let Err(e) = disk::write_superblock(&self.md_dev, &self.layout, &sb) {
                    tracing::error!(resource = %self.name, "writing the meta-data failed: {e}");
                }
            }
            Action::WriteAl { io, index, block } => {
                let (dev, layout, tx) = (self.md_dev.clone(), self.layout, self.tx.clone());
                tokio::task::spawn_blocking(move || {
                    let result = disk::write_al(&dev, &layout, index, &block)
                        .map(|()| None)
                        .map_err(|e| {
                            tracing::error!("writing the activity log failed: {e}");
                            libc::EIO
                        });
                    let _ = tx.send(Msg::IoDone { io, result });
                });
            }
            Action::RunHandler { name } => {
                self.run_handler(name, None);
            }
            Action::FencePeer => {
                let tx = self.tx.clone();
                if !self.run_handler(
                    "fence-peer",
                    Some(Box::new(move |code| {
                        let _ = tx.send(Msg::FenceDone(code));
                    })),
                ) {
                    tracing::error!(resource = %self.name, "fencing is configured but no fence-peer handler; IO stays frozen until the peer reconnects");
                    let _ = self.tx.send(Msg::FenceDone(-1));
                }
            }
            Action::WriteBitmap => {
                if let Err(e) =
                    disk::write_bitmap(&self.md_dev, &self.layout, &self.node.bitmap_words())
                {
                    tracing::error!(resource = %self.name, "writing the bitmap failed: {e}");
                }
            }
            Action::Notify(what) => {
                tracing::info!(resource = %self.name, "{what}");
                let s = self.node.status(self.now_ms());
                let _ = self.events.send(EventLine {
                    time_ms: u64::try_from(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis(),
                    )
                    .unwrap_or(0),
                    resource: self.name.clone(),
                    what,
                    role: s.role.to_string(),
                    disk: s.disk.to_string(),
                    connection: s.connection.to_string(),
                    replication: s.replication.to_string(),
                    peer_disk: s.peer_disk.to_string(),
                    done: s.progress.map(|p| (p.done_percent * 100.0).round() / 100.0),
                    rate_kib_s: s.progress.map(|p| p.rate_kib_s),
                    eta_s: s.progress.map(|p| p.eta_s),
                });
            }
        }
    }

    /// Runs a configured handler in the background with DRBD's environment (and tandem's own
    /// names), logging how it ended; a handler that is not configured is skipped.
    /// Returns false when the handler is not configured. `done` gets the exit code.
    fn run_handler(&self, name: &'static str, done: Option<Box<dyn FnOnce(i32) + Send>>) -> bool {
        let Some((_, cmd)) = self.handlers.iter().find(|(n, _)| n == name) else {
            return false;
        };
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg(cmd);
        for (k, v) in [
            ("DRBD_RESOURCE", self.name.as_str()),
            ("DRBD_PEER", self.peer.peer_node.as_str()),
            ("DRBD_PEERS", self.peer.peer_node.as_str()),
            ("TANDEM_RESOURCE", self.name.as_str()),
            ("TANDEM_PEER", self.peer.peer_node.as_str()),
            ("TANDEM_NODE", self.peer.node.as_str()),
            ("TANDEM_HANDLER", name),
        ] {
            c.env(k, v);
        }
        let (resource, cmd) = (self.name.clone(), cmd.clone());
        std::thread::spawn(move || {
            let code = match c.status() {
                Ok(st) => {
                    tracing::info!(%resource, handler = name, "handler '{cmd}' exited with {st}");
                    st.code().unwrap_or(-1)
                }
                Err(e) => {
                    tracing::error!(%resource, handler = name, "cannot run handler '{cmd}': {e}");
                    -1
                }
            };
            if let Some(done) = done {
                done(code);
            }
        });
        true
    }

    /// Queues a local IO for this round's submission ([`Task::flush_out`]); its completion
    /// comes back to this task as [`Msg::IoDone`].
    fn io(&mut self, io: IoId, op: IoOp) {
        let tx = self.tx.clone();
        self.io_batch.push((
            op,
            Box::new(move |result| {
                let _ = tx.send(Msg::IoDone { io, result });
            }),
        ));
    }

    fn sync_access(&mut self) {
        let role = self.node.role();
        if role == self.role {
            return;
        }
        self.role = role;
        let mode = if role == Role::Primary {
            Access::ReadWrite
        } else {
            Access::Refused(secondary_reason(&self.name))
        };
        *self.access.lock().expect("access lock") = mode.clone();
        if let Err(e) = self.nbd.set_access(&self.name, mode) {
            tracing::error!(resource = %self.name, "cannot change the export's access: {e}");
        }
        // The iSCSI LUN exists only on the Primary: added on promotion, withdrawn on demotion.
        if let Some(iscsi) = &self.iscsi {
            let result = if role == Role::Primary {
                iscsi
                    .add_target(&self.name, self.volume.clone())
                    .map(|iqn| {
                        tracing::info!(resource = %self.name, %iqn, "iSCSI LUN 0 exported");
                    })
            } else {
                iscsi.remove_target(&self.name)
            };
            if let Err(e) = result {
                tracing::error!(resource = %self.name, "iSCSI export: {e}");
            }
        }
    }

    fn status(&self) -> ResourceStatus {
        let s = self.node.status(self.now_ms());
        let syncing = s.progress;
        ResourceStatus {
            name: self.name.clone(),
            role: s.role.to_string(),
            disk: s.disk.to_string(),
            size_bytes: s.size_bytes,
            uuids: s.uuids.iter().map(|u| format!("{u:016X}")).collect(),
            nbd_clients: self.nbd.connections(&self.name),
            io_suspended: self.node.io_frozen(),
            peers: vec![PeerStatus {
                name: self.peer.peer_node.clone(),
                connection: s.connection.to_string(),
                replication: s.replication.to_string(),
                peer_role: s
                    .peer_role
                    .map_or_else(|| "Unknown".to_string(), |r| r.to_string()),
                peer_disk: s.peer_disk.to_string(),
                out_of_sync_kib: s.out_of_sync_kib,
                done: syncing.map(|p| (p.done_percent * 100.0).round() / 100.0),
                rate_kib_s: syncing.map(|p| p.rate_kib_s),
                eta_s: syncing.map(|p| p.eta_s),
                last_error: s.last_error,
                last_verify_oos_kib: s.last_verify_kib,
                split_brain: s.split_brain,
            }],
        }
    }

    fn down(&mut self) -> Result<(), String> {
        if self.node.role() == Role::Primary {
            let clients = self.nbd.connections(&self.name);
            if clients > 0 {
                return Err(format!(
                    "{} is in use by {clients} NBD client(s); disconnect them first",
                    self.name
                ));
            }
            let req = self.req();
            let actions = self.node.apply(
                Event::Command {
                    req,
                    command: Command::Secondary,
                },
                self.now_ms(),
            );
            let mut refused = None;
            for a in actions {
                if let Action::Reply { result: Err(e), .. } = &a {
                    refused = Some(e.clone());
                }
                self.action(a);
            }
            if let Some(e) = refused {
                return Err(e);
            }
        }
        let req = self.req();
        let actions = self.node.apply(
            Event::Command {
                req,
                command: Command::Disconnect,
            },
            self.now_ms(),
        );
        for a in actions {
            self.action(a);
        }
        self.action(Action::WriteBitmap);
        self.action(Action::WriteMd(self.node.clean_md()));
        Ok(())
    }
}

/// The replicated resource as a [`Volume`] for the exports: writes and flushes go through the
/// resource's task (and so to the peer), reads come from the local disk.
struct ReplicatedVolume {
    name: String,
    tx: mpsc::UnboundedSender<Msg>,
    size: u64,
    backing: Backing,
    access: Arc<Mutex<Access>>,
}

impl ReplicatedVolume {
    fn error(&self, op: &'static str, offset: u64, length: u64, e: i32) -> VolumeError {
        if e == errno::EPERM {
            return VolumeError::Refused(secondary_reason(&self.name));
        }
        VolumeError::Io {
            op,
            path: self.name.clone(),
            offset,
            length,
            source: std::io::Error::from_raw_os_error(e),
        }
    }

    fn refused(&self) -> Option<VolumeError> {
        match &*self.access.lock().expect("access lock") {
            Access::Refused(why) => Some(VolumeError::Refused(why.clone())),
            _ => None,
        }
    }

    fn submit(&self, offset: u64, data: Bytes, fua: bool) -> VolumeFuture<()> {
        let (reply, rx) = oneshot::channel();
        let len = data.len() as u64;
        let sent = self
            .tx
            .send(Msg::Write {
                offset,
                data,
                fua,
                reply,
            })
            .is_ok();
        let (name, shut) = (
            self.name.clone(),
            self.error("write", offset, len, errno::ESHUTDOWN),
        );
        Box::pin(async move {
            match (sent, rx.await) {
                (true, Ok(Ok(()))) => Ok(()),
                (true, Ok(Err(e))) if e == errno::EPERM => {
                    Err(VolumeError::Refused(secondary_reason(&name)))
                }
                (true, Ok(Err(e))) => Err(VolumeError::Io {
                    op: "write",
                    path: name,
                    offset,
                    length: len,
                    source: std::io::Error::from_raw_os_error(e),
                }),
                _ => Err(shut),
            }
        })
    }
}

impl Volume for ReplicatedVolume {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn access(&self) -> Access {
        self.access.lock().expect("access lock").clone()
    }

    fn min_block_bytes(&self) -> u32 {
        // Replication moves whole sectors (the wire and the bitmap count in 512-byte units).
        512
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            trim: false,
            write_zeroes: true,
            fast_zero: false,
            block_status: false,
            multi_conn: true,
        }
    }

    fn read(&self, offset: u64, length: u32) -> VolumeFuture<Vec<u8>> {
        if let Some(e) = self.refused() {
            return Box::pin(async move { Err(e) });
        }
        let b = self.backing.clone();
        let name = self.name.clone();
        Box::pin(async move {
            b.read(offset, length)
                .await
                .map(|d| d.to_vec())
                .map_err(|e| VolumeError::Io {
                    op: "read",
                    path: name,
                    offset,
                    length: u64::from(length),
                    source: std::io::Error::from_raw_os_error(e),
                })
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolumeFuture<()> {
        self.submit(offset, data, fua)
    }

    fn flush(&self) -> VolumeFuture<()> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Flush { reply });
        let shut = self.error("flush", 0, 0, errno::ESHUTDOWN);
        let fail = self.error("flush", 0, 0, errno::EIO);
        Box::pin(async move {
            if sent.is_err() {
                return Err(shut);
            }
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(fail),
                Err(_) => Err(shut),
            }
        })
    }

    fn trim(&self, _offset: u64, _length: u64, _fua: bool) -> VolumeFuture<()> {
        // A hint; doing nothing is correct (and keeps the replicas identical).
        Box::pin(async { Ok(()) })
    }

    fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> VolumeFuture<()> {
        if flags.fast {
            return Box::pin(async { Err(VolumeError::NotFast) });
        }
        let mut parts = Vec::new();
        let mut done = 0;
        while done < length {
            let n = (length - done).min(MAX_WRITE_BYTES);
            parts.push(self.submit(
                offset + done,
                Bytes::from(vec![0u8; usize::try_from(n).expect("32 MiB")]),
                flags.fua,
            ));
            done += n;
        }
        Box::pin(async move {
            for p in parts {
                p.await?;
            }
            Ok(())
        })
    }

    fn block_status(
        &self,
        offset: u64,
        length: u64,
        _max_extents: usize,
    ) -> VolumeFuture<Vec<Extent>> {
        let len = length.min(self.size.saturating_sub(offset)).max(1);
        Box::pin(async move {
            Ok(vec![Extent {
                length: len,
                hole: false,
                zero: false,
            }])
        })
    }
}
