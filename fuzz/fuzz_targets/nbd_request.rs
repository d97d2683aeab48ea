//! Any bytes a client sends in the NBD transmission phase must decode to requests or a clean
//! error, never a panic; decoded requests re-encode to the same bytes; and whatever the session,
//! an accepted request lies inside the export. The client-side reply decoder gets the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use target::nbd::transmission::{check_request, decode_reply, decode_request, Action, Session};
use target::nbd::Decoded;

fuzz_target!(|data: &[u8]| {
    if data.len() < 11 {
        return;
    }
    let (head, mut rest) = data.split_at(11);
    let session = Session {
        size_bytes: u64::from_be_bytes(head[..8].try_into().unwrap()),
        flags: u16::from_be_bytes([head[8], head[9]]),
        structured: head[10] & 1 != 0,
        allocation_context: (head[10] & 2 != 0).then_some(1),
        min_block_bytes: if head[10] & 4 != 0 { 512 } else { 1 },
    };
    let _ = decode_reply(rest);
    while let Ok(Decoded::Frame(request, used)) = decode_request(rest) {
        let mut again = Vec::new();
        request.encode_header(&mut again);
        assert_eq!(again, rest[..28]);
        assert_eq!(used, 28 + request.payload_bytes());
        if let Ok(action) = check_request(&session, &request) {
            let end = request.offset.checked_add(u64::from(request.length));
            match action {
                Action::Read { .. }
                | Action::Write { .. }
                | Action::Trim { .. }
                | Action::WriteZeroes { .. }
                | Action::BlockStatus { .. } => {
                    assert!(end.is_some_and(|e| e <= session.size_bytes), "{request:?}");
                }
                Action::Flush | Action::Nothing | Action::Disconnect => {}
            }
        }
        rest = &rest[used..];
    }
});
