//! The thin driver that reads and writes whole sectors of an SBD device, with an I/O timeout.
//!
//! Like sbd, every I/O is one logical sector (or a run of them, for create) with `O_DIRECT` and
//! `O_SYNC`, so what a reader sees is on the device and not in this host's page cache. A dead
//! path (an iSCSI LUN gone away, a failing disk) can block a read for minutes; sbd bounds each I/O
//! with an AIO timeout. Here each device has its own I/O thread and callers wait at most
//! `io_timeout` for an answer: a late answer is an error, and the stuck thread is left behind
//! (every later request times out as well, which is what a dead device should look like).
//!
//! A regular file works too (tests, and SBD images served by `targetd`); its sector size is the
//! one its header records, or the one given to `create`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::format::{Header, SectorSize, HEADER_BYTES};
use super::iscsi::{redact, IscsiLun, IscsiUrl};
use super::SbdError;

/// `O_DIRECT` buffers are aligned to this (the largest logical sector size we accept).
const ALIGN_BYTES: usize = 4096;
/// The most sectors one request moves (create zeroes the slots in runs of this many).
pub const MAX_RUN_SECTORS: u64 = 256;

/// A sector-aligned buffer, without unsafe code: a slice of a larger vector.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let buf = vec![0u8; len + ALIGN_BYTES];
        let start = buf.as_ptr().align_offset(ALIGN_BYTES);
        assert!(start < ALIGN_BYTES, "a byte buffer can always be aligned");
        Aligned { buf, start, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

enum Request {
    Read {
        sector: u64,
        reply: Sender<std::io::Result<Vec<u8>>>,
    },
    Write {
        sector: u64,
        data: Vec<u8>,
        reply: Sender<std::io::Result<()>>,
    },
}

/// An open SBD device (file or block device) with its I/O thread.
pub struct SbdDevice {
    path: String,
    sector_size: SectorSize,
    size_bytes: u64,
    io_timeout: Duration,
    requests: Sender<Request>,
}

/// Where the sectors are.
enum Backend {
    /// A regular file or a block device.
    File(File),
    /// An iSCSI LUN through libiscsi.
    Iscsi(IscsiLun),
}

impl Backend {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Backend::File(f) => f.read_exact_at(buf, offset),
            Backend::Iscsi(l) => l.read_at(buf, offset),
        }
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match self {
            Backend::File(f) => f.write_all_at(buf, offset),
            Backend::Iscsi(l) => l.write_at(buf, offset),
        }
    }
}

struct Opened {
    backend: Backend,
    sector_size: SectorSize,
    size_bytes: u64,
}

impl SbdDevice {
    /// Opens `path` for sector I/O. `file_sector_size` is the sector size to use for a regular
    /// file that has no SBD header yet (512 when `None`); block devices always use their own.
    pub fn open(
        path: &Path,
        file_sector_size: Option<SectorSize>,
        io_timeout: Duration,
    ) -> Result<SbdDevice, SbdError> {
        let name = redact(&path.display().to_string());
        let (opened_tx, opened_rx) = mpsc::channel();
        let (requests, queue) = mpsc::channel();
        let owned: PathBuf = path.to_path_buf();
        let thread_name = name.clone();
        std::thread::Builder::new()
            .name(format!("sbd-io {name}"))
            .spawn(move || match open_file(&owned, file_sector_size) {
                Ok(opened) => {
                    let _ = opened_tx.send(Ok((opened.sector_size, opened.size_bytes)));
                    serve(opened.backend, opened.sector_size, queue);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(|source| SbdError::Io {
                op: "start the I/O thread for",
                path: thread_name,
                error: source,
            })?;
        let (sector_size, size_bytes) = match opened_rx.recv_timeout(io_timeout) {
            Ok(r) => r?,
            Err(RecvTimeoutError::Timeout) => {
                return Err(SbdError::Timeout {
                    op: "open",
                    path: name,
                    timeout: io_timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => panic!("the I/O thread answers before exiting"),
        };
        Ok(SbdDevice {
            path: name,
            sector_size,
            size_bytes,
            io_timeout,
            requests,
        })
    }

    /// The path as given.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The logical sector size in use.
    pub fn sector_size(&self) -> SectorSize {
        self.sector_size
    }

    /// The size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Reads one sector.
    pub fn read_sector(&self, sector: u64) -> Result<Vec<u8>, SbdError> {
        let (reply, answer) = mpsc::channel();
        self.submit(Request::Read { sector, reply });
        self.wait("read", sector, answer)
    }

    /// Writes one sector (`data` is exactly one sector) or a run of sectors (a multiple).
    pub fn write_sectors(&self, sector: u64, data: Vec<u8>) -> Result<(), SbdError> {
        assert!(
            !data.is_empty() && data.len() % self.sector_size.bytes_usize() == 0,
            "writes are whole sectors"
        );
        let (reply, answer) = mpsc::channel();
        self.submit(Request::Write {
            sector,
            data,
            reply,
        });
        self.wait("write", sector, answer)
    }

    fn submit(&self, request: Request) {
        // A send fails only when the I/O thread is gone, which wait() reports.
        let _ = self.requests.send(request);
    }

    fn wait<T>(
        &self,
        op: &'static str,
        sector: u64,
        answer: Receiver<std::io::Result<T>>,
    ) -> Result<T, SbdError> {
        match answer.recv_timeout(self.io_timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(SbdError::SectorIo {
                op,
                sector,
                path: self.path.clone(),
                error: source,
            }),
            Err(RecvTimeoutError::Timeout) => Err(SbdError::Timeout {
                op,
                path: self.path.clone(),
                timeout: self.io_timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(SbdError::SectorIo {
                op,
                sector,
                path: self.path.clone(),
                error: std::io::Error::other("the device's I/O thread has stopped"),
            }),
        }
    }
}

/// The I/O thread: answers requests until the device handle is dropped.
fn serve(mut backend: Backend, size: SectorSize, queue: Receiver<Request>) {
    let bytes = u64::from(size.bytes());
    for request in queue {
        match request {
            Request::Read { sector, reply } => {
                let mut buf = Aligned::zeroed(size.bytes_usize());
                let r = backend
                    .read_exact_at(buf.as_mut_slice(), sector * bytes)
                    .map(|()| buf.as_slice().to_vec());
                let _ = reply.send(r);
            }
            Request::Write {
                sector,
                data,
                reply,
            } => {
                let mut buf = Aligned::zeroed(data.len());
                buf.as_mut_slice().copy_from_slice(&data);
                let _ = reply.send(backend.write_all_at(buf.as_slice(), sector * bytes));
            }
        }
    }
}

/// The initiator name tandem logs in to iSCSI targets with.
fn initiator_name() -> String {
    let host = crate::hostname().unwrap_or_else(|_| "unknown".into());
    format!("iqn.2026-11.org.tandem:initiator.{host}")
}

fn open_iscsi(text: &str) -> Result<Opened, SbdError> {
    let name = redact(text);
    let url = IscsiUrl::parse(text).map_err(|e| SbdError::Io {
        op: "parse",
        path: name.clone(),
        error: std::io::Error::other(e),
    })?;
    let lun = IscsiLun::connect(&url, &initiator_name()).map_err(|source| SbdError::Io {
        op: "connect to",
        path: name.clone(),
        error: source,
    })?;
    let sector_size = SectorSize::new(lun.block_bytes).map_err(|source| SbdError::Format {
        path: name,
        error: source,
    })?;
    Ok(Opened {
        sector_size,
        size_bytes: lun.size_bytes,
        backend: Backend::Iscsi(lun),
    })
}

fn open_file(path: &Path, file_sector_size: Option<SectorSize>) -> Result<Opened, SbdError> {
    if let Some(text) = path.to_str().filter(|t| IscsiUrl::is_url(t)) {
        return open_iscsi(text);
    }
    let name = path.display().to_string();
    let io = |op: &'static str| {
        let name = name.clone();
        move |source| SbdError::Io {
            op,
            path: name,
            error: source,
        }
    };
    let meta = std::fs::metadata(path).map_err(io("open"))?;
    let is_block = meta.file_type().is_block_device();
    if !is_block && !meta.is_file() {
        return Err(SbdError::NotADevice { path: name });
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    let direct = options
        .clone()
        .custom_flags(libc::O_DIRECT | libc::O_SYNC)
        .open(path);
    let mut file = match direct {
        Ok(f) => f,
        // Some file systems (tmpfs) refuse O_DIRECT for regular files; O_SYNC still makes
        // every write reach the file before it is acknowledged.
        Err(e) if !is_block && e.raw_os_error() == Some(libc::EINVAL) => options
            .custom_flags(libc::O_SYNC)
            .open(path)
            .map_err(io("open"))?,
        Err(e) => return Err(io("open")(e)),
    };
    let size_bytes = file.seek(SeekFrom::End(0)).map_err(io("size"))?;
    let sector_size = if is_block {
        let raw = block_sector_size(&file).map_err(io("get the sector size (BLKSSZGET) of"))?;
        SectorSize::new(raw).map_err(|source| SbdError::Format {
            path: name.clone(),
            error: source,
        })?
    } else {
        file_sector_size.unwrap_or_else(|| header_sector_size(&file).unwrap_or(SectorSize::S512))
    };
    Ok(Opened {
        backend: Backend::File(file),
        sector_size,
        size_bytes,
    })
}

/// The sector size a regular file's SBD header records, if it has one.
fn header_sector_size(file: &File) -> Option<SectorSize> {
    let mut buf = Aligned::zeroed(ALIGN_BYTES);
    // A short file or a read error just means "no header here".
    let n = file.read_at(buf.as_mut_slice(), 0).ok()?;
    if n < HEADER_BYTES {
        return None;
    }
    Header::decode_any(&buf.as_slice()[..n])
        .ok()
        .map(|h| h.sector_size)
}

fn block_sector_size(file: &File) -> std::io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int through the pointer, which points at a live local.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    u32::try_from(size).map_err(|_| std::io::Error::other(format!("sector size {size}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sector_io_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sbd.img");
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let dev = SbdDevice::open(&path, None, Duration::from_secs(5)).unwrap();
        assert_eq!(dev.sector_size(), SectorSize::S512);
        assert_eq!(dev.size_bytes(), 1 << 20);
        let mut data = vec![0u8; 1024];
        data[0] = 1;
        data[1023] = 2;
        dev.write_sectors(3, data.clone()).unwrap();
        assert_eq!(dev.read_sector(3).unwrap(), data[..512]);
        assert_eq!(dev.read_sector(4).unwrap(), data[512..]);
        let err = dev.read_sector(1 << 20).unwrap_err();
        assert!(err.to_string().contains("read sector 1048576"), "{err}");
    }

    #[test]
    fn refuses_directories() {
        let dir = tempfile::tempdir().unwrap();
        let err = SbdDevice::open(dir.path(), None, Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(matches!(err, SbdError::NotADevice { .. }), "{err}");
    }
}
