//! The digests of `verify-alg`, `csums-alg` and `data-integrity-alg`.

use md5::Digest as _;

use crate::config::DigestAlg;

/// The digest of `data` under `alg` (crc32c: 4 bytes big-endian; md5: 16; sha1: 20;
/// sha256: 32).
pub fn digest(alg: DigestAlg, data: &[u8]) -> Vec<u8> {
    match alg {
        DigestAlg::Crc32c => crc32c::crc32c(data).to_be_bytes().to_vec(),
        DigestAlg::Md5 => md5::Md5::digest(data).to_vec(),
        DigestAlg::Sha1 => sha1::Sha1::digest(data).to_vec(),
        DigestAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
    }
}

/// Bytes each digest of [`block_digests`] covers: one bitmap block.
pub const DIGEST_BLOCK_BYTES: usize = 4096;

/// The digests of every 4 KiB block of `data`, concatenated (verify and csums compare whole
/// blocks so that a difference marks exactly the blocks that differ).
pub fn block_digests(alg: DigestAlg, data: &[u8]) -> Vec<u8> {
    data.chunks(DIGEST_BLOCK_BYTES)
        .flat_map(|c| digest(alg, c))
        .collect()
}

/// Length of one digest.
pub fn digest_len(alg: DigestAlg) -> usize {
    match alg {
        DigestAlg::Crc32c => 4,
        DigestAlg::Md5 => 16,
        DigestAlg::Sha1 => 20,
        DigestAlg::Sha256 => 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // CRC-32C("123456789") = 0xE3069283; MD5("") = d41d8cd9...
        assert_eq!(
            digest(DigestAlg::Crc32c, b"123456789"),
            [0xe3, 0x06, 0x92, 0x83]
        );
        assert_eq!(digest(DigestAlg::Md5, b"")[..4], [0xd4, 0x1d, 0x8c, 0xd9]);
        assert_eq!(digest(DigestAlg::Sha1, b"").len(), 20);
        assert_eq!(
            digest(DigestAlg::Sha256, b"")[..4],
            [0xe3, 0xb0, 0xc4, 0x42]
        );
    }
}
