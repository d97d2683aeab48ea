//! Sans-IO codec of the fixed newstyle handshake: the greeting, the client flags, client
//! options and the server's option replies, and the reply to `NBD_OPT_EXPORT_NAME`.
//!
//! Both directions are encoded and decoded, so the server's messages round-trip in tests and a
//! client (tests, tools) can use the same code.
//!
//! ```text
//! S: u64 NBDMAGIC  u64 IHAVEOPT  u16 handshake flags
//! C: u32 client flags
//! C: u64 IHAVEOPT  u32 option  u32 length  [length bytes]            (repeated)
//! S: u64 0x3e889045565a9  u32 option  u32 reply type  u32 length  [length bytes]
//! ```
//!
//! A syntactically broken option whose length is sane decodes to [`ClientOption::Invalid`], so
//! the server answers `NBD_REP_ERR_INVALID` and stays in sync; only a bad magic or an option
//! longer than [`MAX_OPTION_BYTES`] is an error (the session cannot continue).

use super::{
    be_u16, be_u32, be_u64, info, opt, rep, Decoded, IHAVEOPT, MAX_INFO_REQUESTS, MAX_META_QUERIES,
    MAX_OPTION_BYTES, MAX_STRING_BYTES, NBDMAGIC, OPTION_REPLY_MAGIC,
};

/// Bytes of the server greeting.
pub const GREETING_BYTES: usize = 18;
/// Bytes of the client flags.
pub const CLIENT_FLAGS_BYTES: usize = 4;
/// Bytes of an option header (magic, option, length).
pub const OPTION_HEADER_BYTES: usize = 16;
/// Bytes of an option reply header (magic, option, type, length).
pub const OPTION_REPLY_HEADER_BYTES: usize = 20;
/// Zero padding after the `NBD_OPT_EXPORT_NAME` reply unless `NO_ZEROES` was agreed.
pub const EXPORT_NAME_PADDING_BYTES: usize = 124;

/// What makes handshake bytes impossible to continue from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The greeting does not start with `NBDMAGIC` `IHAVEOPT`: not a newstyle NBD server.
    #[error("not a newstyle NBD server: greeting magic {found:#018x}")]
    BadGreeting {
        /// The first magic that did not match.
        found: u64,
    },
    /// An option did not start with `IHAVEOPT`: the client is out of sync.
    #[error("option magic {found:#018x} is not IHAVEOPT; the client is out of sync")]
    BadOptionMagic {
        /// The magic read.
        found: u64,
    },
    /// An option or reply is longer than this implementation accepts.
    #[error("option {option} carries {length} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The option code.
        option: u32,
        /// The length announced.
        length: u32,
        /// The limit.
        limit: u32,
    },
    /// An option reply did not start with the reply magic.
    #[error("option reply magic {found:#018x} is wrong; the server is out of sync")]
    BadReplyMagic {
        /// The magic read.
        found: u64,
    },
    /// An option reply is malformed.
    #[error("malformed reply to option {option}: {reason}")]
    BadReply {
        /// The option answered.
        option: u32,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The server greeting: magics and handshake flags.
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_BYTES] {
    let mut b = [0u8; GREETING_BYTES];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&handshake_flags.to_be_bytes());
    b
}

/// Decodes the greeting (client side); yields the handshake flags.
pub fn decode_greeting(buf: &[u8]) -> Result<Decoded<u16>, HandshakeError> {
    if buf.len() < GREETING_BYTES {
        return Ok(Decoded::NeedMore(GREETING_BYTES));
    }
    for (at, want) in [(0, NBDMAGIC), (8, IHAVEOPT)] {
        let found = be_u64(buf, at);
        if found != want {
            return Err(HandshakeError::BadGreeting { found });
        }
    }
    Ok(Decoded::Frame(be_u16(buf, 16), GREETING_BYTES))
}

/// Decodes the client flags (validation against what the server offered is the caller's).
pub fn decode_client_flags(buf: &[u8]) -> Decoded<u32> {
    if buf.len() < CLIENT_FLAGS_BYTES {
        return Decoded::NeedMore(CLIENT_FLAGS_BYTES);
    }
    Decoded::Frame(be_u32(buf, 0), CLIENT_FLAGS_BYTES)
}

/// The body of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// The export name ("" is the default export).
    pub name: String,
    /// The `NBD_INFO_*` items asked for.
    pub info_requests: Vec<u16>,
}

/// The body of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// The export the contexts are for.
    pub name: String,
    /// The queries, each `namespace:leaf`.
    pub queries: Vec<String>,
}

/// One option sent by the client during option haggling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`: choose an export and enter transmission (no error possible).
    ExportName(String),
    /// `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(InfoRequest),
    /// `NBD_OPT_GO`.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextRequest),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextRequest),
    /// A known option whose data is malformed; to be answered with `NBD_REP_ERR_INVALID`.
    /// (Encoding one sends the option with no data.)
    Invalid {
        /// The option code.
        option: u32,
        /// What is wrong, for the error message.
        reason: &'static str,
    },
    /// An option this implementation does not know; to be answered with `NBD_REP_ERR_UNSUP`.
    /// (Encoding one sends it with no data.)
    Unknown {
        /// The option code.
        option: u32,
    },
}

impl ClientOption {
    /// The option code on the wire.
    pub fn code(&self) -> u32 {
        match self {
            ClientOption::ExportName(_) => opt::EXPORT_NAME,
            ClientOption::Abort => opt::ABORT,
            ClientOption::List => opt::LIST,
            ClientOption::StartTls => opt::STARTTLS,
            ClientOption::Info(_) => opt::INFO,
            ClientOption::Go(_) => opt::GO,
            ClientOption::StructuredReply => opt::STRUCTURED_REPLY,
            ClientOption::ListMetaContext(_) => opt::LIST_META_CONTEXT,
            ClientOption::SetMetaContext(_) => opt::SET_META_CONTEXT,
            ClientOption::Invalid { option, .. } | ClientOption::Unknown { option } => *option,
        }
    }

    /// Appends the option, header included, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut data = Vec::new();
        match self {
            ClientOption::ExportName(name) => data.extend_from_slice(name.as_bytes()),
            ClientOption::Info(r) | ClientOption::Go(r) => {
                put_string32(&mut data, &r.name);
                data.extend_from_slice(&len_u16(r.info_requests.len()).to_be_bytes());
                for i in &r.info_requests {
                    data.extend_from_slice(&i.to_be_bytes());
                }
            }
            ClientOption::ListMetaContext(r) | ClientOption::SetMetaContext(r) => {
                put_string32(&mut data, &r.name);
                data.extend_from_slice(&len_u32(r.queries.len()).to_be_bytes());
                for q in &r.queries {
                    put_string32(&mut data, q);
                }
            }
            ClientOption::Abort
            | ClientOption::List
            | ClientOption::StartTls
            | ClientOption::StructuredReply
            | ClientOption::Invalid { .. }
            | ClientOption::Unknown { .. } => {}
        }
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&self.code().to_be_bytes());
        out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
        out.extend_from_slice(&data);
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("NBD lengths fit in 32 bits")
}

fn len_u16(n: usize) -> u16 {
    u16::try_from(n).expect("NBD counts fit in 16 bits")
}

fn put_string32(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&len_u32(s.len()).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Decodes one client option. The length is checked against [`MAX_OPTION_BYTES`] before the
/// data is waited for, so a hostile length never makes the server buffer it.
pub fn decode_option(buf: &[u8]) -> Result<Decoded<ClientOption>, HandshakeError> {
    if buf.len() < OPTION_HEADER_BYTES {
        return Ok(Decoded::NeedMore(OPTION_HEADER_BYTES));
    }
    let magic = be_u64(buf, 0);
    if magic != IHAVEOPT {
        return Err(HandshakeError::BadOptionMagic { found: magic });
    }
    let option = be_u32(buf, 8);
    let length = be_u32(buf, 12);
    if length > MAX_OPTION_BYTES {
        return Err(HandshakeError::TooLarge {
            option,
            length,
            limit: MAX_OPTION_BYTES,
        });
    }
    let total = OPTION_HEADER_BYTES + length as usize;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total));
    }
    let data = &buf[OPTION_HEADER_BYTES..total];
    Ok(Decoded::Frame(parse_option_data(option, data), total))
}

fn parse_option_data(option: u32, data: &[u8]) -> ClientOption {
    let invalid = |reason| ClientOption::Invalid { option, reason };
    match option {
        opt::EXPORT_NAME => match checked_string(data) {
            Ok(name) => ClientOption::ExportName(name),
            Err(reason) => invalid(reason),
        },
        // The protocol asks servers to ignore data sent with ABORT.
        opt::ABORT => ClientOption::Abort,
        opt::LIST | opt::STARTTLS | opt::STRUCTURED_REPLY if !data.is_empty() => {
            invalid("this option takes no data")
        }
        opt::LIST => ClientOption::List,
        opt::STARTTLS => ClientOption::StartTls,
        opt::STRUCTURED_REPLY => ClientOption::StructuredReply,
        opt::INFO | opt::GO => match parse_info_request(data) {
            Ok(r) if option == opt::GO => ClientOption::Go(r),
            Ok(r) => ClientOption::Info(r),
            Err(reason) => invalid(reason),
        },
        opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => match parse_meta_request(data) {
            Ok(r) if option == opt::SET_META_CONTEXT => ClientOption::SetMetaContext(r),
            Ok(r) => ClientOption::ListMetaContext(r),
            Err(reason) => invalid(reason),
        },
        _ => ClientOption::Unknown { option },
    }
}

/// A cursor over option data; every read is bounds-checked.
struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or("a length reaches past the end of the option")?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(be_u16(self.take(2)?, 0))
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(be_u32(self.take(4)?, 0))
    }
    fn string32(&mut self) -> Result<String, &'static str> {
        let n = self.u32()? as usize;
        if n > MAX_STRING_BYTES {
            return Err("a string is longer than 4096 bytes");
        }
        checked_string(self.take(n)?)
    }
    fn done(&self) -> Result<(), &'static str> {
        if self.at == self.data.len() {
            Ok(())
        } else {
            Err("trailing bytes after the option's fields")
        }
    }
}

fn checked_string(b: &[u8]) -> Result<String, &'static str> {
    if b.len() > MAX_STRING_BYTES {
        return Err("a string is longer than 4096 bytes");
    }
    let s = std::str::from_utf8(b).map_err(|_| "a string is not UTF-8")?;
    if s.contains('\0') {
        return Err("a string contains NUL");
    }
    Ok(s.to_string())
}

fn parse_info_request(data: &[u8]) -> Result<InfoRequest, &'static str> {
    let mut c = Cursor { data, at: 0 };
    let name = c.string32()?;
    let n = c.u16()?;
    if n > MAX_INFO_REQUESTS {
        return Err("too many information requests");
    }
    let mut info_requests = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        info_requests.push(c.u16()?);
    }
    c.done()?;
    Ok(InfoRequest {
        name,
        info_requests,
    })
}

fn parse_meta_request(data: &[u8]) -> Result<MetaContextRequest, &'static str> {
    let mut c = Cursor { data, at: 0 };
    let name = c.string32()?;
    let n = c.u32()?;
    if n > MAX_META_QUERIES {
        return Err("too many metadata context queries");
    }
    let mut queries = Vec::with_capacity(n as usize);
    for _ in 0..n {
        queries.push(c.string32()?);
    }
    c.done()?;
    Ok(MetaContextRequest { name, queries })
}

/// One `NBD_REP_INFO` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size in bytes and transmission flags.
    Export {
        /// Export size.
        size_bytes: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `NBD_INFO_NAME`: the canonical name.
    Name(String),
    /// `NBD_INFO_DESCRIPTION`.
    Description(String),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize {
        /// Minimum block size.
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload.
        max_payload: u32,
    },
    /// An item this code does not know (decoding only).
    Unknown {
        /// Its type.
        kind: u16,
        /// Its payload.
        data: Vec<u8>,
    },
}

/// One server reply to an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionReply {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER`: one export in the answer to `NBD_OPT_LIST`.
    Server {
        /// The export name.
        name: String,
        /// A description for humans (may be empty).
        description: String,
    },
    /// `NBD_REP_INFO`.
    Info(Info),
    /// `NBD_REP_META_CONTEXT`.
    MetaContext {
        /// The context id (0 when listing).
        id: u32,
        /// The context name.
        name: String,
    },
    /// Any `NBD_REP_ERR_*`, with a message for humans.
    Error {
        /// The reply type (bit 31 set).
        code: u32,
        /// The message.
        message: String,
    },
}

impl OptionReply {
    /// An error reply; the message is cut to the protocol's string limit.
    pub fn error(code: u32, message: impl Into<String>) -> OptionReply {
        debug_assert!(code & rep::ERROR_BIT != 0, "not an error reply type");
        let mut message = message.into();
        if message.len() > MAX_STRING_BYTES {
            let mut cut = MAX_STRING_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        OptionReply::Error { code, message }
    }
}

/// Appends a reply to `option` to `out`.
pub fn encode_option_reply(option: u32, reply: &OptionReply, out: &mut Vec<u8>) {
    let mut data = Vec::new();
    let kind = match reply {
        OptionReply::Ack => rep::ACK,
        OptionReply::Server { name, description } => {
            put_string32(&mut data, name);
            data.extend_from_slice(description.as_bytes());
            rep::SERVER
        }
        OptionReply::Info(i) => {
            match i {
                Info::Export { size_bytes, flags } => {
                    data.extend_from_slice(&info::EXPORT.to_be_bytes());
                    data.extend_from_slice(&size_bytes.to_be_bytes());
                    data.extend_from_slice(&flags.to_be_bytes());
                }
                Info::Name(s) | Info::Description(s) => {
                    let kind = if matches!(i, Info::Name(_)) {
                        info::NAME
                    } else {
                        info::DESCRIPTION
                    };
                    data.extend_from_slice(&kind.to_be_bytes());
                    data.extend_from_slice(s.as_bytes());
                }
                Info::BlockSize {
                    min,
                    preferred,
                    max_payload,
                } => {
                    data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
                    for v in [min, preferred, max_payload] {
                        data.extend_from_slice(&v.to_be_bytes());
                    }
                }
                Info::Unknown { kind, data: d } => {
                    data.extend_from_slice(&kind.to_be_bytes());
                    data.extend_from_slice(d);
                }
            }
            rep::INFO
        }
        OptionReply::MetaContext { id, name } => {
            data.extend_from_slice(&id.to_be_bytes());
            data.extend_from_slice(name.as_bytes());
            rep::META_CONTEXT
        }
        OptionReply::Error { code, message } => {
            data.extend_from_slice(message.as_bytes());
            *code
        }
    };
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
    out.extend_from_slice(&data);
}

/// Decodes one option reply (client side): the option it answers and the reply.
pub fn decode_option_reply(buf: &[u8]) -> Result<Decoded<(u32, OptionReply)>, HandshakeError> {
    if buf.len() < OPTION_REPLY_HEADER_BYTES {
        return Ok(Decoded::NeedMore(OPTION_REPLY_HEADER_BYTES));
    }
    let magic = be_u64(buf, 0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(HandshakeError::BadReplyMagic { found: magic });
    }
    let option = be_u32(buf, 8);
    let kind = be_u32(buf, 12);
    let length = be_u32(buf, 16);
    if length > MAX_OPTION_BYTES {
        return Err(HandshakeError::TooLarge {
            option,
            length,
            limit: MAX_OPTION_BYTES,
        });
    }
    let total = OPTION_REPLY_HEADER_BYTES + length as usize;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total));
    }
    let data = &buf[OPTION_REPLY_HEADER_BYTES..total];
    let bad = |reason| HandshakeError::BadReply { option, reason };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad("a string is not UTF-8"));
    let reply = match kind {
        rep::ACK if data.is_empty() => OptionReply::Ack,
        rep::ACK => return Err(bad("ACK with data")),
        rep::SERVER => {
            let mut c = Cursor { data, at: 0 };
            let name = c.string32().map_err(bad)?;
            let description = text(&data[c.at..])?;
            OptionReply::Server { name, description }
        }
        rep::INFO => {
            if data.len() < 2 {
                return Err(bad("INFO shorter than its type"));
            }
            let body = &data[2..];
            let i = match be_u16(data, 0) {
                info::EXPORT if body.len() == 10 => Info::Export {
                    size_bytes: be_u64(body, 0),
                    flags: be_u16(body, 8),
                },
                info::EXPORT => return Err(bad("INFO_EXPORT length is not 12")),
                info::NAME => Info::Name(text(body)?),
                info::DESCRIPTION => Info::Description(text(body)?),
                info::BLOCK_SIZE if body.len() == 12 => Info::BlockSize {
                    min: be_u32(body, 0),
                    preferred: be_u32(body, 4),
                    max_payload: be_u32(body, 8),
                },
                info::BLOCK_SIZE => return Err(bad("INFO_BLOCK_SIZE length is not 14")),
                kind => Info::Unknown {
                    kind,
                    data: body.to_vec(),
                },
            };
            OptionReply::Info(i)
        }
        rep::META_CONTEXT => {
            if data.len() < 4 {
                return Err(bad("META_CONTEXT shorter than its id"));
            }
            OptionReply::MetaContext {
                id: be_u32(data, 0),
                name: text(&data[4..])?,
            }
        }
        code if code & rep::ERROR_BIT != 0 => OptionReply::Error {
            code,
            message: text(data)?,
        },
        _ => return Err(bad("unknown reply type")),
    };
    Ok(Decoded::Frame((option, reply), total))
}

/// Appends the reply to `NBD_OPT_EXPORT_NAME`: size, flags and, unless the client agreed to
/// `NO_ZEROES`, 124 zero bytes.
pub fn encode_export_name_reply(size_bytes: u64, flags: u16, no_zeroes: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&size_bytes.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; EXPORT_NAME_PADDING_BYTES]);
    }
}

/// Decodes the reply to `NBD_OPT_EXPORT_NAME` (client side): size and flags.
pub fn decode_export_name_reply(buf: &[u8], no_zeroes: bool) -> Decoded<(u64, u16)> {
    let total = 10
        + if no_zeroes {
            0
        } else {
            EXPORT_NAME_PADDING_BYTES
        };
    if buf.len() < total {
        return Decoded::NeedMore(total);
    }
    Decoded::Frame((be_u64(buf, 0), be_u16(buf, 8)), total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(o: &ClientOption) {
        let mut b = Vec::new();
        o.encode(&mut b);
        for cut in 0..b.len() {
            assert!(
                matches!(decode_option(&b[..cut]), Ok(Decoded::NeedMore(n)) if n > cut),
                "partial option of {cut} bytes"
            );
        }
        assert_eq!(
            decode_option(&b).unwrap(),
            Decoded::Frame(o.clone(), b.len())
        );
    }

    #[test]
    fn every_option_round_trips() {
        let info = InfoRequest {
            name: "disk.img".into(),
            info_requests: vec![info::BLOCK_SIZE, info::NAME],
        };
        let meta = MetaContextRequest {
            name: "r0".into(),
            queries: vec!["base:allocation".into(), "qemu:dirty-bitmap:x".into()],
        };
        for o in [
            ClientOption::ExportName("r0".into()),
            ClientOption::ExportName(String::new()),
            ClientOption::Abort,
            ClientOption::List,
            ClientOption::StartTls,
            ClientOption::Info(info.clone()),
            ClientOption::Go(info),
            ClientOption::Go(InfoRequest {
                name: String::new(),
                info_requests: vec![],
            }),
            ClientOption::StructuredReply,
            ClientOption::ListMetaContext(meta.clone()),
            ClientOption::SetMetaContext(meta),
            ClientOption::Unknown { option: 99 },
        ] {
            round_trip(&o);
        }
    }

    #[test]
    fn golden_go_option() {
        let mut b = Vec::new();
        ClientOption::Go(InfoRequest {
            name: "ab".into(),
            info_requests: vec![3],
        })
        .encode(&mut b);
        let want: &[u8] = &[
            b'I', b'H', b'A', b'V', b'E', b'O', b'P', b'T', 0, 0, 0, 7, 0, 0, 0, 10, // header
            0, 0, 0, 2, b'a', b'b', // name
            0, 1, 0, 3, // one request: BLOCK_SIZE
        ];
        assert_eq!(b, want);
    }

    #[test]
    fn malformed_known_options_are_invalid_not_fatal() {
        // LIST with data.
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt::LIST.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(b"xyz");
        assert!(matches!(
            decode_option(&b).unwrap(),
            Decoded::Frame(
                ClientOption::Invalid {
                    option: opt::LIST,
                    ..
                },
                19
            )
        ));
        // GO whose name length reaches past the option.
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&opt::GO.to_be_bytes());
        b.extend_from_slice(&6u32.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 200, 0, 0]);
        assert!(matches!(
            decode_option(&b).unwrap(),
            Decoded::Frame(
                ClientOption::Invalid {
                    option: opt::GO,
                    ..
                },
                22
            )
        ));
        // An unknown option with data is skipped whole.
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&0x1234u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&[1, 2]);
        assert_eq!(
            decode_option(&b).unwrap(),
            Decoded::Frame(ClientOption::Unknown { option: 0x1234 }, 18)
        );
    }

    #[test]
    fn bad_magic_and_oversized_options_are_fatal() {
        let mut b = vec![0u8; 16];
        assert!(matches!(
            decode_option(&b),
            Err(HandshakeError::BadOptionMagic { found: 0 })
        ));
        b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[12..16].copy_from_slice(&(MAX_OPTION_BYTES + 1).to_be_bytes());
        assert!(matches!(
            decode_option(&b),
            Err(HandshakeError::TooLarge { .. })
        ));
    }

    #[test]
    fn every_reply_round_trips() {
        for r in [
            OptionReply::Ack,
            OptionReply::Server {
                name: "a.img".into(),
                description: String::new(),
            },
            OptionReply::Server {
                name: "r0".into(),
                description: "replicated".into(),
            },
            OptionReply::Info(Info::Export {
                size_bytes: 1 << 40,
                flags: 0x0d6d,
            }),
            OptionReply::Info(Info::Name("r0".into())),
            OptionReply::Info(Info::Description("d".into())),
            OptionReply::Info(Info::BlockSize {
                min: 1,
                preferred: 4096,
                max_payload: 32 << 20,
            }),
            OptionReply::Info(Info::Unknown {
                kind: 77,
                data: vec![1, 2, 3],
            }),
            OptionReply::MetaContext {
                id: 1,
                name: "base:allocation".into(),
            },
            OptionReply::error(rep::ERR_UNSUP, "option 99 is not supported"),
            OptionReply::error(rep::ERR_POLICY, ""),
        ] {
            let mut b = Vec::new();
            encode_option_reply(opt::GO, &r, &mut b);
            for cut in 0..b.len() {
                assert!(matches!(
                    decode_option_reply(&b[..cut]),
                    Ok(Decoded::NeedMore(_))
                ));
            }
            assert_eq!(
                decode_option_reply(&b).unwrap(),
                Decoded::Frame((opt::GO, r), b.len())
            );
        }
    }

    #[test]
    fn golden_info_export_reply() {
        let mut b = Vec::new();
        encode_option_reply(
            opt::GO,
            &OptionReply::Info(Info::Export {
                size_bytes: 0x1000,
                flags: 0x0001,
            }),
            &mut b,
        );
        let want: &[u8] = &[
            0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, // magic
            0, 0, 0, 7, // GO
            0, 0, 0, 3, // REP_INFO
            0, 0, 0, 12, // length
            0, 0, // INFO_EXPORT
            0, 0, 0, 0, 0, 0, 0x10, 0, // size
            0, 1, // flags
        ];
        assert_eq!(b, want);
    }

    #[test]
    fn greeting_and_export_name_reply_round_trip() {
        let g = encode_greeting(3);
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(decode_greeting(&g).unwrap(), Decoded::Frame(3, 18));
        assert!(decode_greeting(&[0u8; 18]).is_err());
        for no_zeroes in [false, true] {
            let mut b = Vec::new();
            encode_export_name_reply(12345, 0x4d, no_zeroes, &mut b);
            assert_eq!(b.len(), if no_zeroes { 10 } else { 134 });
            assert_eq!(
                decode_export_name_reply(&b, no_zeroes),
                Decoded::Frame((12345, 0x4d), b.len())
            );
        }
        assert_eq!(
            decode_client_flags(&[0, 0, 0, 3]),
            Decoded::Frame(3, CLIENT_FLAGS_BYTES)
        );
    }

    proptest! {
        #[test]
        fn option_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_option(&data);
            let _ = decode_option_reply(&data);
        }

        #[test]
        fn option_data_never_panics(code in 0u32..12, data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut b = IHAVEOPT.to_be_bytes().to_vec();
            b.extend_from_slice(&code.to_be_bytes());
            b.extend_from_slice(&len_u32(data.len()).to_be_bytes());
            b.extend_from_slice(&data);
            let decoded = decode_option(&b).unwrap();
            prop_assert!(matches!(decoded, Decoded::Frame(_, n) if n == b.len()));
        }
    }
}
