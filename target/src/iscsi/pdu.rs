//! iSCSI PDU codec (RFC 7143 §11), sans-IO.
//!
//! A PDU on the wire is a 48-byte Basic Header Segment (BHS), optional Additional Header
//! Segments (AHS, `TotalAHSLength` 4-byte words), an optional header digest (CRC32C over BHS and
//! AHS), the data segment padded to a multiple of 4 bytes and an optional data digest (CRC32C
//! over data and padding). Digests are sent least significant byte first, as every initiator
//! does.
//!
//! [`decode_frame`] splits a byte buffer into frames, answering `Ok(None)` ("need more bytes") on
//! a partial one and checking the data segment length against the caller's limit before
//! anything is allocated. [`Bhs::decode`] turns the 48 header bytes into a typed [`Bhs`], and
//! [`Bhs::encode`] turns it back; the round trip is exact for every field a variant carries.

use bytes::{Bytes, BytesMut};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Length of a digest.
pub const DIGEST_LEN: usize = 4;

/// Initiator opcodes.
pub mod opcode {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_COMMAND: u8 = 0x01;
    /// SCSI Task Management Function Request.
    pub const TASK_MGMT_REQUEST: u8 = 0x02;
    /// Login Request.
    pub const LOGIN_REQUEST: u8 = 0x03;
    /// Text Request.
    pub const TEXT_REQUEST: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT_REQUEST: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK_REQUEST: u8 = 0x10;
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESPONSE: u8 = 0x21;
    /// SCSI Task Management Function Response.
    pub const TASK_MGMT_RESPONSE: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RESPONSE: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RESPONSE: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RESPONSE: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC_MESSAGE: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject_reason {
    /// Data (payload) digest error.
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    /// SNACK Reject.
    pub const SNACK_REJECT: u8 = 0x03;
    /// Protocol Error.
    pub const PROTOCOL_ERROR: u8 = 0x04;
    /// Command not supported.
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    /// Invalid PDU field.
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// What went wrong splitting or decoding a PDU. Each ends the connection except where the
/// driver answers with a Reject.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    /// The data segment is longer than we declared we accept.
    #[error("data segment of {length} bytes exceeds the limit of {limit} bytes")]
    DataTooLong {
        /// Announced length.
        length: usize,
        /// Our MaxRecvDataSegmentLength (or the login limit).
        limit: usize,
    },
    /// The header digest did not match.
    #[error("header digest mismatch (got {got:#010x}, computed {computed:#010x})")]
    HeaderDigest {
        /// From the wire.
        got: u32,
        /// Over the bytes received.
        computed: u32,
    },
    /// The data digest did not match (the header is still valid: answer with a Reject).
    #[error("data digest mismatch (got {got:#010x}, computed {computed:#010x})")]
    DataDigest {
        /// From the wire.
        got: u32,
        /// Over the bytes received.
        computed: u32,
    },
    /// An opcode an initiator does not send.
    #[error("opcode {0:#04x} is not an initiator opcode")]
    UnknownOpcode(u8),
}

/// Whether header and data digests are in use on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    /// HeaderDigest=CRC32C.
    pub header: bool,
    /// DataDigest=CRC32C.
    pub data: bool,
}

/// One PDU split off the wire: the raw BHS, the AHS and the data segment (without padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The Basic Header Segment as received.
    pub bhs: [u8; BHS_LEN],
    /// Additional Header Segments (usually empty).
    pub ahs: Bytes,
    /// The data segment without padding.
    pub data: Bytes,
    /// The data digest did not match (the caller rejects the PDU and carries on).
    pub data_digest_error: bool,
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// CRC32C as iSCSI uses it.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p))
}

/// Splits the next frame off `buf`. `Ok(None)`: more bytes are needed (nothing consumed).
/// `max_data` is checked before anything is allocated.
pub fn decode_frame(
    buf: &mut BytesMut,
    digests: Digests,
    max_data: usize,
) -> Result<Option<Frame>, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let ahs_len = usize::from(buf[4]) * 4;
    let data_len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
    if data_len > max_data {
        return Err(PduError::DataTooLong {
            length: data_len,
            limit: max_data,
        });
    }
    let hd = if digests.header { DIGEST_LEN } else { 0 };
    let dd = if digests.data && data_len > 0 {
        DIGEST_LEN
    } else {
        0
    };
    let padded = data_len + pad4(data_len);
    let total = BHS_LEN + ahs_len + hd + padded + dd;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    let header = frame.split_to(BHS_LEN + ahs_len);
    if digests.header {
        let got = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
        let computed = crc32c(&[&header]);
        if got != computed {
            return Err(PduError::HeaderDigest { got, computed });
        }
        let _ = frame.split_to(DIGEST_LEN);
    }
    let padded_data = frame.split_to(padded);
    let mut data_digest_error = false;
    if dd > 0 {
        let got = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
        let computed = crc32c(&[&padded_data]);
        data_digest_error = got != computed;
    }
    let mut bhs = [0u8; BHS_LEN];
    bhs.copy_from_slice(&header[..BHS_LEN]);
    Ok(Some(Frame {
        bhs,
        ahs: header.slice(BHS_LEN..),
        data: padded_data.slice(..data_len),
        data_digest_error,
    }))
}

/// Appends one PDU (BHS, digests, padded data) to `out`. The data segment length in the BHS is
/// set here from `data`.
pub fn encode_frame(out: &mut Vec<u8>, bhs: &Bhs, data: &[u8], digests: Digests) {
    let mut raw = bhs.encode();
    let len = u32::try_from(data.len()).expect("data segments are limited far below 16 MiB");
    assert!(len < 1 << 24, "a data segment is at most 16 MiB");
    raw[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&raw);
    if digests.header {
        out.extend_from_slice(&crc32c(&[&raw]).to_le_bytes());
    }
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(data);
    let pad = [0u8; 3];
    let pad = &pad[..pad4(data.len())];
    out.extend_from_slice(pad);
    if digests.data {
        out.extend_from_slice(&crc32c(&[data, pad]).to_le_bytes());
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// The sequence numbers every target PDU carries at bytes 24..36.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetSn {
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

/// A typed Basic Header Segment. Fields are named as in RFC 7143 §11; the data segment length
/// and AHS length live in the frame, not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bhs {
    /// NOP-Out (§11.18).
    NopOut {
        /// Immediate delivery.
        immediate: bool,
        /// LUN.
        lun: u64,
        /// Initiator Task Tag (0xffffffff: no answer wanted).
        itt: u32,
        /// Target Transfer Tag (answers a NOP-In when not 0xffffffff).
        ttt: u32,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
    },
    /// SCSI Command (§11.3).
    ScsiCommand {
        /// Immediate delivery.
        immediate: bool,
        /// F: no unsolicited Data-Out follows.
        final_: bool,
        /// R: data flows to the initiator.
        read: bool,
        /// W: data flows to the target.
        write: bool,
        /// Task attributes (ATTR).
        attr: u8,
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Expected Data Transfer Length.
        expected_length: u32,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
        /// The CDB (first 16 bytes).
        cdb: [u8; 16],
    },
    /// Task Management Function Request (§11.5).
    TaskMgmtRequest {
        /// Immediate delivery.
        immediate: bool,
        /// Function (1 ABORT TASK ... 8 TASK REASSIGN).
        function: u8,
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Referenced Task Tag.
        referenced_task_tag: u32,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
        /// RefCmdSN.
        ref_cmd_sn: u32,
        /// ExpDataSN.
        exp_data_sn: u32,
    },
    /// Login Request (§11.12).
    LoginRequest {
        /// T: transit to `nsg`.
        transit: bool,
        /// C: the text continues in the next PDU.
        cont: bool,
        /// Current stage.
        csg: u8,
        /// Next stage.
        nsg: u8,
        /// Version-max.
        version_max: u8,
        /// Version-min.
        version_min: u8,
        /// ISID.
        isid: [u8; 6],
        /// TSIH (0 for a new session).
        tsih: u16,
        /// Initiator Task Tag.
        itt: u32,
        /// CID.
        cid: u16,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
    },
    /// Text Request (§11.10).
    TextRequest {
        /// Immediate delivery.
        immediate: bool,
        /// F.
        final_: bool,
        /// C.
        cont: bool,
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Target Transfer Tag.
        ttt: u32,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
    },
    /// SCSI Data-Out (§11.7).
    DataOut {
        /// F: last PDU of the sequence.
        final_: bool,
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Target Transfer Tag (0xffffffff for unsolicited data).
        ttt: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
        /// DataSN.
        data_sn: u32,
        /// Buffer Offset.
        buffer_offset: u32,
    },
    /// Logout Request (§11.14).
    LogoutRequest {
        /// Immediate delivery.
        immediate: bool,
        /// Reason code (0 close session, 1 close connection, 2 recovery).
        reason: u8,
        /// Initiator Task Tag.
        itt: u32,
        /// CID.
        cid: u16,
        /// CmdSN.
        cmd_sn: u32,
        /// ExpStatSN.
        exp_stat_sn: u32,
    },
    /// SNACK Request (§11.16); refused at error recovery level 0.
    Snack {
        /// Initiator Task Tag.
        itt: u32,
    },
    /// NOP-In (§11.19).
    NopIn {
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Target Transfer Tag.
        ttt: u32,
        /// Sequence numbers.
        sn: TargetSn,
    },
    /// SCSI Response (§11.4).
    ScsiResponse {
        /// o: bidirectional read residual overflow.
        bidi_overflow: bool,
        /// u: bidirectional read residual underflow.
        bidi_underflow: bool,
        /// O: residual overflow.
        overflow: bool,
        /// U: residual underflow.
        underflow: bool,
        /// Response (0 command completed at target).
        response: u8,
        /// SCSI status.
        status: u8,
        /// Initiator Task Tag.
        itt: u32,
        /// Sequence numbers.
        sn: TargetSn,
        /// ExpDataSN.
        exp_data_sn: u32,
        /// Bidirectional Read Residual Count.
        bidi_residual: u32,
        /// Residual Count.
        residual: u32,
    },
    /// Task Management Function Response (§11.6).
    TaskMgmtResponse {
        /// Response code.
        response: u8,
        /// Initiator Task Tag.
        itt: u32,
        /// Sequence numbers.
        sn: TargetSn,
    },
    /// Login Response (§11.13).
    LoginResponse {
        /// T.
        transit: bool,
        /// C.
        cont: bool,
        /// Current stage.
        csg: u8,
        /// Next stage.
        nsg: u8,
        /// Version-max.
        version_max: u8,
        /// Version-active.
        version_active: u8,
        /// ISID.
        isid: [u8; 6],
        /// TSIH.
        tsih: u16,
        /// Initiator Task Tag.
        itt: u32,
        /// Sequence numbers.
        sn: TargetSn,
        /// Status-Class.
        status_class: u8,
        /// Status-Detail.
        status_detail: u8,
    },
    /// Text Response (§11.11).
    TextResponse {
        /// F.
        final_: bool,
        /// C.
        cont: bool,
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Target Transfer Tag.
        ttt: u32,
        /// Sequence numbers.
        sn: TargetSn,
    },
    /// SCSI Data-In (§11.7).
    DataIn {
        /// F: last PDU of the sequence.
        final_: bool,
        /// O: residual overflow (with status).
        overflow: bool,
        /// U: residual underflow (with status).
        underflow: bool,
        /// S: status follows in this PDU.
        status: Option<u8>,
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Target Transfer Tag.
        ttt: u32,
        /// Sequence numbers (StatSN meaningful only with status).
        sn: TargetSn,
        /// DataSN.
        data_sn: u32,
        /// Buffer Offset.
        buffer_offset: u32,
        /// Residual Count.
        residual: u32,
    },
    /// Logout Response (§11.15).
    LogoutResponse {
        /// Response.
        response: u8,
        /// Initiator Task Tag.
        itt: u32,
        /// Sequence numbers.
        sn: TargetSn,
        /// Time2Wait.
        time2wait: u16,
        /// Time2Retain.
        time2retain: u16,
    },
    /// Ready To Transfer (§11.8).
    R2t {
        /// LUN.
        lun: u64,
        /// Initiator Task Tag.
        itt: u32,
        /// Target Transfer Tag.
        ttt: u32,
        /// Sequence numbers (StatSN is not advanced by an R2T).
        sn: TargetSn,
        /// R2TSN.
        r2t_sn: u32,
        /// Buffer Offset.
        buffer_offset: u32,
        /// Desired Data Transfer Length.
        desired_length: u32,
    },
    /// Reject (§11.17); the data segment is the rejected BHS.
    Reject {
        /// Reason.
        reason: u8,
        /// Sequence numbers.
        sn: TargetSn,
        /// DataSN/R2TSN.
        data_sn: u32,
    },
}

const NO_TAG: u32 = 0xffff_ffff;

impl Bhs {
    /// Decodes 48 header bytes. Target opcodes decode too (tests, and a fuzzer's round trip).
    pub fn decode(b: &[u8; BHS_LEN]) -> Result<Bhs, PduError> {
        let immediate = b[0] & 0x40 != 0;
        let op = b[0] & 0x3f;
        let f = b[1] & 0x80 != 0;
        let lun = be64(b, 8);
        let itt = be32(b, 16);
        let sn = TargetSn {
            stat_sn: be32(b, 24),
            exp_cmd_sn: be32(b, 28),
            max_cmd_sn: be32(b, 32),
        };
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b[8..14]);
        Ok(match op {
            opcode::NOP_OUT => Bhs::NopOut {
                immediate,
                lun,
                itt,
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            },
            opcode::SCSI_COMMAND => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                Bhs::ScsiCommand {
                    immediate,
                    final_: f,
                    read: b[1] & 0x40 != 0,
                    write: b[1] & 0x20 != 0,
                    attr: b[1] & 0x07,
                    lun,
                    itt,
                    expected_length: be32(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                    cdb,
                }
            }
            opcode::TASK_MGMT_REQUEST => Bhs::TaskMgmtRequest {
                immediate,
                function: b[1] & 0x7f,
                lun,
                itt,
                referenced_task_tag: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
                ref_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
            },
            opcode::LOGIN_REQUEST => Bhs::LoginRequest {
                transit: f,
                cont: b[1] & 0x40 != 0,
                csg: (b[1] >> 2) & 3,
                nsg: b[1] & 3,
                version_max: b[2],
                version_min: b[3],
                isid,
                tsih: be16(b, 14),
                itt,
                cid: be16(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            },
            opcode::TEXT_REQUEST => Bhs::TextRequest {
                immediate,
                final_: f,
                cont: b[1] & 0x40 != 0,
                lun,
                itt,
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            },
            opcode::DATA_OUT => Bhs::DataOut {
                final_: f,
                lun,
                itt,
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
            },
            opcode::LOGOUT_REQUEST => Bhs::LogoutRequest {
                immediate,
                reason: b[1] & 0x7f,
                itt,
                cid: be16(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            },
            opcode::SNACK_REQUEST => Bhs::Snack { itt },
            opcode::NOP_IN => Bhs::NopIn {
                lun,
                itt,
                ttt: be32(b, 20),
                sn,
            },
            opcode::SCSI_RESPONSE => Bhs::ScsiResponse {
                bidi_overflow: b[1] & 0x10 != 0,
                bidi_underflow: b[1] & 0x08 != 0,
                overflow: b[1] & 0x04 != 0,
                underflow: b[1] & 0x02 != 0,
                response: b[2],
                status: b[3],
                itt,
                sn,
                exp_data_sn: be32(b, 36),
                bidi_residual: be32(b, 40),
                residual: be32(b, 44),
            },
            opcode::TASK_MGMT_RESPONSE => Bhs::TaskMgmtResponse {
                response: b[2],
                itt,
                sn,
            },
            opcode::LOGIN_RESPONSE => Bhs::LoginResponse {
                transit: f,
                cont: b[1] & 0x40 != 0,
                csg: (b[1] >> 2) & 3,
                nsg: b[1] & 3,
                version_max: b[2],
                version_active: b[3],
                isid,
                tsih: be16(b, 14),
                itt,
                sn,
                status_class: b[36],
                status_detail: b[37],
            },
            opcode::TEXT_RESPONSE => Bhs::TextResponse {
                final_: f,
                cont: b[1] & 0x40 != 0,
                lun,
                itt,
                ttt: be32(b, 20),
                sn,
            },
            opcode::DATA_IN => Bhs::DataIn {
                final_: f,
                overflow: b[1] & 0x04 != 0,
                underflow: b[1] & 0x02 != 0,
                status: (b[1] & 0x01 != 0).then_some(b[3]),
                lun,
                itt,
                ttt: be32(b, 20),
                sn,
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                residual: be32(b, 44),
            },
            opcode::LOGOUT_RESPONSE => Bhs::LogoutResponse {
                response: b[2],
                itt,
                sn,
                time2wait: be16(b, 40),
                time2retain: be16(b, 42),
            },
            opcode::R2T => Bhs::R2t {
                lun,
                itt,
                ttt: be32(b, 20),
                sn,
                r2t_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                desired_length: be32(b, 44),
            },
            opcode::REJECT => Bhs::Reject {
                reason: b[2],
                sn,
                data_sn: be32(b, 36),
            },
            other => return Err(PduError::UnknownOpcode(other)),
        })
    }

    /// Encodes to 48 bytes with a zero data segment length (see [`encode_frame`]).
    pub fn encode(&self) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        let imm = |i: bool| if i { 0x40 } else { 0 };
        let bit = |v: bool, m: u8| if v { m } else { 0 };
        let put_sn = |b: &mut [u8; BHS_LEN], sn: &TargetSn| {
            put32(b, 24, sn.stat_sn);
            put32(b, 28, sn.exp_cmd_sn);
            put32(b, 32, sn.max_cmd_sn);
        };
        match self {
            Bhs::NopOut {
                immediate,
                lun,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
            } => {
                b[0] = opcode::NOP_OUT | imm(*immediate);
                b[1] = 0x80;
                put64(&mut b, 8, *lun);
                put32(&mut b, 16, *itt);
                put32(&mut b, 20, *ttt);
                put32(&mut b, 24, *cmd_sn);
                put32(&mut b, 28, *exp_stat_sn);
            }
            Bhs::ScsiCommand {
                immediate,
                final_,
                read,
                write,
                attr,
                lun,
                itt,
                expected_length,
                cmd_sn,
                exp_stat_sn,
                cdb,
            } => {
                b[0] = opcode::SCSI_COMMAND | imm(*immediate);
                b[1] = bit(*final_, 0x80) | bit(*read, 0x40) | bit(*write, 0x20) | (attr & 7);
                put64(&mut b, 8, *lun);
                put32(&mut b, 16, *itt);
                put32(&mut b, 20, *expected_length);
                put32(&mut b, 24, *cmd_sn);
                put32(&mut b, 28, *exp_stat_sn);
                b[32..48].copy_from_slice(cdb);
            }
            Bhs::TaskMgmtRequest {
                immediate,
                function,
                lun,
                itt,
                referenced_task_tag,
                cmd_sn,
                exp_stat_sn,
                ref_cmd_sn,
                exp_data_sn,
            } => {
                b[0] = opcode::TASK_MGMT_REQUEST | imm(*immediate);
                b[1] = 0x80 | (function & 0x7f);
                put64(&mut b, 8, *lun);
                put32(&mut b, 16, *itt);
                put32(&mut b, 20, *referenced_task_tag);
                put32(&mut b, 24, *cmd_sn);
                put32(&mut b, 28, *exp_stat_sn);
                put32(&mut b, 32, *ref_cmd_sn);
                put32(&mut b, 36, *exp_data_sn);
            }
            Bhs::LoginRequest {
                transit,
                cont,
                csg,
                nsg,
                version_max,
                version_min,
                isid,
                tsih,
                itt,
                cid,
                cmd_sn,
                exp_stat_sn,
            } => {
                b[0] = opcode::LOGIN_REQUEST | 0x40;
                b[1] = bit(*transit, 0x80) | bit(*cont, 0x40) | (csg & 3) << 2 | (nsg & 3);
                b[2] = *version_max;
                b[3] = *version_min;
                b[8..14].copy_from_slice(isid);
                put16(&mut b, 14, *tsih);
                put32(&mut b, 16, *itt);
                put16(&mut b, 20, *cid);
                put32(&mut b, 24, *cmd_sn);
                put32(&mut b, 28, *exp_stat_sn);
            }
            Bhs::TextRequest {
                immediate,
                final_,
                cont,
                lun,
                itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
            } => {
                b[0] = opcode::TEXT_REQUEST | imm(*immediate);
                b[1] = bit(*final_, 0x80) | bit(*cont, 0x40);
                put64(&mut b, 8, *lun);
                put32(&mut b, 16, *itt);
                put32(&mut b, 20, *ttt);
                put32(&mut b, 24, *cmd_sn);
                put32(&mut b, 28, *exp_stat_sn);
            }
            Bhs::DataOut {
                final_,
                lun,
                itt,
                ttt,
                exp_stat_sn,
                data_sn,
                buffer_offset,
            } => {
                b[0] = opcode::DATA_OUT;
                b[1] = bit(*final_, 0x80);
                put64(&mut b, 8, *lun);
                put32(&mut b, 16, *itt);
                put32(&mut b, 20, *ttt);
                put32(&mut b, 28, *exp_stat_sn);
                put32(&mut b, 36, *data_sn);
                put32(&mut b, 40, *buffer_offset);
            }
            Bhs::LogoutRequest {
                immediate,
                reason,
                itt,
                cid,
                cmd_sn,
                exp_stat_sn,
            } => {
                b[0] = opcode::LOGOUT_REQUEST | imm(*immediate);
                b[1] = 0x80 | (reason & 0x7f);
                put32(&mut b, 16, *itt);
                put16(&mut b, 20, *cid);
                put32(&mut b, 24, *cmd_sn);
                put32(&mut b, 28, *exp_stat_sn);
            }
            Bhs::Snack { itt } => {
                b[0] = opcode::SNACK_REQUEST;
                b[1] = 0x80;
                put32(&mut b, 16, *itt);
            }
            Bhs::NopIn { lun, itt, ttt, sn } => {
                b[0] = opcode::NOP_IN;
                b[1] = 0x80;
                put64(&mut b, 8, *lun);
                put32(&mut b, 16, *itt);
                put32(&mut b, 20, *ttt);
                put_sn(&mut b, sn);
            }
            Bhs::ScsiResponse {
                bidi_overflow,
                bidi_underflow,
                overflow,
                underflow,
                response,
                status,
                itt,
                sn,
                exp_data_sn,
                bidi_residual,
                residual,
            } => {
                b[0] = opcode::SCSI_RESPONSE;
                b[1] = 0x80
                    | bit(*bidi_overflow, 0x10)
                    | bit(*bidi_underflow, 0x08)
                    | bit(*overflow, 0x04)
                    | bit(*underflow, 0x02);
                b[2] = *response;
                b[3] = *status;
                put32(&mut b, 16, *itt);
                put_sn(&mut b, sn);
                put32(&mut b, 36, *exp_data_sn);
                put32(&mut b, 40, *bidi_residual);
                put32(&mut b, 44, *residual);
            }
            Bhs::TaskMgmtResponse { response, itt, sn } => {
                b[0] = opcode::TASK_MGMT_RESPONSE;
                b[1] = 0x80;
                b[2] = *response;
                put32(&mut b, 16, *itt);
                put_sn(&mut b, sn);
            }
            Bhs::LoginResponse {
                transit,
                cont,
                csg,
                nsg,
                version_max,
                version_active,
                isid,
                tsih,
                itt,
                sn,
                status_class,
                status_detail,
            } => {
                b[0] = opcode::LOGIN_RESPONSE;
                b[1] = bit(*transit, 0x80) | bit(*cont, 0x40) | (csg & 3) << 2 | (nsg & 3);
                b[2] = *version_max;
                b[3] = *version_active;
                b[8..14].copy_from_slice(isid);
                put16(&mut b, 14, *tsih);
                put32(&mut b, 16, *itt);
                put_sn(&mut b, sn);
                b[36] = *status_class;
                b[37] = *status_detail;
            }
            Bhs::TextResponse {
                final_,
                cont,
                lun,
                itt,
                ttt,
                sn,
            } => {
                b[0] = opcode::TEXT_RESPONSE;
                b[1] = bit(*final_, 0x80) | bit(*cont, 0x40);
                put64(&mut b, 8, *lun);
                put32(&mut b, 16, *itt);
                put32(&mut b, 20, *ttt);
                put_sn(&mut b, sn);
            }
            Bhs::DataIn {
                final_,
                overflow,
                underflow,
                status,
                lun,
                itt,
                ttt,
                sn,
                data_sn,
                buffer_offset,
                residual,
            } => {
                b[0] = opcode::DATA_IN;
                b[1] = bit(*final_, 0x80)
                    | bit(*overflow, 0x04)
                    | bit(*underflow, 0x02)
                    | bit(status.is_some(), 0x01);
                b[3] = status.unwrap_or(0);
                put64(&mut b, 8, *lun);
                put32(&mut b, 16, *itt);
                put32(&mut b, 20, *ttt);
                put_sn(&mut b, sn);
                put32(&mut b, 36, *data_sn);
                put32(&mut b, 40, *buffer_offset);
                put32(&mut b, 44, *residual);
            }
            Bhs::LogoutResponse {
                response,
                itt,
                sn,
                time2wait,
                time2retain,
            } => {
                b[0] = opcode::LOGOUT_RESPONSE;
                b[1] = 0x80;
                b[2] = *response;
                put32(&mut b, 16, *itt);
                put_sn(&mut b, sn);
                put16(&mut b, 40, *time2wait);
                put16(&mut b, 42, *time2retain);
            }
            Bhs::R2t {
                lun,
                itt,
                ttt,
                sn,
                r2t_sn,
                buffer_offset,
                desired_length,
            } => {
                b[0] = opcode::R2T;
                b[1] = 0x80;
                put64(&mut b, 8, *lun);
                put32(&mut b, 16, *itt);
                put32(&mut b, 20, *ttt);
                put_sn(&mut b, sn);
                put32(&mut b, 36, *r2t_sn);
                put32(&mut b, 40, *buffer_offset);
                put32(&mut b, 44, *desired_length);
            }
            Bhs::Reject {
                reason,
                sn,
                data_sn,
            } => {
                b[0] = opcode::REJECT;
                b[1] = 0x80;
                b[2] = *reason;
                put32(&mut b, 16, NO_TAG);
                put_sn(&mut b, sn);
                put32(&mut b, 36, *data_sn);
            }
        }
        b
    }

    /// The opcode byte (without the I bit).
    pub fn opcode(raw: &[u8; BHS_LEN]) -> u8 {
        raw[0] & 0x3f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sn() -> TargetSn {
        TargetSn {
            stat_sn: 7,
            exp_cmd_sn: 8,
            max_cmd_sn: 71,
        }
    }

    fn samples() -> Vec<Bhs> {
        vec![
            Bhs::NopOut {
                immediate: true,
                lun: 0,
                itt: 1,
                ttt: NO_TAG,
                cmd_sn: 5,
                exp_stat_sn: 6,
            },
            Bhs::ScsiCommand {
                immediate: false,
                final_: true,
                read: true,
                write: false,
                attr: 1,
                lun: 0,
                itt: 0x1234,
                expected_length: 4096,
                cmd_sn: 9,
                exp_stat_sn: 3,
                cdb: [0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0],
            },
            Bhs::TaskMgmtRequest {
                immediate: true,
                function: 1,
                lun: 0,
                itt: 2,
                referenced_task_tag: 1,
                cmd_sn: 3,
                exp_stat_sn: 4,
                ref_cmd_sn: 2,
                exp_data_sn: 0,
            },
            Bhs::LoginRequest {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_min: 0,
                isid: [0x80, 1, 2, 3, 4, 5],
                tsih: 0,
                itt: 0,
                cid: 1,
                cmd_sn: 1,
                exp_stat_sn: 0,
            },
            Bhs::TextRequest {
                immediate: true,
                final_: true,
                cont: false,
                lun: 0,
                itt: 3,
                ttt: NO_TAG,
                cmd_sn: 1,
                exp_stat_sn: 2,
            },
            Bhs::DataOut {
                final_: true,
                lun: 0,
                itt: 4,
                ttt: 9,
                exp_stat_sn: 2,
                data_sn: 1,
                buffer_offset: 8192,
            },
            Bhs::LogoutRequest {
                immediate: true,
                reason: 0,
                itt: 5,
                cid: 1,
                cmd_sn: 4,
                exp_stat_sn: 5,
            },
            Bhs::Snack { itt: 6 },
            Bhs::NopIn {
                lun: 0,
                itt: 1,
                ttt: NO_TAG,
                sn: sn(),
            },
            Bhs::ScsiResponse {
                bidi_overflow: false,
                bidi_underflow: false,
                overflow: false,
                underflow: true,
                response: 0,
                status: 2,
                itt: 9,
                sn: sn(),
                exp_data_sn: 0,
                bidi_residual: 0,
                residual: 512,
            },
            Bhs::TaskMgmtResponse {
                response: 1,
                itt: 2,
                sn: sn(),
            },
            Bhs::LoginResponse {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_active: 0,
                isid: [0x80, 1, 2, 3, 4, 5],
                tsih: 1,
                itt: 0,
                sn: sn(),
                status_class: 2,
                status_detail: 1,
            },
            Bhs::TextResponse {
                final_: true,
                cont: false,
                lun: 0,
                itt: 3,
                ttt: NO_TAG,
                sn: sn(),
            },
            Bhs::DataIn {
                final_: true,
                overflow: false,
                underflow: true,
                status: Some(0),
                lun: 0,
                itt: 9,
                ttt: NO_TAG,
                sn: sn(),
                data_sn: 3,
                buffer_offset: 4096,
                residual: 100,
            },
            Bhs::LogoutResponse {
                response: 0,
                itt: 5,
                sn: sn(),
                time2wait: 2,
                time2retain: 20,
            },
            Bhs::R2t {
                lun: 0,
                itt: 4,
                ttt: 9,
                sn: sn(),
                r2t_sn: 0,
                buffer_offset: 65536,
                desired_length: 262144,
            },
            Bhs::Reject {
                reason: reject_reason::PROTOCOL_ERROR,
                sn: sn(),
                data_sn: 0,
            },
        ]
    }

    #[test]
    fn every_bhs_round_trips() {
        for bhs in samples() {
            let raw = bhs.encode();
            assert_eq!(Bhs::decode(&raw).unwrap(), bhs, "{bhs:?}");
        }
    }

    #[test]
    fn golden_read10_command() {
        let raw = samples()[1].encode();
        let mut want = [0u8; 48];
        want[0] = 0x01;
        want[1] = 0xc1;
        want[16..20].copy_from_slice(&[0, 0, 0x12, 0x34]);
        want[20..24].copy_from_slice(&[0, 0, 0x10, 0]);
        want[24..28].copy_from_slice(&[0, 0, 0, 9]);
        want[28..32].copy_from_slice(&[0, 0, 0, 3]);
        want[32] = 0x28;
        want[37] = 8;
        want[40] = 8;
        assert_eq!(raw, want);
    }

    #[test]
    fn frames_round_trip_with_and_without_digests() {
        for (header, data) in [(false, false), (true, false), (false, true), (true, true)] {
            let d = Digests { header, data };
            let bhs = samples()[5].clone();
            let payload = b"hello iscsi".to_vec();
            let mut out = Vec::new();
            encode_frame(&mut out, &bhs, &payload, d);
            assert_eq!(out.len() % 4, 0);
            let mut buf = BytesMut::from(&out[..out.len() - 1]);
            assert_eq!(decode_frame(&mut buf, d, 1 << 20).unwrap(), None);
            let mut buf = BytesMut::from(&out[..]);
            let f = decode_frame(&mut buf, d, 1 << 20).unwrap().unwrap();
            assert!(buf.is_empty());
            assert_eq!(f.data.as_ref(), &payload[..]);
            assert!(!f.data_digest_error);
            let mut raw = f.bhs;
            raw[5..8].fill(0);
            assert_eq!(Bhs::decode(&raw).unwrap(), bhs);
        }
    }

    #[test]
    fn digests_catch_corruption() {
        let d = Digests {
            header: true,
            data: true,
        };
        let mut out = Vec::new();
        encode_frame(&mut out, &samples()[5], b"abcd", d);
        let mut bad = out.clone();
        bad[53] ^= 1;
        let f = decode_frame(&mut BytesMut::from(&bad[..]), d, 1 << 20)
            .unwrap()
            .unwrap();
        assert!(f.data_digest_error);
        let mut bad = out.clone();
        bad[20] ^= 1;
        assert!(matches!(
            decode_frame(&mut BytesMut::from(&bad[..]), d, 1 << 20),
            Err(PduError::HeaderDigest { .. })
        ));
    }

    #[test]
    fn crc32c_matches_rfc3720_vector() {
        // RFC 3720 B.4: 32 bytes of zeroes.
        assert_eq!(crc32c(&[&[0u8; 32]]), 0x8a91_36aa);
    }

    #[test]
    fn oversized_data_is_refused_before_reading_it() {
        let mut raw = samples()[5].encode();
        raw[5] = 0x10;
        let mut buf = BytesMut::from(&raw[..]);
        assert_eq!(
            decode_frame(&mut buf, Digests::default(), 8192),
            Err(PduError::DataTooLong {
                length: 0x10_0000,
                limit: 8192
            })
        );
    }
}
