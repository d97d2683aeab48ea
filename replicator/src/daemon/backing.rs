//! Local IO on the backing disk for the replication core's `LocalWrite`/`LocalRead`/
//! `LocalFlush` actions.
//!
//! Each IO runs on tokio's blocking pool with pread/pwrite, so many are in flight at once;
//! completions come back as events. FUA writes and flushes use fdatasync. Ordering across
//! flushes is the core's job: it only asks for a flush once the writes it must cover are done.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

/// The backing disk.
#[derive(Debug, Clone)]
pub struct Backing {
    file: Arc<File>,
    path: Arc<str>,
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Backing {
    /// Opens the backing disk read-write.
    pub fn open(path: &std::path::Path) -> std::io::Result<Backing> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Backing {
            file: Arc::new(file),
            path: path.display().to_string().into(),
        })
    }

    /// The path, for logs.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Writes `data` at `offset`; with `fua`, fdatasync before returning.
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), i32> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            file.write_all_at(&data, offset).map_err(|e| errno(&e))?;
            if fua {
                file.sync_data().map_err(|e| errno(&e))?;
            }
            Ok(())
        })
        .await
        .unwrap_or(Err(libc::EIO))
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, i32> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| errno(&e))?;
            Ok(Bytes::from(buf))
        })
        .await
        .unwrap_or(Err(libc::EIO))
    }

    /// fdatasync.
    pub async fn flush(&self) -> Result<(), i32> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data().map_err(|e| errno(&e)))
            .await
            .unwrap_or(Err(libc::EIO))
    }
}
