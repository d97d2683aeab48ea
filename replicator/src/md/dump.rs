//! The text of `dump-md`, in drbdmeta's v08 format.
//!
//! One deliberate difference: drbd-utils before 9.33 print `flags 0x00000000` for every v08
//! disk (a bug fixed upstream in 9.33); tandem prints the real flags, as fixed drbdmeta does.

use std::fmt::Write;

use super::bitmap;
use super::layout::{bm_bytes, Layout};
use super::Superblock;

/// `YYYY-MM-DD HH:MM:SS +0000 [epoch]` for a Unix time, in UTC.
pub fn timestamp(unix_s: u64) -> String {
    let days = i64::try_from(unix_s / 86_400).expect("u64 days fit i64");
    let secs = unix_s % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 [{unix_s}]",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The number of bitmap bytes dump-md prints: enough for the last agreed size, clipped to
/// what the layout can hold.
pub fn dumped_bm_bytes(sb: &Superblock, layout: &Layout) -> u64 {
    bm_bytes(sb.la_size_sect.min(layout.max_data_sect))
}

/// Formats the whole dump. `header` is the `host> command line` that produced it, `bitmap`
/// the [`dumped_bm_bytes`] bytes read from the bitmap's start.
pub fn format(
    sb: &Superblock,
    layout: &Layout,
    bitmap: &[u8],
    header: &str,
    unix_s: u64,
) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "# DRBD meta data dump\n# {}\n# {header}\n#\n\n",
        timestamp(unix_s)
    );
    o.push_str("version \"v08\";\n\n");
    let _ = writeln!(o, "# md_size_sect {}", sb.md_size_sect);
    let _ = writeln!(o, "# md_offset {}", layout.md_offset);
    let _ = writeln!(o, "# al_offset {}", layout.al_byte_offset());
    let _ = writeln!(o, "# bm_offset {}\n", layout.bm_byte_offset());
    o.push_str("uuid {\n   ");
    for uuid in sb.uuids {
        let _ = write!(o, " 0x{uuid:016X};");
    }
    let _ = write!(o, "\n    flags 0x{:08X};\n}}\n", sb.flags);
    let _ = writeln!(o, "# al-extents {};", sb.al_nr_extents);
    let _ = writeln!(
        o,
        "la-size-sect {};",
        sb.la_size_sect.min(layout.max_data_sect)
    );
    let _ = writeln!(o, "bm-byte-per-bit {};", sb.bm_bytes_per_bit);
    let _ = writeln!(o, "device-uuid 0x{:016X};", sb.device_uuid);
    let _ = writeln!(o, "la-peer-max-bio-size {};", sb.la_peer_max_bio_size);
    let _ = writeln!(o, "al-stripes {};", sb.al_stripes);
    let _ = writeln!(o, "al-stripe-size-4k {};", sb.al_stripe_size_4k);
    let _ = writeln!(o, "# bm-bytes {};", bitmap.len());
    let (bm_text, bits) = bitmap::format_dump(bitmap);
    let _ = write!(o, "bm {bm_text}");
    let _ = writeln!(o, "# bits-set {bits};");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 +0000 [0]");
        assert_eq!(
            timestamp(1_795_383_085),
            "2026-11-22 21:31:25 +0000 [1795383085]"
        );
        assert_eq!(
            timestamp(951_782_400),
            "2000-02-29 00:00:00 +0000 [951782400]"
        );
    }

    #[test]
    fn fresh_100m_dump_matches_drbdmeta_text() {
        let layout = Layout::internal(100 << 20, 1, 8).unwrap();
        let sb = Superblock::fresh(&layout, 257);
        let text = format(
            &sb,
            &layout,
            &[],
            "vm> drbdmeta 0 v08 /dev/loop0 internal dump-md",
            1_795_383_085,
        );
        let want = "# DRBD meta data dump
# 2026-11-22 21:31:25 +0000 [1795383085]
# vm> drbdmeta 0 v08 /dev/loop0 internal dump-md
#

version \"v08\";

# md_size_sect 80
# md_offset 104853504
# al_offset 104820736
# bm_offset 104816640

uuid {
    0x0000000000000004; 0x0000000000000000; 0x0000000000000000; 0x0000000000000000;
    flags 0x00000080;
}
# al-extents 257;
la-size-sect 0;
bm-byte-per-bit 4096;
device-uuid 0x0000000000000000;
la-peer-max-bio-size 0;
al-stripes 1;
al-stripe-size-4k 8;
# bm-bytes 0;
bm {
}
# bits-set 0;
";
        assert_eq!(text, want);
    }
}
