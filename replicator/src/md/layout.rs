//! Where the superblock, the activity log and the bitmap sit, as drbdmeta computes it.
//!
//! All offsets stored in the superblock are in 512-byte sectors relative to the superblock;
//! the byte offsets here are absolute within the meta-data device.

use super::{MdError, BLOCK_BYTES, BM_BYTES_PER_BIT};

/// Smallest device drbdmeta accepts for meta-data (68 KiB).
pub const MIN_MD_DEVICE_BYTES: u64 = 69_632;
/// Size of one indexed external meta-data slot (DRBD 0.7's fixed 128 MiB).
pub const INDEXED_SLOT_BYTES: u64 = 128 << 20;
/// The largest data device DRBD's bitmap math handles (2^41 sectors = 1 PiB).
pub const MAX_DATA_SECT: u64 = 1 << 41;

/// The kind of meta-data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    /// At the end of the backing disk (drbdmeta's `internal`/`flex-internal`).
    Internal,
    /// A whole separate device or file (`flex-external`).
    FlexExternal,
    /// Slot `index` of 128 MiB on a separate device (`meta-disk PATH [INDEX]`).
    Indexed(u32),
}

/// Bytes of bitmap for `sectors` of data: one bit per 4 KiB, rounded up to 64 bits and then
/// to 4 KiB.
pub fn bm_bytes(sectors: u64) -> u64 {
    let sectors_per_bit = u64::from(BM_BYTES_PER_BIT >> 9);
    let bits = sectors.div_ceil(sectors_per_bit).next_multiple_of(64);
    (bits / 8).next_multiple_of(BLOCK_BYTES as u64)
}

/// The computed layout of one meta-data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Internal, flexible external or indexed.
    pub kind: MetaKind,
    /// Size of the meta-data device (for internal: the backing disk) in bytes.
    pub device_bytes: u64,
    /// Byte offset of the superblock.
    pub md_offset: u64,
    /// `md_size_sect` as stored in the superblock.
    pub md_size_sect: u32,
    /// `al_offset` as stored (sectors relative to the superblock).
    pub al_offset_sect: i32,
    /// `bm_offset` as stored (sectors relative to the superblock).
    pub bm_offset_sect: i32,
    /// AL stripes.
    pub al_stripes: u32,
    /// AL stripe size in 4 KiB blocks.
    pub al_stripe_size_4k: u32,
    /// Largest data size (sectors) this meta-data can describe; for internal meta-data the data
    /// area ends where the bitmap starts.
    pub max_data_sect: u64,
}

fn sectors_i32(sect: i64) -> Result<i32, MdError> {
    i32::try_from(sect).map_err(|_| MdError::BadLayout(format!("offset of {sect} sectors")))
}

impl Layout {
    /// Checks the AL stripe settings drbdmeta accepts (8 to 8192 blocks of 4 KiB).
    fn al_sect(al_stripes: u32, al_stripe_size_4k: u32) -> Result<u64, MdError> {
        let blocks = u64::from(al_stripes) * u64::from(al_stripe_size_4k);
        if !(8..=8192).contains(&blocks) {
            return Err(MdError::BadLayout(format!(
                "activity log of {al_stripes} stripes of {al_stripe_size_4k} blocks \
                 (needs 8 to 8192 blocks of 4 KiB)"
            )));
        }
        Ok(blocks * 8)
    }

    /// Internal meta-data at the end of a backing disk of `device_bytes`.
    pub fn internal(
        device_bytes: u64,
        al_stripes: u32,
        al_stripe_size_4k: u32,
    ) -> Result<Layout, MdError> {
        let al_sect = Self::al_sect(al_stripes, al_stripe_size_4k)?;
        if device_bytes < MIN_MD_DEVICE_BYTES {
            return Err(MdError::BadLayout(format!(
                "a {device_bytes}-byte disk is too small for internal meta-data (needs at least \
                 {MIN_MD_DEVICE_BYTES} bytes)"
            )));
        }
        let sectors = device_bytes >> 9;
        if sectors > MAX_DATA_SECT {
            return Err(MdError::BadLayout(
                "disks above 1 PiB are not supported".into(),
            ));
        }
        let md_offset = (device_bytes - BLOCK_BYTES as u64) & !(BLOCK_BYTES as u64 - 1);
        let md_size_sect = (bm_bytes(sectors) / 512).next_multiple_of(8) + 8 + al_sect;
        let bm_byte = (md_offset + 8 * 512)
            .checked_sub(md_size_sect * 512)
            .ok_or_else(|| {
                MdError::BadLayout(format!(
                    "a {device_bytes}-byte disk cannot hold {md_size_sect} sectors of meta-data"
                ))
            })?;
        let layout = Layout {
            kind: MetaKind::Internal,
            device_bytes,
            md_offset,
            md_size_sect: u32::try_from(md_size_sect)
                .map_err(|_| MdError::BadLayout("meta-data too large".into()))?,
            al_offset_sect: sectors_i32(-i64::try_from(al_sect).expect("small"))?,
            bm_offset_sect: sectors_i32(8 - i64::try_from(md_size_sect).expect("checked"))?,
            al_stripes,
            al_stripe_size_4k,
            max_data_sect: bm_byte / 512,
        };
        debug_assert_eq!(layout.bm_byte_offset(), bm_byte);
        debug_assert!(layout.al_byte_offset() > layout.bm_byte_offset());
        Ok(layout)
    }

    /// External meta-data: the whole device (`index` None) or its 128 MiB slot `index`.
    pub fn external(
        device_bytes: u64,
        index: Option<u32>,
        al_stripes: u32,
        al_stripe_size_4k: u32,
    ) -> Result<Layout, MdError> {
        let al_sect = Self::al_sect(al_stripes, al_stripe_size_4k)?;
        let (kind, md_offset, md_size_sect) = match index {
            None => {
                if device_bytes < MIN_MD_DEVICE_BYTES {
                    return Err(MdError::BadLayout(format!(
                        "a {device_bytes}-byte meta-data file is too small (needs at least \
                         {MIN_MD_DEVICE_BYTES} bytes)"
                    )));
                }
                (MetaKind::FlexExternal, 0, device_bytes >> 9)
            }
            Some(i) => {
                let md_offset = u64::from(i) * INDEXED_SLOT_BYTES;
                if md_offset + INDEXED_SLOT_BYTES > device_bytes {
                    return Err(MdError::BadLayout(format!(
                        "meta-data slot [{i}] needs the device to be at least {} bytes, it is \
                         {device_bytes}",
                        md_offset + INDEXED_SLOT_BYTES
                    )));
                }
                (MetaKind::Indexed(i), md_offset, INDEXED_SLOT_BYTES >> 9)
            }
        };
        let bm_offset = 8 + al_sect;
        let bitmap_bits = (md_size_sect - bm_offset) * 512 * 8 / 64 * 64;
        Ok(Layout {
            kind,
            device_bytes,
            md_offset,
            md_size_sect: u32::try_from(md_size_sect)
                .map_err(|_| MdError::BadLayout("meta-data file above 2 TiB".into()))?,
            al_offset_sect: 8,
            bm_offset_sect: sectors_i32(i64::try_from(bm_offset).expect("small"))?,
            al_stripes,
            al_stripe_size_4k,
            max_data_sect: (bitmap_bits * u64::from(BM_BYTES_PER_BIT >> 9)).min(MAX_DATA_SECT),
        })
    }

    /// Byte offset of the activity log.
    pub fn al_byte_offset(&self) -> u64 {
        self.md_offset
            .wrapping_add_signed(i64::from(self.al_offset_sect) * 512)
    }

    /// Byte offset of the bitmap.
    pub fn bm_byte_offset(&self) -> u64 {
        self.md_offset
            .wrapping_add_signed(i64::from(self.bm_offset_sect) * 512)
    }

    /// Bytes of the activity log ring.
    pub fn al_bytes(&self) -> u64 {
        u64::from(self.al_stripes) * u64::from(self.al_stripe_size_4k) * BLOCK_BYTES as u64
    }

    /// Bytes reserved for the bitmap on disk.
    pub fn bm_area_bytes(&self) -> u64 {
        match self.kind {
            MetaKind::Internal => self.al_byte_offset() - self.bm_byte_offset(),
            MetaKind::FlexExternal | MetaKind::Indexed(_) => {
                u64::from(self.md_size_sect) * 512 - (self.bm_byte_offset() - self.md_offset)
            }
        }
    }

    /// Checks a superblock read from this device against the layout drbdmeta expects; the
    /// messages are drbdmeta's.
    pub fn check(&self, sb: &super::Superblock) -> Result<(), MdError> {
        if sb.bm_bytes_per_bit != BM_BYTES_PER_BIT {
            return Err(MdError::BadLayout(format!(
                "bm-bytes-per-bit {} (tandem handles only 4096)",
                sb.bm_bytes_per_bit
            )));
        }
        if (sb.al_stripes, sb.al_stripe_size_4k) != (self.al_stripes, self.al_stripe_size_4k) {
            return Err(MdError::BadLayout(
                "activity log stripes differ from the layout".into(),
            ));
        }
        if sb.al_offset != self.al_offset_sect {
            return Err(MdError::BadLayout(format!(
                "al_offset: expected {}, found {}",
                self.al_offset_sect, sb.al_offset
            )));
        }
        if sb.bm_offset != self.bm_offset_sect {
            return Err(MdError::BadLayout(format!(
                "strange bm_offset {} (expected: {})",
                sb.bm_offset, self.bm_offset_sect
            )));
        }
        if self.kind == MetaKind::Internal && sb.md_size_sect != self.md_size_sect {
            return Err(MdError::BadLayout(format!(
                "strange md_size_sect {} (expected: {})",
                sb.md_size_sect, self.md_size_sect
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (device bytes, md_size_sect, md_offset, al_offset, bm_offset) as drbdmeta 9.22 printed
    /// them for `internal` meta-data on loop devices and files of these sizes.
    const OBSERVED_INTERNAL: &[(u64, u32, u64, u64, u64)] = &[
        (100 << 20, 80, 104_853_504, 104_820_736, 104_816_640),
        (
            10 << 30,
            712,
            10_737_414_144,
            10_737_381_376,
            10_737_053_696,
        ),
        (
            1100 << 30,
            70_472,
            1_181_116_002_304,
            1_181_115_969_536,
            1_181_079_924_736,
        ),
        (70_000, 80, 65_536, 32_768, 28_672),
    ];

    #[test]
    fn internal_matches_drbdmeta() {
        for &(bytes, md_size, md, al, bm) in OBSERVED_INTERNAL {
            let l = Layout::internal(bytes, 1, 8).unwrap();
            assert_eq!(
                (
                    l.md_size_sect,
                    l.md_offset,
                    l.al_byte_offset(),
                    l.bm_byte_offset()
                ),
                (md_size, md, al, bm),
                "device of {bytes} bytes"
            );
            assert_eq!(l.max_data_sect, bm / 512);
        }
        // --al-stripes 2 --al-stripe-size-kB 64 on 100 MiB.
        let l = Layout::internal(100 << 20, 2, 16).unwrap();
        assert_eq!(
            (l.md_size_sect, l.al_offset_sect, l.bm_offset_sect),
            (272, -256, -264)
        );
    }

    #[test]
    fn external_matches_drbdmeta() {
        let l = Layout::external(200 << 20, None, 1, 8).unwrap();
        assert_eq!(
            (l.md_offset, l.al_byte_offset(), l.bm_byte_offset()),
            (0, 4096, 36_864)
        );
        assert_eq!(l.max_data_sect, 13_419_413_504);
        let l = Layout::external(300 << 20, Some(1), 1, 8).unwrap();
        assert_eq!(
            (l.md_offset, l.al_byte_offset(), l.bm_byte_offset()),
            (134_217_728, 134_221_824, 134_254_592)
        );
        assert!(Layout::external(200 << 20, Some(1), 1, 8).is_err());
    }

    #[test]
    fn too_small_and_bad_stripes() {
        assert!(Layout::internal(69_631, 1, 8).is_err());
        assert!(Layout::internal(69_632, 1, 8).is_ok());
        assert!(Layout::internal(100 << 20, 1, 4).is_err());
        assert!(Layout::external(4096, None, 1, 8).is_err());
    }

    proptest! {
        #[test]
        fn internal_areas_are_ordered_and_cover_the_data(bytes in MIN_MD_DEVICE_BYTES..(1u64 << 44)) {
            let l = Layout::internal(bytes, 1, 8).unwrap();
            // [data][bitmap][al][superblock] with no overlap, superblock 4 KiB aligned at the end.
            prop_assert_eq!(l.md_offset % 4096, 0);
            prop_assert!(l.md_offset + 4096 <= bytes);
            prop_assert!(bytes - l.md_offset < 8192);
            prop_assert_eq!(l.al_byte_offset() + l.al_bytes(), l.md_offset);
            prop_assert!(l.bm_byte_offset() < l.al_byte_offset());
            prop_assert_eq!(l.max_data_sect * 512, l.bm_byte_offset());
            // The bitmap area holds a bit for every 4 KiB of the data area.
            prop_assert!(l.bm_area_bytes() >= bm_bytes(l.max_data_sect));
            prop_assert_eq!(l.bm_area_bytes() % 4096, 0);
        }

        #[test]
        fn bm_bytes_is_a_bit_per_4k(sectors in 0u64..(1u64 << 41)) {
            let b = bm_bytes(sectors);
            prop_assert_eq!(b % 4096, 0);
            prop_assert!(b * 8 * 8 >= sectors);
            prop_assert!(b < sectors / 64 + 4096 + 8);
        }
    }
}
