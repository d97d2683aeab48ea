//! A SCSI direct-access block device (SBC-3/SPC-4) over a [`Volume`]: the commands a Linux or
//! libiscsi initiator uses, with the sense data SPC-4 prescribes for every error.
//!
//! CDB checks (reserved fields, ranges, limits) happen before the volume is touched; the
//! volume's own errors map to MEDIUM ERROR (or DATA PROTECT for a read-only volume, NOT READY
//! for a refused one). Blocks are [`BLOCK_BYTES`] long.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use md5::{Digest as _, Md5};

use super::pr::{Refusal, Reservations};
use super::scsi::{be16, be24, be32, be64, cdb_len, op, status, CommandInfo, Sense, COMMANDS};
use crate::volume::{Access, Volume, VolumeError, ZeroFlags};

/// Logical block size.
pub const BLOCK_BYTES: u32 = 512;
/// The most blocks one READ/WRITE/VERIFY moves (8 MiB): VPD 0xB0 MAXIMUM TRANSFER LENGTH.
pub const MAX_TRANSFER_BLOCKS: u32 = 16384;
/// The most blocks one WRITE SAME covers (VPD 0xB0 MAXIMUM WRITE SAME LENGTH).
pub const MAX_WRITE_SAME_BLOCKS: u64 = (1 << 16) - 1;
/// The most blocks one UNMAP descriptor list may cover in total.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
/// The most UNMAP block descriptors in one command.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// The most blocks one COMPARE AND WRITE compares (VPD 0xB0 byte 5).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 128;
/// The bytes written per volume call while expanding WRITE SAME.
const WRITE_SAME_CHUNK_BYTES: u64 = 1 << 20;
/// The most I_T nexuses whose unit attention state is kept (past it the oldest state is
/// forgotten, which at worst loses a pending unit attention).
pub const MAX_NEXUSES: usize = 1024;
/// Vendor identification (8 bytes).
const VENDOR: &[u8; 8] = b"TANDEM  ";
/// Product identification (16 bytes).
const PRODUCT: &[u8; 16] = b"tandem volume   ";
/// Product revision (4 bytes).
const REVISION: &[u8; 4] = b"0001";

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// SCSI status.
    pub status: u8,
    /// Sense data with CHECK CONDITION.
    pub sense: Option<Sense>,
    /// Data for the initiator (before trimming to the allocation or expected length).
    pub data: Vec<u8>,
}

impl Outcome {
    fn good(data: Vec<u8>) -> Outcome {
        Outcome {
            status: status::GOOD,
            sense: None,
            data,
        }
    }

    /// CHECK CONDITION with `sense`.
    pub fn check(sense: Sense) -> Outcome {
        Outcome {
            status: status::CHECK_CONDITION,
            sense: Some(sense),
            data: Vec::new(),
        }
    }

    fn conflict() -> Outcome {
        Outcome {
            status: status::RESERVATION_CONFLICT,
            sense: None,
            data: Vec::new(),
        }
    }
}

type Result<T> = std::result::Result<T, Outcome>;

fn refusal(r: Refusal) -> Outcome {
    match r {
        Refusal::Conflict => Outcome::conflict(),
        Refusal::Check(s) => Outcome::check(s),
    }
}

fn truncate(mut data: Vec<u8>, allocation: usize) -> Vec<u8> {
    data.truncate(allocation);
    data
}

/// The bytes of data-out a CDB asks for, when the command transfers data to the target and
/// the length follows from the CDB alone (the driver compares it with the iSCSI Expected Data
/// Transfer Length).
pub fn data_out_bytes(cdb: &[u8; 16]) -> Option<u32> {
    let blocks = match cdb[0] {
        op::WRITE_6 => Some(if cdb[4] == 0 { 256 } else { u32::from(cdb[4]) }),
        op::WRITE_10 | op::WRITE_AND_VERIFY_10 => Some(u32::from(be16(cdb, 7))),
        op::WRITE_12 | op::WRITE_AND_VERIFY_12 => Some(be32(cdb, 6)),
        op::WRITE_16 | op::WRITE_AND_VERIFY_16 | op::ORWRITE_16 => Some(be32(cdb, 10)),
        op::COMPARE_AND_WRITE => Some(2 * u32::from(cdb[13])),
        _ => None,
    }?;
    blocks.checked_mul(BLOCK_BYTES)
}

/// One logical unit.
pub struct LogicalUnit {
    volume: Arc<dyn Volume>,
    /// The target name, for VPD 0x83.
    target_name: String,
    /// A stable identity derived from the name, so both replicas report the same.
    id: [u8; 16],
    blocks: u64,
    reservations: Mutex<Reservations>,
    attention: Mutex<Attention>,
    /// COMPARE AND WRITE is atomic against other COMPARE AND WRITEs.
    compare_and_write: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("target_name", &self.target_name)
            .field("blocks", &self.blocks)
            .finish()
    }
}

/// Unit attentions (SAM-5 §5.14): a reset raises one for every I_T nexus known to the logical
/// unit; each nexus is told once, on its next command other than INQUIRY, REPORT LUNS and
/// REQUEST SENSE (which reports and clears it). A nexus first seen after the reset is not told.
#[derive(Debug, Default)]
struct Attention {
    generation: u64,
    seen: std::collections::HashMap<String, u64>,
}

impl Attention {
    /// Whether `nexus` has a unit attention pending; clears it when `clear`.
    fn pending(&mut self, nexus: &str, clear: bool) -> bool {
        let generation = self.generation;
        if !self.seen.contains_key(nexus) {
            if self.seen.len() >= MAX_NEXUSES {
                self.seen.clear();
            }
            self.seen.insert(nexus.to_string(), generation);
            return false;
        }
        let seen = self.seen.get_mut(nexus).expect("present");
        let pending = *seen < generation;
        if pending && clear {
            *seen = generation;
        }
        pending
    }
}

struct Lba {
    lba: u64,
    blocks: u32,
    fua: bool,
}

impl LogicalUnit {
    /// A logical unit named `name` (the target IQN) serving `volume`.
    pub fn new(volume: Arc<dyn Volume>, target_name: &str) -> LogicalUnit {
        let id: [u8; 16] = Md5::digest(target_name.as_bytes()).into();
        LogicalUnit {
            blocks: volume.size_bytes() / u64::from(BLOCK_BYTES),
            volume,
            target_name: target_name.to_string(),
            id,
            reservations: Mutex::new(Reservations::default()),
            attention: Mutex::new(Attention::default()),
            compare_and_write: tokio::sync::Mutex::new(()),
        }
    }

    /// Number of logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    fn reservations(&self) -> std::sync::MutexGuard<'_, Reservations> {
        self.reservations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attention(&self) -> std::sync::MutexGuard<'_, Attention> {
        self.attention.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A LUN reset: clears the SPC-2 reservation and raises a unit attention for every nexus.
    pub fn reset(&self) {
        self.reservations().reset_legacy(None);
        self.attention().generation += 1;
    }

    /// The I_T nexus `nexus` is gone: its SPC-2 reservation is released and its unit attention
    /// state forgotten.
    pub fn nexus_lost(&self, nexus: &str) {
        self.reservations().reset_legacy(Some(nexus));
        self.attention().seen.remove(nexus);
    }

    fn thin(&self) -> bool {
        let c = self.volume.capabilities();
        c.trim && c.write_zeroes
    }

    /// Executes one command for `nexus` with the data-out collected for it.
    pub async fn execute(&self, nexus: &str, cdb: &[u8; 16], data_out: Bytes) -> Outcome {
        match self.run(nexus, cdb, data_out).await {
            Ok(o) | Err(o) => o,
        }
    }

    async fn run(&self, nexus: &str, cdb: &[u8; 16], data: Bytes) -> Result<Outcome> {
        let opcode = cdb[0];
        let len = cdb_len(opcode);
        // NACA and the obsolete LINK bit: not supported.
        if cdb[len - 1] & 0x05 != 0 && opcode != op::REQUEST_SENSE {
            return Err(Outcome::check(
                Sense::INVALID_FIELD_IN_CDB.at_cdb(u16::try_from(len - 1).expect("small")),
            ));
        }
        match opcode {
            op::INQUIRY | op::REPORT_LUNS => {}
            op::REQUEST_SENSE => {
                if self.attention().pending(nexus, true) {
                    let s = Sense::RESET_OCCURRED.encode().to_vec();
                    return Ok(Outcome::good(truncate(s, usize::from(cdb[4]))));
                }
            }
            _ => {
                if self.attention().pending(nexus, true) {
                    return Err(Outcome::check(Sense::RESET_OCCURRED));
                }
            }
        }
        if let Err(r) = self.reservations().check(nexus, opcode) {
            return Err(refusal(r));
        }
        if let Access::Refused(_) = self.volume.access() {
            if !matches!(opcode, op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE) {
                return Err(Outcome::check(Sense::STANDBY));
            }
        }
        match opcode {
            op::TEST_UNIT_READY => Ok(Outcome::good(Vec::new())),
            op::REQUEST_SENSE => {
                if cdb[1] & 0x01 != 0 {
                    return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
                }
                let s = Sense::new(0, 0, 0).encode().to_vec();
                Ok(Outcome::good(truncate(s, usize::from(cdb[4]))))
            }
            op::INQUIRY => self.inquiry(cdb),
            op::READ_CAPACITY_10 => self.read_capacity_10(cdb),
            op::SERVICE_ACTION_IN_16 => match u16::from(cdb[1] & 0x1f) {
                op::SA_READ_CAPACITY_16 => self.read_capacity_16(cdb),
                op::SA_GET_LBA_STATUS => self.get_lba_status(cdb).await,
                _ => Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1))),
            },
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => self.mode_sense(cdb),
            op::REPORT_LUNS => report_luns(cdb),
            op::MAINTENANCE_IN => {
                if u16::from(cdb[1] & 0x1f) != op::SA_REPORT_SUPPORTED_OPERATION_CODES {
                    return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
                }
                report_supported_operation_codes(cdb)
            }
            op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => {
                let r = self.rw_cdb(cdb)?;
                self.read(&r).await
            }
            op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
                let r = self.rw_cdb(cdb)?;
                self.write(&r, data).await
            }
            op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16 => {
                let r = self.rw_cdb(cdb)?;
                self.write(&r, data).await
            }
            op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => self.verify(cdb, data).await,
            op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
                let (lba, blocks) = if opcode == op::PRE_FETCH_10 {
                    (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
                } else {
                    (be64(cdb, 2), u64::from(be32(cdb, 10)))
                };
                self.range(lba, blocks)?;
                Ok(Outcome::good(Vec::new()))
            }
            op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
                let (lba, blocks) = if opcode == op::SYNCHRONIZE_CACHE_10 {
                    (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
                } else {
                    (be64(cdb, 2), u64::from(be32(cdb, 10)))
                };
                self.range(lba, blocks)?;
                self.volume
                    .flush()
                    .await
                    .map_err(|e| volume_error(&e, true))?;
                Ok(Outcome::good(Vec::new()))
            }
            op::WRITE_SAME_10 | op::WRITE_SAME_16 => self.write_same(cdb, data).await,
            op::UNMAP => self.unmap(cdb, data).await,
            op::COMPARE_AND_WRITE => self.compare_and_write(cdb, data).await,
            op::ORWRITE_16 => self.orwrite(cdb, data).await,
            op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12 => {
                // No defects: a header with an empty list in the format asked for.
                let format = if opcode == op::READ_DEFECT_DATA_10 {
                    cdb[2] & 0x1f
                } else {
                    cdb[1] & 0x1f
                };
                let (d, allocation) = if opcode == op::READ_DEFECT_DATA_10 {
                    (vec![0, format, 0, 0], usize::from(be16(cdb, 7)))
                } else {
                    (vec![0, format, 0, 0, 0, 0, 0, 0], be32(cdb, 6) as usize)
                };
                Ok(Outcome::good(truncate(d, allocation)))
            }
            op::RESERVE_6 | op::RESERVE_10 => {
                if opcode == op::RESERVE_10 && cdb[1] & 0x02 != 0 {
                    // Third-party reservations are not supported.
                    return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
                }
                self.reservations().reserve_legacy(nexus).map_err(refusal)?;
                Ok(Outcome::good(Vec::new()))
            }
            op::RELEASE_6 | op::RELEASE_10 => {
                self.reservations().release_legacy(nexus);
                Ok(Outcome::good(Vec::new()))
            }
            op::PERSISTENT_RESERVE_IN => {
                let allocation = usize::from(be16(cdb, 7));
                let d = self
                    .reservations()
                    .persistent_reserve_in(cdb[1] & 0x1f)
                    .map_err(refusal)?;
                Ok(Outcome::good(truncate(d, allocation)))
            }
            op::PERSISTENT_RESERVE_OUT => {
                let list = be32(cdb, 5);
                if u64::from(list) != data.len() as u64 {
                    return Err(Outcome::check(Sense::PARAMETER_LIST_LENGTH_ERROR));
                }
                self.reservations()
                    .persistent_reserve_out(nexus, cdb[1] & 0x1f, cdb[2], &data)
                    .map_err(refusal)?;
                Ok(Outcome::good(Vec::new()))
            }
            _ => Err(Outcome::check(Sense::INVALID_OPCODE)),
        }
    }

    fn range(&self, lba: u64, blocks: u64) -> Result<()> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks && lba <= self.blocks => Ok(()),
            _ => Err(Outcome::check(Sense::LBA_OUT_OF_RANGE)),
        }
    }

    fn rw_cdb(&self, cdb: &[u8; 16]) -> Result<Lba> {
        let (lba, blocks, flags) = match cdb[0] {
            op::READ_6 | op::WRITE_6 => {
                let n = if cdb[4] == 0 { 256 } else { u32::from(cdb[4]) };
                (u64::from(be24(cdb, 1) & 0x1f_ffff), n, 0)
            }
            op::READ_10 | op::WRITE_10 | op::WRITE_AND_VERIFY_10 => {
                (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)), cdb[1])
            }
            op::READ_12 | op::WRITE_12 | op::WRITE_AND_VERIFY_12 => {
                (u64::from(be32(cdb, 2)), be32(cdb, 6), cdb[1])
            }
            _ => (be64(cdb, 2), be32(cdb, 10), cdb[1]),
        };
        // RDPROTECT/WRPROTECT: no protection information here.
        if flags & 0xe0 != 0 {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
        }
        if blocks > MAX_TRANSFER_BLOCKS {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(
                match cdb[0] {
                    op::READ_6 | op::WRITE_6 => 4,
                    op::READ_10 | op::WRITE_10 | op::WRITE_AND_VERIFY_10 => 7,
                    op::READ_12 | op::WRITE_12 | op::WRITE_AND_VERIFY_12 => 6,
                    _ => 10,
                },
            )));
        }
        self.range(lba, u64::from(blocks))?;
        let is_write_and_verify = matches!(
            cdb[0],
            op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16
        );
        Ok(Lba {
            lba,
            blocks,
            // WRITE AND VERIFY reads back from the medium: make it durable first.
            fua: flags & 0x08 != 0 || is_write_and_verify,
        })
    }

    fn writable(&self) -> Result<()> {
        match self.volume.access() {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(Outcome::check(Sense::WRITE_PROTECTED)),
            Access::Refused(_) => Err(Outcome::check(Sense::STANDBY)),
        }
    }

    async fn read(&self, r: &Lba) -> Result<Outcome> {
        if r.blocks == 0 {
            return Ok(Outcome::good(Vec::new()));
        }
        let data = self
            .volume
            .read(r.lba * u64::from(BLOCK_BYTES), r.blocks * BLOCK_BYTES)
            .await
            .map_err(|e| volume_error(&e, false))?;
        Ok(Outcome::good(data))
    }

    async fn write(&self, r: &Lba, data: Bytes) -> Result<Outcome> {
        self.writable()?;
        if r.blocks == 0 {
            return Ok(Outcome::good(Vec::new()));
        }
        // When the iSCSI Expected Data Transfer Length and the CDB disagree, the whole blocks
        // both cover are written and the residual says the rest was not (FCP-4 9.4.2 a).
        let want = r.blocks as usize * BLOCK_BYTES as usize;
        let n = want.min(data.len()) / BLOCK_BYTES as usize * BLOCK_BYTES as usize;
        if n == 0 {
            return Ok(Outcome::good(Vec::new()));
        }
        self.volume
            .write(r.lba * u64::from(BLOCK_BYTES), data.slice(..n), r.fua)
            .await
            .map_err(|e| volume_error(&e, true))?;
        Ok(Outcome::good(Vec::new()))
    }

    async fn verify(&self, cdb: &[u8; 16], data: Bytes) -> Result<Outcome> {
        let (lba, blocks) = match cdb[0] {
            op::VERIFY_10 => (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7))),
            op::VERIFY_12 => (u64::from(be32(cdb, 2)), be32(cdb, 6)),
            _ => (be64(cdb, 2), be32(cdb, 10)),
        };
        if cdb[1] & 0xe0 != 0 {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
        }
        let bytchk = (cdb[1] >> 1) & 0x03;
        if bytchk == 2 {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
        }
        if blocks > MAX_TRANSFER_BLOCKS {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB));
        }
        self.range(lba, u64::from(blocks))?;
        if blocks == 0 {
            return Ok(Outcome::good(Vec::new()));
        }
        let medium = self
            .volume
            .read(lba * u64::from(BLOCK_BYTES), blocks * BLOCK_BYTES)
            .await
            .map_err(|e| volume_error(&e, false))?;
        if bytchk == 0 {
            return Ok(Outcome::good(Vec::new()));
        }
        let expected: &[u8] = &data;
        let compare_len = if bytchk == 3 {
            BLOCK_BYTES as usize
        } else {
            medium.len()
        };
        if expected.len() < compare_len {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_INFORMATION_UNIT));
        }
        for (i, block) in medium.chunks(BLOCK_BYTES as usize).enumerate() {
            let want = if bytchk == 3 {
                &expected[..BLOCK_BYTES as usize]
            } else {
                &expected[i * BLOCK_BYTES as usize..(i + 1) * BLOCK_BYTES as usize]
            };
            if let Some(off) = block.iter().zip(want).position(|(a, b)| a != b) {
                let mut s = Sense::MISCOMPARE_DURING_VERIFY;
                s.information = u32::try_from(i * BLOCK_BYTES as usize + off).ok();
                return Err(Outcome::check(s));
            }
        }
        Ok(Outcome::good(Vec::new()))
    }

    async fn write_same(&self, cdb: &[u8; 16], data: Bytes) -> Result<Outcome> {
        let sixteen = cdb[0] == op::WRITE_SAME_16;
        let (lba, blocks) = if sixteen {
            (be64(cdb, 2), u64::from(be32(cdb, 10)))
        } else {
            (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
        };
        let unmap = cdb[1] & 0x08 != 0;
        let anchor = cdb[1] & 0x10 != 0;
        let ndob = sixteen && cdb[1] & 0x01 != 0;
        if cdb[1] & 0xe0 != 0 || anchor {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
        }
        if blocks == 0 || blocks > MAX_WRITE_SAME_BLOCKS {
            // WSNZ: zero blocks is not "to the end of the medium" here.
            return Err(Outcome::check(
                Sense::INVALID_FIELD_IN_CDB.at_cdb(if sixteen { 10 } else { 7 }),
            ));
        }
        self.range(lba, blocks)?;
        self.writable()?;
        let pattern: Vec<u8> = if ndob {
            vec![0; BLOCK_BYTES as usize]
        } else {
            if data.len() != BLOCK_BYTES as usize {
                return Err(Outcome::check(Sense::INVALID_FIELD_IN_INFORMATION_UNIT));
            }
            data.to_vec()
        };
        let offset = lba * u64::from(BLOCK_BYTES);
        let length = blocks * u64::from(BLOCK_BYTES);
        if pattern.iter().all(|&b| b == 0) && self.volume.capabilities().write_zeroes {
            let flags = ZeroFlags {
                may_trim: unmap && self.thin(),
                fast: false,
                fua: false,
            };
            self.volume
                .write_zeroes(offset, length, flags)
                .await
                .map_err(|e| volume_error(&e, true))?;
            return Ok(Outcome::good(Vec::new()));
        }
        let chunk_blocks = (WRITE_SAME_CHUNK_BYTES / u64::from(BLOCK_BYTES)).min(blocks);
        let chunk: Bytes = pattern
            .iter()
            .copied()
            .cycle()
            .take(usize::try_from(chunk_blocks).expect("small") * BLOCK_BYTES as usize)
            .collect::<Vec<u8>>()
            .into();
        let mut done = 0;
        while done < blocks {
            let n = chunk_blocks.min(blocks - done);
            let piece = chunk.slice(..usize::try_from(n).expect("small") * BLOCK_BYTES as usize);
            self.volume
                .write((lba + done) * u64::from(BLOCK_BYTES), piece, false)
                .await
                .map_err(|e| volume_error(&e, true))?;
            done += n;
        }
        Ok(Outcome::good(Vec::new()))
    }

    async fn unmap(&self, cdb: &[u8; 16], data: Bytes) -> Result<Outcome> {
        if cdb[1] & 0x01 != 0 {
            // ANCHOR.
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
        }
        if !self.thin() {
            return Err(Outcome::check(Sense::INVALID_OPCODE));
        }
        let list = usize::from(be16(cdb, 7));
        if list == 0 {
            return Ok(Outcome::good(Vec::new()));
        }
        if list < 8 || data.len() < list {
            return Err(Outcome::check(Sense::PARAMETER_LIST_LENGTH_ERROR));
        }
        self.writable()?;
        let descriptors_len = usize::from(be16(&data, 2)).min(list - 8);
        let count = descriptors_len / 16;
        if count > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_PARAMETER_LIST));
        }
        let mut ranges = Vec::with_capacity(count);
        let mut total = 0u64;
        for i in 0..count {
            let d = &data[8 + i * 16..8 + (i + 1) * 16];
            let lba = be64(d, 0);
            let blocks = u64::from(be32(d, 8));
            self.range(lba, blocks)?;
            total += blocks;
            if blocks > u64::from(MAX_UNMAP_BLOCKS) || total > u64::from(MAX_UNMAP_BLOCKS) {
                return Err(Outcome::check(Sense::INVALID_FIELD_IN_PARAMETER_LIST));
            }
            ranges.push((lba, blocks));
        }
        for (lba, blocks) in ranges {
            if blocks == 0 {
                continue;
            }
            // Zeroing that may punch holes: unmapped blocks read as zeroes (LBPRZ).
            self.volume
                .write_zeroes(
                    lba * u64::from(BLOCK_BYTES),
                    blocks * u64::from(BLOCK_BYTES),
                    ZeroFlags {
                        may_trim: true,
                        fast: false,
                        fua: false,
                    },
                )
                .await
                .map_err(|e| volume_error(&e, true))?;
        }
        Ok(Outcome::good(Vec::new()))
    }

    async fn compare_and_write(&self, cdb: &[u8; 16], data: Bytes) -> Result<Outcome> {
        if cdb[1] & 0xe0 != 0 {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
        }
        let lba = be64(cdb, 2);
        let blocks = cdb[13];
        if blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(13)));
        }
        self.range(lba, u64::from(blocks))?;
        self.writable()?;
        let n = usize::from(blocks) * BLOCK_BYTES as usize;
        if data.len() != 2 * n {
            // The NUMBER OF LOGICAL BLOCKS does not match the data sent.
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(13)));
        }
        if blocks == 0 {
            return Ok(Outcome::good(Vec::new()));
        }
        let _atomic = self.compare_and_write.lock().await;
        let offset = lba * u64::from(BLOCK_BYTES);
        let medium = self
            .volume
            .read(
                offset,
                u32::try_from(n).expect("bounded by MAX_COMPARE_AND_WRITE_BLOCKS"),
            )
            .await
            .map_err(|e| volume_error(&e, false))?;
        if let Some(off) = medium.iter().zip(&data[..n]).position(|(a, b)| a != b) {
            let mut s = Sense::MISCOMPARE_DURING_VERIFY;
            s.information = u32::try_from(off).ok();
            return Err(Outcome::check(s));
        }
        self.volume
            .write(offset, data.slice(n..), cdb[1] & 0x08 != 0)
            .await
            .map_err(|e| volume_error(&e, true))?;
        Ok(Outcome::good(Vec::new()))
    }

    /// ORWRITE(16): each block becomes the OR of the medium and the data sent, atomically
    /// with respect to other ORWRITEs and COMPARE AND WRITEs.
    async fn orwrite(&self, cdb: &[u8; 16], data: Bytes) -> Result<Outcome> {
        if cdb[1] & 0xe0 != 0 {
            // ORPROTECT: no protection information here.
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
        }
        let lba = be64(cdb, 2);
        let blocks = be32(cdb, 10);
        if blocks > MAX_TRANSFER_BLOCKS {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(10)));
        }
        self.range(lba, u64::from(blocks))?;
        self.writable()?;
        let n = (blocks as usize * BLOCK_BYTES as usize).min(data.len()) / BLOCK_BYTES as usize
            * BLOCK_BYTES as usize;
        if n == 0 {
            return Ok(Outcome::good(Vec::new()));
        }
        let _atomic = self.compare_and_write.lock().await;
        let offset = lba * u64::from(BLOCK_BYTES);
        let mut medium = self
            .volume
            .read(
                offset,
                u32::try_from(n).expect("bounded by MAX_TRANSFER_BLOCKS"),
            )
            .await
            .map_err(|e| volume_error(&e, false))?;
        for (m, d) in medium.iter_mut().zip(&data[..n]) {
            *m |= d;
        }
        self.volume
            .write(offset, Bytes::from(medium), cdb[1] & 0x08 != 0)
            .await
            .map_err(|e| volume_error(&e, true))?;
        Ok(Outcome::good(Vec::new()))
    }

    async fn get_lba_status(&self, cdb: &[u8; 16]) -> Result<Outcome> {
        let lba = be64(cdb, 2);
        let allocation = be32(cdb, 10) as usize;
        if lba >= self.blocks {
            return Err(Outcome::check(Sense::LBA_OUT_OF_RANGE));
        }
        // One descriptor per extent, as many as fit in the allocation length (at most 64).
        let max = (allocation.saturating_sub(8) / 16).clamp(1, 64);
        let offset = lba * u64::from(BLOCK_BYTES);
        let length = (self.blocks - lba) * u64::from(BLOCK_BYTES);
        let extents = if self.volume.capabilities().block_status {
            self.volume
                .block_status(offset, length.min(1 << 30), max)
                .await
                .map_err(|e| volume_error(&e, false))?
        } else {
            Vec::new()
        };
        let mut descriptors = Vec::new();
        let mut at = lba;
        for e in extents {
            let blocks = e.length / u64::from(BLOCK_BYTES);
            if blocks == 0 {
                break;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&at.to_be_bytes());
            d[8..12].copy_from_slice(&u32::try_from(blocks).unwrap_or(u32::MAX).to_be_bytes());
            // 0 mapped, 1 deallocated.
            d[12] = u8::from(e.hole && self.thin());
            descriptors.extend_from_slice(&d);
            at += blocks;
        }
        if descriptors.is_empty() {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&lba.to_be_bytes());
            let blocks = u32::try_from(self.blocks - lba).unwrap_or(u32::MAX);
            d[8..12].copy_from_slice(&blocks.to_be_bytes());
            descriptors.extend_from_slice(&d);
        }
        let mut out = Vec::with_capacity(8 + descriptors.len());
        out.extend_from_slice(
            &u32::try_from(descriptors.len() + 4)
                .expect("small")
                .to_be_bytes(),
        );
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&descriptors);
        Ok(Outcome::good(truncate(out, allocation)))
    }

    fn inquiry(&self, cdb: &[u8; 16]) -> Result<Outcome> {
        let evpd = cdb[1] & 0x01 != 0;
        let page = cdb[2];
        let allocation = usize::from(be16(cdb, 3));
        if cdb[1] & 0xfe != 0 {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(1)));
        }
        if !evpd {
            if page != 0 {
                return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)));
            }
            let mut d = vec![0u8; 96];
            d[0] = 0x00; // connected, direct access block device
            d[2] = 0x06; // SPC-4
            d[3] = 0x12; // HISUP, response data format 2
            d[4] = u8::try_from(d.len() - 5).expect("small");
            // d[5] = 0: no 3PC, no TPGS (ALUA), no PROTECT.
            d[7] = 0x02; // CMDQUE
            d[8..16].copy_from_slice(VENDOR);
            d[16..32].copy_from_slice(PRODUCT);
            d[32..36].copy_from_slice(REVISION);
            // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
            for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
                d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
            }
            return Ok(Outcome::good(truncate(d, allocation)));
        }
        let mut body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2],
            0x80 => self.serial().into_bytes(),
            0x83 => self.device_identification(),
            0xb0 => self.block_limits(),
            0xb1 => {
                let mut b = vec![0u8; 0x3c];
                b[1] = 0x01; // non-rotating medium
                b
            }
            0xb2 => {
                let mut b = vec![0u8; 4];
                if self.thin() {
                    // LBPU, LBPWS, LBPWS10, LBPRZ; provisioning type: thin.
                    b[1] = 0x80 | 0x40 | 0x20 | 0x04;
                    b[2] = 0x02;
                }
                b
            }
            _ => return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2))),
        };
        let mut d = vec![0x00, page];
        d.extend_from_slice(&u16::try_from(body.len()).expect("small").to_be_bytes());
        d.append(&mut body);
        Ok(Outcome::good(truncate(d, allocation)))
    }

    fn serial(&self) -> String {
        self.id[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn device_identification(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut designator = |code_set: u8, piv_assoc_type: u8, value: &[u8]| {
            out.push(code_set);
            out.push(piv_assoc_type);
            out.push(0);
            out.push(u8::try_from(value.len()).expect("designators are short"));
            out.extend_from_slice(value);
        };
        // NAA IEEE Registered Extended (6) with a locally derived identity (LU association).
        let mut naa = [0u8; 16];
        naa[0] = 0x60 | (self.id[0] & 0x0f);
        naa[1..].copy_from_slice(&self.id[1..]);
        designator(0x01, 0x03, &naa);
        // T10 vendor ID + serial (LU).
        let mut t10 = VENDOR.to_vec();
        t10.extend_from_slice(self.serial().as_bytes());
        designator(0x02, 0x01, &t10);
        // Relative target port 1 (target port association, iSCSI, PIV).
        designator(0x51, 0x94, &[0, 0, 0, 1]);
        // Target port group 1.
        designator(0x51, 0x95, &[0, 0, 0, 1]);
        // SCSI name string of the target device (UTF-8, NUL-padded to a multiple of 4).
        let mut name = self.target_name.as_bytes().to_vec();
        name.push(0);
        while name.len() % 4 != 0 {
            name.push(0);
        }
        name.truncate(252);
        designator(0x53, 0xa8, &name);
        out
    }

    fn block_limits(&self) -> Vec<u8> {
        let mut b = vec![0u8; 0x3c];
        b[0] = 0x01; // WSNZ
        b[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
        // OPTIMAL TRANSFER LENGTH GRANULARITY: 4 KiB.
        b[2..4].copy_from_slice(&8u16.to_be_bytes());
        b[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
        b[8..12].copy_from_slice(&(1024u32).to_be_bytes());
        if self.thin() {
            b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
            b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
            b[24..28].copy_from_slice(&8u32.to_be_bytes());
        }
        b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
        b
    }

    fn read_capacity_10(&self, cdb: &[u8; 16]) -> Result<Outcome> {
        let pmi = cdb[8] & 0x01 != 0;
        if !pmi && be32(cdb, 2) != 0 {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2)));
        }
        let last = self.blocks.saturating_sub(1);
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
        d.extend_from_slice(&BLOCK_BYTES.to_be_bytes());
        Ok(Outcome::good(d))
    }

    fn read_capacity_16(&self, cdb: &[u8; 16]) -> Result<Outcome> {
        let allocation = be32(cdb, 10) as usize;
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&self.blocks.saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&BLOCK_BYTES.to_be_bytes());
        // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0: the volume is byte-addressable, and
        // libiscsi's GET LBA STATUS test only holds for an exponent of 0.
        if self.thin() {
            d[14] = 0x80 | 0x40; // LBPME, LBPRZ
        }
        Ok(Outcome::good(truncate(d, allocation)))
    }

    fn mode_sense(&self, cdb: &[u8; 16]) -> Result<Outcome> {
        let ten = cdb[0] == op::MODE_SENSE_10;
        let dbd = cdb[1] & 0x08 != 0;
        let llbaa = ten && cdb[1] & 0x10 != 0;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        let subpage = cdb[3];
        let allocation = if ten {
            usize::from(be16(cdb, 7))
        } else {
            usize::from(cdb[4])
        };
        if pc == 3 {
            return Err(Outcome::check(Sense::SAVING_PARAMETERS_NOT_SUPPORTED));
        }
        if subpage != 0 && !(page == 0x3f && subpage == 0xff) {
            return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(3)));
        }
        let changeable = pc == 1;
        let caching = |out: &mut Vec<u8>| {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            if !changeable {
                p[2] = 0x04; // WCE: the volume has a volatile cache that FLUSH empties
            }
            out.extend_from_slice(&p);
        };
        let control = |out: &mut Vec<u8>| {
            let mut p = vec![0u8; 12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            if !changeable {
                p[2] = 0x02; // GLTSD
                p[3] = 0x10; // unrestricted reordering
                p[8..10].copy_from_slice(&0xffffu16.to_be_bytes());
            }
            out.extend_from_slice(&p);
        };
        let exceptions = |out: &mut Vec<u8>| {
            let mut p = vec![0u8; 12];
            p[0] = 0x1c;
            p[1] = 0x0a;
            out.extend_from_slice(&p);
        };
        let mut pages = Vec::new();
        match page {
            0x08 => caching(&mut pages),
            0x0a => control(&mut pages),
            0x1c => exceptions(&mut pages),
            0x3f => {
                caching(&mut pages);
                control(&mut pages);
                exceptions(&mut pages);
            }
            _ => return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2))),
        }
        let mut device_specific = 0x10; // DPOFUA
        if self.volume.access() == Access::ReadOnly {
            device_specific |= 0x80;
        }
        let mut descriptor = Vec::new();
        if !dbd {
            if llbaa {
                descriptor.extend_from_slice(&self.blocks.to_be_bytes());
                descriptor.extend_from_slice(&[0; 4]);
                descriptor.extend_from_slice(&BLOCK_BYTES.to_be_bytes());
            } else {
                descriptor.extend_from_slice(
                    &u32::try_from(self.blocks).unwrap_or(u32::MAX).to_be_bytes(),
                );
                descriptor.extend_from_slice(&BLOCK_BYTES.to_be_bytes());
                descriptor[4] = 0;
            }
        }
        let mut d = Vec::new();
        if ten {
            let total = 8 + descriptor.len() + pages.len();
            d.extend_from_slice(&u16::try_from(total - 2).expect("small").to_be_bytes());
            d.push(0);
            d.push(device_specific);
            d.push(u8::from(llbaa && !dbd));
            d.push(0);
            d.extend_from_slice(
                &u16::try_from(descriptor.len())
                    .expect("small")
                    .to_be_bytes(),
            );
        } else {
            let total = 4 + descriptor.len() + pages.len();
            d.push(u8::try_from(total - 1).expect("small"));
            d.push(0);
            d.push(device_specific);
            d.push(u8::try_from(descriptor.len()).expect("small"));
        }
        d.extend_from_slice(&descriptor);
        d.extend_from_slice(&pages);
        Ok(Outcome::good(truncate(d, allocation)))
    }
}

fn report_luns(cdb: &[u8; 16]) -> Result<Outcome> {
    let select = cdb[2];
    let allocation = be32(cdb, 6) as usize;
    if allocation < 16 {
        return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(6)));
    }
    let luns: &[u64] = match select {
        0x00 | 0x02 => &[0],
        0x01 | 0x10 | 0x11 | 0x12 => &[],
        _ => return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2))),
    };
    let mut d = Vec::new();
    d.extend_from_slice(&u32::try_from(luns.len() * 8).expect("small").to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for l in luns {
        d.extend_from_slice(&l.to_be_bytes());
    }
    Ok(Outcome::good(truncate(d, allocation)))
}

fn timeouts_descriptor() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0a;
    // Nominal and recommended command timeouts: 0 = not specified... say 30 s recommended.
    t[8..12].copy_from_slice(&30u32.to_be_bytes());
    t
}

fn report_supported_operation_codes(cdb: &[u8; 16]) -> Result<Outcome> {
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let req_op = cdb[3];
    let req_sa = be16(cdb, 4);
    let allocation = be32(cdb, 6) as usize;
    let has_sa = |opcode: u8| {
        COMMANDS
            .iter()
            .any(|c| c.opcode == opcode && c.service_action.is_some())
    };
    let one = |c: Option<&CommandInfo>| -> Vec<u8> {
        let mut d = vec![0u8; 4];
        match c {
            Some(c) => {
                d[1] = 0x03 | if rctd { 0x80 } else { 0 };
                d[2..4]
                    .copy_from_slice(&u16::try_from(c.usage.len()).expect("small").to_be_bytes());
                d.extend_from_slice(c.usage);
                if rctd {
                    d.extend_from_slice(&timeouts_descriptor());
                }
            }
            None => {
                d[1] = 0x01; // SUPPORT: not supported
            }
        }
        d
    };
    let data = match options {
        0 => {
            let mut list = Vec::new();
            for c in COMMANDS {
                let mut desc = [0u8; 8];
                desc[0] = c.opcode;
                if let Some(sa) = c.service_action {
                    desc[2..4].copy_from_slice(&sa.to_be_bytes());
                    desc[5] = 0x01;
                }
                if rctd {
                    desc[5] |= 0x02;
                }
                desc[6..8]
                    .copy_from_slice(&u16::try_from(c.usage.len()).expect("small").to_be_bytes());
                list.extend_from_slice(&desc);
                if rctd {
                    list.extend_from_slice(&timeouts_descriptor());
                }
            }
            let mut d = u32::try_from(list.len())
                .expect("small")
                .to_be_bytes()
                .to_vec();
            d.append(&mut list);
            d
        }
        1 => {
            if has_sa(req_op) {
                return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(3)));
            }
            one(COMMANDS.iter().find(|c| c.opcode == req_op))
        }
        2 => {
            if !has_sa(req_op) {
                return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(3)));
            }
            one(COMMANDS
                .iter()
                .find(|c| c.opcode == req_op && c.service_action == Some(req_sa)))
        }
        3 => one(COMMANDS
            .iter()
            .find(|c| c.opcode == req_op && c.service_action.is_none_or(|sa| sa == req_sa))),
        _ => return Err(Outcome::check(Sense::INVALID_FIELD_IN_CDB.at_cdb(2))),
    };
    Ok(Outcome::good(truncate(data, allocation)))
}

fn volume_error(e: &VolumeError, write: bool) -> Outcome {
    match e {
        VolumeError::ReadOnly => Outcome::check(Sense::WRITE_PROTECTED),
        VolumeError::Refused(_) => Outcome::check(Sense::STANDBY),
        VolumeError::OutOfRange { .. } => Outcome::check(Sense::LBA_OUT_OF_RANGE),
        _ => {
            tracing::warn!("iSCSI volume error: {e}");
            Outcome::check(if write {
                Sense::WRITE_ERROR
            } else {
                Sense::UNRECOVERED_READ_ERROR
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::FileVolume;

    fn lu(blocks: u64) -> (tempfile::TempDir, LogicalUnit) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(blocks * u64::from(BLOCK_BYTES)).unwrap();
        let v = FileVolume::open(&path, false).unwrap();
        (
            dir,
            LogicalUnit::new(Arc::new(v), "iqn.2026-11.org.tandem:disk.img"),
        )
    }

    fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    fn run(lu: &LogicalUnit, c: &[u8], data: &[u8]) -> Outcome {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(lu.execute("i", &cdb(c), Bytes::copy_from_slice(data)))
    }

    #[test]
    fn write_then_read_back_with_fua() {
        let (_d, lu) = lu(64);
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        let o = run(&lu, &[op::WRITE_10, 0x08, 0, 0, 0, 4, 0, 0, 2, 0], &data);
        assert_eq!(o.status, status::GOOD);
        let o = run(
            &lu,
            &[op::READ_16, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0],
            &[],
        );
        assert_eq!(o.data, data);
    }

    #[test]
    fn out_of_range_and_bad_fields_have_the_right_sense() {
        let (_d, lu) = lu(64);
        let o = run(&lu, &[op::READ_10, 0, 0, 0, 0, 63, 0, 0, 2, 0], &[]);
        assert_eq!(o.sense, Some(Sense::LBA_OUT_OF_RANGE));
        let o = run(&lu, &[op::READ_10, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], &[]);
        assert_eq!(o.sense.unwrap().asc, 0x24);
        let o = run(&lu, &[0xff, 0, 0, 0, 0, 0], &[]);
        assert_eq!(o.sense, Some(Sense::INVALID_OPCODE));
        let o = run(
            &lu,
            &[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
            &[],
        );
        assert_eq!(o.sense.unwrap().asc, 0x24);
    }

    #[test]
    fn capacity_inquiry_and_mode_pages() {
        let (_d, lu) = lu(2048);
        let o = run(&lu, &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(o.data, vec![0, 0, 0x07, 0xff, 0, 0, 2, 0]);
        let o = run(
            &lu,
            &[
                op::SERVICE_ACTION_IN_16,
                0x10,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                32,
                0,
                0,
            ],
            &[],
        );
        assert_eq!(&o.data[..12], &[0, 0, 0, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0]);
        let o = run(&lu, &[op::INQUIRY, 1, 0, 0, 255, 0], &[]);
        assert_eq!(o.data, vec![0, 0, 0, 6, 0, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
        let o = run(&lu, &[op::INQUIRY, 0, 0, 0, 36, 0], &[]);
        assert_eq!(&o.data[8..16], VENDOR);
        let o = run(&lu, &[op::MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], &[]);
        assert_eq!(o.data[2] & 0x10, 0x10, "DPOFUA");
        assert_eq!(o.data[4], 0x08);
        assert_eq!(o.data[6] & 0x04, 0x04, "WCE");
        let o = run(
            &lu,
            &[op::MODE_SENSE_10, 0, 0xff, 0, 0, 0, 0, 0, 255, 0],
            &[],
        );
        assert_eq!(o.sense, Some(Sense::SAVING_PARAMETERS_NOT_SUPPORTED));
    }

    #[test]
    fn compare_and_write_and_verify_miscompare() {
        let (_d, lu) = lu(64);
        let mut both = vec![0u8; 512];
        both.extend(vec![7u8; 512]);
        let o = run(
            &lu,
            &[
                op::COMPARE_AND_WRITE,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                1,
                0,
                0,
            ],
            &both,
        );
        assert_eq!(o.status, status::GOOD);
        let o = run(
            &lu,
            &[
                op::COMPARE_AND_WRITE,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                1,
                0,
                0,
            ],
            &both,
        );
        assert_eq!(o.sense.unwrap().key, 0x0e);
        assert_eq!(o.sense.unwrap().information, Some(0));
        let mut block = vec![7u8; 512];
        let o = run(&lu, &[op::VERIFY_10, 0x02, 0, 0, 0, 1, 0, 0, 1, 0], &block);
        assert_eq!(o.status, status::GOOD);
        block[100] = 0;
        let o = run(&lu, &[op::VERIFY_10, 0x02, 0, 0, 0, 1, 0, 0, 1, 0], &block);
        assert_eq!(o.sense.unwrap().information, Some(100));
    }

    #[test]
    fn write_same_and_unmap_zero_the_range() {
        let (_d, lu) = lu(64);
        let o = run(
            &lu,
            &[op::WRITE_SAME_10, 0, 0, 0, 0, 2, 0, 0, 3, 0],
            &[9u8; 512],
        );
        assert_eq!(o.status, status::GOOD);
        let o = run(&lu, &[op::READ_10, 0, 0, 0, 0, 2, 0, 0, 3, 0], &[]);
        assert!(o.data.iter().all(|&b| b == 9));
        let mut list = vec![0u8; 24];
        list[1] = 22;
        list[3] = 16;
        list[15] = 3;
        list[19] = 1;
        list[15] = 3;
        let o = run(&lu, &[op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list);
        assert_eq!(o.status, status::GOOD, "{o:?}");
        let o = run(&lu, &[op::READ_10, 0, 0, 0, 0, 2, 0, 0, 3, 0], &[]);
        assert_eq!(&o.data[512..1024], &[0u8; 512][..]);
        assert!(o.data[..512].iter().all(|&b| b == 9));
        let o = run(
            &lu,
            &[op::WRITE_SAME_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[9u8; 512],
        );
        assert_eq!(o.sense.unwrap().asc, 0x24, "WSNZ");
    }

    #[test]
    fn get_lba_status_starts_at_the_requested_lba() {
        let (_d, lu) = lu(4096);
        let o = run(
            &lu,
            &[op::WRITE_10, 0, 0, 0, 0, 0, 0, 1, 8, 0],
            &vec![b'A'; 264 * 512],
        );
        assert_eq!(o.status, status::GOOD);
        let mut list = vec![0u8; 24];
        list[1] = 22;
        list[3] = 16;
        list[19] = 8;
        let o = run(&lu, &[op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list);
        assert_eq!(o.status, status::GOOD);
        let o = run(
            &lu,
            &[
                op::SERVICE_ACTION_IN_16,
                0x12,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                24,
                0,
                0,
            ],
            &[],
        );
        assert_eq!(o.data.len(), 24, "{o:?}");
        assert_eq!(&o.data[8..16], &0u64.to_be_bytes());
        assert_eq!(o.data[20], 1, "deallocated: {o:?}");
        let o = run(
            &lu,
            &[
                op::SERVICE_ACTION_IN_16,
                0x12,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                8,
                0,
                0,
                0,
                24,
                0,
                0,
            ],
            &[],
        );
        assert_eq!(&o.data[8..16], &8u64.to_be_bytes(), "{o:?}");
        assert_eq!(o.data[20], 0, "mapped: {o:?}");
    }

    #[test]
    fn orwrite_ors_into_the_medium() {
        let (_d, lu) = lu(64);
        let o = run(
            &lu,
            &[op::WRITE_10, 0, 0, 0, 0, 3, 0, 0, 1, 0],
            &[0x0f; 512],
        );
        assert_eq!(o.status, status::GOOD);
        let o = run(
            &lu,
            &[op::ORWRITE_16, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0],
            &[0xf0; 512],
        );
        assert_eq!(o.status, status::GOOD);
        let o = run(&lu, &[op::READ_10, 0, 0, 0, 0, 3, 0, 0, 1, 0], &[]);
        assert!(o.data.iter().all(|&b| b == 0xff));
        let o = run(
            &lu,
            &[op::ORWRITE_16, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 1, 0, 0],
            &[0; 512],
        );
        assert_eq!(o.sense, Some(Sense::LBA_OUT_OF_RANGE));
    }

    #[test]
    fn a_reset_raises_one_unit_attention_per_known_nexus() {
        let (_d, lu) = lu(64);
        let tur = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0];
        assert_eq!(run_as(&lu, "a", &tur).status, status::GOOD);
        assert_eq!(run_as(&lu, "b", &tur).status, status::GOOD);
        lu.reset();
        assert_eq!(run_as(&lu, "a", &tur).sense, Some(Sense::RESET_OCCURRED));
        assert_eq!(run_as(&lu, "a", &tur).status, status::GOOD);
        let inq = [op::INQUIRY, 0, 0, 0, 36, 0];
        assert_eq!(run_as(&lu, "b", &inq).status, status::GOOD);
        let rs = run_as(&lu, "b", &[op::REQUEST_SENSE, 0, 0, 0, 18, 0]);
        assert_eq!(Sense::decode(&rs.data), Some(Sense::RESET_OCCURRED));
        assert_eq!(run_as(&lu, "b", &tur).status, status::GOOD);
        assert_eq!(run_as(&lu, "c", &tur).status, status::GOOD, "new nexus");
    }

    fn run_as(lu: &LogicalUnit, nexus: &str, c: &[u8]) -> Outcome {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(lu.execute(nexus, &cdb(c), Bytes::new()))
    }

    /// A volume whose access can be switched, as a replicated resource's is on demotion.
    struct Gate {
        inner: FileVolume,
        refused: std::sync::atomic::AtomicBool,
    }

    impl Volume for Gate {
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn access(&self) -> Access {
            if self.refused.load(std::sync::atomic::Ordering::Acquire) {
                Access::Refused("r0 is Secondary".into())
            } else {
                Access::ReadWrite
            }
        }
        fn capabilities(&self) -> crate::volume::Capabilities {
            self.inner.capabilities()
        }
        fn read(&self, offset: u64, length: u32) -> crate::volume::VolumeFuture<Vec<u8>> {
            self.inner.read(offset, length)
        }
        fn write(&self, offset: u64, data: Bytes, fua: bool) -> crate::volume::VolumeFuture<()> {
            self.inner.write(offset, data, fua)
        }
        fn flush(&self) -> crate::volume::VolumeFuture<()> {
            self.inner.flush()
        }
        fn trim(&self, offset: u64, length: u64, fua: bool) -> crate::volume::VolumeFuture<()> {
            self.inner.trim(offset, length, fua)
        }
        fn write_zeroes(
            &self,
            offset: u64,
            length: u64,
            flags: ZeroFlags,
        ) -> crate::volume::VolumeFuture<()> {
            self.inner.write_zeroes(offset, length, flags)
        }
        fn block_status(
            &self,
            offset: u64,
            length: u64,
            max: usize,
        ) -> crate::volume::VolumeFuture<Vec<crate::volume::Extent>> {
            self.inner.block_status(offset, length, max)
        }
    }

    #[test]
    fn a_refused_volume_answers_not_ready_standby_but_still_identifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let gate = Arc::new(Gate {
            inner: FileVolume::open(&path, false).unwrap(),
            refused: std::sync::atomic::AtomicBool::new(false),
        });
        let lu = LogicalUnit::new(gate.clone(), "iqn.2026-11.org.tandem:r0");
        let write = [op::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(run(&lu, &write, &[1; 512]).status, status::GOOD);
        gate.refused
            .store(true, std::sync::atomic::Ordering::Release);
        assert_eq!(run(&lu, &write, &[1; 512]).sense, Some(Sense::STANDBY));
        let read = [op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(run(&lu, &read, &[]).sense, Some(Sense::STANDBY));
        assert_eq!(
            run(&lu, &[op::INQUIRY, 0, 0, 0, 36, 0], &[]).status,
            status::GOOD
        );
        gate.refused
            .store(false, std::sync::atomic::Ordering::Release);
        assert_eq!(run(&lu, &read, &[]).data, vec![1; 512]);
    }

    #[test]
    fn data_out_lengths() {
        assert_eq!(
            data_out_bytes(&cdb(&[op::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 2, 0])),
            Some(1024)
        );
        assert_eq!(
            data_out_bytes(&cdb(&[op::WRITE_6, 0, 0, 0, 0, 0])),
            Some(256 * 512)
        );
        assert_eq!(data_out_bytes(&cdb(&[op::READ_10])), None);
    }
}
