//! Bytes from a peer, arriving in any chunking, fed to the replication protocol's decoder:
//! it must never panic; a decoded packet must re-encode to exactly the bytes it consumed (the
//! encoding is canonical); "need more" and errors must consume nothing; and the chunking must
//! not change what is decoded. A frame read apart (head, then bulk data on its own, as the
//! daemon reads large Data into aligned buffers) decodes exactly as the whole frame does.
//!
//! Input: one byte that picks the chunking (0: everything at once), then the byte stream.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use replicator::wire::{self, Packet, WireError};

/// Decodes `stream` fed in chunks whose sizes come from `chunking`; returns the packets and
/// the error that ended the stream, if any.
fn decode_stream(stream: &[u8], chunking: u8) -> (Vec<Packet>, Option<WireError>) {
    // xorshift32: chunk sizes 1..=1024, so frames split anywhere, headers included.
    let mut rng = u32::from(chunking).wrapping_mul(0x9e37_79b9) | 1;
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut consumed = 0;
    let mut packets = Vec::new();
    while fed < stream.len() {
        let chunk = if chunking == 0 {
            stream.len()
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            1 + (rng % 1024) as usize
        };
        let end = (fed + chunk).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            match wire::decode(&mut buf) {
                Ok(Some(packet)) => {
                    let used = fed - consumed - buf.len();
                    let frame = &stream[consumed..consumed + used];
                    let mut again = BytesMut::new();
                    wire::encode(&packet, &mut again);
                    assert_eq!(&again[..], frame, "{packet:?} is not canonical");
                    let mut head = BytesMut::new();
                    if let Some(data) = wire::encode_head(&packet, &mut head) {
                        head.extend_from_slice(&data);
                    }
                    assert_eq!(head, again, "encode_head + data differs from encode");
                    assert_eq!(packet.encoded_len(), used);
                    assert_eq!(bulk_apart(frame).map(Result::unwrap), bulk_of(&packet));
                    consumed += used;
                    packets.push(packet);
                }
                Ok(None) => {
                    assert_eq!(&buf[..], &stream[consumed..fed], "Ok(None) consumed");
                    break;
                }
                Err(e) => {
                    assert_eq!(&buf[..], &stream[consumed..fed], "{e} consumed");
                    if let Some(r) = bulk_apart(&stream[consumed..]) {
                        assert!(r.is_err(), "read apart, a frame decode refuses decodes");
                    }
                    let _ = e.to_string();
                    return (packets, Some(e));
                }
            }
        }
    }
    (packets, None)
}

/// The frame at the start of `bytes` decoded from its head and its data apart, when it is a
/// bulk frame that is all there.
fn bulk_apart(bytes: &[u8]) -> Option<Result<Packet, WireError>> {
    let (head, data) = wire::bulk_layout(bytes).ok()??;
    let data = bytes.get(head..head + data)?;
    Some(wire::decode_bulk(&bytes[..head], Bytes::copy_from_slice(data)))
}

fn bulk_of(packet: &Packet) -> Option<Packet> {
    matches!(packet, Packet::Data { .. } | Packet::RsDataReply { .. }).then(|| packet.clone())
}

fuzz_target!(|input: &[u8]| {
    let Some((&chunking, stream)) = input.split_first() else {
        return;
    };
    let chunked = decode_stream(stream, chunking);
    if chunking != 0 {
        assert_eq!(
            chunked,
            decode_stream(stream, 0),
            "chunking changed the result"
        );
    }
});
