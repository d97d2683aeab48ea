//! Sans-IO codec of the transmission phase: requests, simple replies and structured reply
//! chunks, and the pure check that turns a decoded request into what to do (or the protocol's
//! error value) for one session.
//!
//! ```text
//! request        u32 0x25609513  u16 flags  u16 type  u64 cookie  u64 offset  u32 length  [data]
//! simple reply   u32 0x67446698  u32 error  u64 cookie  [data]
//! chunk          u32 0x668e33ef  u16 flags  u16 type  u64 cookie  u32 length  [payload]
//! ```
//!
//! A WRITE whose payload exceeds [`MAX_PAYLOAD_BYTES`] is refused from its header, before any of
//! the payload is buffered; the session cannot continue after it (the payload would have to be
//! read to stay in sync), so it is an error and the driver disconnects. Every other bad request
//! is well framed and answered with an [`Errno`].

use super::{
    be_u16, be_u32, be_u64, cmd, cmd_flags, reply_type, transmission_flags as tf, Decoded, Errno,
    MAX_BLOCK_STATUS_EXTENTS, MAX_PAYLOAD_BYTES, MAX_STRING_BYTES, REPLY_FLAG_DONE, REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};

/// Bytes of a request header.
pub const REQUEST_HEADER_BYTES: usize = 28;
/// Bytes of a simple reply (without data).
pub const SIMPLE_REPLY_BYTES: usize = 16;
/// Bytes of a structured chunk header.
pub const CHUNK_HEADER_BYTES: usize = 20;
/// Bytes of an `OFFSET_DATA` chunk before its data (header and offset).
pub const OFFSET_DATA_PREFIX_BYTES: usize = CHUNK_HEADER_BYTES + 8;
/// The longest structured chunk payload a client decoder accepts: a full read plus its offset,
/// or a block-status chunk of the most extents.
pub const MAX_CHUNK_PAYLOAD_BYTES: u32 = MAX_PAYLOAD_BYTES + 8;

/// What makes transmission bytes impossible to continue from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransmissionError {
    /// A request did not start with the request magic: the client is out of sync.
    #[error("request magic {found:#010x} is not {REQUEST_MAGIC:#010x}; the client is out of sync")]
    BadRequestMagic {
        /// The magic read.
        found: u32,
    },
    /// A WRITE announced more payload than the limit.
    #[error("WRITE of {length} bytes exceeds the {limit}-byte payload limit")]
    PayloadTooLarge {
        /// The length announced.
        length: u32,
        /// The limit.
        limit: u32,
    },
    /// A reply did not start with a reply magic.
    #[error("reply magic {found:#010x} is unknown; the server is out of sync")]
    BadReplyMagic {
        /// The magic read.
        found: u32,
    },
    /// A structured chunk is malformed.
    #[error("malformed structured reply chunk: {0}")]
    BadChunk(&'static str),
}

/// A request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`.
    Write,
    /// `NBD_CMD_DISC`.
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_CACHE`.
    Cache,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus,
    /// Anything else (answered with `NBD_EINVAL`).
    Unknown(u16),
}

impl Command {
    /// The type on the wire.
    pub fn code(self) -> u16 {
        match self {
            Command::Read => cmd::READ,
            Command::Write => cmd::WRITE,
            Command::Disc => cmd::DISC,
            Command::Flush => cmd::FLUSH,
            Command::Trim => cmd::TRIM,
            Command::Cache => cmd::CACHE,
            Command::WriteZeroes => cmd::WRITE_ZEROES,
            Command::BlockStatus => cmd::BLOCK_STATUS,
            Command::Unknown(c) => c,
        }
    }

    /// The command for a wire type.
    pub fn from_code(code: u16) -> Command {
        match code {
            cmd::READ => Command::Read,
            cmd::WRITE => Command::Write,
            cmd::DISC => Command::Disc,
            cmd::FLUSH => Command::Flush,
            cmd::TRIM => Command::Trim,
            cmd::CACHE => Command::Cache,
            cmd::WRITE_ZEROES => Command::WriteZeroes,
            cmd::BLOCK_STATUS => Command::BlockStatus,
            c => Command::Unknown(c),
        }
    }
}

/// A request header. For WRITE, `length` bytes of payload follow it on the wire; the decoder
/// only reports a frame once they are all in the buffer, right after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// The request type.
    pub command: Command,
    /// The client's opaque cookie, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

impl Request {
    /// Bytes of payload following the header on the wire.
    pub fn payload_bytes(&self) -> usize {
        if self.command == Command::Write {
            self.length as usize
        } else {
            0
        }
    }

    /// Appends the header (not the payload) to `out`.
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.command.code().to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// Decodes one request. The frame length covers the WRITE payload, which is
/// `buf[REQUEST_HEADER_BYTES..frame]`; its size is checked before it is waited for.
pub fn decode_request(buf: &[u8]) -> Result<Decoded<Request>, TransmissionError> {
    let Some(request) = decode_request_header(buf)? else {
        return Ok(Decoded::NeedMore(REQUEST_HEADER_BYTES));
    };
    let total = REQUEST_HEADER_BYTES + request.payload_bytes();
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total));
    }
    Ok(Decoded::Frame(request, total))
}

/// Decodes a request's header alone (`None` until `buf` holds it), with the same checks as
/// [`decode_request`]: a server can then read a WRITE's payload into a buffer of its choice.
pub fn decode_request_header(buf: &[u8]) -> Result<Option<Request>, TransmissionError> {
    if buf.len() < REQUEST_HEADER_BYTES {
        return Ok(None);
    }
    let magic = be_u32(buf, 0);
    if magic != REQUEST_MAGIC {
        return Err(TransmissionError::BadRequestMagic { found: magic });
    }
    let request = Request {
        flags: be_u16(buf, 4),
        command: Command::from_code(be_u16(buf, 6)),
        cookie: be_u64(buf, 8),
        offset: be_u64(buf, 16),
        length: be_u32(buf, 24),
    };
    if request.command == Command::Write && request.length > MAX_PAYLOAD_BYTES {
        return Err(TransmissionError::PayloadTooLarge {
            length: request.length,
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(Some(request))
}

/// What one session negotiated; the input of [`check_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The export size.
    pub size_bytes: u64,
    /// The transmission flags sent to the client.
    pub flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The id of `base:allocation` when the client selected it for this export.
    pub allocation_context: Option<u32>,
    /// Writes must be aligned to this (the advertised minimum block size); 1 = any.
    pub min_block_bytes: u32,
}

/// What a valid request asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read `length` bytes; `df`: in one content chunk.
    Read {
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
        /// `NBD_CMD_FLAG_DF`.
        df: bool,
    },
    /// Write the payload.
    Write {
        /// Offset.
        offset: u64,
        /// Durable before the reply.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Discard a range.
    Trim {
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Zero a range.
    WriteZeroes {
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
        /// `NBD_CMD_FLAG_NO_HOLE`: keep it allocated.
        no_hole: bool,
        /// `NBD_CMD_FLAG_FAST_ZERO`: fail with `NBD_ENOTSUP` unless it is fast.
        fast: bool,
        /// Durable before the reply.
        fua: bool,
    },
    /// Report `base:allocation`.
    BlockStatus {
        /// Offset.
        offset: u64,
        /// Length.
        length: u32,
        /// `NBD_CMD_FLAG_REQ_ONE`.
        req_one: bool,
        /// The context id to report under.
        context_id: u32,
    },
    /// Nothing to do but reply success (zero length, CACHE).
    Nothing,
    /// `NBD_CMD_DISC`: finish in-flight requests and close.
    Disconnect,
}

/// Checks a request against the session and says what to do, or which error to answer.
///
/// The errors follow the protocol's advice: EPERM for writes to a read-only export, ENOSPC for
/// writes past the end, EINVAL for reads past the end, unknown commands and flags not valid for
/// the command or not negotiated.
pub fn check_request(s: &Session, r: &Request) -> Result<Action, Errno> {
    let allowed = match r.command {
        Command::Read => cmd_flags::DF,
        Command::WriteZeroes => cmd_flags::NO_HOLE | cmd_flags::FAST_ZERO,
        Command::BlockStatus => cmd_flags::REQ_ONE,
        _ => 0,
    } | cmd_flags::FUA;
    if r.flags & !allowed != 0 {
        return Err(Errno::Inval);
    }
    let flag = |f: u16| r.flags & f != 0;
    let negotiated = |f: u16| s.flags & f != 0;
    if (flag(cmd_flags::FUA) && !negotiated(tf::SEND_FUA))
        || (flag(cmd_flags::DF) && !negotiated(tf::SEND_DF))
        || (flag(cmd_flags::FAST_ZERO) && !negotiated(tf::SEND_FAST_ZERO))
    {
        return Err(Errno::Inval);
    }
    let read_only = negotiated(tf::READ_ONLY);
    let in_range = r
        .offset
        .checked_add(u64::from(r.length))
        .is_some_and(|end| end <= s.size_bytes);
    let fua = flag(cmd_flags::FUA);
    let range = |past_end: Errno| if in_range { Ok(()) } else { Err(past_end) };
    let aligned = s.min_block_bytes <= 1
        || (r.offset % u64::from(s.min_block_bytes) == 0 && r.length % s.min_block_bytes == 0);
    if !aligned
        && matches!(
            r.command,
            Command::Write | Command::WriteZeroes | Command::Trim
        )
    {
        // The export advertised this minimum block size; a write below it is refused.
        return Err(Errno::Inval);
    }
    let action = match r.command {
        Command::Disc => return Ok(Action::Disconnect),
        Command::Unknown(_) => return Err(Errno::Inval),
        Command::Flush => {
            if !negotiated(tf::SEND_FLUSH) || r.offset != 0 || r.length != 0 {
                return Err(Errno::Inval);
            }
            return Ok(Action::Flush);
        }
        Command::Read => {
            range(Errno::Inval)?;
            if r.length > MAX_PAYLOAD_BYTES {
                return Err(Errno::Inval);
            }
            Action::Read {
                offset: r.offset,
                length: r.length,
                df: flag(cmd_flags::DF),
            }
        }
        Command::Write => {
            if read_only {
                return Err(Errno::Perm);
            }
            range(Errno::NoSpc)?;
            Action::Write {
                offset: r.offset,
                fua,
            }
        }
        Command::Trim => {
            if !negotiated(tf::SEND_TRIM) {
                return Err(Errno::Inval);
            }
            if read_only {
                return Err(Errno::Perm);
            }
            range(Errno::Inval)?;
            Action::Trim {
                offset: r.offset,
                length: r.length,
                fua,
            }
        }
        Command::WriteZeroes => {
            if !negotiated(tf::SEND_WRITE_ZEROES) {
                return Err(Errno::Inval);
            }
            if read_only {
                return Err(Errno::Perm);
            }
            range(Errno::NoSpc)?;
            Action::WriteZeroes {
                offset: r.offset,
                length: r.length,
                no_hole: flag(cmd_flags::NO_HOLE),
                fast: flag(cmd_flags::FAST_ZERO),
                fua,
            }
        }
        Command::BlockStatus => {
            let Some(context_id) = s.allocation_context.filter(|_| s.structured) else {
                return Err(Errno::Inval);
            };
            range(Errno::Inval)?;
            Action::BlockStatus {
                offset: r.offset,
                length: r.length,
                req_one: flag(cmd_flags::REQ_ONE),
                context_id,
            }
        }
        Command::Cache => {
            range(Errno::Inval)?;
            Action::Nothing
        }
    };
    if r.length == 0 && r.command != Command::Write {
        return Ok(Action::Nothing);
    }
    Ok(action)
}

/// Appends a simple reply header; for a successful simple READ the data follows it.
pub fn encode_simple_reply(error: Option<Errno>, cookie: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.map_or(0, Errno::code).to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// One `base:allocation` descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Bytes it covers (nonzero).
    pub length: u32,
    /// `NBD_STATE_*` flags.
    pub flags: u32,
}

/// The payload of one structured reply chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    OffsetData {
        /// Export offset of the data.
        offset: u64,
        /// The data.
        data: Vec<u8>,
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`: `length` bytes of zeroes.
    OffsetHole {
        /// Export offset.
        offset: u64,
        /// Bytes (nonzero).
        length: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    BlockStatus {
        /// The metadata context.
        context_id: u32,
        /// Consecutive descriptors from the request's offset.
        descriptors: Vec<Descriptor>,
    },
    /// `NBD_REPLY_TYPE_ERROR`.
    Error {
        /// The error (never zero on the wire).
        errno: Errno,
        /// A message for humans.
        message: String,
    },
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    ErrorOffset {
        /// The error.
        errno: Errno,
        /// A message for humans.
        message: String,
        /// Where it happened.
        offset: u64,
    },
}

fn chunk_header(flags: u16, kind: u16, cookie: u64, length: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Appends the header and offset of an `OFFSET_DATA` chunk of `data_bytes` bytes; the caller
/// sends the data itself after it (so a read buffer is never copied into the header).
pub fn encode_offset_data_prefix(
    flags: u16,
    cookie: u64,
    offset: u64,
    data_bytes: u32,
    out: &mut Vec<u8>,
) {
    debug_assert!(data_bytes <= MAX_PAYLOAD_BYTES);
    chunk_header(flags, reply_type::OFFSET_DATA, cookie, data_bytes + 8, out);
    out.extend_from_slice(&offset.to_be_bytes());
}

fn message_bytes(message: &str) -> &[u8] {
    let mut cut = message.len().min(MAX_STRING_BYTES);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    &message.as_bytes()[..cut]
}

/// Appends a whole chunk; `done` sets `NBD_REPLY_FLAG_DONE`.
pub fn encode_chunk(done: bool, cookie: u64, chunk: &Chunk, out: &mut Vec<u8>) {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    let len = |n: usize| u32::try_from(n).expect("chunk payloads are bounded");
    match chunk {
        Chunk::None => chunk_header(flags, reply_type::NONE, cookie, 0, out),
        Chunk::OffsetData { offset, data } => {
            encode_offset_data_prefix(flags, cookie, *offset, len(data.len()), out);
            out.extend_from_slice(data);
        }
        Chunk::OffsetHole { offset, length } => {
            chunk_header(flags, reply_type::OFFSET_HOLE, cookie, 12, out);
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&length.to_be_bytes());
        }
        Chunk::BlockStatus {
            context_id,
            descriptors,
        } => {
            debug_assert!(!descriptors.is_empty() && descriptors.len() <= MAX_BLOCK_STATUS_EXTENTS);
            let bytes = 4 + 8 * descriptors.len();
            chunk_header(flags, reply_type::BLOCK_STATUS, cookie, len(bytes), out);
            out.extend_from_slice(&context_id.to_be_bytes());
            for d in descriptors {
                out.extend_from_slice(&d.length.to_be_bytes());
                out.extend_from_slice(&d.flags.to_be_bytes());
            }
        }
        Chunk::Error { errno, message } | Chunk::ErrorOffset { errno, message, .. } => {
            let m = message_bytes(message);
            let (kind, extra) = match chunk {
                Chunk::ErrorOffset { .. } => (reply_type::ERROR_OFFSET, 8),
                _ => (reply_type::ERROR, 0),
            };
            chunk_header(flags, kind, cookie, len(6 + m.len() + extra), out);
            out.extend_from_slice(&errno.code().to_be_bytes());
            out.extend_from_slice(&u16::try_from(m.len()).expect("≤ 4096").to_be_bytes());
            out.extend_from_slice(m);
            if let Chunk::ErrorOffset { offset, .. } = chunk {
                out.extend_from_slice(&offset.to_be_bytes());
            }
        }
    }
}

/// A decoded reply (client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A simple reply header; for a successful READ, the data follows and the caller, who knows
    /// the request's length, reads it.
    Simple {
        /// 0 or an error value.
        error: u32,
        /// The cookie.
        cookie: u64,
    },
    /// One structured chunk.
    Structured {
        /// `NBD_REPLY_FLAG_DONE` was set.
        done: bool,
        /// The cookie.
        cookie: u64,
        /// The payload.
        chunk: Chunk,
    },
}

/// Decodes one reply (client side). The chunk length is checked against
/// [`MAX_CHUNK_PAYLOAD_BYTES`] (or the block-status limit) before its payload is waited for.
pub fn decode_reply(buf: &[u8]) -> Result<Decoded<Reply>, TransmissionError> {
    if buf.len() < 4 {
        return Ok(Decoded::NeedMore(4));
    }
    match be_u32(buf, 0) {
        SIMPLE_REPLY_MAGIC => {
            if buf.len() < SIMPLE_REPLY_BYTES {
                return Ok(Decoded::NeedMore(SIMPLE_REPLY_BYTES));
            }
            let reply = Reply::Simple {
                error: be_u32(buf, 4),
                cookie: be_u64(buf, 8),
            };
            Ok(Decoded::Frame(reply, SIMPLE_REPLY_BYTES))
        }
        STRUCTURED_REPLY_MAGIC => decode_chunk(buf),
        found => Err(TransmissionError::BadReplyMagic { found }),
    }
}

fn decode_chunk(buf: &[u8]) -> Result<Decoded<Reply>, TransmissionError> {
    use TransmissionError::BadChunk;
    if buf.len() < CHUNK_HEADER_BYTES {
        return Ok(Decoded::NeedMore(CHUNK_HEADER_BYTES));
    }
    let flags = be_u16(buf, 4);
    let kind = be_u16(buf, 6);
    let cookie = be_u64(buf, 8);
    let length = be_u32(buf, 16);
    let limit = if kind == reply_type::BLOCK_STATUS {
        u32::try_from(4 + 8 * MAX_BLOCK_STATUS_EXTENTS).expect("small")
    } else {
        MAX_CHUNK_PAYLOAD_BYTES
    };
    if length > limit {
        return Err(BadChunk("payload longer than the limit"));
    }
    let total = CHUNK_HEADER_BYTES + length as usize;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total));
    }
    let p = &buf[CHUNK_HEADER_BYTES..total];
    let chunk = match kind {
        reply_type::NONE if p.is_empty() => Chunk::None,
        reply_type::NONE => return Err(BadChunk("NONE with a payload")),
        reply_type::OFFSET_DATA if p.len() > 8 => Chunk::OffsetData {
            offset: be_u64(p, 0),
            data: p[8..].to_vec(),
        },
        reply_type::OFFSET_DATA => return Err(BadChunk("OFFSET_DATA shorter than 9 bytes")),
        reply_type::OFFSET_HOLE if p.len() == 12 && be_u32(p, 8) != 0 => Chunk::OffsetHole {
            offset: be_u64(p, 0),
            length: be_u32(p, 8),
        },
        reply_type::OFFSET_HOLE => return Err(BadChunk("OFFSET_HOLE is not 12 bytes")),
        reply_type::BLOCK_STATUS if p.len() >= 12 && (p.len() - 4) % 8 == 0 => Chunk::BlockStatus {
            context_id: be_u32(p, 0),
            descriptors: p[4..]
                .chunks_exact(8)
                .map(|d| Descriptor {
                    length: be_u32(d, 0),
                    flags: be_u32(d, 4),
                })
                .collect(),
        },
        reply_type::BLOCK_STATUS => return Err(BadChunk("BLOCK_STATUS length is not 4 + 8n")),
        k if k & reply_type::ERROR_BIT != 0 => {
            if p.len() < 6 {
                return Err(BadChunk("error chunk shorter than 6 bytes"));
            }
            let errno = Errno::from_code(be_u32(p, 0));
            let n = usize::from(be_u16(p, 4));
            let extra = if k == reply_type::ERROR_OFFSET { 8 } else { 0 };
            if 6 + n + extra > p.len() {
                return Err(BadChunk("error message longer than the chunk"));
            }
            let message = String::from_utf8_lossy(&p[6..6 + n]).into_owned();
            if k == reply_type::ERROR_OFFSET {
                Chunk::ErrorOffset {
                    errno,
                    message,
                    offset: be_u64(p, 6 + n),
                }
            } else {
                Chunk::Error { errno, message }
            }
        }
        _ => return Err(BadChunk("unknown chunk type")),
    };
    let reply = Reply::Structured {
        done: flags & REPLY_FLAG_DONE != 0,
        cookie,
        chunk,
    };
    Ok(Decoded::Frame(reply, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_FLAGS: u16 = tf::HAS_FLAGS
        | tf::SEND_FLUSH
        | tf::SEND_FUA
        | tf::SEND_TRIM
        | tf::SEND_WRITE_ZEROES
        | tf::SEND_DF
        | tf::SEND_FAST_ZERO
        | tf::CAN_MULTI_CONN;

    fn session() -> Session {
        Session {
            min_block_bytes: 1,
            size_bytes: 1 << 20,
            flags: ALL_FLAGS,
            structured: true,
            allocation_context: Some(1),
        }
    }

    fn req(command: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 0xdead_beef_0000_0001,
            offset,
            length,
        }
    }

    #[test]
    fn requests_round_trip_and_ask_for_their_payload() {
        for r in [
            req(Command::Read, cmd_flags::DF, 4096, 512),
            req(Command::Write, cmd_flags::FUA, 0, 3),
            req(Command::Disc, 0, 0, 0),
            req(Command::Flush, 0, 0, 0),
            req(Command::Trim, 0, 1 << 30, 1 << 20),
            req(Command::Cache, 0, 0, 1),
            req(Command::WriteZeroes, cmd_flags::NO_HOLE, 8, 8),
            req(Command::BlockStatus, cmd_flags::REQ_ONE, 0, u32::MAX),
            req(Command::Unknown(42), 0, 0, 0),
        ] {
            let mut b = Vec::new();
            r.encode_header(&mut b);
            b.extend(std::iter::repeat_n(0xaa, r.payload_bytes()));
            for cut in 0..b.len() {
                assert!(matches!(decode_request(&b[..cut]), Ok(Decoded::NeedMore(n)) if n > cut));
            }
            assert_eq!(decode_request(&b).unwrap(), Decoded::Frame(r, b.len()));
        }
    }

    #[test]
    fn golden_request() {
        let mut b = Vec::new();
        req(Command::Write, cmd_flags::FUA, 0x200, 0x10).encode_header(&mut b);
        let want: &[u8] = &[
            0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1, // magic, FUA, WRITE
            0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1, // cookie
            0, 0, 0, 0, 0, 0, 2, 0, // offset
            0, 0, 0, 0x10, // length
        ];
        assert_eq!(b, want);
    }

    #[test]
    fn bad_magic_and_oversized_write_are_fatal_before_buffering() {
        let mut b = Vec::new();
        req(Command::Read, 0, 0, 1).encode_header(&mut b);
        b[0] ^= 1;
        assert!(matches!(
            decode_request(&b),
            Err(TransmissionError::BadRequestMagic { .. })
        ));
        let mut b = Vec::new();
        req(Command::Write, 0, 0, MAX_PAYLOAD_BYTES + 1).encode_header(&mut b);
        assert_eq!(
            decode_request(&b),
            Err(TransmissionError::PayloadTooLarge {
                length: MAX_PAYLOAD_BYTES + 1,
                limit: MAX_PAYLOAD_BYTES
            })
        );
        // An oversized READ is well framed: it gets an error reply, not a disconnect.
        let mut b = Vec::new();
        req(Command::Read, 0, 0, MAX_PAYLOAD_BYTES + 1).encode_header(&mut b);
        assert!(matches!(decode_request(&b), Ok(Decoded::Frame(..))));
    }

    #[test]
    fn writes_below_the_minimum_block_size_are_refused() {
        let s = Session {
            min_block_bytes: 512,
            ..session()
        };
        assert_eq!(
            check_request(&s, &req(Command::Write, 0, 1, 512)),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&s, &req(Command::Write, 0, 512, 100)),
            Err(Errno::Inval)
        );
        assert_eq!(
            check_request(&s, &req(Command::WriteZeroes, 0, 0, 1)),
            Err(Errno::Inval)
        );
        assert!(check_request(&s, &req(Command::Write, 0, 1024, 4096)).is_ok());
        assert!(
            check_request(&s, &req(Command::Read, 0, 1, 3)).is_ok(),
            "reads may be unaligned"
        );
    }

    #[test]
    fn check_request_follows_the_protocol_errors() {
        let s = session();
        let size = s.size_bytes;
        let cases: &[(Request, Result<Action, Errno>)] = &[
            (
                req(Command::Read, 0, 0, 4096),
                Ok(Action::Read {
                    offset: 0,
                    length: 4096,
                    df: false,
                }),
            ),
            (req(Command::Read, 0, size - 1, 2), Err(Errno::Inval)),
            (req(Command::Read, 0, u64::MAX, 2), Err(Errno::Inval)),
            (req(Command::Write, 0, size, 1), Err(Errno::NoSpc)),
            (req(Command::WriteZeroes, 0, size, 1), Err(Errno::NoSpc)),
            (req(Command::Trim, 0, size, 1), Err(Errno::Inval)),
            (req(Command::BlockStatus, 0, size, 1), Err(Errno::Inval)),
            (
                req(Command::Read, cmd_flags::NO_HOLE, 0, 1),
                Err(Errno::Inval),
            ),
            (
                req(Command::Write, cmd_flags::REQ_ONE, 0, 1),
                Err(Errno::Inval),
            ),
            (req(Command::Write, 1 << 9, 0, 1), Err(Errno::Inval)),
            (req(Command::Unknown(9), 0, 0, 0), Err(Errno::Inval)),
            (req(Command::Flush, 0, 1, 0), Err(Errno::Inval)),
            (req(Command::Flush, cmd_flags::FUA, 0, 0), Ok(Action::Flush)),
            (req(Command::Disc, 0, 5, 5), Ok(Action::Disconnect)),
            (req(Command::Read, 0, 0, 0), Ok(Action::Nothing)),
            (req(Command::Cache, 0, 0, 512), Ok(Action::Nothing)),
            (
                req(Command::Write, cmd_flags::FUA, size - 1, 1),
                Ok(Action::Write {
                    offset: size - 1,
                    fua: true,
                }),
            ),
            (
                req(
                    Command::WriteZeroes,
                    cmd_flags::FAST_ZERO | cmd_flags::NO_HOLE,
                    0,
                    512,
                ),
                Ok(Action::WriteZeroes {
                    offset: 0,
                    length: 512,
                    no_hole: true,
                    fast: true,
                    fua: false,
                }),
            ),
            (
                req(Command::BlockStatus, cmd_flags::REQ_ONE, 0, 512),
                Ok(Action::BlockStatus {
                    offset: 0,
                    length: 512,
                    req_one: true,
                    context_id: 1,
                }),
            ),
        ];
        for (r, want) in cases {
            assert_eq!(check_request(&s, r), *want, "{r:?}");
        }
    }

    #[test]
    fn check_request_honours_negotiation_and_read_only() {
        let mut s = session();
        s.flags |= tf::READ_ONLY;
        for c in [Command::Write, Command::Trim, Command::WriteZeroes] {
            assert_eq!(check_request(&s, &req(c, 0, 0, 1)), Err(Errno::Perm));
        }
        let mut s = session();
        s.allocation_context = None;
        assert_eq!(
            check_request(&s, &req(Command::BlockStatus, 0, 0, 1)),
            Err(Errno::Inval)
        );
        let mut s = session();
        s.flags = tf::HAS_FLAGS;
        for (c, f) in [
            (Command::Write, cmd_flags::FUA),
            (Command::Read, cmd_flags::DF),
            (Command::Flush, 0),
            (Command::Trim, 0),
            (Command::WriteZeroes, 0),
        ] {
            assert_eq!(
                check_request(&s, &req(c, f, 0, 1)),
                Err(Errno::Inval),
                "{c:?}"
            );
        }
        let read = req(Command::Read, 0, 0, MAX_PAYLOAD_BYTES + 1);
        let mut s = session();
        s.size_bytes = u64::MAX;
        assert_eq!(check_request(&s, &read), Err(Errno::Inval));
    }

    #[test]
    fn every_reply_round_trips() {
        let chunks = [
            Chunk::None,
            Chunk::OffsetData {
                offset: 4096,
                data: vec![1, 2, 3, 4],
            },
            Chunk::OffsetHole {
                offset: 8192,
                length: 65536,
            },
            Chunk::BlockStatus {
                context_id: 1,
                descriptors: vec![
                    Descriptor {
                        length: 4096,
                        flags: 0,
                    },
                    Descriptor {
                        length: 1 << 20,
                        flags: 3,
                    },
                ],
            },
            Chunk::Error {
                errno: Errno::Io,
                message: "read r0 at 4096: Input/output error".into(),
            },
            Chunk::ErrorOffset {
                errno: Errno::NoSpc,
                message: String::new(),
                offset: 77,
            },
        ];
        for (i, c) in chunks.iter().enumerate() {
            let done = i % 2 == 0;
            let mut b = Vec::new();
            encode_chunk(done, 9, c, &mut b);
            for cut in 0..b.len() {
                assert!(matches!(decode_reply(&b[..cut]), Ok(Decoded::NeedMore(_))));
            }
            let want = Reply::Structured {
                done,
                cookie: 9,
                chunk: c.clone(),
            };
            assert_eq!(decode_reply(&b).unwrap(), Decoded::Frame(want, b.len()));
        }
        let mut b = Vec::new();
        encode_simple_reply(Some(Errno::Perm), 5, &mut b);
        assert_eq!(
            b,
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5]
        );
        assert_eq!(
            decode_reply(&b).unwrap(),
            Decoded::Frame(
                Reply::Simple {
                    error: 1,
                    cookie: 5
                },
                16
            )
        );
    }

    #[test]
    fn golden_offset_hole_chunk() {
        let mut b = Vec::new();
        encode_chunk(
            true,
            1,
            &Chunk::OffsetHole {
                offset: 512,
                length: 1024,
            },
            &mut b,
        );
        let want: &[u8] = &[
            0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 2, // magic, DONE, OFFSET_HOLE
            0, 0, 0, 0, 0, 0, 0, 1, // cookie
            0, 0, 0, 12, // length
            0, 0, 0, 0, 0, 0, 2, 0, // offset
            0, 0, 4, 0, // hole size
        ];
        assert_eq!(b, want);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_request(&data);
            let _ = decode_reply(&data);
        }

        #[test]
        fn check_request_never_panics(flags: u16, command: u16, offset: u64, length: u32,
                                      size: u64, sflags: u16, structured: bool) {
            let s = Session { size_bytes: size, flags: sflags, structured, allocation_context: Some(1), min_block_bytes: 1 };
            let r = Request { flags, command: Command::from_code(command), cookie: 0, offset, length };
            if let Ok(a) = check_request(&s, &r) {
                // Whatever is accepted lies within the export.
                match a {
                    Action::Read { offset, length, .. }
                    | Action::Trim { offset, length, .. }
                    | Action::WriteZeroes { offset, length, .. }
                    | Action::BlockStatus { offset, length, .. } => {
                        prop_assert!(offset + u64::from(length) <= size);
                    }
                    Action::Write { offset, .. } => prop_assert!(offset + u64::from(length) <= size),
                    _ => {}
                }
            }
        }
    }
}
