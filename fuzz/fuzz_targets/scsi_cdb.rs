//! Any CDB with any data-out must get an answer from the disk emulation (GOOD with data, or a
//! CHECK CONDITION with sense, or RESERVATION CONFLICT), never a panic, and never touch bytes
//! outside the volume. The volume lives in memory, so every command completes in one poll.
#![no_main]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use target::iscsi::disk::LogicalUnit;
use target::volume::{
    Access, Capabilities, Extent, Volume, VolumeError, VolumeFuture, ZeroFlags,
};

const SIZE: u64 = 1 << 20;

struct Memory(Mutex<Vec<u8>>);

impl Memory {
    fn range(&self, offset: u64, length: u64) -> Result<std::ops::Range<usize>, VolumeError> {
        match offset.checked_add(length) {
            Some(end) if end <= SIZE => Ok(offset as usize..end as usize),
            _ => panic!("the disk emulation asked for bytes {offset}+{length} beyond the volume"),
        }
    }
}

impl Volume for Memory {
    fn size_bytes(&self) -> u64 {
        SIZE
    }
    fn access(&self) -> Access {
        Access::ReadWrite
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            trim: true,
            write_zeroes: true,
            fast_zero: false,
            block_status: true,
            multi_conn: true,
        }
    }
    fn read(&self, offset: u64, length: u32) -> VolumeFuture<Vec<u8>> {
        let r = self.range(offset, u64::from(length)).map(|r| self.0.lock().unwrap()[r].to_vec());
        Box::pin(async move { r })
    }
    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> VolumeFuture<()> {
        let r = self
            .range(offset, data.len() as u64)
            .map(|r| self.0.lock().unwrap()[r].copy_from_slice(&data));
        Box::pin(async move { r })
    }
    fn flush(&self) -> VolumeFuture<()> {
        Box::pin(async { Ok(()) })
    }
    fn trim(&self, offset: u64, length: u64, _fua: bool) -> VolumeFuture<()> {
        let r = self.range(offset, length).map(|_| ());
        Box::pin(async move { r })
    }
    fn write_zeroes(&self, offset: u64, length: u64, _flags: ZeroFlags) -> VolumeFuture<()> {
        let r = self
            .range(offset, length)
            .map(|r| self.0.lock().unwrap()[r].fill(0));
        Box::pin(async move { r })
    }
    fn block_status(&self, offset: u64, length: u64, _max: usize) -> VolumeFuture<Vec<Extent>> {
        let r = self.range(offset, length).map(|_| {
            vec![Extent {
                length: length.max(1),
                hole: false,
                zero: false,
            }]
        });
        Box::pin(async move { r })
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let (head, payload) = data.split_at(17);
    let mut cdb = [0u8; 16];
    cdb.copy_from_slice(&head[1..17]);
    let lu = LogicalUnit::new(
        Arc::new(Memory(Mutex::new(vec![0; SIZE as usize]))),
        "iqn.2026-11.org.tandem:fuzz",
    );
    let nexus = if head[0] & 1 == 0 { "a,i,0x1" } else { "b,i,0x2" };
    let mut fut = Box::pin(lu.execute(nexus, &cdb, Bytes::copy_from_slice(payload)));
    let mut cx = Context::from_waker(Waker::noop());
    let outcome = match fut.as_mut().poll(&mut cx) {
        Poll::Ready(o) => o,
        Poll::Pending => panic!("an in-memory command did not complete"),
    };
    assert!(matches!(outcome.status, 0x00 | 0x02 | 0x18));
    assert_eq!(outcome.status == 0x02, outcome.sense.is_some());
});
