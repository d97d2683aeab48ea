//! The NBD server driver on tokio: the export table, the listeners and the connections.
//!
//! One [`NbdServer`] owns the export table and publishes it as an immutable snapshot through a
//! `watch` channel; listeners and connections read snapshots and never share mutable state.
//! A connection negotiates with the pure [`Negotiation`], then runs:
//! - a reader (the connection task itself) that decodes requests, checks them with
//!   [`check_request`] and spawns one task per request, after taking permits that bound the
//!   requests and bytes in flight (so a client that does not read its replies stops being read);
//! - a writer task that sends each finished reply whole, in completion order (out of order
//!   with respect to the requests), batching replies that are ready together into one flush.
//!
//! A request that breaks framing (bad magic, a WRITE over the payload limit) ends the
//! connection after the requests in flight are answered; everything else gets the protocol's
//! error value. When an export is removed or refused, or the server shuts down, the next
//! requests get `NBD_ESHUTDOWN` and the connection closes once in-flight requests are answered.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::handshake::{decode_client_flags, decode_option, encode_greeting};
use super::negotiate::{CloseReason, ExportView, Exports, Negotiation, Outcome};
use super::transmission::{
    check_request, decode_request, decode_request_header, encode_chunk, encode_offset_data_prefix,
    encode_simple_reply, Action, Chunk, Descriptor, Session, REQUEST_HEADER_BYTES,
};
use super::{
    handshake_flags, state, transmission_flags as tf, Decoded, Errno, MAX_BLOCK_STATUS_EXTENTS,
    MAX_STRING_BYTES, REPLY_FLAG_DONE,
};
use crate::aligned::{self, AlignedBuf};
use crate::volume::{Access, Segment, Volume, VolumeError, ZeroFlags};

/// The most connections served at once (all exports, all listeners).
pub const MAX_CONNECTIONS: usize = 256;
/// The most requests in flight on one connection.
pub const MAX_IN_FLIGHT_REQUESTS: usize = 256;
/// The most payload bytes (WRITE data and READ lengths) in flight on one connection.
pub const MAX_IN_FLIGHT_BYTES: usize = 128 << 20;
/// Granularity of the in-flight byte accounting.
const IN_FLIGHT_UNIT_BYTES: usize = 4096;
/// Time a client has to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Replies queued to the writer before request tasks wait.
const REPLY_QUEUE: usize = MAX_IN_FLIGHT_REQUESTS;
/// Buffer of the socket writer: headers and small replies are batched into one send.
const WRITE_BUFFER_BYTES: usize = 256 << 10;
/// The least free space kept in the read buffer before reading, so that several small requests
/// arrive with one read.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Warnings a client can trigger (refused connections, protocol violations) are logged at most
/// once per this interval per server; the others are counted and reported with the next one.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the library API.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An export of that name is already served.
    #[error("an export named {0:?} is already served; stop it first or choose another name")]
    Exists(String),
    /// No export of that name.
    #[error("no export named {0:?}")]
    NotFound(String),
    /// The name cannot be an NBD export name.
    #[error("{name:?} cannot be an NBD export name: {why}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        why: &'static str,
    },
    /// A socket could not be set up.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The address or path.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct Export {
    volume: Arc<dyn Volume>,
    mode: Access,
    description: String,
    connections: Arc<AtomicUsize>,
}

impl Export {
    /// The stricter of the volume's own access and the mode the operator set.
    fn access(&self) -> Access {
        match (self.volume.access(), &self.mode) {
            (Access::Refused(why), _) => Access::Refused(why),
            (_, Access::Refused(why)) => Access::Refused(why.clone()),
            (Access::ReadOnly, _) | (_, Access::ReadOnly) => Access::ReadOnly,
            (Access::ReadWrite, Access::ReadWrite) => Access::ReadWrite,
        }
    }

    fn view(&self, name: &str) -> ExportView {
        let access = self.access();
        let caps = self.volume.capabilities();
        let mut flags = tf::HAS_FLAGS | tf::SEND_FLUSH | tf::SEND_FUA;
        if caps.multi_conn {
            flags |= tf::CAN_MULTI_CONN;
        }
        if access == Access::ReadOnly {
            flags |= tf::READ_ONLY;
        } else {
            if caps.trim {
                flags |= tf::SEND_TRIM;
            }
            if caps.write_zeroes {
                flags |= tf::SEND_WRITE_ZEROES | tf::SEND_FAST_ZERO;
            }
        }
        ExportView {
            name: name.to_string(),
            description: self.description.clone(),
            size_bytes: self.volume.size_bytes(),
            flags,
            refusal: match access {
                Access::Refused(why) => Some(why),
                _ => None,
            },
            min_block_bytes: self.volume.min_block_bytes(),
        }
    }
}

type Table = Arc<BTreeMap<String, Export>>;

struct Snapshot<'a>(&'a Table);

impl Exports for Snapshot<'_> {
    fn lookup(&self, name: &str) -> Option<ExportView> {
        if name.is_empty() && self.0.len() == 1 {
            let (n, e) = self.0.iter().next().expect("one export");
            return Some(e.view(n));
        }
        self.0.get(name).map(|e| e.view(name))
    }

    fn list(&self) -> Vec<ExportView> {
        self.0.iter().map(|(n, e)| e.view(n)).collect()
    }
}

/// An NBD server: a set of named exports served on any number of listeners.
pub struct NbdServer {
    exports: watch::Sender<Table>,
    shutdown: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    warnings: Arc<RateLimit>,
}

impl Default for NbdServer {
    fn default() -> Self {
        NbdServer::new()
    }
}

impl NbdServer {
    /// A server with no exports and no listeners.
    pub fn new() -> NbdServer {
        NbdServer {
            exports: watch::channel(Arc::new(BTreeMap::new())).0,
            shutdown: watch::channel(false).0,
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            warnings: Arc::new(RateLimit::new()),
        }
    }

    /// Starts serving `volume` as `name`, read-write unless the volume says otherwise.
    pub fn add_export(
        &self,
        name: &str,
        volume: Arc<dyn Volume>,
        description: &str,
    ) -> Result<(), ServerError> {
        let bad = |why| ServerError::BadName {
            name: name.to_string(),
            why,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_STRING_BYTES {
            return Err(bad("it is longer than 4096 bytes"));
        }
        if name.contains('\0') {
            return Err(bad("it contains NUL"));
        }
        if self.exports.borrow().contains_key(name) {
            return Err(ServerError::Exists(name.to_string()));
        }
        let export = Export {
            volume,
            mode: Access::ReadWrite,
            description: description.to_string(),
            connections: Arc::new(AtomicUsize::new(0)),
        };
        self.exports.send_modify(|t| {
            Arc::make_mut(t).insert(name.to_string(), export);
        });
        info!(export = name, "NBD export started");
        Ok(())
    }

    /// Stops serving `name`: new clients no longer see it, and connected clients get
    /// `NBD_ESHUTDOWN` on their next request and are disconnected.
    pub fn remove_export(&self, name: &str) -> Result<(), ServerError> {
        let mut found = false;
        self.exports.send_modify(|t| {
            found = Arc::make_mut(t).remove(name).is_some();
        });
        if found {
            info!(export = name, "NBD export stopped");
            Ok(())
        } else {
            Err(ServerError::NotFound(name.to_string()))
        }
    }

    /// Sets how `name` may be used: `ReadOnly` makes writes fail with `NBD_EPERM`, and
    /// `Refused(reason)` refuses new clients with the reason and disconnects connected ones.
    pub fn set_access(&self, name: &str, mode: Access) -> Result<(), ServerError> {
        let mut found = false;
        self.exports.send_modify(|t| {
            if let Some(e) = Arc::make_mut(t).get_mut(name) {
                e.mode = mode.clone();
                found = true;
            }
        });
        if found {
            info!(export = name, ?mode, "NBD export access changed");
            Ok(())
        } else {
            Err(ServerError::NotFound(name.to_string()))
        }
    }

    /// Names of the exports served.
    pub fn export_names(&self) -> Vec<String> {
        self.exports.borrow().keys().cloned().collect()
    }

    /// Clients in the transmission phase on `name` (an export in use cannot be demoted).
    pub fn connections(&self, name: &str) -> usize {
        self.exports
            .borrow()
            .get(name)
            .map_or(0, |e| e.connections.load(Ordering::Acquire))
    }

    /// Serves on a bound Unix socket until [`NbdServer::shutdown`].
    pub fn serve_unix(&self, listener: UnixListener) -> JoinHandle<()> {
        let ctx = self.context();
        tokio::spawn(async move {
            let mut shutdown = ctx.shutdown.clone();
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => {
                            let (rd, wr) = s.into_split();
                            ctx.spawn(rd, wr, "unix".to_string());
                        }
                        Err(e) => {
                            warn!("accept on the NBD Unix socket failed: {e}");
                            tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                        }
                    },
                    _ = stopped(&mut shutdown) => break,
                }
            }
        })
    }

    /// Serves on a bound TCP listener until [`NbdServer::shutdown`].
    pub fn serve_tcp(&self, listener: TcpListener) -> JoinHandle<()> {
        let ctx = self.context();
        tokio::spawn(async move {
            let mut shutdown = ctx.shutdown.clone();
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, peer)) => {
                            // Replies are written whole; small ones must not wait for Nagle.
                            let _ = s.set_nodelay(true);
                            let (rd, wr) = s.into_split();
                            ctx.spawn(rd, wr, peer.to_string());
                        }
                        Err(e) => {
                            warn!("accept on the NBD TCP socket failed: {e}");
                            tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                        }
                    },
                    _ = stopped(&mut shutdown) => break,
                }
            }
        })
    }

    /// Stops accepting, answers requests in flight, closes every connection, and waits (at
    /// most `timeout`) until they are closed.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shutdown.send_replace(true);
        let all = u32::try_from(MAX_CONNECTIONS).expect("small");
        let _ = tokio::time::timeout(timeout, self.connections.acquire_many(all)).await;
    }

    fn context(&self) -> Context {
        Context {
            exports: self.exports.subscribe(),
            shutdown: self.shutdown.subscribe(),
            connections: Arc::clone(&self.connections),
            warnings: Arc::clone(&self.warnings),
        }
    }
}

/// Binds the Unix socket at `path`, replacing a stale socket file nobody listens on, and
/// refusing one that a running server answers on.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Listen {
        what: path.display().to_string(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another server is listening there; stop it or use another --run-dir",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    UnixListener::bind(path).map_err(err)
}

/// Why a connection ended other than by `NBD_OPT_ABORT`, `NBD_CMD_DISC` or a clean close.
#[derive(Debug)]
enum End {
    /// The client's socket failed or closed mid-message; clients do this, so it is logged at
    /// debug level.
    Gone(String),
    /// The client broke the protocol, or the server ended the session; logged as a warning.
    Ended(String),
}

#[derive(Clone)]
struct Context {
    exports: watch::Receiver<Table>,
    shutdown: watch::Receiver<bool>,
    connections: Arc<Semaphore>,
    warnings: Arc<RateLimit>,
}

/// Lets a log line through at most once per [`WARN_INTERVAL`], counting the ones it holds back.
struct RateLimit {
    start: Instant,
    /// Milliseconds since `start` of the last line let through, plus one (0: never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    fn new() -> RateLimit {
        RateLimit {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when this line may be logged now.
    fn allow(&self) -> Option<u64> {
        let now_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.allow_at(now_ms)
    }

    /// [`RateLimit::allow`] at `now_ms` milliseconds after `start`.
    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let stamp = now_ms.saturating_add(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(WARN_INTERVAL.as_millis()).expect("small");
        let due = last == 0 || stamp.saturating_sub(last) >= interval;
        if due
            && self
                .last_ms
                .compare_exchange(last, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Context {
    fn spawn<R, W>(&self, rd: R, wr: W, peer: String)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            if let Some(suppressed) = self.warnings.allow() {
                warn!(%peer, suppressed, "refusing NBD connection: {MAX_CONNECTIONS} connections already open");
            }
            return;
        };
        let ctx = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            debug!(%peer, "NBD connection");
            let warnings = Arc::clone(&ctx.warnings);
            match ctx.connection(rd, wr, &peer).await {
                Ok(()) => debug!(%peer, "NBD connection closed"),
                Err(End::Gone(e)) => debug!(%peer, "NBD client went away: {e}"),
                Err(End::Ended(e)) => match warnings.allow() {
                    Some(suppressed) => warn!(%peer, suppressed, "NBD connection ended: {e}"),
                    None => debug!(%peer, "NBD connection ended: {e}"),
                },
            }
        });
    }

    async fn connection<R, W>(mut self, mut rd: R, mut wr: W, peer: &str) -> Result<(), End>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let negotiated = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            self.handshake(&mut rd, &mut wr, &mut buf),
        )
        .await
        .map_err(|_| {
            End::Ended(format!(
                "handshake not finished within {HANDSHAKE_TIMEOUT:?}"
            ))
        })??;
        let Some((name, session)) = negotiated else {
            return Ok(());
        };
        let export = self.exports.borrow().get(&name).cloned();
        let Some(export) = export else {
            return Err(End::Ended(format!(
                "export {name:?} went away during the handshake"
            )));
        };
        export.connections.fetch_add(1, Ordering::AcqRel);
        info!(%peer, export = %name, structured = session.structured, "NBD client connected");
        let result = self
            .transmission(rd, wr, buf, &name, &export, session)
            .await;
        export.connections.fetch_sub(1, Ordering::AcqRel);
        info!(%peer, export = %name, "NBD client disconnected");
        result
    }

    /// Runs the handshake; `None` when the client went away or aborted.
    async fn handshake<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        buf: &mut BytesMut,
    ) -> Result<Option<(String, Session)>, End>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let flags = handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES;
        wr.write_all(&encode_greeting(flags))
            .await
            .map_err(|e| End::Gone(format!("sending the greeting: {e}")))?;
        wr.flush().await.map_err(|e| End::Gone(e.to_string()))?;
        let client_flags = loop {
            match decode_client_flags(buf) {
                Decoded::Frame(f, n) => {
                    buf.advance(n);
                    break f;
                }
                Decoded::NeedMore(n) => {
                    if !fill(rd, buf, n).await? {
                        return Ok(None);
                    }
                }
            }
        };
        let mut negotiation =
            Negotiation::new(client_flags).map_err(|e| End::Ended(e.to_string()))?;
        loop {
            let option = match decode_option(buf) {
                Ok(Decoded::Frame(o, n)) => {
                    buf.advance(n);
                    o
                }
                Ok(Decoded::NeedMore(n)) => {
                    if !fill(rd, buf, n).await? {
                        return Ok(None);
                    }
                    continue;
                }
                Err(e) => return Err(End::Ended(e.to_string())),
            };
            debug!(option = option.code(), "NBD option");
            let table = self.exports.borrow().clone();
            let step = if *self.shutdown.borrow() {
                shutting_down_step(&option)
            } else {
                negotiation.handle(option, &Snapshot(&table))
            };
            wr.write_all(&step.reply)
                .await
                .map_err(|e| End::Gone(format!("sending an option reply: {e}")))?;
            wr.flush().await.map_err(|e| End::Gone(e.to_string()))?;
            match step.outcome {
                Outcome::Continue => {}
                Outcome::Transmission { export, session } => return Ok(Some((export, session))),
                Outcome::Close(CloseReason::Abort) => return Ok(None),
                Outcome::Close(why) => {
                    return Err(End::Ended(format!("closing during negotiation: {why:?}")))
                }
            }
        }
    }

    async fn transmission<R, W>(
        &mut self,
        mut rd: R,
        wr: W,
        mut buf: BytesMut,
        name: &str,
        export: &Export,
        session: Session,
    ) -> Result<(), End>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Vec<Bytes>>(REPLY_QUEUE);
        let writer = tokio::spawn(writer(wr, rx));
        let requests = Arc::new(Semaphore::new(MAX_IN_FLIGHT_REQUESTS));
        let units = MAX_IN_FLIGHT_BYTES / IN_FLIGHT_UNIT_BYTES;
        let bytes = Arc::new(Semaphore::new(units));
        let mut export = export.clone();
        let mut shutdown = self.shutdown.clone();
        let mut ending: Option<End> = None;
        let mut read_only_now = false;
        loop {
            let request = match decode_request(&buf) {
                Err(e) => {
                    ending = Some(End::Ended(format!(
                        "protocol violation, disconnecting: {e}"
                    )));
                    break;
                }
                Ok(Decoded::NeedMore(n)) => match decode_request_header(&buf) {
                    // A WRITE of whole blocks: its payload goes from the socket into an
                    // aligned buffer, which an O_DIRECT disk writes as it is.
                    Ok(Some(r)) if aligned::worth_aligning(r.payload_bytes()) => {
                        tokio::select! {
                            p = read_payload(&mut rd, &mut buf, r.payload_bytes()) => match p {
                                Ok(payload) => (r, payload),
                                Err(e) => { ending = Some(e); break; }
                            },
                            _ = stopped(&mut shutdown) => break,
                        }
                    }
                    _ => {
                        tokio::select! {
                            r = fill(&mut rd, &mut buf, n) => match r {
                                Ok(true) => continue,
                                Ok(false) => break,
                                Err(e) => { ending = Some(e); break; }
                            },
                            _ = stopped(&mut shutdown) => break,
                        }
                    }
                },
                Ok(Decoded::Frame(r, n)) => {
                    let mut frame = buf.split_to(n);
                    frame.advance(REQUEST_HEADER_BYTES);
                    (r, frame.freeze())
                }
            };
            let (request, payload) = request;
            let cookie = request.cookie;
            // Pick up changes of the export (removed, refused, made read-only).
            if self.exports.has_changed().unwrap_or(true) {
                match self.exports.borrow_and_update().get(name) {
                    Some(e) => {
                        export = e.clone();
                        read_only_now = export.access() == Access::ReadOnly;
                    }
                    None => export.mode = Access::Refused(format!("export {name} was stopped")),
                }
            }
            if let Access::Refused(why) = export.access() {
                let reply = error_reply(session.structured, cookie, Errno::Shutdown, &why);
                let _ = tx.send(reply).await;
                ending = Some(End::Ended(format!("export refused: {why}")));
                break;
            }
            if *shutdown.borrow() {
                let reply = error_reply(
                    session.structured,
                    cookie,
                    Errno::Shutdown,
                    "server shutting down",
                );
                let _ = tx.send(reply).await;
                break;
            }
            let action = match check_request(&session, &request) {
                Ok(Action::Disconnect) => break,
                Ok(a) if read_only_now && writes(&a) => Err(Errno::Perm),
                other => other,
            };
            let action = match action {
                Ok(a) => a,
                Err(errno) => {
                    debug!(?request, ?errno, "NBD request refused");
                    let why = format!("{:?} refused: {errno:?}", request.command);
                    if tx
                        .send(error_reply(session.structured, cookie, errno, &why))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
            };
            let cost = match action {
                Action::Read { length, .. } => length as usize,
                _ => payload.len(),
            };
            let units = u32::try_from(cost.div_ceil(IN_FLIGHT_UNIT_BYTES).max(1))
                .expect("bounded by the payload limit");
            let permits = (
                Arc::clone(&requests).acquire_owned().await,
                Arc::clone(&bytes).acquire_many_owned(units).await,
            );
            let (Ok(p1), Ok(p2)) = permits else {
                break;
            };
            let volume = Arc::clone(&export.volume);
            let tx = tx.clone();
            let structured = session.structured;
            tokio::spawn(async move {
                let reply = execute(volume.as_ref(), structured, cookie, action, payload).await;
                let _ = tx.send(reply).await;
                drop((p1, p2));
            });
        }
        // Answer what is in flight, then close: the writer ends when every sender is gone.
        drop(tx);
        let written = writer.await.map_err(|e| End::Ended(e.to_string()))?;
        match (ending, written) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    }
}

fn shutting_down_step(option: &super::handshake::ClientOption) -> super::negotiate::Step {
    use super::handshake::{encode_option_reply, ClientOption, OptionReply};
    let mut reply = Vec::new();
    let (r, outcome) = match option {
        ClientOption::Abort => (OptionReply::Ack, Outcome::Close(CloseReason::Abort)),
        _ => (
            OptionReply::error(super::rep::ERR_SHUTDOWN, "the server is shutting down"),
            Outcome::Continue,
        ),
    };
    encode_option_reply(option.code(), &r, &mut reply);
    super::negotiate::Step { reply, outcome }
}

fn writes(a: &Action) -> bool {
    matches!(
        a,
        Action::Write { .. } | Action::Trim { .. } | Action::WriteZeroes { .. }
    )
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Reads into `buf` until it holds `need` bytes; false on a clean end of stream.
async fn fill<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    need: usize,
) -> Result<bool, End> {
    while buf.len() < need {
        buf.reserve((need - buf.len()).max(READ_CHUNK_BYTES));
        match rd.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(false),
            Ok(0) => {
                return Err(End::Gone(format!(
                    "closed the connection mid-message ({} of {need} bytes)",
                    buf.len()
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(End::Gone(format!("reading from the client: {e}"))),
        }
    }
    Ok(true)
}

/// Takes the header of a WRITE off `buf` and reads its `len`-byte payload into an aligned
/// buffer: what `buf` already holds of it is copied, the rest is read in place.
async fn read_payload<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    len: usize,
) -> Result<Bytes, End> {
    let mut payload = AlignedBuf::with_capacity(len);
    payload.put_slice(&buf[REQUEST_HEADER_BYTES..]);
    buf.clear();
    payload.fill_from(rd).await.map_err(|e| {
        End::Gone(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("closed the connection in the middle of a write's payload ({e})")
        } else {
            format!("reading from the client: {e}")
        })
    })?;
    Ok(payload.freeze())
}

async fn writer<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> Result<(), End> {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, wr);
    while let Some(reply) = rx.recv().await {
        let mut next = Some(reply);
        while let Some(parts) = next.take() {
            for part in parts {
                w.write_all(&part)
                    .await
                    .map_err(|e| End::Gone(format!("sending a reply: {e}")))?;
            }
            next = rx.try_recv().ok();
        }
        w.flush()
            .await
            .map_err(|e| End::Gone(format!("sending a reply: {e}")))?;
    }
    let _ = w.shutdown().await;
    Ok(())
}

/// The protocol error for a volume error.
pub fn errno_of(e: &VolumeError) -> Errno {
    match e {
        VolumeError::Io { source, .. } | VolumeError::Open { source, .. } => {
            match source.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Errno::NoSpc,
                Some(libc::ENOMEM) => Errno::NoMem,
                Some(libc::EPERM | libc::EROFS | libc::EACCES) => Errno::Perm,
                _ => Errno::Io,
            }
        }
        VolumeError::OutOfRange { .. } => Errno::Inval,
        VolumeError::ReadOnly => Errno::Perm,
        VolumeError::Refused(_) => Errno::Shutdown,
        VolumeError::NotFast => Errno::NotSup,
    }
}

fn error_reply(structured: bool, cookie: u64, errno: Errno, message: &str) -> Vec<Bytes> {
    let mut b = Vec::with_capacity(32 + message.len());
    if structured {
        let chunk = Chunk::Error {
            errno,
            message: message.to_string(),
        };
        encode_chunk(true, cookie, &chunk, &mut b);
    } else {
        encode_simple_reply(Some(errno), cookie, &mut b);
    }
    vec![Bytes::from(b)]
}

fn ok_reply(cookie: u64) -> Vec<Bytes> {
    let mut b = Vec::with_capacity(16);
    encode_simple_reply(None, cookie, &mut b);
    vec![Bytes::from(b)]
}

/// Runs one checked request against the volume and builds its whole reply.
async fn execute(
    volume: &dyn Volume,
    structured: bool,
    cookie: u64,
    action: Action,
    payload: Bytes,
) -> Vec<Bytes> {
    let failed = |e: VolumeError| {
        let errno = errno_of(&e);
        debug!("NBD request failed: {e}");
        error_reply(structured, cookie, errno, &e.to_string())
    };
    match action {
        Action::Read { offset, length, df } => {
            if !structured {
                return match volume.read(offset, length).await {
                    Ok(data) => {
                        let mut head = Vec::with_capacity(16);
                        encode_simple_reply(None, cookie, &mut head);
                        vec![Bytes::from(head), Bytes::from(data)]
                    }
                    Err(e) => failed(e),
                };
            }
            let segments = if df || !volume.capabilities().block_status {
                volume
                    .read(offset, length)
                    .await
                    .map(|d| vec![Segment::Data(d)])
            } else {
                volume.read_sparse(offset, length).await
            };
            match segments {
                Ok(segments) => read_chunks(cookie, offset, segments),
                Err(e) => failed(e),
            }
        }
        Action::Write { offset, fua } => match volume.write(offset, payload, fua).await {
            Ok(()) => ok_reply(cookie),
            Err(e) => failed(e),
        },
        Action::Flush => match volume.flush().await {
            Ok(()) => ok_reply(cookie),
            Err(e) => failed(e),
        },
        Action::Trim {
            offset,
            length,
            fua,
        } => match volume.trim(offset, u64::from(length), fua).await {
            Ok(()) => ok_reply(cookie),
            Err(e) => failed(e),
        },
        Action::WriteZeroes {
            offset,
            length,
            no_hole,
            fast,
            fua,
        } => {
            let flags = ZeroFlags {
                may_trim: !no_hole,
                fast,
                fua,
            };
            match volume.write_zeroes(offset, u64::from(length), flags).await {
                Ok(()) => ok_reply(cookie),
                Err(e) => failed(e),
            }
        }
        Action::BlockStatus {
            offset,
            length,
            req_one,
            context_id,
        } => {
            let max = if req_one { 1 } else { MAX_BLOCK_STATUS_EXTENTS };
            let extents = if volume.capabilities().block_status {
                volume.block_status(offset, u64::from(length), max).await
            } else {
                Ok(vec![crate::volume::Extent {
                    length: u64::from(length),
                    hole: false,
                    zero: false,
                }])
            };
            match extents {
                Ok(extents) => {
                    let descriptors: Vec<Descriptor> = extents
                        .iter()
                        .filter(|e| e.length > 0)
                        .map(|e| Descriptor {
                            // Extents never exceed the request, whose length is 32 bits.
                            length: u32::try_from(e.length.min(u64::from(length)))
                                .expect("clamped to a u32"),
                            flags: if e.hole { state::HOLE } else { 0 }
                                | if e.zero { state::ZERO } else { 0 },
                        })
                        .collect();
                    if descriptors.is_empty() {
                        return error_reply(structured, cookie, Errno::Io, "no extents reported");
                    }
                    let mut b = Vec::with_capacity(24 + 8 * descriptors.len());
                    let chunk = Chunk::BlockStatus {
                        context_id,
                        descriptors,
                    };
                    encode_chunk(true, cookie, &chunk, &mut b);
                    vec![Bytes::from(b)]
                }
                Err(e) => failed(e),
            }
        }
        Action::Nothing => {
            if structured {
                let mut b = Vec::with_capacity(20);
                encode_chunk(true, cookie, &Chunk::None, &mut b);
                vec![Bytes::from(b)]
            } else {
                ok_reply(cookie)
            }
        }
        Action::Disconnect => Vec::new(),
    }
}

/// The chunks of a structured READ reply: one per segment, the last one marked DONE.
fn read_chunks(cookie: u64, offset: u64, segments: Vec<Segment>) -> Vec<Bytes> {
    let mut parts = Vec::with_capacity(segments.len() * 2 + 1);
    let last = segments.len().saturating_sub(1);
    let mut pos = offset;
    for (i, s) in segments.into_iter().enumerate() {
        let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
        match s {
            Segment::Data(d) if d.is_empty() => {}
            Segment::Data(d) => {
                let mut head = Vec::with_capacity(28);
                let n = u32::try_from(d.len()).expect("a read is at most 32 MiB");
                encode_offset_data_prefix(flags, cookie, pos, n, &mut head);
                pos += u64::from(n);
                parts.push(Bytes::from(head));
                parts.push(Bytes::from(d));
            }
            Segment::Hole(n) => {
                let mut b = Vec::with_capacity(32);
                let chunk = Chunk::OffsetHole {
                    offset: pos,
                    length: n,
                };
                encode_chunk(flags == REPLY_FLAG_DONE, cookie, &chunk, &mut b);
                pos += u64::from(n);
                parts.push(Bytes::from(b));
            }
        }
    }
    if parts.is_empty() {
        let mut b = Vec::with_capacity(20);
        encode_chunk(true, cookie, &Chunk::None, &mut b);
        parts.push(Bytes::from(b));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_line_through_per_interval() {
        let r = RateLimit::new();
        let step = u64::try_from(WARN_INTERVAL.as_millis()).unwrap();
        assert_eq!(r.allow_at(0), Some(0));
        assert_eq!(r.allow_at(1), None);
        assert_eq!(r.allow_at(step - 1), None);
        assert_eq!(r.allow_at(step), Some(2));
        assert_eq!(r.allow_at(step + 10), None);
        assert_eq!(r.allow_at(10 * step), Some(1));
        assert_eq!(r.allow_at(10 * step), None);
    }
}
