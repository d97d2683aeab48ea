//! The thin driver that reads and writes meta-data on a file or block device.
//!
//! `create` and `read` are what `replctl create-md` and `dump-md` run with no daemon. Writes
//! are ordered AL, bitmap, superblock, and made stable with fdatasync before success is
//! reported: the superblock is the commit point.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::al::AlTransaction;
use super::layout::{bm_bytes, Layout};
use super::signature::{self, Found};
use super::{MdError, Superblock, BLOCK_BYTES, MAGIC_V07, MAGIC_V08, MAGIC_V08_UNCLEAN, MAGIC_V09};

/// Bytes written per call when zeroing the bitmap.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Where one volume's data and meta-data are (from the config's `disk` and `meta-disk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdLocation {
    /// The backing disk.
    pub data: PathBuf,
    /// `None` for internal meta-data; the meta-data file and its slot index otherwise.
    pub external: Option<(PathBuf, Option<u32>)>,
}

/// An open meta-data device.
pub struct MdDevice {
    file: File,
    path: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

fn io<'a>(op: &'static str, path: &'a str) -> impl FnOnce(std::io::Error) -> MdError + 'a {
    move |source| MdError::Io {
        op,
        path: path.to_string(),
        source,
    }
}

impl MdDevice {
    /// Opens a file or block device; block devices opened for writing are opened exclusively,
    /// so a mounted or otherwise claimed device is refused.
    pub fn open(path: &Path, write: bool) -> Result<MdDevice, MdError> {
        let name = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(io("open", &name))?;
        let is_block = meta.file_type().is_block_device();
        if !is_block && !meta.is_file() {
            return Err(MdError::Io {
                op: "open",
                path: name,
                source: std::io::Error::other("not a regular file or block device"),
            });
        }
        let mut options = OpenOptions::new();
        options.read(true).write(write);
        if is_block && write {
            options.custom_flags(libc::O_EXCL);
        }
        let mut file = options.open(path).map_err(io("open", &name))?;
        let size_bytes = file.seek(SeekFrom::End(0)).map_err(io("size", &name))?;
        Ok(MdDevice {
            file,
            path: name,
            size_bytes,
        })
    }

    /// The path, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Reads `len` bytes at `offset`.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, MdError> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(io("read", &self.path))?;
        Ok(buf)
    }

    /// Reads one 4 KiB block.
    pub fn read_block(&self, offset: u64) -> Result<[u8; BLOCK_BYTES], MdError> {
        let mut buf = [0u8; BLOCK_BYTES];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(io("read", &self.path))?;
        Ok(buf)
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), MdError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(io("write", &self.path))
    }

    /// fdatasync: everything written is on stable storage.
    pub fn sync(&self) -> Result<(), MdError> {
        self.file.sync_data().map_err(io("sync", &self.path))
    }
}

/// Why create-md refused, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Reading or layout failed.
    #[error(transparent)]
    Md(#[from] MdError),
    /// Meta-data already there.
    #[error(
        "{path} already has {what} at byte {offset}; refusing to overwrite it \
         (use --force to destroy it and start over)"
    )]
    Existing {
        /// The device.
        path: String,
        /// v08 meta-data (current UUID ...), v09, v07.
        what: String,
        /// Where.
        offset: u64,
    },
    /// Something lives on the disk.
    #[error("{path} holds {found}; {consequence} (use --force if you are sure)")]
    Occupied {
        /// The device.
        path: String,
        /// What was found.
        found: Found,
        /// What create-md would do to it.
        consequence: String,
    },
    /// The data disk does not fit.
    #[error("{0}")]
    DoesNotFit(String),
}

/// What create-md did.
#[derive(Debug)]
pub struct Created {
    /// The layout written.
    pub layout: Layout,
    /// The device the meta-data went to.
    pub md_path: String,
    /// Data bytes usable for replication.
    pub usable_bytes: u64,
    /// What `--force` overrode, if anything.
    pub overrode: Option<String>,
}

fn existing_md(dev: &MdDevice, layout: &Layout) -> Result<Option<String>, MdError> {
    let block = dev.read_block(layout.md_offset)?;
    let magic = u32::from_be_bytes(block[60..64].try_into().expect("4 bytes"));
    Ok(match magic {
        MAGIC_V08 | MAGIC_V08_UNCLEAN => {
            let sb = Superblock::decode(&block)?;
            Some(format!(
                "DRBD v08 meta-data (current UUID {:016X})",
                sb.uuids[0]
            ))
        }
        MAGIC_V09 => Some("DRBD v09 meta-data".to_string()),
        MAGIC_V07 => Some("DRBD v07 meta-data".to_string()),
        _ => None,
    })
}

/// Opens the meta-data device of `loc` and computes its layout, checking that the data disk
/// fits (and `size_limit`, the config's `disk { size }`, if given).
pub fn locate(
    loc: &MdLocation,
    write: bool,
    size_limit: Option<u64>,
) -> Result<(MdDevice, Layout, u64), CreateError> {
    let (al_stripes, al_stripe_size_4k) = (1, 8);
    let (dev, layout, data_bytes) = match &loc.external {
        None => {
            let dev = MdDevice::open(&loc.data, write)?;
            let layout = Layout::internal(dev.size_bytes, al_stripes, al_stripe_size_4k).map_err(
                |e| match e {
                    MdError::BadLayout(what) => MdError::TooSmall {
                        path: dev.path().to_string(),
                        size_bytes: dev.size_bytes,
                        what: format!("internal meta-data does not fit: {what}"),
                    },
                    e => e,
                },
            )?;
            let usable = layout.max_data_sect * 512;
            (dev, layout, usable)
        }
        Some((md_path, index)) => {
            let data = MdDevice::open(&loc.data, false)?;
            let dev = MdDevice::open(md_path, write)?;
            let layout = Layout::external(dev.size_bytes, *index, al_stripes, al_stripe_size_4k)
                .map_err(|e| match e {
                    MdError::BadLayout(what) => MdError::TooSmall {
                        path: dev.path().to_string(),
                        size_bytes: dev.size_bytes,
                        what,
                    },
                    e => e,
                })?;
            if data.size_bytes > layout.max_data_sect * 512 {
                return Err(CreateError::DoesNotFit(format!(
                    "{} is {} bytes but the meta-data on {} can track only {} bytes; use a larger \
                     meta-data file",
                    data.path(),
                    data.size_bytes,
                    dev.path(),
                    layout.max_data_sect * 512
                )));
            }
            let usable = data.size_bytes & !511;
            (dev, layout, usable)
        }
    };
    if usable_check(data_bytes) {
        return Err(CreateError::DoesNotFit(format!(
            "{} leaves no room for data after the meta-data",
            loc.data.display()
        )));
    }
    let data_bytes = match size_limit {
        Some(limit) if limit > data_bytes => {
            return Err(CreateError::DoesNotFit(format!(
                "disk size {limit} bytes is larger than the {data_bytes} bytes usable on {}",
                loc.data.display()
            )))
        }
        Some(limit) => limit,
        None => data_bytes,
    };
    Ok((dev, layout, data_bytes))
}

fn usable_check(data_bytes: u64) -> bool {
    data_bytes < BLOCK_BYTES as u64
}

/// Writes fresh meta-data. Refuses (writing nothing) when meta-data or a signature is already
/// there, unless `force`.
pub fn create(
    loc: &MdLocation,
    al_extents: u32,
    size_limit: Option<u64>,
    force: bool,
) -> Result<Created, CreateError> {
    let (dev, layout, usable_bytes) = locate(loc, true, size_limit)?;
    let mut overrode = None;
    if let Some(what) = existing_md(&dev, &layout)? {
        if !force {
            return Err(CreateError::Existing {
                path: dev.path().to_string(),
                what,
                offset: layout.md_offset,
            });
        }
        overrode = Some(what);
    }
    let probe_len =
        signature::PROBE_BYTES.min(usize::try_from(dev.size_bytes).unwrap_or(usize::MAX));
    if let Some(found) = signature::detect(&dev.read_at(0, probe_len)?) {
        let consequence = match (&found, &loc.external) {
            (
                Found::Filesystem {
                    size_bytes: Some(fs),
                    ..
                },
                None,
            ) if *fs > usable_bytes => format!(
                "internal meta-data would leave {} KiB of it, truncating it; use external \
                 meta-data or shrink the filesystem",
                usable_bytes / 1024
            ),
            (_, None) => format!(
                "internal meta-data would take the last {} KiB of the disk",
                (layout.device_bytes - layout.max_data_sect * 512) / 1024
            ),
            (_, Some(_)) => "meta-data would overwrite it".to_string(),
        };
        if !force {
            return Err(CreateError::Occupied {
                path: dev.path().to_string(),
                found,
                consequence,
            });
        }
        overrode.get_or_insert_with(|| found.to_string());
    }

    let al_block = AlTransaction::initialized().encode();
    let ring: Vec<u8> = al_block
        .iter()
        .copied()
        .cycle()
        .take(usize::try_from(layout.al_bytes()).expect("<= 32 MiB"))
        .collect();
    dev.write_at(layout.al_byte_offset(), &ring)?;

    let zero_bytes = match loc.external {
        None => layout.bm_area_bytes(),
        Some(_) => bm_bytes(usable_bytes >> 9).min(layout.bm_area_bytes()),
    };
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut done = 0u64;
    while done < zero_bytes {
        let n =
            usize::try_from((zero_bytes - done).min(ZERO_CHUNK_BYTES as u64)).expect("<= 1 MiB");
        dev.write_at(layout.bm_byte_offset() + done, &zeros[..n])?;
        done += n as u64;
    }
    // The AL and bitmap must be stable before the superblock that declares them valid.
    dev.sync()?;
    let sb = Superblock::fresh(&layout, al_extents);
    dev.write_at(layout.md_offset, &sb.encode())?;
    dev.sync()?;
    Ok(Created {
        layout,
        md_path: dev.path().to_string(),
        usable_bytes,
        overrode,
    })
}

/// Meta-data read from a disk.
#[derive(Debug)]
pub struct MdRead {
    /// The superblock.
    pub sb: Superblock,
    /// Its layout on this device.
    pub layout: Layout,
    /// The bitmap bytes covering the last agreed size.
    pub bitmap: Vec<u8>,
    /// The device read.
    pub md_path: String,
}

/// Reads and checks meta-data as dump-md needs it. Unclean meta-data (written while attached,
/// the AL not yet applied) is refused unless `force`.
pub fn read(loc: &MdLocation, force: bool) -> Result<MdRead, MdError> {
    let (dev, layout, _) = locate(loc, false, None).map_err(|e| match e {
        CreateError::Md(e) => e,
        other => MdError::BadLayout(other.to_string()),
    })?;
    let block = dev.read_block(layout.md_offset)?;
    let sb = Superblock::decode(&block).map_err(|e| match e {
        MdError::NoMetadata { .. } => MdError::BadLayout(format!(
            "no valid meta-data on {} at byte {}; run 'replctl create-md' first",
            dev.path(),
            layout.md_offset
        )),
        e => e,
    })?;
    layout.check(&sb)?;
    if !sb.al_is_clean() && !force {
        return Err(MdError::BadLayout(format!(
            "meta-data on {} is unclean (written while attached; the activity log is not \
             applied); attach the resource once to apply it, or pass --force to dump it anyway",
            dev.path()
        )));
    }
    let len = super::dump::dumped_bm_bytes(&sb, &layout);
    let bitmap = dev.read_at(
        layout.bm_byte_offset(),
        usize::try_from(len).expect("bitmap fits memory"),
    )?;
    Ok(MdRead {
        sb,
        layout,
        bitmap,
        md_path: dev.path().to_string(),
    })
}

/// Meta-data opened for a running resource: the device (read-write), its layout, the
/// superblock, the usable data size and the whole bitmap.
pub struct Attached {
    /// The meta-data device.
    pub dev: MdDevice,
    /// Its layout.
    pub layout: Layout,
    /// The superblock as read.
    pub sb: Superblock,
    /// Bytes of data the resource can use.
    pub usable_bytes: u64,
    /// The bitmap words covering `usable_bytes`.
    pub bitmap_words: Vec<u64>,
}

/// Opens meta-data for `replicatord`'s `up`. Unclean meta-data (a crash while attached) is
/// accepted: everything the activity log covered is handled by a resync.
pub fn attach(loc: &MdLocation, size_limit: Option<u64>) -> Result<Attached, MdError> {
    let (dev, layout, usable_bytes) = locate(loc, true, size_limit).map_err(|e| match e {
        CreateError::Md(e) => e,
        other => MdError::BadLayout(other.to_string()),
    })?;
    let block = dev.read_block(layout.md_offset)?;
    let sb = Superblock::decode(&block).map_err(|e| match e {
        MdError::NoMetadata { .. } => MdError::BadLayout(format!(
            "no meta-data on {}; run 'replctl create-md' first",
            dev.path()
        )),
        e => e,
    })?;
    layout.check(&sb)?;
    let len = bm_bytes(usable_bytes >> 9).min(layout.bm_area_bytes());
    let bytes = dev.read_at(
        layout.bm_byte_offset(),
        usize::try_from(len).expect("bitmap fits memory"),
    )?;
    let bitmap_words = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Ok(Attached {
        dev,
        layout,
        sb,
        usable_bytes,
        bitmap_words,
    })
}

/// Writes the superblock and makes it stable.
pub fn write_superblock(dev: &MdDevice, layout: &Layout, sb: &Superblock) -> Result<(), MdError> {
    dev.write_at(layout.md_offset, &sb.encode())?;
    dev.sync()
}

/// Reads every block of the activity-log ring.
pub fn read_al(dev: &MdDevice, layout: &Layout) -> Result<Vec<[u8; BLOCK_BYTES]>, MdError> {
    let blocks = layout.al_bytes() / BLOCK_BYTES as u64;
    (0..blocks)
        .map(|i| dev.read_block(layout.al_byte_offset() + i * BLOCK_BYTES as u64))
        .collect()
}

/// Writes one activity-log transaction into ring slot `index` and makes it stable.
pub fn write_al(dev: &MdDevice, layout: &Layout, index: u32, block: &[u8]) -> Result<(), MdError> {
    let slots = layout.al_bytes() / BLOCK_BYTES as u64;
    let offset = layout.al_byte_offset() + (u64::from(index) % slots) * BLOCK_BYTES as u64;
    dev.write_at(offset, block)?;
    dev.sync()
}

/// Rewrites the whole ring as create-md does (every slot an "initialized" transaction), so
/// old transactions can never be replayed again.
pub fn reset_al(dev: &MdDevice, layout: &Layout) -> Result<(), MdError> {
    let block = AlTransaction::initialized().encode();
    let len = usize::try_from(layout.al_bytes()).expect("AL fits memory");
    let ring: Vec<u8> = block.iter().copied().cycle().take(len).collect();
    dev.write_at(layout.al_byte_offset(), &ring)?;
    dev.sync()
}

/// Writes the bitmap words and makes them stable.
pub fn write_bitmap(dev: &MdDevice, layout: &Layout, words: &[u64]) -> Result<(), MdError> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let len = bytes
        .len()
        .min(usize::try_from(layout.bm_area_bytes()).unwrap_or(usize::MAX));
    dev.write_at(layout.bm_byte_offset(), &bytes[..len])?;
    dev.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse(dir: &Path, name: &str, bytes: u64) -> PathBuf {
        let p = dir.join(name);
        File::create(&p).unwrap().set_len(bytes).unwrap();
        p
    }

    #[test]
    fn create_then_read_internal() {
        let dir = tempfile::tempdir().unwrap();
        let data = sparse(dir.path(), "d.img", 100 << 20);
        let loc = MdLocation {
            data: data.clone(),
            external: None,
        };
        let created = create(&loc, 1237, None, false).unwrap();
        assert_eq!(created.usable_bytes, 104_816_640);
        let r = read(&loc, false).unwrap();
        assert_eq!(r.sb.uuids, [4, 0, 0, 0]);
        assert_eq!(r.sb.al_nr_extents, 1237);
        assert!(r.bitmap.is_empty());
        // A second create-md is refused and writes nothing; --force overwrites.
        let before = std::fs::read(&data).unwrap();
        let e = create(&loc, 1237, None, false).unwrap_err().to_string();
        assert!(
            e.contains("already has DRBD v08 meta-data (current UUID 0000000000000004)"),
            "{e}"
        );
        assert_eq!(std::fs::read(&data).unwrap(), before);
        let again = create(&loc, 7, None, true).unwrap();
        assert!(again.overrode.unwrap().contains("v08"));
        assert_eq!(read(&loc, false).unwrap().sb.al_nr_extents, 7);
    }

    #[test]
    fn refuses_too_small_and_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let small = sparse(dir.path(), "small.img", 65_536);
        let loc = MdLocation {
            data: small,
            external: None,
        };
        let e = create(&loc, 1237, None, false).unwrap_err().to_string();
        assert!(
            e.contains("small.img is 65536 bytes; internal meta-data does not fit"),
            "{e}"
        );

        let data = sparse(dir.path(), "fs.img", 10 << 20);
        let f = OpenOptions::new().write(true).open(&data).unwrap();
        f.write_all_at(b"XFSB", 0).unwrap();
        let loc = MdLocation {
            data: data.clone(),
            external: None,
        };
        let before = std::fs::read(&data).unwrap();
        let e = create(&loc, 1237, None, false).unwrap_err().to_string();
        assert!(e.contains("holds a xfs filesystem"), "{e}");
        assert!(e.contains("--force"), "{e}");
        assert_eq!(std::fs::read(&data).unwrap(), before, "nothing written");
        create(&loc, 1237, None, true).unwrap();

        let e = create(
            &MdLocation {
                data: dir.path().join("missing"),
                external: None,
            },
            1237,
            None,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("open") && e.contains("missing"), "{e}");
    }

    #[test]
    fn size_limit_and_external() {
        let dir = tempfile::tempdir().unwrap();
        let data = sparse(dir.path(), "d.img", 64 << 20);
        let loc = MdLocation {
            data: data.clone(),
            external: None,
        };
        let e = create(&loc, 1237, Some(1 << 30), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than the"), "{e}");
        assert_eq!(
            create(&loc, 1237, Some(32 << 20), false)
                .unwrap()
                .usable_bytes,
            32 << 20
        );

        let md = sparse(dir.path(), "md.img", 1 << 20);
        let ext = MdLocation {
            data: data.clone(),
            external: Some((md.clone(), None)),
        };
        let c = create(&ext, 1237, None, true).unwrap();
        assert_eq!(c.usable_bytes, 64 << 20);
        assert_eq!(c.layout.md_offset, 0);
        let r = read(&ext, false).unwrap();
        assert_eq!(r.sb.al_offset, 8);

        let tiny = sparse(dir.path(), "tiny-md.img", 70_000);
        let big = sparse(dir.path(), "big.img", 1 << 40);
        let e = create(
            &MdLocation {
                data: big,
                external: Some((tiny, None)),
            },
            1237,
            None,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("can track only"), "{e}");
    }

    #[test]
    fn unclean_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let data = sparse(dir.path(), "d.img", 16 << 20);
        let loc = MdLocation {
            data: data.clone(),
            external: None,
        };
        let c = create(&loc, 1237, None, false).unwrap();
        let mut sb = read(&loc, false).unwrap().sb;
        sb.magic = MAGIC_V08_UNCLEAN;
        let f = OpenOptions::new().write(true).open(&data).unwrap();
        f.write_all_at(&sb.encode(), c.layout.md_offset).unwrap();
        let e = read(&loc, false).unwrap_err().to_string();
        assert!(e.contains("unclean"), "{e}");
        assert!(read(&loc, true).is_ok());
    }
}
