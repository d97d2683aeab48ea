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
