//! Page-aligned byte buffers for the zero-copy write path.
//!
//! A block written with O_DIRECT must sit at a 4 KiB-aligned address. Payloads that arrive on a
//! socket (an NBD WRITE, a replicated Data packet) are read straight into an [`AlignedBuf`] and
//! handed on as [`Bytes`] ([`AlignedBuf::freeze`]), so the backing disk writes them from where
//! the socket put them: no copy into an aligned bounce buffer, no zero-fill of one. Reads use
//! the same buffers the other way round.

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};

/// The alignment of every buffer (the O_DIRECT unit of the disks we serve).
pub const ALIGN: usize = 4096;

/// True when a payload of `len` bytes is worth reading into an [`AlignedBuf`]: whole 4 KiB
/// blocks, which the backing disk can write with O_DIRECT.
pub fn worth_aligning(len: usize) -> bool {
    len >= ALIGN && len % ALIGN == 0
}

/// True when `data` starts at an address O_DIRECT accepts.
pub fn is_aligned(data: &[u8]) -> bool {
    (data.as_ptr() as usize) % ALIGN == 0
}

/// A heap buffer of fixed capacity at a 4 KiB-aligned address. It fills like a `Vec` through
/// [`BufMut`] (bytes past `len` are never read), so a socket read or an io_uring read can land in
/// it without zeroing it first.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    /// Initialized bytes.
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: &AlignedBuf only reads initialized bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer that holds up to `cap` bytes (its allocation may be larger: sizes are
    /// rounded up to a power of two so freed buffers can be reused, see [`pool`]).
    pub fn with_capacity(cap: usize) -> AlignedBuf {
        let ptr = pool::take(cap);
        AlignedBuf { ptr, len: 0, cap }
    }

    /// A buffer of `len` zero bytes, for a read into an initialized slice (`pread`).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let mut b = AlignedBuf::with_capacity(len);
        b.put_bytes(0, len);
        b
    }

    /// An aligned copy of `data`.
    pub fn copy_of(data: &[u8]) -> AlignedBuf {
        let mut b = AlignedBuf::with_capacity(data.len());
        b.put_slice(data);
        b
    }

    /// Bytes filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The filled bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the first len bytes of the allocation are initialized and owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The filled bytes, to change in place.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The unfilled tail, for a kernel read (io_uring) to land in; [`AlignedBuf::set_len`]
    /// accounts what it filled.
    pub fn spare_ptr(&mut self) -> (*mut u8, usize) {
        // SAFETY: len <= cap, so the pointer stays inside the allocation.
        (
            unsafe { self.ptr.as_ptr().add(self.len) },
            self.cap - self.len,
        )
    }

    /// Marks the first `len` bytes filled.
    ///
    /// # Safety
    /// Those bytes must have been written (by [`BufMut`], or by the kernel into
    /// [`AlignedBuf::spare_ptr`]), and `len <= capacity`.
    pub unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.cap);
        self.len = len;
    }

    /// Reads from `rd` into the unfilled tail until the buffer is full (no zero-fill first).
    /// A stream that ends before is an `UnexpectedEof` error that says how much came.
    pub async fn fill_from<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        while self.remaining_mut() > 0 {
            if rd.read_buf(self).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the stream ended after {} of {} bytes", self.len, self.cap),
                ));
            }
        }
        Ok(())
    }

    /// The filled bytes as [`Bytes`], without a copy; the allocation lives as long as they do.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

// SAFETY: chunk_mut returns the uninitialized tail of the allocation; advance_mut only counts
// bytes the caller wrote there, and never past the capacity.
unsafe impl BufMut for AlignedBuf {
    fn remaining_mut(&self) -> usize {
        self.cap - self.len
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(cnt <= self.cap - self.len, "advance_mut past the capacity");
        self.len += cnt;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        let (ptr, n) = self.spare_ptr();
        // SAFETY: ptr..ptr+n is the allocation's unfilled tail, exclusively borrowed via &mut self.
        unsafe { UninitSlice::from_raw_parts_mut(ptr, n) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: taken from the pool for this capacity in with_capacity, and no longer used.
        unsafe { pool::give(self.ptr, self.cap) }
    }
}

/// Freed buffers kept for reuse. A 1 MiB buffer fresh from the allocator is a fresh mapping:
/// 256 page faults and zeroed pages on every write, which cost more than the copy the aligned
/// buffers save. So allocations are rounded up to a power of two from 4 KiB to 4 MiB, and up to
/// [`pool::BUDGET`] bytes of freed ones wait here for the next request of their size. Larger
/// buffers go straight back to the allocator.
mod pool {
    use std::alloc::Layout;
    use std::ptr::NonNull;
    use std::sync::Mutex;

    use super::ALIGN;

    /// Size classes: ALIGN << 0 ..= ALIGN << (CLASSES - 1), i.e. 4 KiB to 4 MiB.
    const CLASSES: usize = 11;
    /// Most bytes of idle buffers kept.
    pub const BUDGET: usize = 32 << 20;

    struct Idle {
        /// Free allocations per class.
        free: [Vec<Ptr>; CLASSES],
        bytes: usize,
    }

    struct Ptr(NonNull<u8>);
    // SAFETY: an idle allocation is owned by the pool alone.
    unsafe impl Send for Ptr {}

    static IDLE: Mutex<Idle> = Mutex::new(Idle {
        free: [const { Vec::new() }; CLASSES],
        bytes: 0,
    });

    /// The class of a capacity, and its allocation size; None above the largest class.
    fn class(cap: usize) -> Option<(usize, usize)> {
        let size = cap.max(ALIGN).next_power_of_two();
        let c = (size / ALIGN).trailing_zeros() as usize;
        (c < CLASSES).then_some((c, size))
    }

    fn layout(cap: usize) -> Layout {
        let size = class(cap).map_or(cap, |(_, size)| size);
        Layout::from_size_align(size, ALIGN).expect("valid layout")
    }

    /// An allocation of at least `cap` bytes at an ALIGN-aligned address.
    pub fn take(cap: usize) -> NonNull<u8> {
        if let Some((c, _)) = class(cap) {
            let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(Ptr(p)) = idle.free[c].pop() {
                idle.bytes -= ALIGN << c;
                return p;
            }
        }
        let layout = layout(cap);
        // SAFETY: the layout has a non-zero size (at least ALIGN).
        let raw = unsafe { std::alloc::alloc(layout) };
        NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    }

    /// Returns an allocation from [`take`] for the same `cap`.
    ///
    /// # Safety
    /// `p` came from `take(cap)` and is not used after this.
    pub unsafe fn give(p: NonNull<u8>, cap: usize) {
        if let Some((c, size)) = class(cap) {
            let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
            if idle.bytes + size <= BUDGET {
                idle.bytes += size;
                idle.free[c].push(Ptr(p));
                return;
            }
        }
        // SAFETY: allocated by take with this same layout.
        unsafe { std::alloc::dealloc(p.as_ptr(), layout(cap)) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_freezes_and_stays_aligned() {
        let mut b = AlignedBuf::with_capacity(3 * ALIGN);
        assert!(b.is_empty());
        b.put_slice(&[7u8; 100]);
        b.put_bytes(9, 2 * ALIGN);
        assert_eq!(b.len(), 100 + 2 * ALIGN);
        assert_eq!(b.remaining_mut(), ALIGN - 100);
        let bytes = b.freeze();
        assert!(is_aligned(&bytes));
        assert_eq!(&bytes[..100], &[7u8; 100][..]);
        assert!(bytes[100..].iter().all(|&x| x == 9));
        let tail = bytes.slice(100..);
        drop(bytes);
        assert_eq!(tail.len(), 2 * ALIGN);
    }

    #[test]
    fn copy_of_and_worth() {
        let c = AlignedBuf::copy_of(b"abc");
        assert_eq!(c.as_slice(), b"abc");
        assert_eq!(c.capacity(), 3);
        drop(c);
        // A freed buffer is reused for the next of its size class (its contents are not
        // zeroed, and never read before they are written).
        drop(AlignedBuf::with_capacity(1 << 20));
        let again = AlignedBuf::with_capacity((1 << 20) - 4096);
        assert!(again.is_empty() && is_aligned(again.as_slice()));
        // Past the largest class: an allocation of its own.
        let huge = AlignedBuf::with_capacity(32 << 20);
        assert_eq!(huge.capacity(), 32 << 20);
        assert!(worth_aligning(ALIGN) && worth_aligning(256 * ALIGN));
        assert!(!worth_aligning(0) && !worth_aligning(512) && !worth_aligning(ALIGN + 512));
    }

    #[test]
    #[should_panic(expected = "past the capacity")]
    fn advance_past_capacity_panics() {
        let mut b = AlignedBuf::with_capacity(8);
        // SAFETY: the call panics before anything is counted.
        unsafe { b.advance_mut(ALIGN) };
    }
}
