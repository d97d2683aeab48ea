//! Any datagram fed to clusterd's heartbeat decoder must give a heartbeat or an error, never a
//! panic; a heartbeat that decodes must re-encode to exactly the datagram (the encoding is
//! canonical: version 1, without a hears list, as well as version 2).
//!
//! Input: one byte that picks the mode (even: the bytes as they are, so the MAC check is
//! fuzzed; odd: the bytes signed with the test key first, so the body's parser is reached),
//! then the datagram.
#![no_main]

use clusterd::heartbeat::{self, Heartbeat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let key = heartbeat::key("fuzz", ["secret"]);
    let datagram = if mode & 1 == 0 { rest.to_vec() } else { heartbeat::sign(rest, &key) };
    if let Ok(hb) = Heartbeat::decode(&datagram, &key) {
        let again = hb.encode(&key).expect("a decoded heartbeat is within the limits");
        assert_eq!(again, datagram);
    }
});
