//! Local IO on the backing disk for the replication core's `LocalWrite`/`LocalRead`/
//! `LocalFlush` actions.
//!
//! The primary engine is io_uring, driven from the async runtime with no thread of its own: the
//! caller submits a batch of requests with one `io_uring_enter` (the resource task gathers all
//! IO of one round into one batch), and a reaper task that waits in the runtime's epoll on the
//! ring's descriptor reaps completions and tells each request's `done`. Before, a ring thread
//! woken through an eventfd did both, and each write paid two extra thread wakeups (one to
//! submit, one to hand the completion over). Aligned requests go through O_DIRECT, the rest
//! through the page cache. Payloads that came off a socket are already in 4 KiB-aligned
//! buffers (`target::aligned`), so they are written from where they are; only an unaligned
//! buffer is copied first. Reads land in aligned buffers that are handed on as they are; FUA writes carry `RWF_DSYNC`, flushes are
//! `IORING_OP_FSYNC` with `DATASYNC`. When a
//! ring cannot be created (old kernel, seccomp) or `TANDEM_IO=threads` is set, the same
//! requests run as pread/pwrite/fdatasync on tokio's blocking pool; the choice is logged.
//!
//! Ordering across flushes is the core's job: it asks for a flush only once the writes it must
//! cover have completed, so neither engine reorders a write across a flush.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use target::aligned::{self, AlignedBuf};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// Submission queue entries of the ring (requests in flight beyond this wait in a queue).
const RING_ENTRIES: u32 = 256;
/// O_DIRECT is used for requests aligned to this (offset, length and buffer); others go
/// through the page cache on a second descriptor of the same file.
const DIRECT_ALIGN: usize = aligned::ALIGN;

fn direct_ok(offset: u64, len: usize) -> bool {
    offset % DIRECT_ALIGN as u64 == 0 && len % DIRECT_ALIGN == 0 && len > 0
}

/// Which engine a [`Backing`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// io_uring with batched submission.
    IoUring,
    /// pread/pwrite on the blocking thread pool.
    Threads,
}

/// The backing disk.
#[derive(Clone)]
pub struct Backing {
    file: Arc<File>,
    path: Arc<str>,
    ring: Option<Arc<RingHandle>>,
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// What runs when an IO completes: read data (or nothing) or an errno. It runs in the ring's
/// reaper task or on a blocking-pool thread, so it must be quick (send a message, no more).
pub type Done = Box<dyn FnOnce(Result<Option<Bytes>, i32>) + Send>;

/// One IO request.
#[derive(Debug, Clone)]
pub enum IoOp {
    /// Write `data` at `offset`; with `fua`, stable before done.
    Write {
        /// Byte offset.
        offset: u64,
        /// The data.
        data: Bytes,
        /// Force unit access.
        fua: bool,
    },
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u32,
    },
    /// fdatasync.
    Flush,
}

enum Kind {
    /// `copy`: an aligned copy of `buf`, made only when `buf` itself is not aligned; `direct`:
    /// written through the O_DIRECT descriptor. `done` counts bytes written.
    Write {
        buf: Bytes,
        copy: Option<AlignedBuf>,
        done: usize,
        fua: bool,
        direct: bool,
    },
    /// Read into `buf` (aligned, filled as completions come in) until it is full,
    /// through the O_DIRECT descriptor when `direct`.
    Read {
        buf: AlignedBuf,
        direct: bool,
    },
    Flush,
}

struct Op {
    kind: Kind,
    offset: u64,
    done: Done,
}

/// The ring and everything the kernel may still point into. One lock guards it: submitters
/// (the resource task, readers) push and submit under it, the reaper task reaps under it.
struct RingState {
    ring: IoUring,
    fd: RawFd,
    direct_fd: RawFd,
    /// Ops owned here while the kernel may use their buffers; the index is the user_data.
    slots: Vec<Option<Op>>,
    free: Vec<usize>,
    /// Ops not yet in the submission queue (the ring is full).
    waiting: VecDeque<usize>,
    in_flight: usize,
    /// The descriptors the sqes name, open as long as the ring.
    _files: (Arc<File>, Option<File>),
}

/// An op that finished, with its result, to be told outside the lock.
type Finished = (Done, Result<Option<Bytes>, i32>);

impl RingState {
    /// Moves waiting ops into the submission queue (at most RING_ENTRIES in flight, so the
    /// completion queue never overflows) and submits them without waiting.
    fn push_and_submit(&mut self) -> std::io::Result<()> {
        let mut pushed = false;
        while self.in_flight < RING_ENTRIES as usize {
            let Some(&slot) = self.waiting.front() else {
                break;
            };
            let op = self.slots[slot].as_mut().expect("waiting slot holds an op");
            let e = sqe(self.fd, self.direct_fd, op, slot as u64);
            // SAFETY: the op (and so its buffer) stays in `slots` until its completion is
            // reaped, and `slots` is never freed while ops are in flight (see Drop), so the
            // pointers in the sqe stay valid while the kernel uses them.
            if unsafe { self.ring.submission().push(&e) }.is_err() {
                break;
            }
            self.waiting.pop_front();
            self.in_flight += 1;
            pushed = true;
        }
        while pushed {
            match self.ring.submit() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(_) => pushed = false,
            }
        }
        Ok(())
    }

    /// Fails every op not yet in the submission queue (the ring refused a submission).
    fn fail_waiting(&mut self, finished: &mut Vec<Finished>) {
        for slot in std::mem::take(&mut self.waiting) {
            if let Some(op) = self.slots[slot].take() {
                finished.push((op.done, Err(libc::EIO)));
                self.free.push(slot);
            }
        }
    }

    /// Reaps every completion: finished ops go to `finished`, short transfers are resubmitted.
    fn reap(&mut self, finished: &mut Vec<Finished>) {
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in done {
            self.in_flight -= 1;
            let slot = usize::try_from(ud).expect("slot index");
            let op = self.slots[slot]
                .as_mut()
                .expect("completed slot holds an op");
            match complete(op, res) {
                Some(result) => {
                    let op = self.slots[slot].take().expect("slot holds an op");
                    finished.push(finish(op, result));
                    self.free.push(slot);
                }
                // A short transfer: submit the rest.
                None => self.waiting.push_back(slot),
            }
        }
        if let Err(e) = self.push_and_submit() {
            tracing::error!("io_uring submit failed: {e}");
            self.fail_waiting(finished);
        }
    }
}

impl Drop for RingState {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            // Only when the runtime is torn down with IO in flight: the kernel may still use
            // these buffers, so they are never freed.
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

struct Shared {
    state: Mutex<RingState>,
    /// The last [`Backing`] is gone: the reaper ends once the IO in flight is done.
    closed: AtomicBool,
    close: tokio::sync::Notify,
}

/// Stops the reaper when the last [`Backing`] clone goes. The flag: O_DIRECT is in use.
struct RingHandle(Arc<Shared>, bool);

impl Drop for RingHandle {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.close.notify_one();
    }
}

impl Backing {
    /// Opens the backing disk read-write with the best engine available.
    pub fn open(path: &std::path::Path) -> std::io::Result<Backing> {
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?,
        );
        let name: Arc<str> = path.display().to_string().into();
        let forced_threads = std::env::var("TANDEM_IO").is_ok_and(|v| v == "threads");
        let ring = if forced_threads {
            tracing::info!(disk = %name, "backing IO: pread/pwrite on a thread pool (TANDEM_IO=threads)");
            None
        } else {
            let direct = open_direct(path);
            let how = match &direct {
                Ok(_) => "O_DIRECT for 4 KiB-aligned requests".to_string(),
                Err(e) => format!("page cache only: O_DIRECT is not supported here ({e})"),
            };
            match start_ring(file.clone(), direct.ok()) {
                Ok(r) => {
                    tracing::info!(disk = %name, "backing IO: io_uring, batched submission, {how}");
                    Some(Arc::new(r))
                }
                Err(e) => {
                    tracing::warn!(disk = %name, "io_uring is unavailable ({e}); backing IO falls back to pread/pwrite");
                    None
                }
            }
        };
        Ok(Backing {
            file,
            path: name,
            ring,
        })
    }

    /// The engine in use.
    pub fn engine(&self) -> Engine {
        if self.ring.is_some() {
            Engine::IoUring
        } else {
            Engine::Threads
        }
    }

    /// True when aligned requests bypass the page cache (O_DIRECT).
    pub fn direct(&self) -> bool {
        self.ring.as_ref().is_some_and(|r| r.1)
    }

    /// The path, for logs.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Submits one IO; `done` runs when it completes.
    pub fn submit(&self, op: IoOp, done: Done) {
        self.submit_batch(vec![(op, done)]);
    }

    /// Submits several IOs at once, with one `io_uring_enter` from the caller's thread. Each
    /// `done` runs when its IO completes, in any order.
    pub fn submit_batch(&self, ops: Vec<(IoOp, Done)>) {
        if ops.is_empty() {
            return;
        }
        if let Some(ring) = &self.ring {
            let mut failed = Vec::new();
            {
                let mut st = ring.0.state.lock().expect("ring state");
                for (op, done) in ops {
                    let op = prepare(op, done, ring.1);
                    let slot = st.free.pop().unwrap_or_else(|| {
                        st.slots.push(None);
                        st.slots.len() - 1
                    });
                    st.slots[slot] = Some(op);
                    st.waiting.push_back(slot);
                }
                if let Err(e) = st.push_and_submit() {
                    tracing::error!("io_uring submit failed: {e}");
                    st.fail_waiting(&mut failed);
                }
            }
            for (done, result) in failed {
                done(result);
            }
            return;
        }
        for (op, done) in ops {
            self.submit_threads(op, done);
        }
    }

    /// The fallback engine: one blocking-pool job per IO.
    fn submit_threads(&self, op: IoOp, done: Done) {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let result = match op {
                IoOp::Write { offset, data, fua } => file
                    .write_all_at(&data, offset)
                    .and_then(|()| if fua { file.sync_data() } else { Ok(()) })
                    .map(|()| None),
                IoOp::Read { offset, len } => {
                    let mut buf = AlignedBuf::zeroed(len as usize);
                    file.read_exact_at(buf.as_mut_slice(), offset)
                        .map(|()| Some(buf.freeze()))
                }
                IoOp::Flush => file.sync_data().map(|()| None),
            };
            done(result.map_err(|e| errno(&e)));
        });
    }

    async fn wait(&self, op: IoOp) -> Result<Option<Bytes>, i32> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.unwrap_or(Err(libc::EIO))
    }

    /// Writes `data` at `offset`; with `fua`, stable before returning.
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), i32> {
        self.wait(IoOp::Write { offset, data, fua })
            .await
            .map(|_| ())
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, i32> {
        self.wait(IoOp::Read { offset, len })
            .await
            .and_then(|b| b.ok_or(libc::EIO))
    }

    /// fdatasync.
    pub async fn flush(&self) -> Result<(), i32> {
        self.wait(IoOp::Flush).await.map(|_| ())
    }
}

/// The ring's form of `op`: O_DIRECT when `direct` and the request is aligned (from the
/// caller's buffer when it is aligned too, which payloads read off a socket into an
/// [`AlignedBuf`] are, else from an aligned copy), else the page cache.
fn prepare(op: IoOp, done: Done, direct: bool) -> Op {
    let (kind, offset) = match op {
        IoOp::Write { offset, data, fua } => {
            let direct = direct && direct_ok(offset, data.len());
            let copy = (direct && !aligned::is_aligned(&data)).then(|| AlignedBuf::copy_of(&data));
            (
                Kind::Write {
                    buf: data,
                    copy,
                    done: 0,
                    fua,
                    direct,
                },
                offset,
            )
        }
        IoOp::Read { offset, len } => {
            let len = len as usize;
            (
                Kind::Read {
                    buf: AlignedBuf::with_capacity(len),
                    direct: direct && direct_ok(offset, len),
                },
                offset,
            )
        }
        IoOp::Flush => (Kind::Flush, 0),
    };
    Op { kind, offset, done }
}

/// A second descriptor with O_DIRECT, if the file system takes it (tmpfs does not) and an
/// aligned read through it works.
fn open_direct(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut probe = AlignedBuf::zeroed(DIRECT_ALIGN);
    f.read_exact_at(probe.as_mut_slice(), 0)?;
    Ok(f)
}

/// Creates the ring and spawns its reaper on the current tokio runtime (there must be one).
fn start_ring(file: Arc<File>, direct: Option<File>) -> std::io::Result<RingHandle> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|e| std::io::Error::other(format!("no async runtime for the reaper: {e}")))?;
    let ring = IoUring::new(RING_ENTRIES)?;
    // The reaper waits for completions in the runtime's own epoll: the ring's descriptor
    // polls readable while its completion queue holds entries.
    // SAFETY: the ring's descriptor is open for as long as `ring`, which outlives this borrow.
    let ring_fd = unsafe { BorrowedFd::borrow_raw(ring.as_raw_fd()) }.try_clone_to_owned()?;
    let _guard = rt.enter();
    // SAFETY: `ring_fd` owns its descriptor (a duplicate of the ring's), which stays open and
    // names the same ring until the AsyncFd that owns it drops.
    let readable =
        unsafe { AsyncFd::register_with_interest(ring_fd, tokio::io::Interest::READABLE) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    let fd = file.as_raw_fd();
    let direct_fd = direct.as_ref().map_or(fd, AsRawFd::as_raw_fd);
    let has_direct = direct.is_some();
    let shared = Arc::new(Shared {
        state: Mutex::new(RingState {
            ring,
            fd,
            direct_fd,
            slots: Vec::new(),
            free: Vec::new(),
            waiting: VecDeque::new(),
            in_flight: 0,
            _files: (file, direct),
        }),
        closed: AtomicBool::new(false),
        close: tokio::sync::Notify::new(),
    });
    rt.spawn(reaper(readable, shared.clone()));
    Ok(RingHandle(shared, has_direct))
}

/// Reaps the ring's completions as they arrive and tells each op's `done`, outside the lock.
/// Ends when the last [`Backing`] is gone and nothing is in flight.
async fn reaper(readable: AsyncFd<OwnedFd>, shared: Arc<Shared>) {
    let mut finished = Vec::new();
    loop {
        let idle = {
            let st = shared.state.lock().expect("ring state");
            st.in_flight == 0 && st.waiting.is_empty()
        };
        if idle && shared.closed.load(Ordering::Acquire) {
            return;
        }
        let mut guard = tokio::select! {
            r = readable.readable() => match r {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!("waiting for io_uring completions failed: {e}");
                    return;
                }
            },
            () = shared.close.notified() => continue,
        };
        let empty = {
            let mut st = shared.state.lock().expect("ring state");
            st.reap(&mut finished);
            let empty = st.ring.completion().is_empty();
            empty
        };
        if empty {
            // A completion posted after this still wakes epoll: tokio keeps that readiness.
            guard.clear_ready();
        }
        for (done, result) in finished.drain(..) {
            done(result);
        }
    }
}

/// Accounts one completion of `op`: its final result, or None when a short transfer must be
/// resubmitted for the rest (through the page cache: a short O_DIRECT transfer leaves the
/// rest unaligned).
fn complete(op: &mut Op, res: i32) -> Option<Result<(), i32>> {
    if res < 0 {
        return Some(Err(-res));
    }
    let n = usize::try_from(res).expect("non-negative");
    let (done, want, direct) = match &mut op.kind {
        Kind::Write {
            buf, done, direct, ..
        } => {
            *done += n;
            (*done, buf.len(), direct)
        }
        Kind::Read { buf, direct } => {
            let filled = buf.len() + n.min(buf.capacity() - buf.len());
            // SAFETY: the kernel wrote n bytes at the spare tail the sqe named.
            unsafe { buf.set_len(filled) };
            (filled, buf.capacity(), direct)
        }
        Kind::Flush => return Some(Ok(())),
    };
    if n == 0 {
        return Some(Err(libc::EIO));
    }
    if done < want {
        *direct = false;
        return None;
    }
    Some(Ok(()))
}

/// A finished op's `done` and what it gives back (a read's data).
fn finish(op: Op, result: Result<(), i32>) -> Finished {
    let data = match op.kind {
        Kind::Read { buf, .. } => result.map(|()| Some(buf.freeze())),
        _ => result.map(|()| None),
    };
    (op.done, data)
}

/// The sqe for `op` (or its remainder after a short transfer).
fn sqe(fd: RawFd, direct_fd: RawFd, op: &mut Op, slot: u64) -> io_uring::squeue::Entry {
    let fd_of = |direct: bool| types::Fd(if direct { direct_fd } else { fd });
    match &mut op.kind {
        Kind::Write {
            buf,
            copy,
            done,
            fua,
            direct,
        } => {
            let from = copy.as_ref().map_or(&buf[..], AlignedBuf::as_slice);
            let rest = &from[*done..];
            let len = u32::try_from(rest.len()).expect("writes are at most 32 MiB");
            let flags = if *fua { libc::RWF_DSYNC } else { 0 };
            opcode::Write::new(fd_of(*direct), rest.as_ptr(), len)
                .offset(op.offset + *done as u64)
                .rw_flags(flags)
                .build()
                .user_data(slot)
        }
        Kind::Read { buf, direct } => {
            let at = buf.len();
            let (ptr, spare) = buf.spare_ptr();
            let len = u32::try_from(spare).expect("reads are at most 32 MiB");
            opcode::Read::new(fd_of(*direct), ptr, len)
                .offset(op.offset + at as u64)
                .build()
                .user_data(slot)
        }
        Kind::Flush => opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(slot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exercise(b: &Backing) {
        let data = Bytes::from((0..(1 << 20)).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let writes: Vec<_> = (0..16u64)
            .map(|k| b.write(k << 20, data.clone(), k % 4 == 0))
            .collect();
        for w in writes {
            w.await.unwrap();
        }
        b.flush().await.unwrap();
        for k in [0u64, 7, 15] {
            assert_eq!(b.read(k << 20, 1 << 20).await.unwrap(), data);
        }
        assert_eq!(
            b.read(17 << 20, 4096).await,
            Err(libc::EIO),
            "reading past the end fails"
        );
        // An unaligned write (page cache) inside an aligned range read back with O_DIRECT.
        b.write(4096 + 512, Bytes::from(vec![0xee; 512]), false)
            .await
            .unwrap();
        let back = b.read(4096, 4096).await.unwrap();
        assert!(back[512..1024].iter().all(|&x| x == 0xee));
        assert_eq!(back[..512], data[4096..4096 + 512]);
        // A payload already in an aligned buffer (as sockets deliver them) is written from
        // where it is; at an unaligned offset the same buffer goes through the page cache.
        let mut a = AlignedBuf::with_capacity(8192);
        bytes::BufMut::put_bytes(&mut a, 0x5a, 8192);
        let a = a.freeze();
        b.write(2 << 20, a.clone(), true).await.unwrap();
        b.write((3 << 20) + 512, a.clone(), false).await.unwrap();
        let back = b.read(2 << 20, 8192).await.unwrap();
        assert_eq!(back, a);
        assert!(
            aligned::is_aligned(&back),
            "reads come back in aligned buffers"
        );
        let back = b.read(3 << 20, 3 * 4096).await.unwrap();
        assert_eq!(back[..512], data[..512]);
        assert_eq!(back[512..512 + 8192], a[..]);
    }

    fn on_tmpfs(path: &std::path::Path) -> bool {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statfs fills the zeroed struct we own; `c` is a valid C string.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        rc == 0 && st.f_type == TMPFS_MAGIC
    }

    #[test]
    fn both_engines_write_read_and_flush() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        File::create(&path).unwrap().set_len(16 << 20).unwrap();
        rt.block_on(async {
            let ring = Backing::open(&path).unwrap();
            assert_eq!(ring.engine(), Engine::IoUring, "this machine has io_uring");
            assert_eq!(
                ring.direct(),
                !on_tmpfs(dir.path()),
                "O_DIRECT wherever the file system has it"
            );
            exercise(&ring).await;
            let threads = Backing {
                ring: None,
                ..ring.clone()
            };
            exercise(&threads).await;
        });
    }
}
