//! The in-memory out-of-sync bitmap: one bit per 4 KiB block, set = the peer's copy of that
//! block may differ. Its words are the on-disk v08 bitmap's words (little-endian u64).

/// Bytes of data per bit.
pub const BLOCK_BYTES: u64 = 4096;

/// A bitmap over `blocks` blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    blocks: u64,
    set: u64,
}

impl Bitmap {
    /// An all-clear bitmap for `size_bytes` of data.
    pub fn new(size_bytes: u64) -> Bitmap {
        let blocks = size_bytes.div_ceil(BLOCK_BYTES);
        let words = usize::try_from(blocks.div_ceil(64)).expect("bitmap fits in memory");
        Bitmap {
            words: vec![0; words],
            blocks,
            set: 0,
        }
    }

    /// A bitmap from on-disk words; bits beyond `size_bytes` are ignored.
    pub fn from_words(size_bytes: u64, words: &[u64]) -> Bitmap {
        let mut b = Bitmap::new(size_bytes);
        let n = b.words.len().min(words.len());
        b.words[..n].copy_from_slice(&words[..n]);
        b.trim_tail();
        b.set = b.words.iter().map(|w| u64::from(w.count_ones())).sum();
        b
    }

    fn trim_tail(&mut self) {
        let extra = self.words.len() as u64 * 64 - self.blocks;
        if extra > 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= u64::MAX >> extra;
            }
        }
    }

    /// The words, for writing to disk or sending to the peer.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Number of blocks covered.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.set
    }

    /// Whether block `b` is set.
    pub fn get(&self, b: u64) -> bool {
        b < self.blocks && self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn block_range(offset: u64, len: u64) -> (u64, u64) {
        (offset / BLOCK_BYTES, (offset + len).div_ceil(BLOCK_BYTES))
    }

    /// Marks every block touched by `[offset, offset+len)` out of sync.
    pub fn set_range(&mut self, offset: u64, len: u64) {
        let (first, end) = Self::block_range(offset, len);
        for b in first..end.min(self.blocks) {
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            if self.words[w] & bit == 0 {
                self.words[w] |= bit;
                self.set += 1;
            }
        }
    }

    /// Marks blocks wholly inside `[offset, offset+len)` in sync.
    pub fn clear_range(&mut self, offset: u64, len: u64) {
        let first = offset.div_ceil(BLOCK_BYTES);
        let end = (offset + len) / BLOCK_BYTES;
        for b in first..end.min(self.blocks) {
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            if self.words[w] & bit != 0 {
                self.words[w] &= !bit;
                self.set -= 1;
            }
        }
    }

    /// Sets every bit (full sync).
    pub fn set_all(&mut self) {
        self.words.fill(u64::MAX);
        self.trim_tail();
        self.set = self.blocks;
    }

    /// Clears every bit.
    pub fn clear_all(&mut self) {
        self.words.fill(0);
        self.set = 0;
    }

    /// ORs `words` starting at word `offset_words` into this bitmap (the peer's bitmap).
    pub fn merge_words(&mut self, offset_words: u64, words: &[u64]) {
        let start = usize::try_from(offset_words)
            .unwrap_or(usize::MAX)
            .min(self.words.len());
        for (dst, src) in self.words[start..].iter_mut().zip(words) {
            *dst |= src;
        }
        self.trim_tail();
        self.set = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
    }

    /// The first run of set blocks at or after block `from`, at most `max_blocks` long:
    /// `(first block, blocks)`.
    pub fn next_run(&self, from: u64, max_blocks: u64) -> Option<(u64, u64)> {
        let mut b = from;
        while b < self.blocks {
            let w = self.words[(b / 64) as usize] >> (b % 64);
            if w == 0 {
                b = (b / 64 + 1) * 64;
                continue;
            }
            b += u64::from(w.trailing_zeros());
            break;
        }
        if b >= self.blocks {
            return None;
        }
        let mut n = 0;
        while n < max_blocks && b + n < self.blocks && self.get(b + n) {
            n += 1;
        }
        Some((b, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_and_runs() {
        let mut b = Bitmap::new(1 << 20); // 256 blocks
        b.set_range(4096 * 3 + 100, 10);
        assert_eq!(b.count(), 1);
        assert!(b.get(3));
        b.set_range(4096 * 70, 4096 * 5);
        assert_eq!(b.next_run(0, 100), Some((3, 1)));
        assert_eq!(b.next_run(4, 100), Some((70, 5)));
        assert_eq!(b.next_run(71, 2), Some((71, 2)));
        b.clear_range(4096 * 70 + 1, 4096 * 5);
        assert_eq!(b.count(), 2, "partial blocks are not cleared");
        b.set_all();
        assert_eq!(b.count(), 256);
        assert_eq!(b.next_run(250, 100), Some((250, 6)));
    }

    proptest! {
        #[test]
        fn count_matches_words(ops in prop::collection::vec((any::<bool>(), 0u64..(1 << 22), 1u64..(1 << 18)), 0..50)) {
            let mut b = Bitmap::new((1 << 22) + 5000);
            for (set, off, len) in ops {
                if set { b.set_range(off, len) } else { b.clear_range(off, len) }
                let ones: u64 = b.words().iter().map(|w| u64::from(w.count_ones())).sum();
                prop_assert_eq!(ones, b.count());
            }
            let copy = Bitmap::from_words((1 << 22) + 5000, b.words());
            prop_assert_eq!(copy, b);
        }
    }
}
