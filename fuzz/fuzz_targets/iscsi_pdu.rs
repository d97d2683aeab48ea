//! Any bytes an initiator sends must split into iSCSI frames or a clean error, never a panic
//! (with and without digests); every decoded BHS re-encodes to a BHS that decodes to the same
//! value; login and text payloads parse or fail cleanly, and the login state machine answers any
//! request without panicking.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use target::iscsi::login::{Auth, Credentials, Login, Request};
use target::iscsi::pdu::{decode_frame, Bhs, Digests};
use target::iscsi::scsi::Sense;
use target::iscsi::text;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let digests = Digests {
        header: flags & 1 != 0,
        data: flags & 2 != 0,
    };
    let auth = if flags & 4 != 0 {
        Auth {
            incoming: Some(Credentials {
                user: "alice".into(),
                secret: b"alice-secret-12".to_vec(),
            }),
            outgoing: Some(Credentials {
                user: "tgt".into(),
                secret: b"target-secret-12".to_vec(),
            }),
        }
    } else {
        Auth::default()
    };
    let mut login = Login::new(vec!["iqn.2026-11.org.tandem:disk".into()], auth, [7; 16], 1);
    let _ = Sense::decode(rest).map(|s| assert_eq!(Sense::decode(&s.encode()), Some(s)));
    let mut buf = BytesMut::from(rest);
    for _ in 0..64 {
        let frame = match decode_frame(&mut buf, digests, 1 << 16) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => break,
        };
        assert!(frame.data.len() < 1 << 16);
        let Ok(bhs) = Bhs::decode(&frame.bhs) else {
            continue;
        };
        let again = Bhs::decode(&bhs.encode()).expect("an encoded BHS decodes");
        assert_eq!(again, bhs);
        let _ = text::parse(&frame.data);
        if let Some(req) = Request::of(&bhs) {
            let r = login.step(&req, &frame.data);
            assert!(r.failure.is_none() || r.established.is_none());
        }
    }
});
