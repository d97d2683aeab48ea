//! DRBD v08 meta-data: the superblock, the activity log and the bitmap.
//!
//! Byte-compatible with DRBD 8.4's internal and external meta-data as drbd-utils' `drbdmeta`
//! writes and reads it, so that `drbdmeta ... dump-md` reads a disk tandem created and tandem
//! can take over a disk that kernel DRBD used. Everything here except [`disk`] is pure: bytes in,
//! typed values out and back.
//!
//! Internal meta-data sits at the end of the backing disk and grows backwards:
//! `[data][bitmap][activity log][superblock]`; external meta-data is
//! `[superblock][activity log][bitmap]` at the start of its file (or of its 128 MiB slot).

pub mod al;
pub mod bitmap;
pub mod disk;
pub mod dump;
pub mod layout;
pub mod signature;

pub use layout::{Layout, MetaKind};

/// Size of the superblock and of every AL transaction.
pub const BLOCK_BYTES: usize = 4096;
/// v08 superblock magic: meta-data is clean.
pub const MAGIC_V08: u32 = 0x8374_026b;
/// DRBD 8.4 writes this magic while attached ("unclean": the AL may need applying).
pub const MAGIC_V08_UNCLEAN: u32 = 0x8374_026c;
/// v07 magic (fixed-size meta-data of DRBD 0.7); recognized only to refuse overwriting it.
pub const MAGIC_V07: u32 = 0x8374_026a;
/// v09 magic (DRBD 9 multi-peer meta-data); recognized only to refuse overwriting it.
pub const MAGIC_V09: u32 = 0x8374_026d;
/// The bitmap granularity: one bit per 4 KiB.
pub const BM_BYTES_PER_BIT: u32 = 4096;
/// The current UUID of freshly created meta-data.
pub const UUID_JUST_CREATED: u64 = 4;

/// Meta-data flags (`MDF_*`), a bit set.
pub mod flags {
    /// The data is consistent (not in the middle of a resync).
    pub const CONSISTENT: u32 = 1 << 0;
    /// This node was Primary.
    pub const PRIMARY_IND: u32 = 1 << 1;
    /// This node was connected.
    pub const CONNECTED_IND: u32 = 1 << 2;
    /// A full sync is needed.
    pub const FULL_SYNC: u32 = 1 << 3;
    /// The disk was UpToDate.
    pub const WAS_UP_TO_DATE: u32 = 1 << 4;
    /// The peer's disk was marked Outdated.
    pub const PEER_OUT_DATED: u32 = 1 << 5;
    /// This node crashed while Primary.
    pub const CRASHED_PRIMARY: u32 = 1 << 6;
    /// The activity log is clean: nothing to apply.
    pub const AL_CLEAN: u32 = 1 << 7;
    /// The activity log is disabled (al-updates no).
    pub const AL_DISABLED: u32 = 1 << 8;
}

/// What can be wrong with meta-data bytes or a meta-data disk.
#[derive(Debug, thiserror::Error)]
pub enum MdError {
    /// The block has no v08 magic.
    #[error("no valid v08 meta-data found (magic {found:#010x}); run 'replctl create-md' first")]
    NoMetadata {
        /// The magic read.
        found: u32,
    },
    /// The superblock's layout does not match the disk.
    #[error("meta-data layout does not match the disk: {0}")]
    BadLayout(String),
    /// The disk is too small for meta-data.
    #[error("{path} is {size_bytes} bytes; {what}")]
    TooSmall {
        /// The disk.
        path: String,
        /// Its size.
        size_bytes: u64,
        /// What would be needed.
        what: String,
    },
    /// An AL transaction failed its checks.
    #[error("activity log transaction: {0}")]
    BadTransaction(String),
    /// Reading or writing the disk failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// read, write, open, sync.
        op: &'static str,
        /// The file or device.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The v08 superblock (4096 bytes, all fields big-endian, the rest zero).
///
/// | offset | field |
/// |---|---|
/// | 0 | u64 la_size_sect (last agreed size) |
/// | 8 | u64 uuid\[4\]: current, bitmap, history 0, history 1 |
/// | 40 | u64 device_uuid |
/// | 48 | u64 reserved |
/// | 56 | u32 flags |
/// | 60 | u32 magic |
/// | 64 | u32 md_size_sect |
/// | 68 | s32 al_offset (sectors, relative to the superblock) |
/// | 72 | u32 al_nr_extents |
/// | 76 | s32 bm_offset (sectors, relative to the superblock) |
/// | 80 | u32 bm_bytes_per_bit |
/// | 84 | u32 la_peer_max_bio_size |
/// | 88 | u32 al_stripes |
/// | 92 | u32 al_stripe_size_4k |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// The device size both peers last agreed on, in sectors.
    pub la_size_sect: u64,
    /// Generation UUIDs: current, bitmap, history\[0\], history\[1\].
    pub uuids: [u64; 4],
    /// A UUID of the backing device.
    pub device_uuid: u64,
    /// `MDF_*` bits, see [`flags`].
    pub flags: u32,
    /// [`MAGIC_V08`] or [`MAGIC_V08_UNCLEAN`].
    pub magic: u32,
    /// Size of the meta-data area in sectors (superblock + AL + bitmap for internal).
    pub md_size_sect: u32,
    /// Where the AL starts, in sectors relative to the superblock.
    pub al_offset: i32,
    /// Hot extents the activity log may hold.
    pub al_nr_extents: u32,
    /// Where the bitmap starts, in sectors relative to the superblock.
    pub bm_offset: i32,
    /// Bytes of data per bitmap bit; 4096.
    pub bm_bytes_per_bit: u32,
    /// Largest request the peer accepted.
    pub la_peer_max_bio_size: u32,
    /// AL stripes (1 unless striped).
    pub al_stripes: u32,
    /// Size of one AL stripe in 4 KiB blocks (8 = 32 KiB).
    pub al_stripe_size_4k: u32,
}

impl Superblock {
    /// Decodes a superblock; checks only the magic (layout checks need the disk size).
    pub fn decode(block: &[u8; BLOCK_BYTES]) -> Result<Superblock, MdError> {
        let u64_at = |o: usize| u64::from_be_bytes(block[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_be_bytes(block[o..o + 4].try_into().expect("4 bytes"));
        let i32_at = |o: usize| i32::from_be_bytes(block[o..o + 4].try_into().expect("4 bytes"));
        let magic = u32_at(60);
        if magic != MAGIC_V08 && magic != MAGIC_V08_UNCLEAN {
            return Err(MdError::NoMetadata { found: magic });
        }
        let mut sb = Superblock {
            la_size_sect: u64_at(0),
            uuids: [u64_at(8), u64_at(16), u64_at(24), u64_at(32)],
            device_uuid: u64_at(40),
            flags: u32_at(56),
            magic,
            md_size_sect: u32_at(64),
            al_offset: i32_at(68),
            al_nr_extents: u32_at(72),
            bm_offset: i32_at(76),
            bm_bytes_per_bit: u32_at(80),
            la_peer_max_bio_size: u32_at(84),
            al_stripes: u32_at(88),
            al_stripe_size_4k: u32_at(92),
        };
        // Meta-data from before striped ALs has zeros here and means the fixed 32 KiB AL.
        if sb.al_stripes == 0 && sb.al_stripe_size_4k == 0 {
            sb.al_stripes = 1;
            sb.al_stripe_size_4k = 8;
        }
        Ok(sb)
    }

    /// Encodes the superblock into a zeroed 4096-byte block.
    pub fn encode(&self) -> [u8; BLOCK_BYTES] {
        let mut b = [0u8; BLOCK_BYTES];
        b[0..8].copy_from_slice(&self.la_size_sect.to_be_bytes());
        for (i, uuid) in self.uuids.iter().enumerate() {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&uuid.to_be_bytes());
        }
        b[40..48].copy_from_slice(&self.device_uuid.to_be_bytes());
        b[56..60].copy_from_slice(&self.flags.to_be_bytes());
        b[60..64].copy_from_slice(&self.magic.to_be_bytes());
        b[64..68].copy_from_slice(&self.md_size_sect.to_be_bytes());
        b[68..72].copy_from_slice(&self.al_offset.to_be_bytes());
        b[72..76].copy_from_slice(&self.al_nr_extents.to_be_bytes());
        b[76..80].copy_from_slice(&self.bm_offset.to_be_bytes());
        b[80..84].copy_from_slice(&self.bm_bytes_per_bit.to_be_bytes());
        b[84..88].copy_from_slice(&self.la_peer_max_bio_size.to_be_bytes());
        b[88..92].copy_from_slice(&self.al_stripes.to_be_bytes());
        b[92..96].copy_from_slice(&self.al_stripe_size_4k.to_be_bytes());
        b
    }

    /// Fresh meta-data for `layout`, as `create-md` writes it: current UUID "just created",
    /// everything else zero, the AL clean.
    pub fn fresh(layout: &Layout, al_nr_extents: u32) -> Superblock {
        Superblock {
            la_size_sect: 0,
            uuids: [UUID_JUST_CREATED, 0, 0, 0],
            device_uuid: 0,
            flags: flags::AL_CLEAN,
            magic: MAGIC_V08,
            md_size_sect: layout.md_size_sect,
            al_offset: layout.al_offset_sect,
            al_nr_extents,
            bm_offset: layout.bm_offset_sect,
            bm_bytes_per_bit: BM_BYTES_PER_BIT,
            la_peer_max_bio_size: 0,
            al_stripes: layout.al_stripes,
            al_stripe_size_4k: layout.al_stripe_size_4k,
        }
    }

    /// True when the activity log has nothing to apply (the clean magic and AL_CLEAN).
    pub fn al_is_clean(&self) -> bool {
        self.magic == MAGIC_V08 && self.flags & flags::AL_CLEAN != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The superblock `drbdmeta 0 v08 /dev/loop0 internal create-md` wrote on a 100 MiB loop
    /// device (drbd-utils 9.22), first 96 bytes; the rest is zero.
    pub(crate) const DRBDMETA_100M_SB: [u8; 96] = [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x83, 0x74, 0x02, 0x6b, //
        0, 0, 0, 0x50, 0xff, 0xff, 0xff, 0xc0, 0, 0, 0x01, 0x01, 0xff, 0xff, 0xff, 0xb8, //
        0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8,
    ];

    #[test]
    fn golden_superblock_from_drbdmeta() {
        let mut block = [0u8; BLOCK_BYTES];
        block[..96].copy_from_slice(&DRBDMETA_100M_SB);
        let sb = Superblock::decode(&block).unwrap();
        assert_eq!(sb.uuids, [4, 0, 0, 0]);
        assert_eq!(sb.flags, flags::AL_CLEAN);
        assert_eq!(sb.md_size_sect, 80);
        assert_eq!(sb.al_offset, -64);
        assert_eq!(sb.bm_offset, -72);
        assert_eq!(sb.al_nr_extents, 257);
        assert!(sb.al_is_clean());
        assert_eq!(sb.encode(), block);

        let layout = Layout::internal(100 << 20, 1, 8).unwrap();
        assert_eq!(Superblock::fresh(&layout, 257).encode(), block);
    }

    #[test]
    fn wrong_magic_is_no_metadata() {
        let block = [0u8; BLOCK_BYTES];
        assert!(matches!(
            Superblock::decode(&block),
            Err(MdError::NoMetadata { found: 0 })
        ));
    }

    #[test]
    fn round_trip_all_fields() {
        let sb = Superblock {
            la_size_sect: 0x0102_0304_0506_0708,
            uuids: [0xdead_beef_0000_0001, 2, 3, 0xffff_ffff_ffff_ffff],
            device_uuid: 0x1234_5678_9abc_def0,
            flags: flags::CONSISTENT | flags::WAS_UP_TO_DATE,
            magic: MAGIC_V08_UNCLEAN,
            md_size_sect: 712,
            al_offset: -64,
            al_nr_extents: 1237,
            bm_offset: -704,
            bm_bytes_per_bit: 4096,
            la_peer_max_bio_size: 1 << 20,
            al_stripes: 2,
            al_stripe_size_4k: 16,
        };
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        assert!(!sb.al_is_clean());
    }
}
