//! The NBD server: fixed newstyle negotiation and the transmission phase, as the
//! NetworkBlockDevice protocol document (`doc/proto.md`) describes them.
//!
//! Layers, bottom up:
//! - [`handshake`] and [`transmission`]: sans-IO codecs. Bytes in, typed values out and back; a
//!   partial frame answers "need more bytes", and every length is checked against a named limit
//!   before anything is allocated.
//! - [`negotiate`]: the option-haggling state machine. Pure: a decoded option and a view of the
//!   exports in, the replies to send and what happens next out.
//! - [`server`]: the tokio driver. Listens on Unix and TCP sockets, runs one reader and one writer
//!   task per connection and one task per request, so requests are pipelined and answered out of
//!   order.
//!
//! All integers on the wire are big-endian.

pub mod handshake;
pub mod negotiate;
pub mod server;
pub mod transmission;

/// `NBDMAGIC`: the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the second 8 bytes of the greeting and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request (`NBD_REQUEST_MAGIC`).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply (`NBD_SIMPLE_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk (`NBD_STRUCTURED_REPLY_MAGIC`).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// The IANA port for newstyle NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// The largest READ or WRITE payload accepted (the protocol's 2^25 "never a denial of service").
pub const MAX_PAYLOAD_BYTES: u32 = 32 << 20;
/// The preferred block size advertised in `NBD_INFO_BLOCK_SIZE`.
pub const PREFERRED_BLOCK_BYTES: u32 = 4096;
/// The minimum block size advertised: byte-granular (pread/pwrite need no alignment).
pub const MIN_BLOCK_BYTES: u32 = 1;
/// The longest string (export name, metadata context, message) the protocol allows.
pub const MAX_STRING_BYTES: usize = 4096;
/// The largest option payload accepted; larger options end the session (the protocol allows a
/// hard disconnect for a denial of service). Room for a name and a few dozen context queries.
pub const MAX_OPTION_BYTES: u32 = 64 << 10;
/// The most metadata-context queries read from one option.
pub const MAX_META_QUERIES: u32 = 128;
/// The most information requests read from one `NBD_OPT_INFO`/`NBD_OPT_GO`.
pub const MAX_INFO_REQUESTS: u16 = 64;
/// The most block-status descriptors sent in one chunk (the protocol says at most 2^20).
pub const MAX_BLOCK_STATUS_EXTENTS: usize = 1 << 16;

/// Handshake flags (16 bits, sent by the server in the greeting).
pub mod handshake_flags {
    /// `NBD_FLAG_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// `NBD_FLAG_NO_ZEROES`.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (32 bits, the client's answer to the greeting).
pub mod client_flags {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    /// `NBD_FLAG_C_NO_ZEROES`.
    pub const NO_ZEROES: u32 = 1 << 1;
}

/// Transmission flags (16 bits, per export).
pub mod transmission_flags {
    /// `NBD_FLAG_HAS_FLAGS`: always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_ROTATIONAL`.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_FLAG_SEND_DF`.
    pub const SEND_DF: u16 = 1 << 7;
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_FLAG_SEND_RESIZE`.
    pub const SEND_RESIZE: u16 = 1 << 9;
    /// `NBD_FLAG_SEND_CACHE`.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_FLAG_SEND_FAST_ZERO`.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option codes (`NBD_OPT_*`).
pub mod opt {
    /// `NBD_OPT_EXPORT_NAME`.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`.
    pub const STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// `NBD_OPT_LIST_META_CONTEXT`.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// `NBD_OPT_SET_META_CONTEXT`.
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
pub mod rep {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_META_CONTEXT`.
    pub const META_CONTEXT: u32 = 4;
    /// Bit 31: an error reply.
    pub const ERROR_BIT: u32 = 1 << 31;
    /// `NBD_REP_ERR_UNSUP`.
    pub const ERR_UNSUP: u32 = ERROR_BIT | 1;
    /// `NBD_REP_ERR_POLICY`.
    pub const ERR_POLICY: u32 = ERROR_BIT | 2;
    /// `NBD_REP_ERR_INVALID`.
    pub const ERR_INVALID: u32 = ERROR_BIT | 3;
    /// `NBD_REP_ERR_PLATFORM`.
    pub const ERR_PLATFORM: u32 = ERROR_BIT | 4;
    /// `NBD_REP_ERR_TLS_REQD`.
    pub const ERR_TLS_REQD: u32 = ERROR_BIT | 5;
    /// `NBD_REP_ERR_UNKNOWN`.
    pub const ERR_UNKNOWN: u32 = ERROR_BIT | 6;
    /// `NBD_REP_ERR_SHUTDOWN`.
    pub const ERR_SHUTDOWN: u32 = ERROR_BIT | 7;
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
    pub const ERR_BLOCK_SIZE_REQD: u32 = ERROR_BIT | 8;
    /// `NBD_REP_ERR_TOO_BIG`.
    pub const ERR_TOO_BIG: u32 = ERROR_BIT | 9;
}

/// Information types in `NBD_REP_INFO` (`NBD_INFO_*`).
pub mod info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Request types (`NBD_CMD_*`).
pub mod cmd {
    /// `NBD_CMD_READ`.
    pub const READ: u16 = 0;
    /// `NBD_CMD_WRITE`.
    pub const WRITE: u16 = 1;
    /// `NBD_CMD_DISC`.
    pub const DISC: u16 = 2;
    /// `NBD_CMD_FLUSH`.
    pub const FLUSH: u16 = 3;
    /// `NBD_CMD_TRIM`.
    pub const TRIM: u16 = 4;
    /// `NBD_CMD_CACHE`.
    pub const CACHE: u16 = 5;
    /// `NBD_CMD_WRITE_ZEROES`.
    pub const WRITE_ZEROES: u16 = 6;
    /// `NBD_CMD_BLOCK_STATUS`.
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod cmd_flags {
    /// `NBD_CMD_FLAG_FUA`.
    pub const FUA: u16 = 1 << 0;
    /// `NBD_CMD_FLAG_NO_HOLE`.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `NBD_CMD_FLAG_DF`.
    pub const DF: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_REQ_ONE`.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `NBD_CMD_FLAG_FAST_ZERO`.
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`); error chunks have bit 15 set.
pub mod reply_type {
    /// `NBD_REPLY_TYPE_NONE`.
    pub const NONE: u16 = 0;
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    pub const OFFSET_DATA: u16 = 1;
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    pub const OFFSET_HOLE: u16 = 2;
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    pub const BLOCK_STATUS: u16 = 5;
    /// Bit 15: an error chunk.
    pub const ERROR_BIT: u16 = 1 << 15;
    /// `NBD_REPLY_TYPE_ERROR`.
    pub const ERROR: u16 = ERROR_BIT | 1;
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    pub const ERROR_OFFSET: u16 = ERROR_BIT | 2;
}

/// `NBD_REPLY_FLAG_DONE`: the last chunk of a structured reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;

/// `base:allocation` status flags.
pub mod state {
    /// `NBD_STATE_HOLE`: not allocated.
    pub const HOLE: u32 = 1 << 0;
    /// `NBD_STATE_ZERO`: reads as zeroes.
    pub const ZERO: u32 = 1 << 1;
}

/// The one metadata context served.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// An error value on the wire (`NBD_E*`): the protocol's own codes, never errno passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// `NBD_EPERM`: a write to a read-only export.
    Perm,
    /// `NBD_EIO`.
    Io,
    /// `NBD_ENOMEM`.
    NoMem,
    /// `NBD_EINVAL`: bad offset, length, flags or command.
    Inval,
    /// `NBD_ENOSPC`: a write beyond the end, or the backing store is full.
    NoSpc,
    /// `NBD_EOVERFLOW`: a read too large to send unfragmented.
    Overflow,
    /// `NBD_ENOTSUP`: a fast zero that would not be fast.
    NotSup,
    /// `NBD_ESHUTDOWN`: the server is going away, or the export is no longer served.
    Shutdown,
}

impl Errno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }

    /// The error for a wire value; unknown values count as `NBD_EINVAL`, as the protocol tells
    /// clients to treat them.
    pub fn from_code(code: u32) -> Errno {
        match code {
            1 => Errno::Perm,
            5 => Errno::Io,
            12 => Errno::NoMem,
            28 => Errno::NoSpc,
            75 => Errno::Overflow,
            95 => Errno::NotSup,
            108 => Errno::Shutdown,
            _ => Errno::Inval,
        }
    }
}

/// Big-endian readers over a slice whose length the caller has already checked.
pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Outcome of decoding from a buffer that may hold a partial frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The buffer holds a partial frame: at least this many bytes are needed in total.
    NeedMore(usize),
    /// A whole frame: the value and how many bytes of the buffer it used.
    Frame(T, usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&NBDMAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
    }

    #[test]
    fn errno_round_trips() {
        for e in [
            Errno::Perm,
            Errno::Io,
            Errno::NoMem,
            Errno::Inval,
            Errno::NoSpc,
            Errno::Overflow,
            Errno::NotSup,
            Errno::Shutdown,
        ] {
            assert_eq!(Errno::from_code(e.code()), e);
        }
        assert_eq!(Errno::from_code(9999), Errno::Inval);
    }
}
