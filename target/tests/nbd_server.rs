//! The NBD server driven over a real Unix socket by a minimal client built from the crate's own
//! codecs: pipelining and out-of-order replies, malformed requests, refused and read-only
//! exports, exports stopped under a connected client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use target::nbd::handshake::{
    decode_greeting, decode_option_reply, ClientOption, Info, InfoRequest, MetaContextRequest,
    OptionReply,
};
use target::nbd::server::{bind_unix, NbdServer};
use target::nbd::transmission::{decode_reply, Chunk, Command, Reply, Request};
use target::nbd::{client_flags, cmd_flags, info, rep, state, Decoded, Errno};
use target::volume::{
    Access, Bytes, Capabilities, Extent, FileVolume, Volume, VolumeFuture, ZeroFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// Every test step is bounded by this.
const STEP: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;

struct Client {
    s: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).await.unwrap();
        let mut c = Client { s, buf: Vec::new() };
        let flags = c
            .next(|b| decode_greeting(b).map_err(|e| e.to_string()))
            .await;
        assert_eq!(flags & 1, 1, "fixed newstyle");
        c.s.write_all(&client_flags::FIXED_NEWSTYLE.to_be_bytes())
            .await
            .unwrap();
        c
    }

    /// Reads until `decode` yields a frame. Panics on EOF or timeout.
    async fn next<T>(&mut self, decode: impl Fn(&[u8]) -> Result<Decoded<T>, String>) -> T {
        tokio::time::timeout(STEP, async {
            loop {
                match decode(&self.buf).unwrap() {
                    Decoded::Frame(v, n) => {
                        self.buf.drain(..n);
                        return v;
                    }
                    Decoded::NeedMore(_) => {
                        let mut chunk = [0u8; 65536];
                        let n = self.s.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "server closed the connection");
                        self.buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        })
        .await
        .expect("server answered in time")
    }

    async fn option(&mut self, o: ClientOption) -> Vec<OptionReply> {
        let mut b = Vec::new();
        o.encode(&mut b);
        self.s.write_all(&b).await.unwrap();
        let mut out = Vec::new();
        loop {
            let (opt, r) = self
                .next(|b| decode_option_reply(b).map_err(|e| e.to_string()))
                .await;
            assert_eq!(opt, o.code());
            let last = matches!(r, OptionReply::Ack | OptionReply::Error { .. });
            out.push(r);
            if last {
                return out;
            }
        }
    }

    async fn go(&mut self, name: &str) -> Vec<OptionReply> {
        self.option(ClientOption::Go(InfoRequest {
            name: name.into(),
            info_requests: vec![info::BLOCK_SIZE],
        }))
        .await
    }

    async fn send(&mut self, r: Request, payload: &[u8]) {
        let mut b = Vec::new();
        r.encode_header(&mut b);
        b.extend_from_slice(payload);
        self.s.write_all(&b).await.unwrap();
    }

    async fn reply(&mut self) -> Reply {
        self.next(|b| decode_reply(b).map_err(|e| e.to_string()))
            .await
    }

    /// True when the server closes the connection (within the step bound).
    async fn closed(&mut self) -> bool {
        tokio::time::timeout(STEP, async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

fn req(command: Command, flags: u16, cookie: u64, offset: u64, length: u32) -> Request {
    Request {
        flags,
        command,
        cookie,
        offset,
        length,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    server: NbdServer,
    socket: PathBuf,
}

fn file_volume(dir: &Path, name: &str, size: u64) -> Arc<dyn Volume> {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    Arc::new(FileVolume::open(&p, false).unwrap())
}

async fn fixture(extra: Vec<(&str, Arc<dyn Volume>)>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = NbdServer::new();
    server
        .add_export("a.img", file_volume(dir.path(), "a.img", 4 * MIB), "")
        .unwrap();
    for (n, v) in extra {
        server.add_export(n, v, "").unwrap();
    }
    let socket = dir.path().join("nbd.sock");
    server.serve_unix(bind_unix(&socket).unwrap());
    Fixture {
        _dir: dir,
        server,
        socket,
    }
}

async fn structured_client(f: &Fixture, export: &str) -> Client {
    let mut c = Client::connect(&f.socket).await;
    assert_eq!(
        c.option(ClientOption::StructuredReply).await,
        vec![OptionReply::Ack]
    );
    let r = c
        .option(ClientOption::SetMetaContext(MetaContextRequest {
            name: export.into(),
            queries: vec!["base:allocation".into()],
        }))
        .await;
    assert_eq!(r.len(), 2, "{r:?}");
    let r = c.go(export).await;
    assert_eq!(r.last(), Some(&OptionReply::Ack), "{r:?}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_options_do_not_lose_sync_and_go_advertises_the_flags() {
    let f = fixture(vec![]).await;
    let mut c = Client::connect(&f.socket).await;
    let r = c.option(ClientOption::Unknown { option: 0xbeef }).await;
    assert!(matches!(
        r[..],
        [OptionReply::Error {
            code: rep::ERR_UNSUP,
            ..
        }]
    ));
    let r = c.go("nope").await;
    assert!(matches!(
        r[..],
        [OptionReply::Error {
            code: rep::ERR_UNKNOWN,
            ..
        }]
    ));
    let r = c.go("a.img").await;
    let Some(OptionReply::Info(Info::Export { size_bytes, flags })) = r.first() else {
        panic!("{r:?}")
    };
    assert_eq!(*size_bytes, 4 * MIB);
    // HAS_FLAGS SEND_FLUSH SEND_FUA SEND_TRIM SEND_WRITE_ZEROES CAN_MULTI_CONN SEND_FAST_ZERO
    assert_eq!(
        *flags,
        0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0100 | 0x0800
    );
    assert!(r.contains(&OptionReply::Info(Info::BlockSize {
        min: 1,
        preferred: 4096,
        max_payload: 32 << 20
    })));
    // Simple replies: write, read back.
    c.send(req(Command::Write, cmd_flags::FUA, 1, 512, 5), b"hello")
        .await;
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: 0,
            cookie: 1
        }
    );
    c.send(req(Command::Read, 0, 2, 512, 5), &[]).await;
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: 0,
            cookie: 2
        }
    );
    let data = c
        .next(|b| {
            Ok(if b.len() >= 5 {
                Decoded::Frame(b[..5].to_vec(), 5)
            } else {
                Decoded::NeedMore(5)
            })
        })
        .await;
    assert_eq!(data, b"hello");
    c.send(req(Command::Disc, 0, 3, 0, 0), &[]).await;
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errno_replies() {
    let f = fixture(vec![]).await;
    let mut c = structured_client(&f, "a.img").await;
    let end = 4 * MIB;
    let cases = [
        (req(Command::Read, 0, 10, end - 1, 2), Errno::Inval),
        (req(Command::Read, 0, 11, u64::MAX, 1), Errno::Inval),
        (req(Command::WriteZeroes, 0, 12, end, 1), Errno::NoSpc),
        (req(Command::Trim, 0, 13, end, 1), Errno::Inval),
        (req(Command::Read, 0, 14, 0, (32 << 20) + 1), Errno::Inval),
        (req(Command::Unknown(99), 0, 15, 0, 0), Errno::Inval),
        (req(Command::Read, 1 << 12, 16, 0, 1), Errno::Inval),
    ];
    for (r, want) in cases {
        c.send(r, &[]).await;
        match c.reply().await {
            Reply::Structured {
                done: true,
                cookie,
                chunk: Chunk::Error { errno, .. },
            } => {
                assert_eq!(cookie, r.cookie);
                assert_eq!(errno, want, "{r:?}");
            }
            other => panic!("{r:?}: {other:?}"),
        }
    }
    // A write past the end carries its payload: it is consumed and the session stays in sync.
    c.send(req(Command::Write, 0, 17, end - 2, 4), b"abcd")
        .await;
    assert!(matches!(
        c.reply().await,
        Reply::Structured {
            cookie: 17,
            chunk: Chunk::Error {
                errno: Errno::NoSpc,
                ..
            },
            ..
        }
    ));
    c.send(req(Command::Flush, 0, 18, 0, 0), &[]).await;
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: 0,
            cookie: 18
        }
    );
    // Bad magic: a clean disconnect.
    let mut b = Vec::new();
    req(Command::Read, 0, 19, 0, 1).encode_header(&mut b);
    b[0] = 0;
    c.s.write_all(&b).await.unwrap();
    assert!(c.closed().await);
    // An oversized WRITE: disconnected before its payload is read.
    let mut c = structured_client(&f, "a.img").await;
    c.send(req(Command::Write, 0, 20, 0, (32 << 20) + 1), &[])
        .await;
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_reads_and_block_status() {
    let f = fixture(vec![]).await;
    let mut c = structured_client(&f, "a.img").await;
    let data = vec![0x5au8; 65536];
    c.send(req(Command::Write, 0, 1, MIB, 65536), &data).await;
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: 0,
            cookie: 1
        }
    );
    c.send(req(Command::BlockStatus, 0, 2, 0, 4 << 20), &[])
        .await;
    let Reply::Structured {
        done: true,
        chunk: Chunk::BlockStatus { descriptors, .. },
        ..
    } = c.reply().await
    else {
        panic!("no block status")
    };
    assert_eq!(
        descriptors.iter().map(|d| u64::from(d.length)).sum::<u64>(),
        4 * MIB
    );
    assert_eq!(descriptors[0].flags, state::HOLE | state::ZERO);
    assert!(descriptors.iter().any(|d| d.flags == 0));
    // A read across hole and data: holes come as OFFSET_HOLE, data as OFFSET_DATA, and the
    // pieces tile the request exactly.
    c.send(req(Command::Read, 0, 3, 0, 2 << 20), &[]).await;
    let mut covered = 0u64;
    let mut saw_hole = false;
    loop {
        let Reply::Structured {
            done,
            cookie,
            chunk,
        } = c.reply().await
        else {
            panic!("simple reply to a structured read")
        };
        assert_eq!(cookie, 3);
        match chunk {
            Chunk::OffsetHole { offset, length } => {
                assert_eq!(offset, covered);
                covered += u64::from(length);
                saw_hole = true;
            }
            Chunk::OffsetData { offset, data: d } => {
                assert_eq!(offset, covered);
                let at = usize::try_from(MIB).unwrap();
                for (i, b) in d.iter().enumerate() {
                    let pos = usize::try_from(offset).unwrap() + i;
                    let want = if (at..at + 65536).contains(&pos) {
                        0x5a
                    } else {
                        0
                    };
                    assert_eq!(*b, want, "byte {pos}");
                }
                covered += d.len() as u64;
            }
            other => panic!("{other:?}"),
        }
        if done {
            break;
        }
    }
    assert_eq!(covered, 2 * MIB);
    assert!(saw_hole);
    // DF: exactly one content chunk.
    c.send(req(Command::Read, cmd_flags::DF, 4, 0, 4096), &[])
        .await;
    assert!(matches!(
        c.reply().await,
        Reply::Structured {
            done: true,
            cookie: 4,
            chunk: Chunk::OffsetData { offset: 0, .. }
        }
    ));
}

/// A volume whose reads at offset 0 wait until a write has completed: with in-order replies
/// the read would block the write behind it forever.
struct Gated {
    inner: Arc<dyn Volume>,
    gate: Arc<Notify>,
}

impl Volume for Gated {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn access(&self) -> Access {
        self.inner.access()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_status: false,
            ..self.inner.capabilities()
        }
    }
    fn read(&self, offset: u64, length: u32) -> VolumeFuture<Vec<u8>> {
        let read = self.inner.read(offset, length);
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            if offset == 0 {
                gate.notified().await;
            }
            read.await
        })
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolumeFuture<()> {
        let write = self.inner.write(offset, data, fua);
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            write.await?;
            gate.notify_one();
            Ok(())
        })
    }
    fn flush(&self) -> VolumeFuture<()> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> VolumeFuture<()> {
        self.inner.trim(offset, length, fua)
    }
    fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> VolumeFuture<()> {
        self.inner.write_zeroes(offset, length, flags)
    }
    fn block_status(&self, offset: u64, length: u64, max: usize) -> VolumeFuture<Vec<Extent>> {
        self.inner.block_status(offset, length, max)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let gated: Arc<dyn Volume> = Arc::new(Gated {
        inner: file_volume(dir.path(), "g.img", MIB),
        gate: Arc::new(Notify::new()),
    });
    let f = fixture(vec![("gated", gated)]).await;
    let mut c = Client::connect(&f.socket).await;
    assert_eq!(c.go("gated").await.last(), Some(&OptionReply::Ack));
    c.send(req(Command::Read, 0, 100, 0, 4096), &[]).await;
    c.send(req(Command::Write, 0, 200, 8192, 4), b"wxyz").await;
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: 0,
            cookie: 200
        }
    );
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: 0,
            cookie: 100
        }
    );
}

struct Secondary(Arc<dyn Volume>);

impl Volume for Secondary {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn access(&self) -> Access {
        Access::Refused("r0 is Secondary; only the Primary serves it".into())
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn read(&self, offset: u64, length: u32) -> VolumeFuture<Vec<u8>> {
        self.0.read(offset, length)
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolumeFuture<()> {
        self.0.write(offset, data, fua)
    }
    fn flush(&self) -> VolumeFuture<()> {
        self.0.flush()
    }
    fn trim(&self, offset: u64, length: u64, fua: bool) -> VolumeFuture<()> {
        self.0.trim(offset, length, fua)
    }
    fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> VolumeFuture<()> {
        self.0.write_zeroes(offset, length, flags)
    }
    fn block_status(&self, offset: u64, length: u64, max: usize) -> VolumeFuture<Vec<Extent>> {
        self.0.block_status(offset, length, max)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_read_only_and_stopped_exports() {
    let dir = tempfile::tempdir().unwrap();
    let r0: Arc<dyn Volume> = Arc::new(Secondary(file_volume(dir.path(), "r0", MIB)));
    let f = fixture(vec![("r0", r0)]).await;
    // A Secondary refuses with its role in the message.
    let mut c = Client::connect(&f.socket).await;
    let r = c.go("r0").await;
    assert!(
        matches!(&r[..], [OptionReply::Error { code: rep::ERR_POLICY, message }] if message.contains("Secondary")),
        "{r:?}"
    );
    // Read-only set by the operator: advertised, and writes get EPERM.
    f.server.set_access("a.img", Access::ReadOnly).unwrap();
    let mut c = Client::connect(&f.socket).await;
    let r = c.go("a.img").await;
    assert!(matches!(r[0], OptionReply::Info(Info::Export { flags, .. }) if flags & 2 == 2));
    c.send(req(Command::Write, 0, 1, 0, 1), b"x").await;
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: Errno::Perm.code(),
            cookie: 1
        }
    );
    f.server.set_access("a.img", Access::ReadWrite).unwrap();
    c.send(req(Command::Disc, 0, 0, 0, 0), &[]).await;
    assert!(c.closed().await);
    // Stopped while connected: ESHUTDOWN, then the connection closes.
    let mut c = Client::connect(&f.socket).await;
    assert_eq!(c.go("a.img").await.last(), Some(&OptionReply::Ack));
    // The connection count (what replicatord checks before demoting) settles at this client.
    let settled = tokio::time::timeout(STEP, async {
        while f.server.connections("a.img") != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    settled.await.expect("one connection on a.img");
    f.server.remove_export("a.img").unwrap();
    c.send(req(Command::Read, 0, 2, 0, 1), &[]).await;
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: Errno::Shutdown.code(),
            cookie: 2
        }
    );
    assert!(c.closed().await);
    // And new clients no longer find it.
    let mut c = Client::connect(&f.socket).await;
    assert!(matches!(
        c.go("a.img").await[..],
        [OptionReply::Error {
            code: rep::ERR_UNKNOWN,
            ..
        }]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections() {
    let f = fixture(vec![]).await;
    let mut c = Client::connect(&f.socket).await;
    assert_eq!(c.go("a.img").await.last(), Some(&OptionReply::Ack));
    f.server.shutdown(STEP).await;
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_of_32_mib_are_accepted_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let big = file_volume(dir.path(), "big.img", 64 * MIB);
    let f = fixture(vec![("big", big)]).await;
    let max = target::nbd::MAX_PAYLOAD_BYTES;
    let len = usize::try_from(max).unwrap();
    let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let mut c = Client::connect(&f.socket).await;
    assert_eq!(c.go("big").await.last(), Some(&OptionReply::Ack));
    c.send(req(Command::Write, cmd_flags::FUA, 1, MIB, max), &data)
        .await;
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: 0,
            cookie: 1
        }
    );
    c.send(req(Command::Read, 0, 2, MIB, max), &[]).await;
    assert_eq!(
        c.reply().await,
        Reply::Simple {
            error: 0,
            cookie: 2
        }
    );
    let back = c
        .next(|b| {
            Ok(if b.len() >= len {
                Decoded::Frame(b[..len].to_vec(), len)
            } else {
                Decoded::NeedMore(len)
            })
        })
        .await;
    assert!(back == data, "32 MiB read back differs");
}
