//! The subset of ASN.1 BER that SNMP uses (RFC 3416 / X.690), pure: a reader over borrowed
//! bytes that checks every length against what is left before using it, and encoders that build
//! definite-length TLVs.

use std::fmt;

/// Universal and SNMP application tags.
pub mod tag {
    /// INTEGER.
    pub const INTEGER: u8 = 0x02;
    /// OCTET STRING.
    pub const OCTET_STRING: u8 = 0x04;
    /// NULL.
    pub const NULL: u8 = 0x05;
    /// OBJECT IDENTIFIER.
    pub const OID: u8 = 0x06;
    /// SEQUENCE.
    pub const SEQUENCE: u8 = 0x30;
    /// IpAddress.
    pub const IP_ADDRESS: u8 = 0x40;
    /// Counter32.
    pub const COUNTER32: u8 = 0x41;
    /// Gauge32 / Unsigned32.
    pub const GAUGE32: u8 = 0x42;
    /// TimeTicks.
    pub const TIMETICKS: u8 = 0x43;
    /// Opaque.
    pub const OPAQUE: u8 = 0x44;
    /// Counter64.
    pub const COUNTER64: u8 = 0x46;
    /// noSuchObject exception.
    pub const NO_SUCH_OBJECT: u8 = 0x80;
    /// noSuchInstance exception.
    pub const NO_SUCH_INSTANCE: u8 = 0x81;
    /// endOfMibView exception.
    pub const END_OF_MIB_VIEW: u8 = 0x82;
}

/// The most arcs an OID may have (RFC 2578: 128 sub-identifiers).
pub const MAX_OID_ARCS: usize = 128;

/// A BER decoding error: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed SNMP message: {0}")]
pub struct BerError(pub String);

fn err<T>(what: impl Into<String>) -> Result<T, BerError> {
    Err(BerError(what.into()))
}

/// Reads TLVs from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next TLV's tag without consuming it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// The next TLV: its tag and content.
    pub fn any(&mut self) -> Result<(u8, &'a [u8]), BerError> {
        self.any_raw().map(|(t, content, _)| (t, content))
    }

    /// The next TLV: its tag, its content, and the whole TLV's bytes.
    pub fn any_raw(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), BerError> {
        let start = self.buf;
        let (&t, rest) = self
            .buf
            .split_first()
            .ok_or(BerError("truncated: no tag".into()))?;
        if t & 0x1f == 0x1f {
            return err(format!("multi-byte tag {t:#04x} not used by SNMP"));
        }
        let (&first, rest) = rest
            .split_first()
            .ok_or(BerError("truncated: no length".into()))?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 {
                return err("indefinite length");
            }
            if n > 4 || rest.len() < n {
                return err(format!("length of {n} bytes"));
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if len > rest.len() {
            return err(format!(
                "tag {t:#04x} claims {len} bytes, {} left",
                rest.len()
            ));
        }
        let (content, rest) = rest.split_at(len);
        self.buf = rest;
        Ok((t, content, &start[..start.len() - rest.len()]))
    }

    /// The next TLV, which must have tag `want`.
    pub fn expect(&mut self, want: u8) -> Result<&'a [u8], BerError> {
        let (t, content) = self.any()?;
        if t != want {
            return err(format!("expected tag {want:#04x}, found {t:#04x}"));
        }
        Ok(content)
    }

    /// A SEQUENCE (or any constructed `tag`) as a reader over its content.
    pub fn sequence(&mut self, tag: u8) -> Result<Reader<'a>, BerError> {
        self.expect(tag).map(Reader::new)
    }

    /// An INTEGER that fits an i32.
    pub fn integer(&mut self) -> Result<i32, BerError> {
        let v = decode_signed(self.expect(tag::INTEGER)?)?;
        i32::try_from(v).or_else(|_| err(format!("integer {v} out of range")))
    }

    /// An OCTET STRING.
    pub fn octets(&mut self) -> Result<&'a [u8], BerError> {
        self.expect(tag::OCTET_STRING)
    }

    /// An OBJECT IDENTIFIER.
    pub fn oid(&mut self) -> Result<Oid, BerError> {
        Oid::decode(self.expect(tag::OID)?)
    }

    /// Fails unless everything was read.
    pub fn end(&self, what: &str) -> Result<(), BerError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            err(format!("{} bytes after {what}", self.buf.len()))
        }
    }
}

/// Decodes a two's-complement integer of up to 8 bytes.
pub fn decode_signed(c: &[u8]) -> Result<i64, BerError> {
    if c.is_empty() || c.len() > 8 {
        return err(format!("integer of {} bytes", c.len()));
    }
    let init: i64 = if c[0] & 0x80 != 0 { -1 } else { 0 };
    Ok(c.iter().fold(init, |acc, &b| (acc << 8) | i64::from(b)))
}

/// Decodes an unsigned integer of up to 8 value bytes (plus a leading zero byte).
pub fn decode_unsigned(c: &[u8]) -> Result<u64, BerError> {
    let c = match c {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => c,
    };
    if c.is_empty() || c.len() > 8 {
        return err(format!("unsigned integer of {} bytes", c.len()));
    }
    Ok(c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// Encodes a TLV.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).expect("below 0x80"));
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | u8::try_from(bytes.len() - skip).expect("at most 8"));
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes a signed integer's content (minimal two's complement).
pub fn signed_content(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

/// Encodes an unsigned integer's content (with a leading zero when the top bit is set).
pub fn unsigned_content(v: u64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count().min(7);
    let mut out = Vec::with_capacity(9);
    if bytes[skip] & 0x80 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&bytes[skip..]);
    out
}

/// An INTEGER TLV.
pub fn integer(v: i64) -> Vec<u8> {
    tlv(tag::INTEGER, &signed_content(v))
}

/// An OCTET STRING TLV.
pub fn octets(v: &[u8]) -> Vec<u8> {
    tlv(tag::OCTET_STRING, v)
}

/// A constructed TLV over already-encoded parts.
pub fn constructed(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag, &parts.concat())
}

/// An OBJECT IDENTIFIER.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(Vec<u32>);

impl Oid {
    /// From arcs; at least two, the first 0, 1 or 2 (and the second below 40 unless the first is
    /// 2), at most [`MAX_OID_ARCS`].
    pub fn new(arcs: Vec<u32>) -> Result<Oid, BerError> {
        if arcs.len() < 2 || arcs.len() > MAX_OID_ARCS {
            return err(format!("OID of {} arcs", arcs.len()));
        }
        if arcs[0] > 2
            || (arcs[0] < 2 && arcs[1] >= 40)
            || (arcs[0] == 2 && arcs[1] > u32::MAX - 80)
        {
            return err(format!("OID starting {}.{}", arcs[0], arcs[1]));
        }
        Ok(Oid(arcs))
    }

    /// Parses dotted text ("1.3.6.1.2.1.2.2.1.7", a leading dot allowed).
    pub fn parse(text: &str) -> Result<Oid, BerError> {
        let arcs: Result<Vec<u32>, _> = text
            .trim_start_matches('.')
            .split('.')
            .map(str::parse)
            .collect();
        Oid::new(arcs.or_else(|_| err(format!("OID {text:?}")))?)
    }

    /// The arcs.
    pub fn arcs(&self) -> &[u32] {
        &self.0
    }

    /// This OID with `arc` appended.
    pub fn child(&self, arc: u32) -> Oid {
        let mut arcs = self.0.clone();
        arcs.push(arc);
        Oid(arcs)
    }

    /// Whether `self` lies under `prefix` (strictly).
    pub fn starts_with(&self, prefix: &Oid) -> bool {
        self.0.len() > prefix.0.len() && self.0.starts_with(&prefix.0)
    }

    fn decode(c: &[u8]) -> Result<Oid, BerError> {
        if c.is_empty() {
            return err("empty OID");
        }
        let mut arcs = Vec::new();
        let mut acc: u64 = 0;
        let mut in_arc = false;
        for &b in c {
            if !in_arc && b == 0x80 {
                return err("OID arc with a leading 0x80");
            }
            acc = (acc << 7) | u64::from(b & 0x7f);
            if acc > u64::from(u32::MAX) + 80 {
                return err("OID arc too large");
            }
            in_arc = b & 0x80 != 0;
            if !in_arc {
                if arcs.is_empty() {
                    let (first, second) = match acc {
                        0..=39 => (0, acc),
                        40..=79 => (1, acc - 40),
                        _ => (2, acc - 80),
                    };
                    arcs.push(first);
                    arcs.push(u32::try_from(second).or_else(|_| err("OID arc too large"))?);
                } else {
                    arcs.push(u32::try_from(acc).or_else(|_| err("OID arc too large"))?);
                }
                if arcs.len() > MAX_OID_ARCS {
                    return err("OID too long");
                }
                acc = 0;
            }
        }
        if in_arc {
            return err("OID ends inside an arc");
        }
        Oid::new(arcs)
    }

    fn content(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let first = u64::from(self.0[0]) * 40 + u64::from(self.0[1]);
        for arc in std::iter::once(first).chain(self.0[2..].iter().map(|&a| u64::from(a))) {
            let mut groups = vec![u8::try_from(arc & 0x7f).expect("7 bits")];
            let mut v = arc >> 7;
            while v > 0 {
                groups.push(u8::try_from(v & 0x7f).expect("7 bits") | 0x80);
                v >>= 7;
            }
            out.extend(groups.iter().rev());
        }
        out
    }

    /// The OID's TLV.
    pub fn encode(&self) -> Vec<u8> {
        tlv(tag::OID, &self.content())
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&text.join("."))
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({self})")
    }
}

/// A variable's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// INTEGER (SNMP uses 32 bits).
    Integer(i32),
    /// OCTET STRING.
    OctetString(Vec<u8>),
    /// NULL (the value of every varbind in a request).
    Null,
    /// OBJECT IDENTIFIER.
    Oid(Oid),
    /// IpAddress.
    IpAddress([u8; 4]),
    /// Counter32.
    Counter32(u32),
    /// Gauge32.
    Gauge32(u32),
    /// TimeTicks.
    TimeTicks(u32),
    /// Opaque.
    Opaque(Vec<u8>),
    /// Counter64.
    Counter64(u64),
    /// noSuchObject.
    NoSuchObject,
    /// noSuchInstance.
    NoSuchInstance,
    /// endOfMibView.
    EndOfMibView,
}

fn u32_of(c: &[u8]) -> Result<u32, BerError> {
    let v = decode_unsigned(c)?;
    u32::try_from(v).or_else(|_| err(format!("32-bit value {v} out of range")))
}

impl Value {
    /// Decodes the next value.
    pub fn read(r: &mut Reader<'_>) -> Result<Value, BerError> {
        let (t, c) = r.any()?;
        Ok(match t {
            tag::INTEGER => {
                let v = decode_signed(c)?;
                Value::Integer(i32::try_from(v).or_else(|_| err(format!("integer {v}")))?)
            }
            tag::OCTET_STRING => Value::OctetString(c.to_vec()),
            tag::NULL if c.is_empty() => Value::Null,
            tag::OID => Value::Oid(Oid::decode(c)?),
            tag::IP_ADDRESS => Value::IpAddress(
                c.try_into()
                    .or_else(|_| err(format!("IpAddress of {} bytes", c.len())))?,
            ),
            tag::COUNTER32 => Value::Counter32(u32_of(c)?),
            tag::GAUGE32 => Value::Gauge32(u32_of(c)?),
            tag::TIMETICKS => Value::TimeTicks(u32_of(c)?),
            tag::OPAQUE => Value::Opaque(c.to_vec()),
            tag::COUNTER64 => Value::Counter64(decode_unsigned(c)?),
            tag::NO_SUCH_OBJECT if c.is_empty() => Value::NoSuchObject,
            tag::NO_SUCH_INSTANCE if c.is_empty() => Value::NoSuchInstance,
            tag::END_OF_MIB_VIEW if c.is_empty() => Value::EndOfMibView,
            _ => return err(format!("value tag {t:#04x} with {} bytes", c.len())),
        })
    }

    /// Encodes the value's TLV.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Value::Integer(v) => integer(i64::from(*v)),
            Value::OctetString(v) => octets(v),
            Value::Null => tlv(tag::NULL, &[]),
            Value::Oid(o) => o.encode(),
            Value::IpAddress(a) => tlv(tag::IP_ADDRESS, a),
            Value::Counter32(v) => tlv(tag::COUNTER32, &unsigned_content(u64::from(*v))),
            Value::Gauge32(v) => tlv(tag::GAUGE32, &unsigned_content(u64::from(*v))),
            Value::TimeTicks(v) => tlv(tag::TIMETICKS, &unsigned_content(u64::from(*v))),
            Value::Opaque(v) => tlv(tag::OPAQUE, v),
            Value::Counter64(v) => tlv(tag::COUNTER64, &unsigned_content(*v)),
            Value::NoSuchObject => tlv(tag::NO_SUCH_OBJECT, &[]),
            Value::NoSuchInstance => tlv(tag::NO_SUCH_INSTANCE, &[]),
            Value::EndOfMibView => tlv(tag::END_OF_MIB_VIEW, &[]),
        }
    }

    /// The value as text, as net-snmp prints it (roughly).
    pub fn to_text(&self) -> String {
        match self {
            Value::Integer(v) => v.to_string(),
            Value::OctetString(v) | Value::Opaque(v) => String::from_utf8_lossy(v).into_owned(),
            Value::Null => "NULL".into(),
            Value::Oid(o) => o.to_string(),
            Value::IpAddress(a) => format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]),
            Value::Counter32(v) | Value::Gauge32(v) | Value::TimeTicks(v) => v.to_string(),
            Value::Counter64(v) => v.to_string(),
            Value::NoSuchObject => "No Such Object".into(),
            Value::NoSuchInstance => "No Such Instance".into(),
            Value::EndOfMibView => "End of MIB".into(),
        }
    }
}
