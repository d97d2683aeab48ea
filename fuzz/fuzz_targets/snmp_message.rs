//! Any bytes fed to the SNMP decoders (v1/v2c message, v3 message, USM parameters, scoped PDU)
//! must give a value or an error, never a panic, and a value that decodes must encode to bytes
//! that decode to the same value.
#![no_main]

use fencing::snmp::message::{CommunityMessage, ScopedPdu, UsmParams, V3Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = CommunityMessage::decode(data) {
        assert_eq!(CommunityMessage::decode(&m.encode()), Ok(m));
    }
    if let Ok(m) = V3Message::decode(data) {
        let (bytes, _) = m.encode();
        assert_eq!(V3Message::decode(&bytes), Ok(m));
    }
    if let Ok((u, offset)) = UsmParams::decode(data) {
        assert!(offset + u.auth_params.len() <= data.len());
        assert_eq!(UsmParams::decode(&u.encode()).map(|(v, _)| v), Ok(u));
    }
    if let Ok(s) = ScopedPdu::decode(data) {
        assert_eq!(ScopedPdu::decode(&s.encode()), Ok(s));
    }
});
