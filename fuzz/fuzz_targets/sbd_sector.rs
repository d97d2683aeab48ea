//! Any bytes fed to the SBD sector decoders must give a value or an error, never a panic, and a
//! value that decodes must encode to a sector that decodes to the same value.
#![no_main]

use fencing::sbd::format::{Header, Mailbox, SectorSize, Slot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the sector size; the rest is the sector (padded or cut to size).
    let Some((&pick, rest)) = data.split_first() else { return };
    let size = if pick & 1 == 0 { SectorSize::S512 } else { SectorSize::S4096 };
    let mut sector = rest.to_vec();
    sector.resize(size.bytes_usize(), 0);
    if let Ok(h) = Header::decode(&sector, size) {
        assert_eq!(Header::decode(&h.encode(), size), Ok(h));
    }
    let _ = Header::decode_any(rest);
    if let Ok(s) = Slot::decode(&sector, size) {
        assert_eq!(Slot::decode(&s.encode(size), size), Ok(s));
    }
    if let Ok(m) = Mailbox::decode(&sector, size) {
        assert_eq!(Mailbox::decode(&m.encode(size), size), Ok(m));
    }
});
