//! The iSCSI target's tokio driver: listens on TCP, runs the login state machine, then the full
//! feature phase of each connection: a reader that sequences commands (CmdSN window), gathers
//! write data (immediate data, unsolicited Data-Out, R2T), answers NOP-Out, Text (SendTargets),
//! task management and logout; one task per SCSI command running it on the logical unit; and a
//! writer task that stamps StatSN/ExpCmdSN/MaxCmdSN on every PDU it sends.
//!
//! Targets are added and removed while serving ([`IscsiServer::add_target`],
//! [`IscsiServer::remove_target`]); `replicatord` adds a Primary's volume and removes it on
//! demotion. Error recovery level 0: a protocol error ends the connection.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::disk::{data_out_bytes, LogicalUnit, Outcome, BLOCK_BYTES, MAX_TRANSFER_BLOCKS};
use super::login::{self, Auth, Established, Login, Params, SessionType};
use super::pdu::{self, reject_reason, Bhs, Digests, Frame, TargetSn, BHS_LEN};
use super::scsi::{op, status, Sense};
use super::text;
use crate::volume::Volume;

/// The IANA port for iSCSI.
pub const DEFAULT_PORT: u16 = 3260;
/// Every target's name is this prefix and the export's name.
pub const IQN_PREFIX: &str = "iqn.2026-11.org.tandem:";
/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Commands an initiator may have outstanding (MaxCmdSN - ExpCmdSN + 1).
pub const COMMAND_WINDOW: u32 = 64;
/// The largest Expected Data Transfer Length accepted for a write (a WRITE of
/// MAX_TRANSFER_BLOCKS, or a COMPARE AND WRITE, fits).
pub const MAX_WRITE_BYTES: u32 = MAX_TRANSFER_BLOCKS * BLOCK_BYTES;
/// The most write data one connection may have announced and not yet delivered (buffers for
/// commands waiting for Data-Out); past it commands get TASK SET FULL.
pub const MAX_PENDING_WRITE_BYTES: u64 = 64 << 20;
/// The most commands one connection runs at once.
pub const MAX_RUNNING_COMMANDS: usize = 2 * COMMAND_WINDOW as usize;
/// How long a login may take before the connection is dropped.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Batches of PDUs queued to a connection's writer.
const WRITER_QUEUE: usize = 256;
/// Delay before accepting again after accept() failed (out of file descriptors).
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// The target task tag that means "none".
const NO_TAG: u32 = 0xffff_ffff;
/// Task management responses (RFC 7143 §11.6.1).
mod tmf {
    pub const COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
}

/// What can go wrong managing the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A target with this name is served already.
    #[error("an iSCSI target named {0:?} is served already")]
    Exists(String),
    /// No target with this name.
    #[error("no iSCSI target named {0:?}")]
    NotFound(String),
    /// The name cannot be part of an IQN.
    #[error("{name:?} cannot name an iSCSI target: {why}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        why: &'static str,
    },
}

type Table = Arc<BTreeMap<String, Arc<LogicalUnit>>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    initiator: String,
    isid: [u8; 6],
    target: String,
}

struct SessionEntry {
    id: u64,
    kill: Arc<Notify>,
}

/// The target name served for an export name.
pub fn iqn(name: &str) -> String {
    format!("{IQN_PREFIX}{name}")
}

/// Why `name` cannot follow [`IQN_PREFIX`] in a target name, if it cannot.
pub fn check_target_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 200 {
        return Err("it is longer than 200 bytes");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        return Err("an IQN allows only letters, digits, '.', '-', ':' and '_'");
    }
    Ok(())
}

/// An iSCSI target portal: named targets, each one LUN (0) over a volume.
pub struct IscsiServer {
    targets: watch::Sender<Table>,
    ctx: Ctx,
}

#[derive(Clone)]
struct Ctx {
    targets: watch::Receiver<Table>,
    auth: Arc<Auth>,
    shutdown: watch::Receiver<bool>,
    shutdown_tx: Arc<watch::Sender<bool>>,
    connections: Arc<Semaphore>,
    sessions: Arc<Mutex<HashMap<SessionKey, SessionEntry>>>,
    next_id: Arc<AtomicU64>,
    next_tsih: Arc<AtomicU16>,
}

impl IscsiServer {
    /// A server with no targets that authenticates initiators with `auth`.
    pub fn new(auth: Auth) -> IscsiServer {
        let (targets, targets_rx) = watch::channel(Arc::new(BTreeMap::new()));
        let (shutdown_tx, shutdown) = watch::channel(false);
        IscsiServer {
            targets,
            ctx: Ctx {
                targets: targets_rx,
                auth: Arc::new(auth),
                shutdown,
                shutdown_tx: Arc::new(shutdown_tx),
                connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
                sessions: Arc::new(Mutex::new(HashMap::new())),
                next_id: Arc::new(AtomicU64::new(1)),
                next_tsih: Arc::new(AtomicU16::new(1)),
            },
        }
    }

    /// Serves `volume` as target `iqn.2026-11.org.tandem:<name>`, LUN 0. Returns the IQN.
    pub fn add_target(&self, name: &str, volume: Arc<dyn Volume>) -> Result<String, ServerError> {
        check_target_name(name).map_err(|why| ServerError::BadName {
            name: name.to_string(),
            why,
        })?;
        let name_iqn = iqn(&name.to_ascii_lowercase().replace('_', "-"));
        if self.targets.borrow().contains_key(&name_iqn) {
            return Err(ServerError::Exists(name_iqn));
        }
        let lu = Arc::new(LogicalUnit::new(volume, &name_iqn));
        self.targets.send_modify(|t| {
            Arc::make_mut(t).insert(name_iqn.clone(), lu);
        });
        info!(target = %name_iqn, "iSCSI target started");
        Ok(name_iqn)
    }

    /// Stops serving a target (by export name or IQN): new logins fail, and its sessions are
    /// closed.
    pub fn remove_target(&self, name: &str) -> Result<(), ServerError> {
        let key = if name.starts_with(IQN_PREFIX) {
            name.to_string()
        } else {
            iqn(&name.to_ascii_lowercase().replace('_', "-"))
        };
        let mut found = false;
        self.targets.send_modify(|t| {
            found = Arc::make_mut(t).remove(&key).is_some();
        });
        if !found {
            return Err(ServerError::NotFound(name.to_string()));
        }
        let sessions = self.ctx.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for (k, s) in sessions.iter() {
            if k.target == key {
                s.kill.notify_one();
            }
        }
        info!(target = %key, "iSCSI target stopped");
        Ok(())
    }

    /// The IQNs served.
    pub fn target_names(&self) -> Vec<String> {
        self.targets.borrow().keys().cloned().collect()
    }

    /// Serves on a bound TCP listener until [`IscsiServer::shutdown`].
    pub fn serve_tcp(&self, listener: TcpListener) -> JoinHandle<()> {
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut shutdown = ctx.shutdown.clone();
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, peer)) => {
                            let _ = s.set_nodelay(true);
                            let Ok(permit) = Arc::clone(&ctx.connections).try_acquire_owned() else {
                                warn!(%peer, "iSCSI: too many connections; refused");
                                continue;
                            };
                            let ctx = ctx.clone();
                            tokio::spawn(async move {
                                connection(ctx, s, peer).await;
                                drop(permit);
                            });
                        }
                        Err(e) => {
                            warn!("accept on the iSCSI socket failed: {e}");
                            tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                        }
                    },
                    _ = stopped(&mut shutdown) => break,
                }
            }
        })
    }

    /// Stops accepting, ends every connection after its commands in flight, and waits (at
    /// most `timeout`) until they are closed.
    pub async fn shutdown(&self, timeout: Duration) {
        self.ctx.shutdown_tx.send_replace(true);
        let all = u32::try_from(MAX_CONNECTIONS).expect("small");
        let _ = tokio::time::timeout(timeout, self.ctx.connections.acquire_many(all)).await;
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Reads frames off a socket.
struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Pdu(#[from] pdu::PduError),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl FrameReader {
    /// Cancel-safe: a partial frame stays in the buffer.
    async fn next(&mut self, digests: Digests, max_data: usize) -> Result<Frame, ConnError> {
        loop {
            if let Some(f) = pdu::decode_frame(&mut self.buf, digests, max_data)? {
                return Ok(f);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 << 10);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(ConnError::Closed);
            }
        }
    }
}

async fn connection(ctx: Ctx, stream: TcpStream, peer: SocketAddr) {
    let local = stream.local_addr().ok();
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader {
        rd,
        buf: BytesMut::with_capacity(64 << 10),
    };
    let login = tokio::time::timeout(LOGIN_TIMEOUT, login_phase(&ctx, &mut reader, &mut wr, peer));
    let (est, counters) = match login.await {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(%peer, "iSCSI login ended: {e}");
            return;
        }
        Err(_) => {
            warn!(%peer, "iSCSI login timed out");
            return;
        }
    };
    let nexus = format!(
        "{},i,0x{}",
        est.initiator_name,
        est.isid
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let lu = match &est.session_type {
        SessionType::Normal(t) => ctx.targets.borrow().get(t).cloned(),
        SessionType::Discovery => None,
    };
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let kill = Arc::new(Notify::new());
    let key = match &est.session_type {
        SessionType::Normal(t) => Some(SessionKey {
            initiator: est.initiator_name.clone(),
            isid: est.isid,
            target: t.clone(),
        }),
        SessionType::Discovery => None,
    };
    if let Some(k) = &key {
        let mut sessions = ctx.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = sessions.insert(
            k.clone(),
            SessionEntry {
                id,
                kill: Arc::clone(&kill),
            },
        ) {
            // Session reinstatement (RFC 7143 §6.3.5): the old session ends.
            old.kill.notify_one();
        }
    }
    info!(
        %peer,
        initiator = %est.initiator_name,
        session = ?est.session_type,
        header_digest = est.params.header_digest,
        data_digest = est.params.data_digest,
        "iSCSI login"
    );
    let params = est.params;
    let digests = Digests {
        header: params.header_digest,
        data: params.data_digest,
    };
    let (tx, rx) = mpsc::channel::<Vec<(Bhs, Bytes)>>(WRITER_QUEUE);
    let writer = tokio::spawn(writer(wr, rx, Arc::clone(&counters), digests));
    let mut conn = Conn {
        ctx: ctx.clone(),
        lu: lu.clone(),
        nexus: nexus.clone(),
        est,
        params,
        digests,
        counters,
        tx,
        transfers: HashMap::new(),
        discard: HashMap::new(),
        tasks: Arc::new(Mutex::new(HashMap::new())),
        next_ttt: 1,
        local,
    };
    let r = conn.run(&mut reader, &kill).await;
    match &r {
        Ok(()) | Err(ConnError::Closed) => debug!(%peer, "iSCSI connection closed"),
        Err(e) => warn!(%peer, "iSCSI connection dropped: {e}"),
    }
    conn.drain().await;
    let Conn { tx, .. } = conn;
    drop(tx);
    let _ = writer.await;
    if let Some(k) = key {
        let mut sessions = ctx.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(&k).is_some_and(|s| s.id == id) {
            sessions.remove(&k);
        }
    }
    if let Some(lu) = lu {
        lu.nexus_lost(&nexus);
    }
}

/// Sequence numbers shared by the reader (ExpCmdSN) and the writer (StatSN).
struct Counters {
    exp_cmd_sn: AtomicU32,
    stat_sn: AtomicU32,
}

impl Counters {
    fn sn(&self, advance: bool) -> TargetSn {
        let exp = self.exp_cmd_sn.load(Ordering::Acquire);
        let stat_sn = if advance {
            self.stat_sn.fetch_add(1, Ordering::AcqRel)
        } else {
            self.stat_sn.load(Ordering::Acquire)
        };
        TargetSn {
            stat_sn,
            exp_cmd_sn: exp,
            max_cmd_sn: exp.wrapping_add(COMMAND_WINDOW - 1),
        }
    }
}

fn random_challenge() -> ([u8; login::CHAP_CHALLENGE_BYTES], u8) {
    let mut c = [0u8; login::CHAP_CHALLENGE_BYTES + 1];
    if getrandom::fill(&mut c).is_err() {
        // No entropy source: CHAP cannot be trusted; refuse logins by using a fixed value
        // that no secret check accidentally depends on.
        warn!("no randomness for CHAP challenges");
    }
    let mut ch = [0u8; login::CHAP_CHALLENGE_BYTES];
    ch.copy_from_slice(&c[..login::CHAP_CHALLENGE_BYTES]);
    (ch, c[login::CHAP_CHALLENGE_BYTES])
}

async fn login_phase(
    ctx: &Ctx,
    reader: &mut FrameReader,
    wr: &mut OwnedWriteHalf,
    peer: SocketAddr,
) -> Result<Option<(Established, Arc<Counters>)>, ConnError> {
    let targets: Vec<String> = ctx.targets.borrow().keys().cloned().collect();
    let (challenge, id) = random_challenge();
    let mut machine = Login::new(targets, (*ctx.auth).clone(), challenge, id);
    let mut stat_sn: u32 = 1;
    loop {
        let frame = reader
            .next(
                Digests::default(),
                login::MAX_RECV_DATA_SEGMENT_LENGTH as usize,
            )
            .await?;
        let bhs = Bhs::decode(&frame.bhs);
        let (
            Some(req),
            Ok(Bhs::LoginRequest {
                itt,
                cmd_sn,
                exp_stat_sn,
                ..
            }),
        ) = (bhs.as_ref().ok().and_then(login::Request::of), bhs)
        else {
            return Err(ConnError::Protocol(
                "the first PDUs of a connection must be Login Requests".into(),
            ));
        };
        if exp_stat_sn != 0 && stat_sn == 1 {
            stat_sn = exp_stat_sn;
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let keys = text::parse(&frame.data).unwrap_or_default();
            let shown: Vec<String> = keys
                .iter()
                .map(|(k, v)| {
                    if k == "CHAP_R" || k == "CHAP_C" {
                        format!("{k}=<hidden>")
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect();
            debug!(%peer, csg = req.csg, nsg = req.nsg, transit = req.transit, keys = ?shown, "iSCSI login request");
        }
        let resp = machine.step(&req, &frame.data);
        let tsih = if resp.established.is_some() {
            let t = ctx.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t == 0 {
                ctx.next_tsih.fetch_add(1, Ordering::Relaxed)
            } else {
                t
            }
        } else {
            0
        };
        let bhs = Bhs::LoginResponse {
            transit: resp.transit,
            cont: false,
            csg: resp.csg,
            nsg: resp.nsg,
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih,
            itt,
            sn: TargetSn {
                stat_sn,
                exp_cmd_sn: cmd_sn,
                max_cmd_sn: cmd_sn.wrapping_add(COMMAND_WINDOW - 1),
            },
            status_class: resp.status.0,
            status_detail: resp.status.1,
        };
        stat_sn = stat_sn.wrapping_add(1);
        let mut out = Vec::new();
        pdu::encode_frame(
            &mut out,
            &bhs,
            &text::encode(&resp.keys),
            Digests::default(),
        );
        wr.write_all(&out).await?;
        if let Some(why) = resp.failure {
            warn!(%peer, status = ?resp.status, "iSCSI login refused: {why}");
            return Ok(None);
        }
        if let Some(est) = resp.established {
            let counters = Arc::new(Counters {
                exp_cmd_sn: AtomicU32::new(cmd_sn),
                stat_sn: AtomicU32::new(stat_sn),
            });
            return Ok(Some((est, counters)));
        }
    }
}

async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<(Bhs, Bytes)>>,
    counters: Arc<Counters>,
    digests: Digests,
) {
    let mut out = Vec::with_capacity(256 << 10);
    while let Some(batch) = rx.recv().await {
        out.clear();
        let encode = |out: &mut Vec<u8>, batch: Vec<(Bhs, Bytes)>| {
            for (mut bhs, data) in batch {
                stamp(&mut bhs, &counters);
                pdu::encode_frame(out, &bhs, &data, digests);
            }
        };
        encode(&mut out, batch);
        while out.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(b) => encode(&mut out, b),
                Err(_) => break,
            }
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Fills the sequence numbers at send time; responses with status advance StatSN.
fn stamp(bhs: &mut Bhs, counters: &Counters) {
    match bhs {
        Bhs::NopIn { itt, sn, .. } => *sn = counters.sn(*itt != NO_TAG),
        Bhs::ScsiResponse { sn, .. }
        | Bhs::TaskMgmtResponse { sn, .. }
        | Bhs::TextResponse { sn, .. }
        | Bhs::LogoutResponse { sn, .. }
        | Bhs::Reject { sn, .. } => *sn = counters.sn(true),
        Bhs::DataIn { status, sn, .. } => *sn = counters.sn(status.is_some()),
        Bhs::R2t { sn, .. } => *sn = counters.sn(false),
        _ => {}
    }
}

/// Write data being gathered for one command.
struct Transfer {
    lun: u64,
    cdb: [u8; 16],
    edtl: u32,
    buf: BytesMut,
    /// Unsolicited Data-Out may still come (command F bit clear).
    unsolicited: bool,
    /// The TTT of the outstanding R2T (NO_TAG while unsolicited).
    ttt: u32,
    r2t_sn: u32,
    data_sn: u32,
    /// Where the current burst ends.
    burst_end: u32,
}

struct TaskEntry {
    aborted: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<JoinHandle<()>>,
    lun: u64,
}

type Tasks = Arc<Mutex<HashMap<u32, TaskEntry>>>;

struct Conn {
    ctx: Ctx,
    lu: Option<Arc<LogicalUnit>>,
    nexus: String,
    est: Established,
    params: Params,
    digests: Digests,
    counters: Arc<Counters>,
    tx: mpsc::Sender<Vec<(Bhs, Bytes)>>,
    transfers: HashMap<u32, Transfer>,
    /// Commands refused before their unsolicited data ended: ITT -> LUN.
    discard: HashMap<u32, u64>,
    tasks: Tasks,
    next_ttt: u32,
    local: Option<SocketAddr>,
}

/// Single-level LUN addressing: the LUN number.
fn lun_number(raw: u64) -> u64 {
    (raw >> 48) & 0x3fff
}

impl Conn {
    async fn send(&self, pdus: Vec<(Bhs, Bytes)>) -> Result<(), ConnError> {
        self.tx.send(pdus).await.map_err(|_| ConnError::Closed)
    }

    async fn reject(&self, raw: &[u8; BHS_LEN], reason: u8) -> Result<(), ConnError> {
        self.send(vec![(
            Bhs::Reject {
                reason,
                sn: TargetSn::default(),
                data_sn: 0,
            },
            Bytes::copy_from_slice(raw),
        )])
        .await
    }

    /// Accepts a CmdSN: true if the command is in order (and advances ExpCmdSN), false if it
    /// must be ignored (RFC 7143 §3.2.2.1).
    fn sequence(&self, immediate: bool, cmd_sn: u32) -> bool {
        let exp = self.counters.exp_cmd_sn.load(Ordering::Acquire);
        if immediate {
            return true;
        }
        if cmd_sn != exp {
            let ahead = cmd_sn.wrapping_sub(exp);
            warn!(
                cmd_sn,
                exp_cmd_sn = exp,
                "iSCSI: command outside the CmdSN window or out of order; ignored (ahead by {ahead})"
            );
            return false;
        }
        self.counters
            .exp_cmd_sn
            .store(exp.wrapping_add(1), Ordering::Release);
        true
    }

    async fn run(&mut self, reader: &mut FrameReader, kill: &Notify) -> Result<(), ConnError> {
        let mut shutdown = self.ctx.shutdown.clone();
        let mut targets = self.ctx.targets.clone();
        loop {
            let frame = tokio::select! {
                f = reader.next(self.digests, login::MAX_RECV_DATA_SEGMENT_LENGTH as usize) => f?,
                _ = kill.notified() => {
                    info!(nexus = %self.nexus, "iSCSI session closed (reinstated or target removed)");
                    return Ok(());
                }
                _ = stopped(&mut shutdown) => return Ok(()),
                r = targets.changed() => {
                    r.map_err(|_| ConnError::Closed)?;
                    if let SessionType::Normal(t) = &self.est.session_type {
                        if !targets.borrow().contains_key(t) {
                            return Ok(());
                        }
                    }
                    continue;
                }
            };
            if frame.data_digest_error {
                warn!(nexus = %self.nexus, "iSCSI data digest error; PDU rejected");
                self.reject(&frame.bhs, reject_reason::DATA_DIGEST_ERROR)
                    .await?;
                continue;
            }
            let bhs = match Bhs::decode(&frame.bhs) {
                Ok(b) => b,
                Err(_) => {
                    self.reject(&frame.bhs, reject_reason::COMMAND_NOT_SUPPORTED)
                        .await?;
                    continue;
                }
            };
            if !self.handle(bhs, &frame).await? {
                return Ok(());
            }
        }
    }

    /// Handles one PDU; false ends the connection cleanly (logout).
    async fn handle(&mut self, bhs: Bhs, frame: &Frame) -> Result<bool, ConnError> {
        match bhs {
            Bhs::NopOut {
                immediate,
                lun,
                itt,
                ttt,
                cmd_sn,
                ..
            } => {
                if !self.sequence(immediate, cmd_sn) {
                    return Ok(true);
                }
                if ttt != NO_TAG || itt == NO_TAG {
                    return Ok(true);
                }
                self.send(vec![(
                    Bhs::NopIn {
                        lun,
                        itt,
                        ttt: NO_TAG,
                        sn: TargetSn::default(),
                    },
                    frame.data.clone(),
                )])
                .await?;
            }
            Bhs::ScsiCommand {
                immediate,
                final_,
                read,
                write,
                lun,
                itt,
                expected_length,
                cmd_sn,
                cdb,
                ..
            } => {
                if !self.sequence(immediate, cmd_sn) {
                    return Ok(true);
                }
                if self.lu.is_none() {
                    self.reject(&frame.bhs, reject_reason::PROTOCOL_ERROR)
                        .await?;
                    return Ok(true);
                }
                self.command(frame, final_, read, write, lun, itt, expected_length, cdb)
                    .await?;
            }
            Bhs::DataOut {
                final_,
                itt,
                ttt,
                data_sn,
                buffer_offset,
                ..
            } => {
                self.data_out(frame, final_, itt, ttt, data_sn, buffer_offset)
                    .await?;
            }
            Bhs::TaskMgmtRequest {
                immediate,
                function,
                lun,
                itt,
                referenced_task_tag,
                cmd_sn,
                ..
            } => {
                if !self.sequence(immediate, cmd_sn) {
                    return Ok(true);
                }
                return self
                    .task_management(function, lun, itt, referenced_task_tag)
                    .await;
            }
            Bhs::TextRequest {
                immediate,
                lun,
                itt,
                cmd_sn,
                ..
            } => {
                if !self.sequence(immediate, cmd_sn) {
                    return Ok(true);
                }
                self.text(frame, lun, itt).await?;
            }
            Bhs::LogoutRequest {
                immediate,
                reason,
                itt,
                cmd_sn,
                ..
            } => {
                let _ = self.sequence(immediate, cmd_sn);
                self.drain().await;
                let response = if reason == 2 { 2 } else { 0 };
                self.send(vec![(
                    Bhs::LogoutResponse {
                        response,
                        itt,
                        sn: TargetSn::default(),
                        time2wait: 0,
                        time2retain: 0,
                    },
                    Bytes::new(),
                )])
                .await?;
                info!(nexus = %self.nexus, "iSCSI logout");
                return Ok(false);
            }
            Bhs::Snack { .. } => {
                self.reject(&frame.bhs, reject_reason::SNACK_REJECT).await?;
            }
            _ => {
                self.reject(&frame.bhs, reject_reason::PROTOCOL_ERROR)
                    .await?;
            }
        }
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    async fn command(
        &mut self,
        frame: &Frame,
        final_: bool,
        read: bool,
        write: bool,
        lun: u64,
        itt: u32,
        edtl: u32,
        cdb: [u8; 16],
    ) -> Result<(), ConnError> {
        let immediate_data = frame.data.clone();
        self.discard.remove(&itt);
        if self.transfers.contains_key(&itt) || self.tasks_contains(itt) {
            return Err(ConnError::Protocol(format!(
                "ITT {itt:#x} is already in use"
            )));
        }
        let running = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).len();
        if running >= MAX_RUNNING_COMMANDS {
            // Immediate commands bypass the CmdSN window; this bounds them too.
            let full = Outcome {
                status: status::TASK_SET_FULL,
                sense: None,
                data: Vec::new(),
            };
            return self
                .respond_now(lun, itt, cdb, edtl, read, final_ || !write, full)
                .await;
        }
        if !write || edtl == 0 {
            if !immediate_data.is_empty() {
                return Err(ConnError::Protocol(
                    "immediate data on a command without write data".into(),
                ));
            }
            self.dispatch(lun, itt, cdb, read, edtl, Bytes::new());
            return Ok(());
        }
        if read {
            // Bidirectional commands are not served.
            self.respond_now(
                lun,
                itt,
                cdb,
                edtl,
                true,
                final_,
                Outcome::check(Sense::INVALID_FIELD_IN_CDB),
            )
            .await?;
            return Ok(());
        }
        if edtl > MAX_WRITE_BYTES {
            let sense = Sense::INVALID_FIELD_IN_CDB;
            self.respond_now(lun, itt, cdb, edtl, false, final_, Outcome::check(sense))
                .await?;
            return Ok(());
        }
        if immediate_data.len() > edtl as usize
            || (!immediate_data.is_empty() && !self.params.immediate_data)
            || immediate_data.len() > self.params.first_burst as usize
        {
            return Err(ConnError::Protocol(
                "immediate data beyond what was negotiated".into(),
            ));
        }
        if final_ && immediate_data.len() == edtl as usize {
            // Everything came as immediate data: no copy, no transfer state.
            self.dispatch(lun, itt, cdb, false, edtl, immediate_data);
            return Ok(());
        }
        let pending: u64 = self.transfers.values().map(|t| u64::from(t.edtl)).sum();
        if self.transfers.len() >= COMMAND_WINDOW as usize
            || pending + u64::from(edtl) > MAX_PENDING_WRITE_BYTES
        {
            let full = Outcome {
                status: status::TASK_SET_FULL,
                sense: None,
                data: Vec::new(),
            };
            self.respond_now(lun, itt, cdb, edtl, false, final_, full)
                .await?;
            return Ok(());
        }
        let mut buf = BytesMut::with_capacity(edtl as usize);
        buf.extend_from_slice(&immediate_data);
        let unsolicited = !final_;
        if unsolicited && self.params.initial_r2t {
            return Err(ConnError::Protocol(
                "unsolicited data announced with InitialR2T=Yes".into(),
            ));
        }
        let t = Transfer {
            lun,
            cdb,
            edtl,
            buf,
            unsolicited,
            ttt: NO_TAG,
            r2t_sn: 0,
            data_sn: 0,
            burst_end: self.params.first_burst.min(edtl),
        };
        self.transfers.insert(itt, t);
        self.advance(itt).await
    }

    /// Data-Out for `itt` is dropped from now on (until the ITT is reused).
    fn remember_discard(&mut self, itt: u32, lun: u64) {
        if self.discard.len() >= COMMAND_WINDOW as usize {
            self.discard.clear();
        }
        self.discard.insert(itt, lun);
    }

    fn tasks_contains(&self, itt: u32) -> bool {
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&itt)
    }

    /// After data arrived: dispatch, send the next R2T, or keep waiting.
    async fn advance(&mut self, itt: u32) -> Result<(), ConnError> {
        let Some(t) = self.transfers.get_mut(&itt) else {
            return Ok(());
        };
        if t.unsolicited {
            return Ok(());
        }
        let have = u32::try_from(t.buf.len()).expect("bounded by edtl");
        if have == t.edtl {
            let t = self.transfers.remove(&itt).expect("present");
            self.dispatch(t.lun, itt, t.cdb, false, t.edtl, t.buf.freeze());
            return Ok(());
        }
        if t.ttt != NO_TAG && have < t.burst_end {
            return Ok(()); // the current R2T's burst is not complete
        }
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
        if self.next_ttt == NO_TAG {
            self.next_ttt = 1;
        }
        let length = (t.edtl - have).min(self.params.max_burst);
        t.ttt = ttt;
        t.data_sn = 0;
        t.burst_end = have + length;
        let r2t_sn = t.r2t_sn;
        t.r2t_sn += 1;
        let lun = t.lun;
        self.send(vec![(
            Bhs::R2t {
                lun,
                itt,
                ttt,
                sn: TargetSn::default(),
                r2t_sn,
                buffer_offset: have,
                desired_length: length,
            },
            Bytes::new(),
        )])
        .await
    }

    async fn data_out(
        &mut self,
        frame: &Frame,
        final_: bool,
        itt: u32,
        ttt: u32,
        data_sn: u32,
        offset: u32,
    ) -> Result<(), ConnError> {
        if self.discard.contains_key(&itt) {
            return Ok(());
        }
        let Some(t) = self.transfers.get_mut(&itt) else {
            // A task aborted while its data was on the way.
            debug!(itt, "Data-Out for no pending command; dropped");
            return Ok(());
        };
        let have = t.buf.len() as u64;
        let end = have + frame.data.len() as u64;
        let fault = if ttt != t.ttt {
            Some((
                Sense::DATA_PHASE_ERROR,
                format!("TTT {ttt:#x}, expected {:#x}", t.ttt),
            ))
        } else if data_sn != t.data_sn {
            Some((
                Sense::DATA_PHASE_ERROR,
                format!("DataSN {data_sn}, expected {}", t.data_sn),
            ))
        } else if u64::from(offset) != have {
            Some((
                Sense::DATA_OFFSET_ERROR,
                format!("buffer offset {offset}, expected {have}"),
            ))
        } else if end > u64::from(t.burst_end) || end > u64::from(t.edtl) {
            Some((
                Sense::TOO_MUCH_WRITE_DATA,
                format!("{} bytes beyond the burst", end - u64::from(t.burst_end)),
            ))
        } else {
            None
        };
        if let Some((sense, why)) = fault {
            // The command fails; the rest of its data is dropped (error recovery level 0
            // offers no retransmission).
            warn!(nexus = %self.nexus, itt, "iSCSI Data-Out refused: {why}");
            let t = self.transfers.remove(&itt).expect("present");
            self.remember_discard(itt, t.lun);
            let pdus = response_pdus(
                t.lun,
                itt,
                &t.cdb,
                false,
                t.edtl,
                Outcome::check(sense),
                &self.params,
            );
            return self.send(pdus).await;
        }
        t.buf.extend_from_slice(&frame.data);
        t.data_sn += 1;
        if final_ {
            if t.unsolicited {
                t.unsolicited = false;
            }
            return self.advance(itt).await;
        }
        Ok(())
    }

    /// Responds at once without running the command (refused before its data).
    #[allow(clippy::too_many_arguments)]
    async fn respond_now(
        &mut self,
        lun: u64,
        itt: u32,
        cdb: [u8; 16],
        edtl: u32,
        read: bool,
        final_: bool,
        outcome: Outcome,
    ) -> Result<(), ConnError> {
        if !final_ {
            self.remember_discard(itt, lun);
        }
        let pdus = response_pdus(lun, itt, &cdb, read, edtl, outcome, &self.params);
        self.send(pdus).await
    }

    fn dispatch(&mut self, lun: u64, itt: u32, cdb: [u8; 16], read: bool, edtl: u32, data: Bytes) {
        let lu = Arc::clone(self.lu.as_ref().expect("normal session"));
        let nexus = self.nexus.clone();
        let tx = self.tx.clone();
        let params = self.params;
        let tasks = Arc::clone(&self.tasks);
        let aborted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&aborted);
        let mut map = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let handle = tokio::spawn(async move {
            let outcome = if lun_number(lun) != 0 {
                other_lun(&cdb)
            } else {
                lu.execute(&nexus, &cdb, data).await
            };
            let pdus = response_pdus(lun, itt, &cdb, read, edtl, outcome, &params);
            if !flag.load(Ordering::Acquire) {
                let _ = tx.send(pdus).await;
            }
            tasks.lock().unwrap_or_else(|e| e.into_inner()).remove(&itt);
        });
        map.insert(
            itt,
            TaskEntry {
                aborted,
                handle: Some(handle),
                lun,
            },
        );
    }

    /// Waits for every running command.
    async fn drain(&mut self) {
        let handles: Vec<JoinHandle<()>> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values_mut()
            .filter_map(|t| t.handle.take())
            .collect();
        for h in handles {
            let _ = h.await;
        }
    }

    async fn task_management(
        &mut self,
        function: u8,
        lun: u64,
        itt: u32,
        referenced: u32,
    ) -> Result<bool, ConnError> {
        let mut close = false;
        let lun_ok = lun_number(lun) == 0;
        let mut victims: Vec<JoinHandle<()>> = Vec::new();
        let mut abort_where = |tasks: &Tasks, pred: &dyn Fn(u32, &TaskEntry) -> bool| {
            let mut map = tasks.lock().unwrap_or_else(|e| e.into_inner());
            let mut n = 0;
            for (k, t) in map.iter_mut() {
                if pred(*k, t) {
                    t.aborted.store(true, Ordering::Release);
                    if let Some(h) = t.handle.take() {
                        victims.push(h);
                    }
                    n += 1;
                }
            }
            n
        };
        let response = match function {
            1 => {
                // ABORT TASK
                let found_running = abort_where(&self.tasks, &|k, _| k == referenced);
                let found_pending = self.transfers.remove(&referenced).is_some();
                if found_running + usize::from(found_pending) > 0 {
                    tmf::COMPLETE
                } else {
                    tmf::TASK_DOES_NOT_EXIST
                }
            }
            2 | 3 | 5 | 6 | 7 => {
                // ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET WARM/COLD RESET
                if matches!(function, 2 | 3 | 5) && !lun_ok {
                    tmf::LUN_DOES_NOT_EXIST
                } else {
                    let wanted = lun_number(lun);
                    abort_where(&self.tasks, &|_, t| {
                        function >= 6 || lun_number(t.lun) == wanted
                    });
                    self.transfers.clear();
                    if matches!(function, 5..=7) {
                        if let Some(lu) = &self.lu {
                            lu.reset();
                        }
                        info!(nexus = %self.nexus, function, "iSCSI reset");
                    }
                    if function == 6 {
                        let targets = self.ctx.targets.borrow().clone();
                        for lu in targets.values() {
                            lu.reset();
                        }
                    }
                    close = function == 7;
                    tmf::COMPLETE
                }
            }
            4 => tmf::NOT_SUPPORTED,
            8 => tmf::REASSIGNMENT_NOT_SUPPORTED,
            _ => tmf::NOT_SUPPORTED,
        };
        for h in victims {
            let _ = h.await;
        }
        self.send(vec![(
            Bhs::TaskMgmtResponse {
                response,
                itt,
                sn: TargetSn::default(),
            },
            Bytes::new(),
        )])
        .await?;
        Ok(!close)
    }

    async fn text(&mut self, frame: &Frame, lun: u64, itt: u32) -> Result<(), ConnError> {
        let keys = match text::parse(&frame.data) {
            Ok(k) => k,
            Err(e) => return Err(ConnError::Protocol(format!("text request: {e}"))),
        };
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in keys {
            if k == "SendTargets" {
                let all: Vec<String> = self.ctx.targets.borrow().keys().cloned().collect();
                let names: Vec<String> = match (&self.est.session_type, v.as_str()) {
                    (SessionType::Discovery, "All") => all,
                    (SessionType::Normal(t), "All" | "") => vec![t.clone()],
                    (_, name) => all.into_iter().filter(|t| t == name).collect(),
                };
                for n in names {
                    out.push(("TargetName".into(), n));
                    if let Some(a) = self.local {
                        let addr = match a {
                            SocketAddr::V4(v4) => format!("{}:{},1", v4.ip(), v4.port()),
                            SocketAddr::V6(v6) => format!("[{}]:{},1", v6.ip(), v6.port()),
                        };
                        out.push(("TargetAddress".into(), addr));
                    }
                }
            } else {
                out.push((k, "NotUnderstood".into()));
            }
        }
        let mut data = text::encode(&out);
        data.truncate(self.params.initiator_max_recv as usize);
        self.send(vec![(
            Bhs::TextResponse {
                final_: true,
                cont: false,
                lun,
                itt,
                ttt: NO_TAG,
                sn: TargetSn::default(),
            },
            Bytes::from(data),
        )])
        .await
    }
}

/// What a LUN other than 0 answers.
fn other_lun(cdb: &[u8; 16]) -> Outcome {
    match cdb[0] {
        op::INQUIRY if cdb[1] & 0x01 == 0 => {
            let mut d = vec![0u8; 36];
            d[0] = 0x7f; // peripheral qualifier 3: no logical unit here
            d[2] = 0x06;
            d[3] = 0x02;
            d[4] = 31;
            let allocation = usize::from(u16::from_be_bytes([cdb[3], cdb[4]]));
            d.truncate(allocation);
            Outcome {
                status: status::GOOD,
                sense: None,
                data: d,
            }
        }
        _ => Outcome::check(Sense::LUN_NOT_SUPPORTED),
    }
}

/// The PDUs answering a command: Data-In for read data (status in the last one when there is
/// no sense), else a SCSI Response; residuals against the Expected Data Transfer Length.
pub fn response_pdus(
    lun: u64,
    itt: u32,
    cdb: &[u8; 16],
    read: bool,
    edtl: u32,
    outcome: Outcome,
    params: &Params,
) -> Vec<(Bhs, Bytes)> {
    let mut pdus = Vec::new();
    let good = outcome.status == status::GOOD;
    let data_len = u32::try_from(outcome.data.len()).unwrap_or(u32::MAX);
    let (overflow, underflow, residual, send) = if let Some(spdtl) = data_out_bytes(cdb) {
        // Writes: compare the CDB's transfer length with the EDTL.
        match spdtl.cmp(&edtl) {
            std::cmp::Ordering::Greater => (true, false, spdtl - edtl, 0),
            std::cmp::Ordering::Less => (false, true, edtl - spdtl, 0),
            std::cmp::Ordering::Equal => (false, false, 0, 0),
        }
    } else {
        let allowed = if read { edtl } else { 0 };
        let send = if good { data_len.min(allowed) } else { 0 };
        if good && data_len > allowed {
            (true, false, data_len - allowed, send)
        } else if read && send < edtl {
            (false, true, edtl - send, send)
        } else {
            (false, false, 0, send)
        }
    };
    let data = Bytes::from(outcome.data);
    if send > 0 {
        let chunk = params.initiator_max_recv.max(512);
        let burst = params.max_burst.max(chunk);
        let mut offset = 0u32;
        let mut data_sn = 0u32;
        while offset < send {
            let n = chunk.min(send - offset);
            let last = offset + n == send;
            let sequence_end = last || (offset + n) % burst == 0;
            pdus.push((
                Bhs::DataIn {
                    final_: sequence_end,
                    overflow: last && overflow,
                    underflow: last && underflow,
                    status: (last && good).then_some(status::GOOD),
                    lun,
                    itt,
                    ttt: NO_TAG,
                    sn: TargetSn::default(),
                    data_sn,
                    buffer_offset: offset,
                    residual: if last { residual } else { 0 },
                },
                data.slice(offset as usize..(offset + n) as usize),
            ));
            offset += n;
            data_sn += 1;
        }
        if good {
            return pdus;
        }
    }
    let sense = outcome.sense.map(|s| {
        let mut b = Vec::with_capacity(20);
        b.extend_from_slice(&18u16.to_be_bytes());
        b.extend_from_slice(&s.encode());
        Bytes::from(b)
    });
    let data_sn = u32::try_from(pdus.len()).expect("small");
    pdus.push((
        Bhs::ScsiResponse {
            bidi_overflow: false,
            bidi_underflow: false,
            overflow,
            underflow,
            response: 0,
            status: outcome.status,
            itt,
            sn: TargetSn::default(),
            exp_data_sn: data_sn,
            bidi_residual: 0,
            residual,
        },
        sense.unwrap_or_default(),
    ));
    pdus
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(max_recv: u32) -> Params {
        Params {
            initiator_max_recv: max_recv,
            ..Params::default()
        }
    }

    fn read10(blocks: u8) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op::READ_10;
        c[8] = blocks;
        c
    }

    #[test]
    fn reads_split_into_data_in_with_status_in_the_last() {
        let outcome = Outcome {
            status: status::GOOD,
            sense: None,
            data: vec![1; 2048],
        };
        let pdus = response_pdus(0, 7, &read10(4), true, 2048, outcome, &params(1024));
        assert_eq!(pdus.len(), 2);
        match &pdus[1].0 {
            Bhs::DataIn {
                status,
                buffer_offset,
                data_sn,
                final_,
                ..
            } => {
                assert_eq!(*status, Some(0));
                assert_eq!((*buffer_offset, *data_sn, *final_), (1024, 1, true));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn residuals_follow_the_expected_length() {
        let outcome = || Outcome {
            status: status::GOOD,
            sense: None,
            data: vec![1; 512],
        };
        let pdus = response_pdus(0, 7, &read10(1), true, 200, outcome(), &params(8192));
        assert!(matches!(
            pdus[0].0,
            Bhs::DataIn {
                overflow: true,
                residual: 312,
                ..
            }
        ));
        assert_eq!(pdus[0].1.len(), 200);
        let pdus = response_pdus(0, 7, &read10(1), true, 10000, outcome(), &params(8192));
        assert!(matches!(
            pdus[0].0,
            Bhs::DataIn {
                underflow: true,
                residual: 9488,
                ..
            }
        ));
        let pdus = response_pdus(0, 7, &read10(1), false, 0, outcome(), &params(8192));
        assert!(matches!(
            pdus[0].0,
            Bhs::ScsiResponse {
                overflow: true,
                residual: 512,
                ..
            }
        ));
    }

    #[test]
    fn check_condition_carries_sense_in_a_scsi_response() {
        let pdus = response_pdus(
            0,
            7,
            &read10(1),
            true,
            512,
            Outcome::check(Sense::LBA_OUT_OF_RANGE),
            &params(8192),
        );
        assert_eq!(pdus.len(), 1);
        assert!(matches!(pdus[0].0, Bhs::ScsiResponse { status: 2, .. }));
        assert_eq!(&pdus[0].1[..2], &[0, 18]);
        assert_eq!(
            Sense::decode(&pdus[0].1[2..]),
            Some(Sense::LBA_OUT_OF_RANGE)
        );
    }

    #[test]
    fn write_residuals_compare_cdb_and_edtl() {
        let mut w = [0u8; 16];
        w[0] = op::WRITE_10;
        w[8] = 2;
        let pdus = response_pdus(
            0,
            1,
            &w,
            false,
            512,
            Outcome::check(Sense::INVALID_FIELD_IN_INFORMATION_UNIT),
            &params(8192),
        );
        assert!(matches!(
            pdus[0].0,
            Bhs::ScsiResponse {
                overflow: true,
                residual: 512,
                ..
            }
        ));
    }

    #[test]
    fn iqn_names() {
        assert_eq!(iqn("sbd.img"), "iqn.2026-11.org.tandem:sbd.img");
        let s = IscsiServer::new(Auth::default());
        assert!(matches!(
            s.add_target("bad name", Arc::new(NoVolume)),
            Err(ServerError::BadName { .. })
        ));
    }

    /// A minimal initiator over the crate's own codec, for driving the server in tests.
    struct Initiator {
        stream: TcpStream,
        buf: BytesMut,
        digests: Digests,
        cmd_sn: u32,
    }

    impl Initiator {
        async fn send(&mut self, bhs: Bhs, data: &[u8]) {
            let mut out = Vec::new();
            pdu::encode_frame(&mut out, &bhs, data, self.digests);
            self.stream.write_all(&out).await.unwrap();
        }

        async fn recv(&mut self) -> (Bhs, Bytes) {
            loop {
                if let Some(f) = pdu::decode_frame(&mut self.buf, self.digests, 1 << 24).unwrap() {
                    assert!(!f.data_digest_error);
                    let mut raw = f.bhs;
                    raw[4..8].fill(0);
                    return (Bhs::decode(&raw).unwrap(), f.data);
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "the target closed the connection");
            }
        }

        async fn login(port: u16, keys: &[(&str, &str)]) -> (Initiator, Vec<(String, String)>) {
            let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut i = Initiator {
                stream,
                buf: BytesMut::new(),
                digests: Digests::default(),
                cmd_sn: 1,
            };
            let pairs: Vec<(String, String)> = keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            i.send(
                Bhs::LoginRequest {
                    transit: true,
                    cont: false,
                    csg: 1,
                    nsg: 3,
                    version_max: 0,
                    version_min: 0,
                    isid: [0x80, 0, 0, 0, 0, 9],
                    tsih: 0,
                    itt: 0,
                    cid: 0,
                    cmd_sn: 1,
                    exp_stat_sn: 0,
                },
                &text::encode(&pairs),
            )
            .await;
            let (bhs, data) = i.recv().await;
            let Bhs::LoginResponse {
                transit,
                status_class,
                tsih,
                ..
            } = bhs
            else {
                panic!("{bhs:?}");
            };
            assert_eq!(status_class, 0);
            assert!(transit && tsih != 0);
            (i, text::parse(&data).unwrap())
        }

        fn command(&mut self, itt: u32, cdb: &[u8], read: bool, edtl: u32, final_: bool) -> Bhs {
            let mut c = [0u8; 16];
            c[..cdb.len()].copy_from_slice(cdb);
            let cmd_sn = self.cmd_sn;
            self.cmd_sn += 1;
            Bhs::ScsiCommand {
                immediate: false,
                final_,
                read,
                write: !read && edtl > 0,
                attr: 1,
                lun: 0,
                itt,
                expected_length: edtl,
                cmd_sn,
                exp_stat_sn: 0,
                cdb: c,
            }
        }
    }

    #[tokio::test]
    async fn digests_r2t_bursts_and_data_in_sequences_against_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let volume = crate::volume::FileVolume::open(&path, false).unwrap();
        let server = IscsiServer::new(Auth::default());
        let iqn = server.add_target("disk.img", Arc::new(volume)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = server.serve_tcp(listener);

        let (mut i, keys) = Initiator::login(
            port,
            &[
                ("InitiatorName", "iqn.2026-11.org.tandem:test"),
                ("TargetName", &iqn),
                ("HeaderDigest", "CRC32C"),
                ("DataDigest", "CRC32C"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "No"),
                ("MaxBurstLength", "16384"),
                ("FirstBurstLength", "8192"),
                ("MaxRecvDataSegmentLength", "4096"),
            ],
        )
        .await;
        let get = |k: &str| keys.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("HeaderDigest"), "CRC32C");
        assert_eq!(get("DataDigest"), "CRC32C");
        assert_eq!(get("InitialR2T"), "Yes");
        i.digests = Digests {
            header: true,
            data: true,
        };

        // WRITE(10) of 64 KiB at LBA 8: no immediate or unsolicited data, so the target asks
        // for it in bursts of MaxBurstLength, one R2T at a time.
        let payload: Vec<u8> = (0..65536u32).map(|n| (n * 7 % 251) as u8).collect();
        let cmd = i.command(
            0x10,
            &[0x2a, 0, 0, 0, 0, 8, 0, 0, 128, 0],
            false,
            65536,
            true,
        );
        i.send(cmd, &[]).await;
        let mut received = 0u32;
        let mut r2ts = 0;
        loop {
            let (bhs, data) = i.recv().await;
            match bhs {
                Bhs::R2t {
                    itt,
                    ttt,
                    r2t_sn,
                    buffer_offset,
                    desired_length,
                    ..
                } => {
                    assert_eq!((itt, r2t_sn, buffer_offset), (0x10, r2ts, received));
                    assert_eq!(desired_length, 16384);
                    r2ts += 1;
                    // Data-Out PDUs of at most our MaxRecvDataSegmentLength (262144): send
                    // the burst as four 4 KiB PDUs.
                    for (n, chunk) in payload[buffer_offset as usize..][..desired_length as usize]
                        .chunks(4096)
                        .enumerate()
                    {
                        let n = u32::try_from(n).unwrap();
                        i.send(
                            Bhs::DataOut {
                                final_: n == 3,
                                lun: 0,
                                itt: 0x10,
                                ttt,
                                exp_stat_sn: 0,
                                data_sn: n,
                                buffer_offset: buffer_offset + n * 4096,
                            },
                            chunk,
                        )
                        .await;
                    }
                    received += desired_length;
                }
                Bhs::ScsiResponse { itt, status, .. } => {
                    assert_eq!((itt, status), (0x10, 0), "{data:?}");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((r2ts, received), (4, 65536));

        // READ(10) of the same 64 KiB: Data-In PDUs of at most the initiator's 4096 bytes, F at
        // every MaxBurstLength, status in the last one.
        let cmd = i.command(
            0x11,
            &[0x28, 0, 0, 0, 0, 8, 0, 0, 128, 0],
            true,
            65536,
            true,
        );
        i.send(cmd, &[]).await;
        let mut back = Vec::new();
        let mut finals = 0;
        loop {
            let (bhs, data) = i.recv().await;
            let Bhs::DataIn {
                final_,
                status,
                data_sn,
                buffer_offset,
                ..
            } = bhs
            else {
                panic!("{bhs:?}");
            };
            assert!(data.len() <= 4096);
            assert_eq!(buffer_offset as usize, back.len());
            assert_eq!(data_sn as usize, back.len() / 4096);
            back.extend_from_slice(&data);
            finals += usize::from(final_);
            if let Some(s) = status {
                assert_eq!(s, 0);
                break;
            }
        }
        assert_eq!(back, payload);
        assert_eq!(finals, 4, "one F per MaxBurstLength sequence");

        // A NOP-Out ping is echoed with its data.
        let cmd_sn = i.cmd_sn;
        i.send(
            Bhs::NopOut {
                immediate: true,
                lun: 0,
                itt: 0x12,
                ttt: NO_TAG,
                cmd_sn,
                exp_stat_sn: 0,
            },
            b"ping",
        )
        .await;
        let (bhs, data) = i.recv().await;
        assert!(matches!(bhs, Bhs::NopIn { itt: 0x12, .. }), "{bhs:?}");
        assert_eq!(&data[..], b"ping");

        // Logout.
        let cmd_sn = i.cmd_sn;
        i.send(
            Bhs::LogoutRequest {
                immediate: true,
                reason: 0,
                itt: 0x13,
                cid: 0,
                cmd_sn,
                exp_stat_sn: 0,
            },
            &[],
        )
        .await;
        let (bhs, _) = i.recv().await;
        assert!(
            matches!(bhs, Bhs::LogoutResponse { response: 0, .. }),
            "{bhs:?}"
        );
        server.shutdown(Duration::from_secs(5)).await;
        task.await.unwrap();
    }

    #[tokio::test]
    async fn removing_a_target_closes_its_sessions_and_refuses_new_logins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let volume = crate::volume::FileVolume::open(&path, false).unwrap();
        let server = IscsiServer::new(Auth::default());
        let iqn = server.add_target("r0", Arc::new(volume)).unwrap();
        assert_eq!(iqn, "iqn.2026-11.org.tandem:r0");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = server.serve_tcp(listener);
        let keys = [
            ("InitiatorName", "iqn.2026-11.org.tandem:test"),
            ("TargetName", iqn.as_str()),
        ];
        let (mut i, _) = Initiator::login(port, &keys).await;
        let tur = i.command(1, &[0, 0, 0, 0, 0, 0], false, 0, true);
        i.send(tur, &[]).await;
        let (bhs, _) = i.recv().await;
        assert!(
            matches!(bhs, Bhs::ScsiResponse { status: 0, .. }),
            "{bhs:?}"
        );

        server.remove_target("r0").unwrap();
        assert!(server.target_names().is_empty());
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match i.stream.read_buf(&mut i.buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the session of a removed target must end");

        // A new login names a target that no longer exists: status class 2, detail 3.
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let pairs: Vec<(String, String)> = keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut out = Vec::new();
        pdu::encode_frame(
            &mut out,
            &Bhs::LoginRequest {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_min: 0,
                isid: [0x80, 0, 0, 0, 0, 10],
                tsih: 0,
                itt: 0,
                cid: 0,
                cmd_sn: 1,
                exp_stat_sn: 0,
            },
            &text::encode(&pairs),
            Digests::default(),
        );
        stream.write_all(&out).await.unwrap();
        let mut buf = BytesMut::new();
        let frame = loop {
            if let Some(f) = pdu::decode_frame(&mut buf, Digests::default(), 1 << 16).unwrap() {
                break f;
            }
            assert!(stream.read_buf(&mut buf).await.unwrap() > 0);
        };
        let mut raw = frame.bhs;
        raw[4..8].fill(0);
        assert!(matches!(
            Bhs::decode(&raw).unwrap(),
            Bhs::LoginResponse {
                status_class: 2,
                status_detail: 3,
                ..
            }
        ));
        server.shutdown(Duration::from_secs(5)).await;
        task.await.unwrap();
    }

    struct NoVolume;
    impl Volume for NoVolume {
        fn size_bytes(&self) -> u64 {
            0
        }
        fn access(&self) -> crate::volume::Access {
            crate::volume::Access::ReadOnly
        }
        fn capabilities(&self) -> crate::volume::Capabilities {
            crate::volume::Capabilities {
                trim: false,
                write_zeroes: false,
                fast_zero: false,
                block_status: false,
                multi_conn: false,
            }
        }
        fn read(&self, _: u64, _: u32) -> crate::volume::VolumeFuture<Vec<u8>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn write(&self, _: u64, _: Bytes, _: bool) -> crate::volume::VolumeFuture<()> {
            Box::pin(async { Err(crate::volume::VolumeError::ReadOnly) })
        }
        fn flush(&self) -> crate::volume::VolumeFuture<()> {
            Box::pin(async { Ok(()) })
        }
        fn trim(&self, _: u64, _: u64, _: bool) -> crate::volume::VolumeFuture<()> {
            Box::pin(async { Ok(()) })
        }
        fn write_zeroes(
            &self,
            _: u64,
            _: u64,
            _: crate::volume::ZeroFlags,
        ) -> crate::volume::VolumeFuture<()> {
            Box::pin(async { Err(crate::volume::VolumeError::ReadOnly) })
        }
        fn block_status(
            &self,
            _: u64,
            _: u64,
            _: usize,
        ) -> crate::volume::VolumeFuture<Vec<crate::volume::Extent>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }
}
