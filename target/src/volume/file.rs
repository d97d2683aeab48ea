//! [`FileVolume`]: a plain file or a block device served with positional IO.
//!
//! Every operation runs on tokio's blocking pool: `pread`/`pwrite` for data, `fdatasync` for
//! FLUSH and FUA, `fallocate(PUNCH_HOLE)` for trim and zeroing that may leave a hole,
//! `fallocate(ZERO_RANGE)` for zeroing that must stay allocated, and `lseek(SEEK_DATA/SEEK_HOLE)`
//! for the allocation map and sparse reads. One file descriptor is shared by all connections
//! and nothing is cached above the page cache, so a flush through any connection covers writes
//! through all of them.
//!
//! io_uring is not used yet; when it is, it belongs behind this same type with this pread/pwrite
//! path as the automatic fallback.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::{Access, Capabilities, Extent, Segment, Volume, VolumeError, VolumeFuture, ZeroFlags};

/// Bytes written per call when zeroes have to be written out.
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// The most segments a sparse read is split into; the rest of the range is read as data.
const MAX_READ_SEGMENTS: usize = 64;

static ZEROES: [u8; ZERO_CHUNK_BYTES] = [0; ZERO_CHUNK_BYTES];

struct Inner {
    file: File,
    path: String,
    size_bytes: u64,
    read_only: bool,
}

/// A file or block device as a [`Volume`].
#[derive(Clone)]
pub struct FileVolume {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileVolume")
            .field("path", &self.inner.path)
            .field("size_bytes", &self.inner.size_bytes)
            .field("read_only", &self.inner.read_only)
            .finish()
    }
}

impl FileVolume {
    /// Opens a regular file or a block device; a block device opened for writing is opened
    /// exclusively, so a mounted or otherwise claimed device is refused.
    pub fn open(path: &Path, read_only: bool) -> Result<FileVolume, VolumeError> {
        let name = path.display().to_string();
        let open_err = |source| VolumeError::Open {
            path: name.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let is_block = meta.file_type().is_block_device();
        if !is_block && !meta.is_file() {
            return Err(open_err(std::io::Error::other(
                "not a regular file or block device",
            )));
        }
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        if is_block && !read_only {
            options.custom_flags(libc::O_EXCL);
        }
        let mut file = options.open(path).map_err(open_err)?;
        let size_bytes = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(FileVolume {
            inner: Arc::new(Inner {
                file,
                path: name,
                size_bytes,
                read_only,
            }),
        })
    }

    /// The path, for messages.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    fn run<T, F>(&self, f: F) -> VolumeFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, VolumeError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let path = inner.path.clone();
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| VolumeError::Io {
                    op: "run IO task for",
                    path,
                    offset: 0,
                    length: 0,
                    source: std::io::Error::other(e.to_string()),
                })?
        })
    }
}

impl Inner {
    fn io_err(
        &self,
        op: &'static str,
        offset: u64,
        length: u64,
    ) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
        move |source| VolumeError::Io {
            op,
            path: self.path.clone(),
            offset,
            length,
            source,
        }
    }

    fn check(&self, offset: u64, length: u64, write: bool) -> Result<(), VolumeError> {
        if write && self.read_only {
            return Err(VolumeError::ReadOnly);
        }
        match offset.checked_add(length) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                offset,
                length,
                size_bytes: self.size_bytes,
            }),
        }
    }

    fn sync(&self) -> Result<(), VolumeError> {
        self.file.sync_data().map_err(self.io_err("flush", 0, 0))
    }

    fn read_at(&self, offset: u64, length: usize) -> Result<Vec<u8>, VolumeError> {
        let mut buf = vec![0u8; length];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(self.io_err("read", offset, length as u64))?;
        Ok(buf)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, length: u64) -> std::io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(length))
        else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
        // `self.file` and stays open for the duration of the call.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// `lseek(SEEK_DATA or SEEK_HOLE)` from `offset`: `Ok(None)` when there is no more data
    /// (ENXIO), `Err` when the filesystem cannot tell.
    fn seek(&self, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: lseek only reads its integer arguments. The file position it moves is never
        // used: all data IO is positional (pread/pwrite), so concurrent seeks cannot interfere.
        let rc = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if rc >= 0 {
            return Ok(Some(u64::try_from(rc).expect("non-negative offset")));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// Runs of data and holes in `[offset, end)`, at most `max` of them; a filesystem that
    /// cannot tell reports everything as data.
    fn map(&self, offset: u64, end: u64, max: usize) -> Vec<(u64, bool)> {
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut pos = offset;
        while pos < end && runs.len() < max {
            let data = match self.seek(pos, libc::SEEK_DATA) {
                Ok(Some(d)) => d.min(end),
                Ok(None) => end,
                Err(_) => pos,
            };
            let (next, hole) = if data > pos {
                (data, true)
            } else {
                let h = match self.seek(pos, libc::SEEK_HOLE) {
                    Ok(Some(h)) => h,
                    _ => end,
                };
                (h.clamp(pos + 1, end), false)
            };
            runs.push((next - pos, hole));
            pos = next;
        }
        if pos < end {
            // Out of extents: the caller asked for at most `max`; report what was found.
            debug_assert_eq!(runs.len(), max);
        }
        runs
    }

    fn write_zeroes_out(&self, offset: u64, length: u64) -> Result<(), VolumeError> {
        let mut done = 0u64;
        while done < length {
            let n = usize::try_from(length - done)
                .unwrap_or(ZERO_CHUNK_BYTES)
                .min(ZERO_CHUNK_BYTES);
            self.file
                .write_all_at(&ZEROES[..n], offset + done)
                .map_err(self.io_err("zero", offset + done, n as u64))?;
            done += n as u64;
        }
        Ok(())
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV)
    )
}

impl Volume for FileVolume {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes
    }

    fn access(&self) -> Access {
        if self.inner.read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            trim: true,
            write_zeroes: true,
            fast_zero: true,
            block_status: true,
            multi_conn: true,
        }
    }

    fn read(&self, offset: u64, length: u32) -> VolumeFuture<Vec<u8>> {
        self.run(move |v| {
            v.check(offset, u64::from(length), false)?;
            v.read_at(offset, length as usize)
        })
    }

    fn read_sparse(&self, offset: u64, length: u32) -> VolumeFuture<Vec<Segment>> {
        self.run(move |v| {
            let end = offset + u64::from(length);
            v.check(offset, u64::from(length), false)?;
            let runs = v.map(offset, end, MAX_READ_SEGMENTS);
            let mut segments = Vec::with_capacity(runs.len() + 1);
            let mut pos = offset;
            for (len, hole) in runs {
                let n = u32::try_from(len).expect("within one read");
                if hole {
                    segments.push(Segment::Hole(n));
                } else {
                    segments.push(Segment::Data(v.read_at(pos, n as usize)?));
                }
                pos += len;
            }
            if pos < end {
                let rest = usize::try_from(end - pos).expect("within one read");
                segments.push(Segment::Data(v.read_at(pos, rest)?));
            }
            Ok(segments)
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolumeFuture<()> {
        self.run(move |v| {
            let length = data.len() as u64;
            v.check(offset, length, true)?;
            v.file
                .write_all_at(&data, offset)
                .map_err(v.io_err("write", offset, length))?;
            if fua {
                v.sync()?;
            }
            Ok(())
        })
    }

    fn flush(&self) -> VolumeFuture<()> {
        self.run(|v| v.sync())
    }

    fn trim(&self, offset: u64, length: u64, fua: bool) -> VolumeFuture<()> {
        self.run(move |v| {
            v.check(offset, length, true)?;
            match v.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                length,
            ) {
                Ok(()) => {}
                // Trim is a hint: a store that cannot discard simply keeps the data.
                Err(e) if unsupported(&e) => {}
                Err(e) => return Err(v.io_err("trim", offset, length)(e)),
            }
            if fua {
                v.sync()?;
            }
            Ok(())
        })
    }

    fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> VolumeFuture<()> {
        self.run(move |v| {
            v.check(offset, length, true)?;
            let keep = libc::FALLOC_FL_KEEP_SIZE;
            let mut zeroed = false;
            if flags.may_trim {
                match v.fallocate(libc::FALLOC_FL_PUNCH_HOLE | keep, offset, length) {
                    Ok(()) => zeroed = true,
                    Err(e) if unsupported(&e) => {}
                    Err(e) => return Err(v.io_err("zero", offset, length)(e)),
                }
            }
            if !zeroed {
                match v.fallocate(libc::FALLOC_FL_ZERO_RANGE | keep, offset, length) {
                    Ok(()) => zeroed = true,
                    Err(e) if unsupported(&e) => {}
                    Err(e) => return Err(v.io_err("zero", offset, length)(e)),
                }
            }
            if !zeroed {
                if flags.fast {
                    return Err(VolumeError::NotFast);
                }
                v.write_zeroes_out(offset, length)?;
            }
            if flags.fua {
                v.sync()?;
            }
            Ok(())
        })
    }

    fn block_status(
        &self,
        offset: u64,
        length: u64,
        max_extents: usize,
    ) -> VolumeFuture<Vec<Extent>> {
        self.run(move |v| {
            v.check(offset, length, false)?;
            let runs = v.map(offset, offset + length, max_extents.max(1));
            Ok(runs
                .into_iter()
                .map(|(length, hole)| Extent {
                    length,
                    hole,
                    zero: hole,
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const MIB32: u32 = 1 << 20;
    const MIBZ: usize = 1 << 20;

    fn sparse(dir: &tempfile::TempDir, size: u64) -> std::path::PathBuf {
        let p = dir.path().join("v.img");
        File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
    }

    #[test]
    fn write_read_flush_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileVolume::open(&sparse(&dir, 4 * MIB), false).unwrap();
        rt().block_on(async {
            v.write(4096, Bytes::from_static(b"hello"), true)
                .await
                .unwrap();
            assert_eq!(v.read(4096, 5).await.unwrap(), b"hello");
            assert_eq!(v.read(0, 4).await.unwrap(), [0; 4]);
            v.flush().await.unwrap();
            assert!(matches!(
                v.read(4 * MIB - 1, 2).await,
                Err(VolumeError::OutOfRange { .. })
            ));
        });
        let on_disk = std::fs::read(dir.path().join("v.img")).unwrap();
        assert_eq!(&on_disk[4096..4101], b"hello");
    }

    #[test]
    fn holes_are_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileVolume::open(&sparse(&dir, 4 * MIB), false).unwrap();
        rt().block_on(async {
            v.write(MIB, Bytes::from(vec![7u8; MIBZ]), false)
                .await
                .unwrap();
            let map = v.block_status(0, 4 * MIB, 16).await.unwrap();
            assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), 4 * MIB);
            // The written MiB is data; the first MiB is a hole (ext4, xfs and tmpfs agree).
            assert!(map[0].hole && map[0].zero, "{map:?}");
            assert!(map.iter().any(|e| !e.hole));
            let one = v.block_status(0, 4 * MIB, 1).await.unwrap();
            assert_eq!(one.len(), 1);
            let segs = v.read_sparse(0, 3 * MIB32).await.unwrap();
            let total: u64 = segs
                .iter()
                .map(|s| match s {
                    Segment::Data(d) => d.len() as u64,
                    Segment::Hole(n) => u64::from(*n),
                })
                .sum();
            assert_eq!(total, 3 * MIB);
            assert!(matches!(segs[0], Segment::Hole(_)));
            assert!(segs
                .iter()
                .any(|s| matches!(s, Segment::Data(d) if d.iter().all(|&b| b == 7))));
        });
    }

    #[test]
    fn trim_and_zeroes_read_back_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileVolume::open(&sparse(&dir, 4 * MIB), false).unwrap();
        rt().block_on(async {
            let ones = Bytes::from(vec![1u8; 3 * MIBZ]);
            v.write(0, ones, false).await.unwrap();
            let flags = ZeroFlags {
                may_trim: false,
                fast: false,
                fua: true,
            };
            v.write_zeroes(4096, 8192, flags).await.unwrap();
            let back = v.read(0, 16384).await.unwrap();
            assert!(back[..4096].iter().all(|&b| b == 1));
            assert!(back[4096..12288].iter().all(|&b| b == 0));
            assert!(back[12288..].iter().all(|&b| b == 1));
            let flags = ZeroFlags {
                may_trim: true,
                fast: true,
                fua: false,
            };
            v.write_zeroes(MIB, MIB, flags).await.unwrap();
            assert!(v.read(MIB, MIB32).await.unwrap().iter().all(|&b| b == 0));
            v.trim(2 * MIB, MIB, false).await.unwrap();
            let map = v.block_status(MIB, 2 * MIB, 16).await.unwrap();
            assert!(map.iter().all(|e| e.hole), "{map:?}");
        });
    }

    #[test]
    fn file_volume_passes_the_conformance_check() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileVolume::open(&sparse(&dir, 8 * MIB), false).unwrap();
        rt().block_on(async {
            crate::volume::conformance::check(&v).await.unwrap();
        });
    }

    #[test]
    fn read_only_volumes_refuse_writes() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileVolume::open(&sparse(&dir, MIB), true).unwrap();
        assert_eq!(v.access(), Access::ReadOnly);
        rt().block_on(async {
            assert!(matches!(
                v.write(0, Bytes::from_static(b"x"), false).await,
                Err(VolumeError::ReadOnly)
            ));
            assert!(matches!(
                v.trim(0, 1, false).await,
                Err(VolumeError::ReadOnly)
            ));
        });
    }

    #[test]
    fn open_names_the_file() {
        let e = FileVolume::open(Path::new("/nonexistent/x.img"), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.img"), "{e}");
        let e = FileVolume::open(Path::new("/dev"), false).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
