//! The `Volume` trait: anything that can be read, written, flushed, trimmed and zeroed at byte
//! offsets and can say which ranges are allocated. It is the seam between the exports (NBD
//! here, iSCSI later) and what backs them: [`FileVolume`] for plain files and block devices in
//! `targetd`, a replicated resource in `replicatord`.
//!
//! The interface is completion based so that many requests can be in flight on one volume:
//! every operation returns a boxed `'static` future that owns its buffers. A write takes its
//! payload as [`Bytes`] (the slice of the socket buffer it arrived in, not a copy) and a read
//! returns a buffer the driver sends as it is. An io_uring implementation fits the same shape
//! (the buffer moves into the submission and comes back with the completion).
//!
//! Bounds are checked by the protocol layer before a volume sees a request; implementations
//! still refuse out-of-range requests with [`VolumeError::OutOfRange`] rather than trusting it.

pub mod conformance;
mod file;

pub use file::FileVolume;

use std::future::Future;
use std::pin::Pin;

pub use bytes::Bytes;

/// The future every volume operation returns.
pub type VolumeFuture<T> = Pin<Box<dyn Future<Output = Result<T, VolumeError>> + Send + 'static>>;

/// Whether and how a volume may be used right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Reads and writes.
    ReadWrite,
    /// Reads only; writes, trims and zeroing fail with [`VolumeError::ReadOnly`].
    ReadOnly,
    /// No service at all, for the reason given (a replicated Secondary says
    /// "r0 is Secondary; only the Primary serves it"). Clients see the reason.
    Refused(String),
}

/// Optional operations a volume supports well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `trim` can discard (it is always allowed to do nothing).
    pub trim: bool,
    /// `write_zeroes` is supported.
    pub write_zeroes: bool,
    /// `write_zeroes` with `fast` may succeed (otherwise it always fails fast).
    pub fast_zero: bool,
    /// `block_status` reports holes (otherwise everything reads as allocated).
    pub block_status: bool,
    /// Flushes and FUA writes through one handle cover writes made through every handle, so
    /// clients may open several connections (`NBD_FLAG_CAN_MULTI_CONN`).
    pub multi_conn: bool,
}

/// How `write_zeroes` may do its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The range may become a hole (it must still read as zeroes). False for `NBD_CMD_FLAG_NO_HOLE`.
    pub may_trim: bool,
    /// Fail with [`VolumeError::NotFast`] unless zeroing is faster than writing zeroes.
    pub fast: bool,
    /// Durable before completion.
    pub fua: bool,
}

/// One run of the allocation map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes it covers (nonzero).
    pub length: u64,
    /// Not allocated in the backing store.
    pub hole: bool,
    /// Known to read as zeroes.
    pub zero: bool,
}

/// A piece of a sparse read, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Bytes read.
    Data(Vec<u8>),
    /// This many bytes read as zeroes and were not read.
    Hole(u32),
}

/// What can go wrong with a volume operation.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Opening the backing store failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file or device.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backing store failed an operation.
    #[error("{op} {path} at offset {offset} ({length} bytes): {source}")]
    Io {
        /// read, write, flush, trim, zero, seek.
        op: &'static str,
        /// The file, device or resource.
        path: String,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The range is not inside the volume.
    #[error("bytes {offset}..+{length} are beyond the end of the volume ({size_bytes} bytes)")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u64,
        /// The volume size.
        size_bytes: u64,
    },
    /// A modification of a read-only volume.
    #[error("the volume is read-only")]
    ReadOnly,
    /// The volume refuses service; the reason names why (for a replicated resource, its role).
    #[error("{0}")]
    Refused(String),
    /// A fast zero that would not be fast; the caller should write zeroes instead.
    #[error("zeroing this range is not faster than writing zeroes")]
    NotFast,
}

/// A block volume. See the module documentation.
pub trait Volume: Send + Sync + 'static {
    /// Size in bytes (fixed for the life of the object).
    fn size_bytes(&self) -> u64;

    /// Whether the volume may be used now, and how. Servers ask at every handshake and before
    /// every request (so a demotion takes effect at once): keep it cheap, an atomic load.
    fn access(&self) -> Access;

    /// Which optional operations are supported.
    fn capabilities(&self) -> Capabilities;

    /// The smallest write unit: writes must be aligned to it in offset and length. Exports
    /// advertise it (NBD's minimum block size) and refuse unaligned writes. 1 means any.
    fn min_block_bytes(&self) -> u32 {
        1
    }

    /// Reads `length` bytes at `offset`.
    fn read(&self, offset: u64, length: u32) -> VolumeFuture<Vec<u8>>;

    /// Reads `length` bytes at `offset`, reporting holes instead of reading them. The default
    /// reads everything.
    fn read_sparse(&self, offset: u64, length: u32) -> VolumeFuture<Vec<Segment>> {
        let read = self.read(offset, length);
        Box::pin(async move { Ok(vec![Segment::Data(read.await?)]) })
    }

    /// Writes `data` at `offset`; with `fua`, durable before completion.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolumeFuture<()>;

    /// Makes every write completed before this call durable.
    fn flush(&self) -> VolumeFuture<()>;

    /// Discards a range (a hint: doing nothing is correct; the contents are undefined after).
    fn trim(&self, offset: u64, length: u64, fua: bool) -> VolumeFuture<()>;

    /// Makes a range read as zeroes.
    fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> VolumeFuture<()>;

    /// The allocation map from `offset`: at most `max_extents` extents (at least one), covering
    /// at most `length` bytes.
    fn block_status(
        &self,
        offset: u64,
        length: u64,
        max_extents: usize,
    ) -> VolumeFuture<Vec<Extent>>;
}
