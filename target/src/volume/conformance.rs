//! What the exports rely on from a [`Volume`], as a check any implementation can run in its own
//! tests (`FileVolume` does; a replicated resource should). It writes, so give it a scratch
//! volume of at least [`MIN_VOLUME_BYTES`].
//!
//! Checked: reads return what was written (also with FUA, at unaligned offsets and across
//! writes); FLUSH succeeds; zeroing, with or without leaving a hole, reads back as zeroes and
//! leaves the neighbours alone; a fast zero either zeroes or fails with
//! [`VolumeError::NotFast`] and changes nothing; TRIM succeeds; `read_sparse` tiles the range
//! and agrees with `read`; `block_status` returns at least one nonzero extent, no more than
//! asked, not past the range, and extents flagged zero read as zeroes; out-of-range requests
//! fail with [`VolumeError::OutOfRange`].

use super::{Access, Bytes, Segment, Volume, VolumeError, ZeroFlags};

/// The smallest volume the check runs on.
pub const MIN_VOLUME_BYTES: u64 = 4 << 20;

const REGION: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let b = i.to_le_bytes();
            b[0] ^ b[1].rotate_left(3) ^ seed
        })
        .collect()
}

fn fail<T>(what: impl Into<String>) -> Result<T, String> {
    Err(what.into())
}

async fn read(v: &dyn Volume, offset: u64, length: u32) -> Result<Vec<u8>, String> {
    v.read(offset, length)
        .await
        .map_err(|e| format!("read {offset}+{length}: {e}"))
}

async fn write(v: &dyn Volume, offset: u64, data: &[u8], fua: bool) -> Result<(), String> {
    v.write(offset, Bytes::copy_from_slice(data), fua)
        .await
        .map_err(|e| format!("write {offset}+{}: {e}", data.len()))
}

/// Runs every check; the error names the first expectation that does not hold.
pub async fn check(v: &dyn Volume) -> Result<(), String> {
    if v.access() != Access::ReadWrite {
        return fail(format!(
            "the check needs a read-write volume, not {:?}",
            v.access()
        ));
    }
    let size = v.size_bytes();
    if size < MIN_VOLUME_BYTES {
        return fail(format!(
            "the check needs {MIN_VOLUME_BYTES} bytes, the volume has {size}"
        ));
    }
    let caps = v.capabilities();

    // Data: aligned, unaligned, FUA, overlapping.
    let a = pattern(65536, 1);
    write(v, 0, &a, false).await?;
    if read(v, 0, 65536).await? != a {
        return fail("a 64 KiB write at 0 does not read back");
    }
    let b = pattern(1000, 2);
    write(v, 4097, &b, true).await?;
    let back = read(v, 4096, 1002).await?;
    if back[1..1001] != b[..] || back[0] != a[4096] || back[1001] != a[5097] {
        return fail("an unaligned FUA write does not read back, or disturbed its neighbours");
    }
    v.flush().await.map_err(|e| format!("flush: {e}"))?;

    // Zeroing keeps the neighbours and reads back as zeroes, with and without holes.
    if caps.write_zeroes {
        for (may_trim, at) in [(false, 8192u64), (true, 16384u64)] {
            let flags = ZeroFlags {
                may_trim,
                fast: false,
                fua: false,
            };
            let before = read(v, at - 4096, 12288).await?;
            v.write_zeroes(at, 4096, flags)
                .await
                .map_err(|e| format!("write_zeroes {at}+4096 (may_trim {may_trim}): {e}"))?;
            let back = read(v, at - 4096, 12288).await?;
            if back[4096..8192].iter().any(|&x| x != 0) {
                return fail(format!(
                    "write_zeroes at {at} (may_trim {may_trim}) left data"
                ));
            }
            if back[..4096] != before[..4096] || back[8192..] != before[8192..] {
                return fail(format!("write_zeroes at {at} changed its neighbours"));
            }
        }
        let before = read(v, 32768, 4096).await?;
        let fast = ZeroFlags {
            may_trim: true,
            fast: true,
            fua: false,
        };
        match v.write_zeroes(32768, 4096, fast).await {
            Ok(()) => {
                if read(v, 32768, 4096).await?.iter().any(|&x| x != 0) {
                    return fail("a successful fast zero left data");
                }
            }
            Err(VolumeError::NotFast) => {
                if read(v, 32768, 4096).await? != before {
                    return fail("a fast zero that failed with NotFast changed the data");
                }
            }
            Err(e) => return fail(format!("a fast zero failed with {e}, not NotFast")),
        }
    }
    v.trim(REGION, REGION, false)
        .await
        .map_err(|e| format!("trim: {e}"))?;

    // Sparse reads tile the range and agree with plain reads.
    write(v, 2 * REGION + 12345, &pattern(5000, 3), false).await?;
    let span = u32::try_from(REGION).expect("small");
    let plain = read(v, 2 * REGION, span).await?;
    let segments = v
        .read_sparse(2 * REGION, span)
        .await
        .map_err(|e| format!("read_sparse: {e}"))?;
    let mut joined = Vec::with_capacity(plain.len());
    for s in segments {
        match s {
            Segment::Data(d) => joined.extend_from_slice(&d),
            Segment::Hole(0) => return fail("read_sparse returned an empty hole"),
            Segment::Hole(n) => joined.resize(joined.len() + n as usize, 0),
        }
    }
    if joined != plain {
        return fail("read_sparse does not agree with read");
    }

    // Allocation map.
    for max in [1usize, 16] {
        let extents = v
            .block_status(0, 4 * REGION, max)
            .await
            .map_err(|e| format!("block_status: {e}"))?;
        if extents.is_empty() || extents.len() > max {
            return fail(format!(
                "block_status returned {} extents for at most {max}",
                extents.len()
            ));
        }
        if extents.iter().any(|e| e.length == 0) {
            return fail("block_status returned an empty extent");
        }
        let total: u64 = extents.iter().map(|e| e.length).sum();
        if total > 4 * REGION {
            return fail("block_status reported past the range asked for");
        }
        let mut at = 0u64;
        for e in &extents {
            if e.zero && at < 3 * REGION {
                let n = u32::try_from(e.length.min(3 * REGION - at)).expect("small");
                if read(v, at, n).await?.iter().any(|&x| x != 0) {
                    return fail(format!(
                        "block_status says {at}+{n} reads as zeroes; it does not"
                    ));
                }
            }
            at += e.length;
        }
    }

    // Out of range.
    for (what, r) in [
        ("read", v.read(size - 1, 2).await.map(|_| ())),
        (
            "write",
            v.write(size, Bytes::from_static(b"x"), false).await,
        ),
        ("trim", v.trim(size - 1, 2, false).await),
    ] {
        if !matches!(r, Err(VolumeError::OutOfRange { .. })) {
            return fail(format!("an out-of-range {what} gave {r:?}, not OutOfRange"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Capabilities, Extent, FileVolume, VolumeFuture};
    use super::*;

    /// A volume whose zeroing does nothing and whose block status claims everything is a hole.
    struct Liar(FileVolume, bool);

    impl Volume for Liar {
        fn size_bytes(&self) -> u64 {
            self.0.size_bytes()
        }
        fn access(&self) -> Access {
            self.0.access()
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        fn read(&self, offset: u64, length: u32) -> VolumeFuture<Vec<u8>> {
            self.0.read(offset, length)
        }
        fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolumeFuture<()> {
            self.0.write(offset, data, fua)
        }
        fn flush(&self) -> VolumeFuture<()> {
            self.0.flush()
        }
        fn trim(&self, offset: u64, length: u64, fua: bool) -> VolumeFuture<()> {
            self.0.trim(offset, length, fua)
        }
        fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> VolumeFuture<()> {
            if self.1 {
                Box::pin(async { Ok(()) })
            } else {
                self.0.write_zeroes(offset, length, flags)
            }
        }
        fn block_status(&self, _: u64, length: u64, _: usize) -> VolumeFuture<Vec<Extent>> {
            Box::pin(async move {
                Ok(vec![Extent {
                    length,
                    hole: true,
                    zero: true,
                }])
            })
        }
    }

    #[test]
    fn the_check_catches_broken_volumes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (skip_zeroing, want) in [(true, "left data"), (false, "reads as zeroes")] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("v.img");
            std::fs::File::create(&p)
                .unwrap()
                .set_len(MIN_VOLUME_BYTES)
                .unwrap();
            let v = Liar(FileVolume::open(&p, false).unwrap(), skip_zeroing);
            let err = rt.block_on(check(&v)).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }
}
