//! Connections to the peer: two TCP sockets (data and meta), their handshake, and the tasks
//! that move packets between the sockets and the resource's task.
//!
//! Handshake on each socket, both directions: [`Hello`] (version, resource, node names,
//! protocol, socket kind and a session id that pairs the two sockets), then, when a
//! `shared-secret` is configured, cram-hmac: each side sends a random challenge, answers the
//! peer's with HMAC(secret, challenge), checks the answer to its own and says `AuthOk`. A peer
//! that echoes our own challenge back is refused. Only then does the resource see the peer.
//!
//! The node whose replication address sorts lower dials; the other accepts. Both always listen
//! so either can be restarted first.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use target::aligned::{self, AlignedBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::HmacAlg;
use crate::wire::{self, Hello, Packet, SocketKind, CHALLENGE_BYTES, PROTOCOL_VERSION};

/// Each handshake step must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted data sockets wait this long for their meta socket.
const PAIRING_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many half-open (data without meta) connections are kept.
const MAX_PENDING_PAIRS: usize = 4;
/// Read buffer growth step.
const READ_CHUNK: usize = 256 * 1024;
/// At most this many packets go to the resource task in one message.
const MAX_PACKETS_PER_READ: usize = 1024;
/// A dropped connection still sends what was queued, then FIN, and reads (discarding) until
/// the peer closes too, for at most this long: closing with unread data would make the kernel
/// send RST, and the peer would lose what we sent last (e.g. the generations that tell it why
/// we disconnected).
const LINGER: Duration = Duration::from_secs(2);

/// Who we are and whom we expect.
#[derive(Debug, Clone)]
pub struct PeerParams {
    /// The resource.
    pub resource: String,
    /// This node.
    pub node: String,
    /// The peer node.
    pub peer_node: String,
    /// Protocol A/B/C as 0/1/2.
    pub protocol: u8,
    /// cram-hmac settings.
    pub secret: Option<(HmacAlg, String)>,
    /// Our replication address.
    pub local_addr: SocketAddr,
    /// The peer's.
    pub peer_addr: SocketAddr,
}

impl PeerParams {
    /// True when this node dials (its address sorts lower).
    pub fn dials(&self) -> bool {
        self.local_addr < self.peer_addr
    }
}

/// A connected, authenticated pair of sockets.
pub struct Established {
    data: (TcpStream, BytesMut),
    meta: (TcpStream, BytesMut),
}

/// What the connection tasks tell the resource.
#[derive(Debug)]
pub enum NetEvent {
    /// Packets arrived: everything one read from the socket completed, in order.
    Packets {
        /// Connection generation.
        gen: u64,
        /// The packets.
        packets: Vec<Packet>,
    },
    /// Data packets were written to the socket (protocol A's completion point).
    Sent {
        /// Generation.
        gen: u64,
        /// The writes' sequence numbers.
        seqs: Vec<u64>,
    },
    /// The connection failed.
    Lost {
        /// Generation.
        gen: u64,
        /// Why.
        reason: String,
    },
}

fn hmac(alg: HmacAlg, key: &[u8], msg: &[u8]) -> Vec<u8> {
    macro_rules! run {
        ($d:ty) => {{
            let mut m = <Hmac<$d>>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match alg {
        HmacAlg::Md5 => run!(md5::Md5),
        HmacAlg::Sha1 => run!(sha1::Sha1),
        HmacAlg::Sha256 => run!(sha2::Sha256),
        HmacAlg::Sha512 => run!(sha2::Sha512),
    }
}

/// Reads one packet.
pub async fn read_packet<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
) -> Result<Packet, String> {
    loop {
        // Bulk data still on its way goes straight from the socket into an aligned buffer,
        // which the backing disk then writes with O_DIRECT as it is.
        if let Ok(Some((head, data))) = wire::bulk_layout(buf) {
            if aligned::worth_aligning(data) && buf.len() < head + data {
                return read_bulk(stream, buf, head, data).await;
            }
        }
        match wire::decode(buf) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(format!("bad packet: {e}")),
        }
        buf.reserve(READ_CHUNK);
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the peer closed the connection".into());
        }
    }
}

/// Reads the rest of a frame whose head (`head` bytes) is in `buf` and whose `data` bytes go
/// into an aligned buffer: what `buf` already holds of them is copied, the rest is read in
/// place.
async fn read_bulk<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    head: usize,
    data: usize,
) -> Result<Packet, String> {
    let mut bulk = AlignedBuf::with_capacity(data);
    bulk.put_slice(&buf[head..]);
    buf.truncate(head);
    bulk.fill_from(stream).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "the peer closed the connection".to_string()
        } else {
            format!("read: {e}")
        }
    })?;
    let head = buf.split_to(head);
    wire::decode_bulk(&head, bulk.freeze()).map_err(|e| format!("bad packet: {e}"))
}

/// Reads at least one packet, and returns every whole packet that read brought (one message
/// to the resource task per read instead of one per packet).
async fn read_packets<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
) -> Result<Vec<Packet>, String> {
    let mut packets = vec![read_packet(stream, buf).await?];
    while packets.len() < MAX_PACKETS_PER_READ {
        match wire::decode(buf) {
            Ok(Some(p)) => packets.push(p),
            Ok(None) => break,
            // Reported by the next read_packet, after the good packets are delivered.
            Err(_) => break,
        }
    }
    Ok(packets)
}

/// Writes one packet (payloads of Data packets without copying them).
pub async fn write_packet<W: AsyncWriteExt + Unpin>(
    stream: &mut W,
    packet: &Packet,
) -> Result<(), String> {
    let mut head = BytesMut::with_capacity(64);
    let payload = wire::encode_head(packet, &mut head);
    stream
        .write_all(&head)
        .await
        .map_err(|e| format!("write: {e}"))?;
    if let Some(p) = payload {
        stream
            .write_all(&p)
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

async fn step<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, f)
        .await
        .map_err(|_| format!("{what}: timed out"))?
}

/// Runs the Hello and authentication exchange on one socket; returns the session id.
async fn handshake(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    p: &PeerParams,
    socket: Option<SocketKind>,
    session: u64,
) -> Result<(SocketKind, u64), String> {
    let ours = Hello {
        version: PROTOCOL_VERSION,
        socket: socket.unwrap_or(SocketKind::Data),
        session_id: session,
        resource: p.resource.clone(),
        node: p.node.clone(),
        protocol: p.protocol,
    };
    let theirs = if socket.is_some() {
        step("send hello", write_packet(stream, &Packet::Hello(ours))).await?;
        step("read hello", read_packet(stream, buf))
            .await
            .map_err(|e| {
                if e.contains("closed") || e.contains("reset") {
                    "the peer closed the connection before its Hello: it is StandAlone \
                     (see its status) or still connected to an earlier connection"
                        .to_string()
                } else {
                    e
                }
            })?
    } else {
        let theirs = step("read hello", read_packet(stream, buf)).await?;
        if let Packet::Hello(h) = &theirs {
            let echo = Hello {
                socket: h.socket,
                session_id: h.session_id,
                ..ours
            };
            step("send hello", write_packet(stream, &Packet::Hello(echo))).await?;
        }
        theirs
    };
    let Packet::Hello(h) = theirs else {
        return Err(format!(
            "expected Hello, got {}",
            wire::packet_name(&theirs)
        ));
    };
    if h.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} (mine is {PROTOCOL_VERSION})",
            h.version
        ));
    }
    if h.resource != p.resource {
        return Err(format!(
            "the peer serves resource '{}', not '{}'",
            h.resource, p.resource
        ));
    }
    if h.node != p.peer_node {
        return Err(format!(
            "the peer calls itself '{}', expected '{}'",
            h.node, p.peer_node
        ));
    }
    if h.protocol != p.protocol {
        return Err(format!(
            "the peer uses protocol {}, this node {}; both must use the same",
            ["A", "B", "C"][usize::from(h.protocol.min(2))],
            ["A", "B", "C"][usize::from(p.protocol.min(2))]
        ));
    }
    if let Some((alg, secret)) = &p.secret {
        let mut challenge = [0u8; CHALLENGE_BYTES];
        getrandom::fill(&mut challenge).map_err(|e| format!("random: {e}"))?;
        step(
            "send challenge",
            write_packet(stream, &Packet::AuthChallenge { challenge }),
        )
        .await?;
        let Packet::AuthChallenge { challenge: theirs } =
            step("read challenge", read_packet(stream, buf)).await?
        else {
            return Err("authentication failed: the peer has no shared-secret configured".into());
        };
        if theirs == challenge {
            return Err("authentication failed: the peer echoed our challenge".into());
        }
        let digest = hmac(*alg, secret.as_bytes(), &theirs);
        step(
            "send response",
            write_packet(stream, &Packet::AuthResponse { digest }),
        )
        .await?;
        let Packet::AuthResponse { digest } =
            step("read response", read_packet(stream, buf)).await?
        else {
            return Err("authentication failed: no response from the peer".into());
        };
        if digest != hmac(*alg, secret.as_bytes(), &challenge) {
            return Err("authentication failed: wrong shared-secret on the peer".into());
        }
        step("send auth ok", write_packet(stream, &Packet::AuthOk)).await?;
        match step("read auth ok", read_packet(stream, buf)).await? {
            Packet::AuthOk => {}
            other => {
                return Err(format!(
                    "authentication failed: the peer answered {}",
                    wire::packet_name(&other)
                ))
            }
        }
    }
    Ok((h.socket, h.session_id))
}

fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
}

/// Connects from our own replication address (so the peer can check who dials).
async fn connect_from(p: &PeerParams) -> Result<TcpStream, String> {
    let socket = if p.peer_addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(p.local_addr.ip(), 0))
        .map_err(|e| format!("bind {}: {e}", p.local_addr.ip()))?;
    let stream = step("connect", async {
        socket
            .connect(p.peer_addr)
            .await
            .map_err(|e| format!("connect {}: {e}", p.peer_addr))
    })
    .await?;
    tune(&stream);
    Ok(stream)
}

/// Dials the peer: data socket, then meta socket.
pub async fn dial(p: &PeerParams) -> Result<Established, String> {
    let mut session = [0u8; 8];
    getrandom::fill(&mut session).map_err(|e| format!("random: {e}"))?;
    let session = u64::from_be_bytes(session);
    let mut data = connect_from(p).await?;
    let mut data_buf = BytesMut::new();
    handshake(&mut data, &mut data_buf, p, Some(SocketKind::Data), session).await?;
    let mut meta = connect_from(p).await?;
    let mut meta_buf = BytesMut::new();
    handshake(&mut meta, &mut meta_buf, p, Some(SocketKind::Meta), session).await?;
    Ok(Established {
        data: (data, data_buf),
        meta: (meta, meta_buf),
    })
}

/// Accepts the peer's sockets forever, sending each authenticated pair to `out`.
///
/// While `accepting` is false (the resource is StandAlone or already connected) a connection
/// is closed before the handshake, so the dialing peer sees a refusal and backs off instead of
/// completing a handshake that would be dropped at once.
pub async fn listen(
    listener: TcpListener,
    p: PeerParams,
    accepting: Arc<AtomicBool>,
    out: mpsc::UnboundedSender<Established>,
) {
    let (done_tx, mut done_rx) =
        mpsc::unbounded_channel::<Result<(SocketKind, u64, TcpStream, BytesMut), String>>();
    let mut pending: HashMap<u64, (Instant, TcpStream, BytesMut)> = HashMap::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, from)) = accepted else { continue };
                if from.ip() != p.peer_addr.ip() {
                    tracing::warn!(resource = %p.resource, %from, "refused a connection from an address that is not the peer's");
                    continue;
                }
                if !accepting.load(Ordering::Relaxed) {
                    tracing::debug!(resource = %p.resource, %from, "refused the peer: not accepting connections (StandAlone or connected)");
                    continue;
                }
                tune(&stream);
                let (p, done) = (p.clone(), done_tx.clone());
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    let r = handshake(&mut stream, &mut buf, &p, None, 0).await;
                    let _ = done.send(r.map(|(k, s)| (k, s, stream, buf)));
                });
            }
            Some(r) = done_rx.recv() => match r {
                Err(e) => tracing::warn!(resource = %p.resource, peer = %p.peer_node, "refused the peer: {e}"),
                Ok((SocketKind::Data, session, stream, buf)) => {
                    pending.retain(|_, (t, _, _)| t.elapsed() < PAIRING_TIMEOUT);
                    if pending.len() >= MAX_PENDING_PAIRS {
                        pending.clear();
                    }
                    pending.insert(session, (Instant::now(), stream, buf));
                }
                Ok((SocketKind::Meta, session, stream, buf)) => {
                    if let Some((_, data, data_buf)) = pending.remove(&session) {
                        if out.send(Established { data: (data, data_buf), meta: (stream, buf) }).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// The running connection: its two sending lanes and its tasks.
///
/// [`Connection::send`] only collects packets; [`Connection::flush`] writes what was collected
/// on each socket as one batch (one socket write for small packets). The resource task flushes
/// after every round of events it handles. While a socket takes everything at once (the usual
/// case), the resource task writes it itself: no hand-over to another task, whose wakeup would
/// add to every round trip (a 4 KiB protocol-B/C write pays for the Data packet's and the
/// acknowledgement's). What would block goes to the lane's writer task, and then everything
/// after it too, until the writer has caught up, so packets never overtake each other.
///
/// Dropping it closes the connection gracefully in the background (see [`LINGER`]): the
/// writers send what is queued (including what was collected and not yet flushed) and then
/// FIN, the readers discard until the peer closes, and from then on no task reports anything.
pub struct Connection {
    data: Lane,
    meta: Lane,
    closing: Arc<AtomicBool>,
    /// True while the data socket's reader must pause (the core's receive queue is full).
    rx_paused: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Connection {
    /// Pauses or resumes reading the data socket: while paused, the peer's writes pile up in
    /// the socket buffers and TCP stops the peer's sender, as DRBD's receiver stops at
    /// `max-buffers`. The meta socket (acknowledgements, pings) is always read.
    pub fn pause_rx(&self, paused: bool) {
        if self
            .rx_paused
            .send_if_modified(|p| std::mem::replace(p, paused) != paused)
        {
            tracing::trace!(paused, "receive queue at max-buffers: data socket reader");
        }
    }

    /// Queues a packet for the socket its type travels on; it leaves at the next
    /// [`Connection::flush`].
    pub fn send(&mut self, packet: Packet) {
        match wire::socket_of(&packet) {
            Some(SocketKind::Meta) => self.meta.out.push(packet),
            _ => self.data.out.push(packet),
        }
    }

    /// Writes the queued packets, in the order they were queued, and returns the sequence
    /// numbers of the Data packets now in the socket's send buffer (protocol A's completion
    /// point); the writer tasks report the rest as [`NetEvent::Sent`].
    pub fn flush(&mut self) -> Vec<u64> {
        self.meta.flush();
        self.data.flush()
    }
}

/// One socket's sending side.
struct Lane {
    half: Arc<OwnedWriteHalf>,
    out: Vec<Packet>,
    tx: mpsc::UnboundedSender<Chunks>,
    /// Batches handed to the writer task and not completely written yet. Only while it is 0
    /// may the resource task write to the socket itself.
    queued: Arc<AtomicUsize>,
}

impl Lane {
    fn flush(&mut self) -> Vec<u64> {
        if self.out.is_empty() {
            return Vec::new();
        }
        let mut chunks = Chunks::encode(std::mem::take(&mut self.out));
        // Acquire: the writer's writes of earlier batches happened before it counted down.
        if self.queued.load(Ordering::Acquire) == 0 {
            // An error is left to the writer, which meets it again and reports it.
            if let Ok(true) = chunks.try_write(&self.half) {
                return chunks.seqs;
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(chunks);
        Vec::new()
    }
}

/// Encoded packets on their way to a socket: small packets gathered into shared buffers,
/// large payloads by reference (not copied), and the Data packets among them.
struct Chunks {
    parts: VecDeque<Bytes>,
    seqs: Vec<u64>,
}

/// Payloads up to this size are copied next to their header; larger ones are written from
/// their own buffer (no copy).
const COPY_PAYLOAD_MAX: usize = 64 * 1024;
/// Most buffers in one vectored write.
const MAX_IOV: usize = 64;

impl Chunks {
    fn encode(packets: Vec<Packet>) -> Chunks {
        let mut parts = VecDeque::new();
        let mut seqs = Vec::new();
        let mut head = BytesMut::new();
        for packet in packets {
            let payload = wire::encode_head(&packet, &mut head);
            if let Packet::Data { seq, .. } = &packet {
                seqs.push(*seq);
            }
            match payload {
                Some(p) if p.len() <= COPY_PAYLOAD_MAX => head.extend_from_slice(&p),
                Some(p) => {
                    parts.push_back(head.split().freeze());
                    parts.push_back(p);
                }
                None => {}
            }
        }
        if !head.is_empty() {
            parts.push_back(head.freeze());
        }
        Chunks { parts, seqs }
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Writes as much as the socket takes without waiting: true when everything is written.
    fn try_write(&mut self, half: &OwnedWriteHalf) -> std::io::Result<bool> {
        while !self.parts.is_empty() {
            let iov: Vec<std::io::IoSlice<'_>> = self
                .parts
                .iter()
                .take(MAX_IOV)
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            let mut n = match half.try_write_vectored(&iov) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            while n > 0 {
                let front = self
                    .parts
                    .front_mut()
                    .expect("written bytes came from parts");
                if n >= front.len() {
                    n -= front.len();
                    self.parts.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        Ok(true)
    }

    /// Appends `more` (a later batch) to be written in the same system calls.
    fn append(&mut self, mut more: Chunks) {
        self.parts.append(&mut more.parts);
        self.seqs.append(&mut more.seqs);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.flush();
        // The senders drop right after this, which ends the writers once their queues are out.
        self.closing.store(true, Ordering::Relaxed);
        let tasks = std::mem::take(&mut self.tasks);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(LINGER).await;
                    for t in tasks {
                        t.abort();
                    }
                });
            }
            Err(_) => tasks.iter().for_each(JoinHandle::abort),
        }
    }
}

fn reader(
    gen: u64,
    mut half: OwnedReadHalf,
    mut buf: BytesMut,
    closing: Arc<AtomicBool>,
    mut paused: Option<watch::Receiver<bool>>,
    out: mpsc::UnboundedSender<NetEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Some(p) = paused.as_mut() {
                if p.wait_for(|paused| !paused).await.is_err() {
                    // The connection is gone: drain until the peer closes, unpaused.
                    paused = None;
                }
            }
            let r = read_packets(&mut half, &mut buf).await;
            if closing.load(Ordering::Relaxed) {
                // Draining a dropped connection: discard until the peer closes.
                if r.is_err() {
                    return;
                }
                continue;
            }
            match r {
                Ok(packets) => {
                    if out.send(NetEvent::Packets { gen, packets }).is_err() {
                        return;
                    }
                }
                Err(reason) => {
                    let _ = out.send(NetEvent::Lost { gen, reason });
                    return;
                }
            }
        }
    })
}

/// Batches the writer gathers into one round of writes, at most.
const WRITER_GATHER: usize = 16;

/// Writes what would have blocked the resource task, and everything queued behind it.
fn writer(
    gen: u64,
    half: Arc<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Chunks>,
    queued: Arc<AtomicUsize>,
    closing: Arc<AtomicBool>,
    out: mpsc::UnboundedSender<NetEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(mut chunks) = rx.recv().await {
            let mut batches = 1;
            while batches < WRITER_GATHER {
                let Ok(more) = rx.try_recv() else { break };
                chunks.append(more);
                batches += 1;
            }
            while !chunks.is_empty() {
                let r = match chunks.try_write(&half) {
                    Ok(true) => Ok(()),
                    Ok(false) => half.writable().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    let _ = out.send(NetEvent::Lost {
                        gen,
                        reason: format!("write: {e}"),
                    });
                    return;
                }
            }
            // Release: these writes happen before the resource task sees the count drop.
            queued.fetch_sub(batches, Ordering::AcqRel);
            // Protocol A completes a write once it is in the socket's send buffer (not
            // reported while the connection is being dropped).
            if !chunks.seqs.is_empty() && !closing.load(Ordering::Relaxed) {
                let seqs = std::mem::take(&mut chunks.seqs);
                let _ = out.send(NetEvent::Sent { gen, seqs });
            }
        }
        // The connection was dropped and everything queued is out. The lane's handle went
        // with the connection, so this is the last one: dropping it sends FIN (tokio shuts
        // the write side down when a write half drops).
        drop(half);
    })
}

/// Starts the reader and writer tasks of an established connection.
pub fn start(gen: u64, est: Established, out: mpsc::UnboundedSender<NetEvent>) -> Connection {
    let (data_r, data_w) = est.data.0.into_split();
    let (meta_r, meta_w) = est.meta.0.into_split();
    let closing = Arc::new(AtomicBool::new(false));
    let (rx_paused, paused) = watch::channel(false);
    let c = &closing;
    let mut tasks = vec![
        reader(
            gen,
            data_r,
            est.data.1,
            c.clone(),
            Some(paused),
            out.clone(),
        ),
        reader(gen, meta_r, est.meta.1, c.clone(), None, out.clone()),
    ];
    let mut lane = |half: OwnedWriteHalf| {
        let half = Arc::new(half);
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let w = writer(
            gen,
            half.clone(),
            rx,
            queued.clone(),
            c.clone(),
            out.clone(),
        );
        tasks.push(w);
        Lane {
            half,
            out: Vec::new(),
            tx,
            queued,
        }
    };
    let (data, meta) = (lane(data_w), lane(meta_w));
    Connection {
        data,
        meta,
        closing,
        rx_paused,
        tasks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(local: SocketAddr, peer: SocketAddr, node: &str, peer_node: &str) -> PeerParams {
        PeerParams {
            resource: "r0".into(),
            node: node.into(),
            peer_node: peer_node.into(),
            protocol: 2,
            secret: None,
            local_addr: local,
            peer_addr: peer,
        }
    }

    /// A listener that is not accepting (StandAlone) closes the connection before the
    /// handshake, so the dialer fails at once with a reason instead of completing a handshake
    /// that would be dropped; once accepting, the same dial succeeds.
    #[tokio::test]
    async fn a_standalone_listener_refuses_before_the_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let client: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let accepting = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(listen(
            listener,
            params(server, client, "beta", "alpha"),
            accepting.clone(),
            tx,
        ));
        let dialer = params(client, server, "alpha", "beta");
        let err = dial(&dialer).await.err().expect("refused");
        assert!(err.contains("StandAlone"), "{err}");
        assert!(rx.try_recv().is_err());
        accepting.store(true, Ordering::Relaxed);
        let est = dial(&dialer).await.expect("accepted");
        let accepted = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the listener hands the pair over")
            .expect("a pair");
        drop((est, accepted));
        task.abort();
    }
}
