//! The on-disk bitmap: one bit per 4 KiB of data, set = out of sync, little-endian 64-bit words.
//!
//! [`format_dump`] prints it exactly as drbdmeta's `dump-md` does, so the two tools' dumps of
//! the same disk can be compared (and fed to `drbdmeta restore-md`).

use std::fmt::Write;

/// drbdmeta reads the bitmap in windows of 32 MiB; runs of equal words break at their edges.
const WINDOW_U32: usize = 8 * 1024 * 1024;

/// Prints the `bm` block body (from `{` to `}` and the newline) and returns it with the number
/// of bits set.
///
/// The format: four 64-bit words per line as `0x%016X;`; a `# at NkB` comment every 32 words;
/// a line that starts a run of at least 8 equal words whose 32-bit halves are equal too is
/// printed as `N times 0x...;`, N rounded down to a multiple of 4.
pub fn format_dump(bytes: &[u8]) -> (String, u64) {
    assert_eq!(
        bytes.len() % 32,
        0,
        "bitmap length must be whole lines of 4 words"
    );
    let w: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let n = w.len();
    let mut out = String::from("{");
    let mut bits = 0u64;
    let mut r = 0usize;
    while r < n {
        let cw = w[r];
        if r % 64 == 0 {
            let _ = write!(out, "\n   # at {}kB\n   ", 128 * r as u64);
        } else {
            out.push_str("\n   ");
        }
        let mut count = 0usize;
        let mut window_end = n.min((r / WINDOW_U32 + 1) * WINDOW_U32);
        loop {
            let j = (r..window_end).find(|&j| w[j] != cw).unwrap_or(window_end);
            let run = (j - r) / 8 * 8;
            if run <= 8 {
                break;
            }
            count += run;
            r += run;
            if j != window_end || r >= n {
                break;
            }
            window_end = n.min(r + WINDOW_U32);
        }
        if count > 0 {
            let _ = write!(out, " {} times 0x{cw:08X}{cw:08X};", count / 2);
            bits += count as u64 * u64::from(cw.count_ones());
            continue;
        }
        for k in 0..4 {
            let (lo, hi) = (w[r + 2 * k], w[r + 2 * k + 1]);
            let _ = write!(out, " 0x{hi:08X}{lo:08X};");
            bits += u64::from(lo.count_ones() + hi.count_ones());
        }
        r += 8;
    }
    out.push_str("\n}\n");
    (out, bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn empty_bitmap() {
        assert_eq!(format_dump(&[]), ("{\n}\n".to_string(), 0));
    }

    /// The bitmap drbdmeta 9.22 printed after `restore-md` of crafted words (4096 bytes).
    #[test]
    fn matches_drbdmeta_output() {
        let mut words = vec![0u64; 512];
        words[..4].copy_from_slice(&[
            u64::MAX,
            0x0000_0001_0000_0000,
            0x0000_0000_FFFF_FFFF,
            0x8000_0000_0000_0001,
        ]);
        words[4..24].fill(0x5555_5555_5555_5555);
        words[31] = 0x0000_0002_0000_0002;
        words[32..40].fill(0x0000_0002_0000_0002);
        words[40..43].fill(0x1234);
        words[343..353].fill(0xAAAA_AAAA_0000_0000);
        words[353..361].fill(u64::MAX);
        words[511] = 0xDEAD_BEEF_CAFE_BABE;
        let want = "{
   # at 0kB
    0xFFFFFFFFFFFFFFFF; 0x0000000100000000; 0x00000000FFFFFFFF; 0x8000000000000001;
    20 times 0x5555555555555555;
    0x0000000000000000; 0x0000000000000000; 0x0000000000000000; 0x0000000000000000;
    0x0000000000000000; 0x0000000000000000; 0x0000000000000000; 0x0000000200000002;
   # at 8192kB
    8 times 0x0000000200000002;
    0x0000000000001234; 0x0000000000001234; 0x0000000000001234; 0x0000000000000000;
    296 times 0x0000000000000000;
    0x0000000000000000; 0x0000000000000000; 0x0000000000000000; 0xAAAAAAAA00000000;
    0xAAAAAAAA00000000; 0xAAAAAAAA00000000; 0xAAAAAAAA00000000; 0xAAAAAAAA00000000;
    0xAAAAAAAA00000000; 0xAAAAAAAA00000000; 0xAAAAAAAA00000000; 0xAAAAAAAA00000000;
   # at 90112kB
    0xAAAAAAAA00000000; 0xFFFFFFFFFFFFFFFF; 0xFFFFFFFFFFFFFFFF; 0xFFFFFFFFFFFFFFFF;
    0xFFFFFFFFFFFFFFFF; 0xFFFFFFFFFFFFFFFF; 0xFFFFFFFFFFFFFFFF; 0xFFFFFFFFFFFFFFFF;
    0xFFFFFFFFFFFFFFFF; 0x0000000000000000; 0x0000000000000000; 0x0000000000000000;
    144 times 0x0000000000000000;
    0x0000000000000000; 0x0000000000000000; 0x0000000000000000; 0xDEADBEEFCAFEBABE;
}
";
        let (text, bits) = format_dump(&bytes_of(&words));
        assert_eq!(text, want);
        assert_eq!(bits, 1490);
    }

    #[test]
    fn all_zero_10g_is_one_run() {
        let (text, bits) = format_dump(&vec![0u8; 327_680]);
        assert_eq!(
            text,
            "{\n   # at 0kB\n    40960 times 0x0000000000000000;\n}\n"
        );
        assert_eq!(bits, 0);
    }

    /// drbdmeta splits runs at its 32 MiB read windows (observed on a 1100 GiB device).
    #[test]
    fn runs_split_at_32mib_windows() {
        let mut words = vec![0u64; 4_194_304 + 8 + 311_288];
        words[4_194_300..4_194_312].fill(0x0000_0003_0000_0003);
        let (text, bits) = format_dump(&bytes_of(&words));
        assert_eq!(
            text,
            "{\n   # at 0kB\n    4194300 times 0x0000000000000000;\n    0x0000000300000003; \
             0x0000000300000003; 0x0000000300000003; 0x0000000300000003;\n   # at 1073741824kB\n    \
             8 times 0x0000000300000003;\n    311288 times 0x0000000000000000;\n}\n"
        );
        assert_eq!(bits, 48);
    }
}
