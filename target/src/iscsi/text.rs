//! iSCSI text key=value pairs (RFC 7143 §6.1): `key=value` strings, each ended by a NUL, in
//! login and text PDUs' data segments. Sans-IO, limits checked before allocating.

/// The most key=value pairs read from one negotiation (RFC limits nothing; real initiators send
/// about 25).
pub const MAX_KEYS: usize = 256;
/// The longest key name (RFC 7143 §6.1: 63 bytes).
pub const MAX_KEY_BYTES: usize = 63;
/// The longest value we accept (RFC 7143 §6.1: 8192 bytes for most values; CHAP values may be
/// up to 1024 binary bytes in hex).
pub const MAX_VALUE_BYTES: usize = 8192;

/// What is wrong with a text segment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    /// More than [`MAX_KEYS`] pairs.
    #[error("more than {MAX_KEYS} key=value pairs")]
    TooManyKeys,
    /// A pair without `=`, an empty or overlong key, or an overlong value.
    #[error("malformed key=value pair {0:?}")]
    Malformed(String),
    /// Not UTF-8 (the RFC's text values are UTF-8).
    #[error("text is not UTF-8")]
    NotUtf8,
}

/// Parses NUL-separated pairs; empty strings (padding, a trailing NUL) are skipped.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        if out.len() == MAX_KEYS {
            return Err(TextError::TooManyKeys);
        }
        let s = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
        let Some((k, v)) = s.split_once('=') else {
            return Err(TextError::Malformed(s.chars().take(80).collect()));
        };
        if k.is_empty() || k.len() > MAX_KEY_BYTES || v.len() > MAX_VALUE_BYTES {
            return Err(TextError::Malformed(s.chars().take(80).collect()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Encodes pairs as `key=value\0...`.
pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Decodes a binary value: `0x` hex or `0b` base64 (RFC 7143 §6.1).
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        let hex = hex.as_bytes();
        let odd = hex.len() % 2;
        let mut out = Vec::with_capacity(hex.len() / 2 + 1);
        let digit = |c: u8| {
            (c as char)
                .to_digit(16)
                .map(|d| u8::try_from(d).expect("hex"))
        };
        if odd == 1 {
            out.push(digit(hex[0])?);
        }
        for pair in hex[odd..].chunks(2) {
            out.push(digit(pair[0])? << 4 | digit(pair[1])?);
        }
        return (!out.is_empty()).then_some(out);
    }
    if let Some(b64) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return base64_decode(b64);
    }
    None
}

/// Encodes a binary value as `0x` hex.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s {
        acc = acc << 6 | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).expect("masked"));
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = vec![
            ("InitiatorName".to_string(), "iqn.x:y".to_string()),
            ("HeaderDigest".to_string(), "CRC32C,None".to_string()),
            ("TargetAlias".to_string(), "a=b".to_string()),
        ];
        let raw = encode(&pairs);
        assert_eq!(&raw[..16], b"InitiatorName=iq");
        let mut padded = raw.clone();
        padded.extend_from_slice(&[0, 0]);
        assert_eq!(parse(&padded).unwrap(), pairs);
    }

    #[test]
    fn malformed_text_is_refused() {
        assert!(matches!(parse(b"novalue\0"), Err(TextError::Malformed(_))));
        assert!(matches!(parse(b"=x\0"), Err(TextError::Malformed(_))));
        assert_eq!(parse(b"a=\xff\0"), Err(TextError::NotUtf8));
        let many: Vec<u8> = (0..=MAX_KEYS).flat_map(|_| b"a=b\0".to_vec()).collect();
        assert_eq!(parse(&many), Err(TextError::TooManyKeys));
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0aFF").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(decode_binary("0xabc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(decode_binary("0bAQI=").unwrap(), vec![1, 2]);
        assert_eq!(decode_binary("12"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(encode_hex(&[0, 0xab]), "0x00ab");
    }
}
