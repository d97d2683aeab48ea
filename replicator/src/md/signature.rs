//! Recognizes what already lives at the start of a disk, so create-md never silently destroys
//! a filesystem, a swap area, an LVM physical volume or a partition table.
//!
//! Like drbdmeta it looks at the first 68 KiB; it knows a few more signatures (btrfs, vfat,
//! NTFS, LUKS, partition tables).

/// How many bytes at the start of a device [`detect`] needs.
pub const PROBE_BYTES: usize = 69_632;

/// What was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A filesystem, with its size when the superblock says.
    Filesystem {
        /// ext4, xfs, ...
        kind: &'static str,
        /// Bytes the filesystem spans, if known.
        size_bytes: Option<u64>,
    },
    /// A swap area.
    Swap,
    /// An LVM2 physical volume.
    Lvm,
    /// LUKS encryption.
    Luks,
    /// An MBR or GPT partition table.
    PartitionTable,
    /// Not zero, but nothing recognized.
    SomeData,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Filesystem {
                kind,
                size_bytes: Some(s),
            } => {
                write!(f, "an {kind} filesystem of {} KiB", s / 1024)
            }
            Found::Filesystem {
                kind,
                size_bytes: None,
            } => write!(f, "a {kind} filesystem"),
            Found::Swap => f.write_str("a swap signature"),
            Found::Lvm => f.write_str("an LVM2 physical volume signature"),
            Found::Luks => f.write_str("a LUKS header"),
            Found::PartitionTable => f.write_str("a partition table"),
            Found::SomeData => f.write_str("data (the first 68 KiB are not zero)"),
        }
    }
}

fn at(b: &[u8], offset: usize, magic: &[u8]) -> bool {
    b.get(offset..offset + magic.len()) == Some(magic)
}

fn le32(b: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

/// Looks at the first [`PROBE_BYTES`] (or fewer, for a tiny device) of a device.
pub fn detect(b: &[u8]) -> Option<Found> {
    if b.iter().all(|&x| x == 0) {
        return None;
    }
    for page in [4096usize, 8192, 16384, 65536] {
        if at(b, page - 10, b"SWAPSPACE2") || at(b, page - 10, b"SWAP-SPACE") {
            return Some(Found::Swap);
        }
    }
    if (0..4).any(|s| at(b, s * 512, b"LABELONE") && at(b, s * 512 + 24, b"LVM2")) {
        return Some(Found::Lvm);
    }
    if at(b, 0, b"LUKS\xba\xbe") {
        return Some(Found::Luks);
    }
    if at(b, 0x438, &[0x53, 0xef]) {
        let features_incompat = le32(b, 0x460).unwrap_or(0);
        let has_journal = le32(b, 0x45c).unwrap_or(0) & 4 != 0;
        let kind = if features_incompat & 0x40 != 0 {
            "ext4" // extents
        } else if has_journal {
            "ext3"
        } else {
            "ext2"
        };
        let size = le32(b, 0x404)
            .zip(le32(b, 0x418))
            .and_then(|(blocks, log)| (log < 16).then(|| u64::from(blocks) * (1024u64 << log)));
        return Some(Found::Filesystem {
            kind,
            size_bytes: size,
        });
    }
    let simple: [(usize, &[u8], &'static str); 8] = [
        (0, b"XFSB", "xfs"),
        (0x10040, b"_BHRfS_M", "btrfs"),
        (0x8000, b"JFS1", "jfs"),
        (0x10034, b"ReIsErFs", "reiserfs"),
        (0x10034, b"ReIsEr2Fs", "reiserfs"),
        (3, b"NTFS    ", "ntfs"),
        (0, b"hsqs", "squashfs"),
        (0x8001, b"CD001", "iso9660"),
    ];
    for (offset, magic, kind) in simple {
        if at(b, offset, magic) {
            return Some(Found::Filesystem {
                kind,
                size_bytes: None,
            });
        }
    }
    if at(b, 510, &[0x55, 0xaa]) {
        if at(b, 0x36, b"FAT") || at(b, 0x52, b"FAT32") {
            return Some(Found::Filesystem {
                kind: "vfat",
                size_bytes: None,
            });
        }
        return Some(Found::PartitionTable);
    }
    if at(b, 512, b"EFI PART") {
        return Some(Found::PartitionTable);
    }
    Some(Found::SomeData)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_BYTES];
        b[offset..offset + magic.len()].copy_from_slice(magic);
        b
    }

    #[test]
    fn recognizes_signatures() {
        assert_eq!(detect(&vec![0u8; PROBE_BYTES]), None);
        assert_eq!(detect(&with(4086, b"SWAPSPACE2")), Some(Found::Swap));
        let mut lvm = with(512, b"LABELONE");
        lvm[536..540].copy_from_slice(b"LVM2");
        assert_eq!(detect(&lvm), Some(Found::Lvm));
        let mut ext = with(0x438, &[0x53, 0xef]);
        ext[0x404..0x408].copy_from_slice(&25_600u32.to_le_bytes());
        ext[0x418..0x41c].copy_from_slice(&2u32.to_le_bytes());
        ext[0x460] = 0x40;
        assert_eq!(
            detect(&ext),
            Some(Found::Filesystem {
                kind: "ext4",
                size_bytes: Some(100 << 20)
            })
        );
        assert_eq!(
            detect(&with(0, b"XFSB")),
            Some(Found::Filesystem {
                kind: "xfs",
                size_bytes: None
            })
        );
        assert_eq!(
            detect(&with(0x10040, b"_BHRfS_M")),
            Some(Found::Filesystem {
                kind: "btrfs",
                size_bytes: None
            })
        );
        assert_eq!(
            detect(&with(510, &[0x55, 0xaa])),
            Some(Found::PartitionTable)
        );
        assert_eq!(detect(&with(69_000, &[1])), Some(Found::SomeData));
        assert_eq!(
            detect(&[1, 2, 3]),
            Some(Found::SomeData),
            "short input never panics"
        );
    }
}
