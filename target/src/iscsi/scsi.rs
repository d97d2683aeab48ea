//! SCSI building blocks shared by the disk emulation (SPC-4, SBC-3): status codes, sense data
//! (fixed format), CDB field access and the table of supported commands. Pure.

/// SCSI status codes.
pub mod status {
    /// GOOD.
    pub const GOOD: u8 = 0x00;
    /// CHECK CONDITION.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    /// TASK SET FULL.
    pub const TASK_SET_FULL: u8 = 0x28;
    /// TASK ABORTED.
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys.
pub mod key {
    /// NOT READY.
    pub const NOT_READY: u8 = 0x02;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x06;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x03;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x07;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0x0b;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0x0e;
}

/// Fixed-format sense data (SPC-4 §4.5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (VALID bit set when present).
    pub information: Option<u32>,
    /// Sense-key specific: the byte (and bit) of the CDB or parameter list at fault.
    pub field: Option<FieldPointer>,
}

/// SKSV field pointer (SPC-4 §4.5.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// C/D: the error is in the CDB (else in the parameter data).
    pub in_cdb: bool,
    /// Byte offset.
    pub byte: u16,
}

impl Sense {
    /// A sense with key, ASC and ASCQ.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            information: None,
            field: None,
        }
    }

    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
    /// INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
    /// PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00);
    /// INVALID FIELD IN COMMAND INFORMATION UNIT (EDTL does not match the CDB).
    pub const INVALID_FIELD_IN_INFORMATION_UNIT: Sense =
        Sense::new(key::ILLEGAL_REQUEST, 0x0e, 0x03);
    /// LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
    /// SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
    /// INVALID RELEASE OF PERSISTENT RESERVATION.
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: Sense =
        Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x04);
    /// MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(key::MISCOMPARE, 0x1d, 0x00);
    /// WRITE PROTECTED.
    pub const WRITE_PROTECTED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x00);
    /// UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x11, 0x00);
    /// WRITE ERROR.
    pub const WRITE_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00);
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE (a demoted replica).
    pub const STANDBY: Sense = Sense::new(key::NOT_READY, 0x04, 0x0b);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (the unit attention after a reset).
    pub const RESET_OCCURRED: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x00);
    /// DATA PHASE ERROR (a Data-Out out of sequence).
    pub const DATA_PHASE_ERROR: Sense = Sense::new(key::ABORTED_COMMAND, 0x4b, 0x00);
    /// DATA OFFSET ERROR (a Data-Out at the wrong buffer offset).
    pub const DATA_OFFSET_ERROR: Sense = Sense::new(key::ABORTED_COMMAND, 0x4b, 0x05);
    /// TOO MUCH WRITE DATA.
    pub const TOO_MUCH_WRITE_DATA: Sense = Sense::new(key::ABORTED_COMMAND, 0x4b, 0x02);
    /// INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(key::ABORTED_COMMAND, 0x44, 0x00);

    /// The same sense with a field pointer into the CDB.
    pub const fn at_cdb(mut self, byte: u16) -> Sense {
        self.field = Some(FieldPointer { in_cdb: true, byte });
        self
    }

    /// The same sense with a field pointer into the parameter list.
    pub const fn at_parameter(mut self, byte: u16) -> Sense {
        self.field = Some(FieldPointer {
            in_cdb: false,
            byte,
        });
        self
    }

    /// The 18-byte fixed-format encoding.
    pub fn encode(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        if let Some(info) = self.information {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.key & 0x0f;
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(f) = self.field {
            b[15] = 0x80 | if f.in_cdb { 0x40 } else { 0 };
            b[16..18].copy_from_slice(&f.byte.to_be_bytes());
        }
        b
    }

    /// Decodes fixed-format sense (tests and the fuzzer's round trip).
    pub fn decode(b: &[u8]) -> Option<Sense> {
        if b.len() < 18 || b[0] & 0x7f != 0x70 {
            return None;
        }
        Some(Sense {
            key: b[2] & 0x0f,
            asc: b[12],
            ascq: b[13],
            information: (b[0] & 0x80 != 0)
                .then(|| u32::from_be_bytes(b[3..7].try_into().expect("4 bytes"))),
            field: (b[15] & 0x80 != 0).then(|| FieldPointer {
                in_cdb: b[15] & 0x40 != 0,
                byte: u16::from_be_bytes([b[16], b[17]]),
            }),
        })
    }
}

/// Operation codes served.
pub mod op {
    #![allow(missing_docs)]
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8a;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_AND_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;
    /// SERVICE ACTION IN(16) service actions.
    pub const SA_READ_CAPACITY_16: u16 = 0x10;
    pub const SA_GET_LBA_STATUS: u16 = 0x12;
    /// MAINTENANCE IN service action.
    pub const SA_REPORT_SUPPORTED_OPERATION_CODES: u16 = 0x0c;
}

/// The CDB length implied by the opcode's group code.
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// Big-endian field readers on a CDB.
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
/// 24-bit big-endian.
pub fn be24(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]])
}
/// 32-bit big-endian.
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
/// 64-bit big-endian.
pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One supported command for REPORT SUPPORTED OPERATION CODES: the opcode, the service action
/// (for commands that have them) and the CDB usage map (SPC-4 §6.35.3: which bits a CDB may
/// set; byte 0 is the opcode).
#[derive(Debug, Clone, Copy)]
pub struct CommandInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action.
    pub service_action: Option<u16>,
    /// CDB usage data; its length is the CDB length.
    pub usage: &'static [u8],
}

const fn info(opcode: u8, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action: None,
        usage,
    }
}

/// Every command the disk serves, with the bits each CDB byte may use.
pub const COMMANDS: &[CommandInfo] = &[
    info(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, 0x07]),
    info(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, 0xff, 0x07]),
    info(op::READ_6, &[0x08, 0x1f, 0xff, 0xff, 0xff, 0x07]),
    info(op::WRITE_6, &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0x07]),
    info(op::INQUIRY, &[0x12, 0x01, 0xff, 0xff, 0xff, 0x07]),
    info(op::RESERVE_6, &[0x16, 0, 0, 0, 0, 0x07]),
    info(op::RELEASE_6, &[0x17, 0, 0, 0, 0, 0x07]),
    info(op::MODE_SENSE_6, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0x07]),
    info(
        op::READ_CAPACITY_10,
        &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0x07],
    ),
    info(
        op::READ_10,
        &[0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    info(
        op::WRITE_10,
        &[0x2a, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    info(
        op::WRITE_AND_VERIFY_10,
        &[0x2e, 0x12, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    info(
        op::VERIFY_10,
        &[0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    info(
        op::PRE_FETCH_10,
        &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    info(
        op::READ_DEFECT_DATA_10,
        &[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    ),
    info(
        op::SYNCHRONIZE_CACHE_10,
        &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    info(
        op::WRITE_SAME_10,
        &[0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    info(op::UNMAP, &[0x42, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x07]),
    info(
        op::MODE_SENSE_10,
        &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x07],
    ),
    info(
        op::PERSISTENT_RESERVE_IN,
        &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    ),
    info(
        op::PERSISTENT_RESERVE_OUT,
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    ),
    info(
        op::READ_16,
        &[
            0x88, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    info(
        op::COMPARE_AND_WRITE,
        &[
            0x89, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0x07,
        ],
    ),
    info(
        op::WRITE_16,
        &[
            0x8a, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    info(
        op::ORWRITE_16,
        &[
            0x8b, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    info(
        op::WRITE_AND_VERIFY_16,
        &[
            0x8e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    info(
        op::VERIFY_16,
        &[
            0x8f, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    info(
        op::PRE_FETCH_16,
        &[
            0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    info(
        op::SYNCHRONIZE_CACHE_16,
        &[
            0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    info(
        op::WRITE_SAME_16,
        &[
            0x93, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    CommandInfo {
        opcode: op::SERVICE_ACTION_IN_16,
        service_action: Some(op::SA_READ_CAPACITY_16),
        usage: &[
            0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
        ],
    },
    CommandInfo {
        opcode: op::SERVICE_ACTION_IN_16,
        service_action: Some(op::SA_GET_LBA_STATUS),
        usage: &[
            0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0x07,
        ],
    },
    info(
        op::REPORT_LUNS,
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    ),
    CommandInfo {
        opcode: op::MAINTENANCE_IN,
        service_action: Some(op::SA_REPORT_SUPPORTED_OPERATION_CODES),
        usage: &[
            0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
        ],
    },
    info(
        op::READ_12,
        &[
            0xa8, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    ),
    info(
        op::WRITE_12,
        &[
            0xaa, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    ),
    info(
        op::WRITE_AND_VERIFY_12,
        &[
            0xae, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    ),
    info(
        op::VERIFY_12,
        &[
            0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    ),
    info(
        op::READ_DEFECT_DATA_12,
        &[0xb7, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_golden_and_round_trip() {
        let s = Sense::INVALID_FIELD_IN_CDB.at_cdb(2);
        let b = s.encode();
        assert_eq!(
            b,
            [0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xc0, 0, 2]
        );
        assert_eq!(Sense::decode(&b), Some(s));
        let mut m = Sense::MISCOMPARE_DURING_VERIFY;
        m.information = Some(513);
        assert_eq!(Sense::decode(&m.encode()), Some(m));
        assert_eq!(m.encode()[0], 0xf0);
    }

    #[test]
    fn usage_maps_match_group_lengths() {
        for c in COMMANDS {
            assert_eq!(c.usage.len(), cdb_len(c.opcode), "{:#04x}", c.opcode);
            assert_eq!(c.usage[0], c.opcode);
        }
    }
}
