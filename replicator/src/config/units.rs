//! DRBD's numbers: plain counts, sizes with K/M/G suffixes, and per-option default units.
//!
//! In DRBD a size without a suffix is in the option's own unit (KiB/s for `resync-rate`, sectors
//! for `c-fill-target`, bytes for `sndbuf-size`), and `K`, `M`, `G` (either case) are powers of
//! 1024 of bytes; `s` means 512-byte sectors. A count (`max-buffers 36k`) takes the same
//! suffixes as multipliers.

/// 1 KiB.
pub const KIB: u64 = 1024;
/// 1 MiB.
pub const MIB: u64 = 1024 * KIB;
/// 1 GiB.
pub const GIB: u64 = 1024 * MIB;
/// One sector.
pub const SECTOR: u64 = 512;

fn split_suffix(text: &str) -> Result<(u64, Option<char>), String> {
    let (digits, suffix) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    if digits.is_empty() {
        return Err(format!("'{text}' is not a number"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is too large"))?;
    let suffix = match suffix {
        None => None,
        Some(s) if s.chars().count() == 1 => s.chars().next(),
        Some(s) => {
            return Err(format!(
                "'{text}' has an unknown suffix '{s}' (use K, M, G or s)"
            ))
        }
    };
    Ok((n, suffix))
}

/// Parses a size into bytes; a bare number is in units of `unit_bytes`.
pub fn parse_size(text: &str, unit_bytes: u64) -> Result<u64, String> {
    let (n, suffix) = split_suffix(text)?;
    let multiplier = match suffix {
        None => unit_bytes,
        Some('k' | 'K') => KIB,
        Some('m' | 'M') => MIB,
        Some('g' | 'G') => GIB,
        Some('t' | 'T') => 1024 * GIB,
        Some('s') => SECTOR,
        Some(c) => {
            return Err(format!(
                "'{text}' has an unknown suffix '{c}' (use K, M, G or s)"
            ))
        }
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses a count; `k`, `m`, `g` multiply by powers of 1024 as drbdsetup does.
pub fn parse_count(text: &str) -> Result<u64, String> {
    let (n, suffix) = split_suffix(text)?;
    let multiplier = match suffix {
        None => 1,
        Some('k' | 'K') => KIB,
        Some('m' | 'M') => MIB,
        Some('g' | 'G') => GIB,
        Some(c) => {
            return Err(format!(
                "'{text}' has an unknown suffix '{c}' (use k, M or G)"
            ))
        }
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses a duration as Pacemaker writes intervals and timeouts: a number of seconds, or with
/// a unit `ms`, `s`, `m`/`min`, `h`/`hr`; in milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let multiplier = match unit {
        "ms" | "msec" => 1,
        "" | "s" | "sec" => 1_000,
        "m" | "min" => 60_000,
        "h" | "hr" => 3_600_000,
        other => {
            return Err(format!(
                "'{text}' has an unknown unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Formats milliseconds so that [`parse_duration_ms`] reads them back exactly: `90s`, `1500ms`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Formats a byte size so that [`parse_size`] with the same unit reads it back exactly,
/// with the largest exact binary suffix.
pub fn format_size(bytes: u64, unit_bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    for (suffix, size) in [("G", GIB), ("M", MIB), ("K", KIB)] {
        if bytes % size == 0 && size >= unit_bytes.min(KIB) {
            return format!("{}{suffix}", bytes / size);
        }
    }
    if unit_bytes == 1 {
        bytes.to_string()
    } else {
        // Only sector-unit options reach here with a non-KiB multiple.
        debug_assert_eq!(bytes % SECTOR, 0);
        format!("{}s", bytes / SECTOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_use_the_option_unit_without_suffix() {
        assert_eq!(parse_size("100", KIB), Ok(100 * KIB));
        assert_eq!(parse_size("100M", KIB), Ok(100 * MIB));
        assert_eq!(parse_size("1M", SECTOR), Ok(MIB));
        assert_eq!(parse_size("100", SECTOR), Ok(100 * SECTOR));
        assert_eq!(parse_size("2048k", 1), Ok(2 * MIB));
        assert_eq!(parse_size("8s", 1), Ok(4096));
        assert!(parse_size("1X", 1).is_err());
        assert!(parse_size("M", 1).is_err());
        assert!(parse_size("-1", 1).is_err());
        assert!(parse_size("1MB", 1).is_err());
        assert!(parse_size("99999999999999999999", 1).is_err());
        assert!(parse_size("99999999999G", 1).is_err());
    }

    #[test]
    fn counts_take_multipliers() {
        assert_eq!(parse_count("36k"), Ok(36 * 1024));
        assert_eq!(parse_count("7"), Ok(7));
        assert!(parse_count("7s").is_err());
    }

    #[test]
    fn durations_as_pacemaker_writes_them() {
        assert_eq!(parse_duration_ms("20"), Ok(20_000));
        assert_eq!(parse_duration_ms("20s"), Ok(20_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("2min"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("1.5s").is_err());
        assert!(parse_duration_ms("-1s").is_err());
        assert!(parse_duration_ms("2d").is_err());
        assert!(parse_duration_ms("99999999999999999h").is_err());
        assert_eq!(format_duration_ms(90_000), "90s");
        assert_eq!(format_duration_ms(1_500), "1500ms");
    }

    proptest! {
        #[test]
        fn format_duration_round_trips(ms in 0u64..1u64 << 40) {
            prop_assert_eq!(parse_duration_ms(&format_duration_ms(ms)), Ok(ms));
        }

        #[test]
        fn format_size_round_trips(n in 0u64..1u64 << 40, unit in prop::sample::select(vec![1u64, SECTOR, KIB])) {
            let bytes = n * unit;
            prop_assert_eq!(parse_size(&format_size(bytes, unit), unit), Ok(bytes));
        }
    }
}
