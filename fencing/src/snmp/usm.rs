//! SNMPv3 User-based Security Model crypto (RFC 3414, RFC 3826), pure: password to key,
//! key localization, HMAC-MD5-96 / HMAC-SHA-96 authentication, DES-CBC and AES-128-CFB privacy.

use aes::cipher::{AsyncStreamCipher, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// Bytes of an authentication code (the "-96" of HMAC-MD5-96 and HMAC-SHA-96).
pub const AUTH_CODE_BYTES: usize = 12;
/// Bytes of the privacy parameters (the salt).
pub const PRIV_PARAMS_BYTES: usize = 8;
/// net-snmp and RFC 3414 refuse shorter passwords.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// RFC 3414 A.2: the password is stretched to this many bytes before hashing.
const STRETCH_BYTES: usize = 1_048_576;

/// The authentication protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthProtocol {
    /// HMAC-MD5-96.
    Md5,
    /// HMAC-SHA-96.
    Sha,
}

/// The privacy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivProtocol {
    /// CBC-DES.
    Des,
    /// CFB128-AES-128.
    Aes,
}

/// A USM crypto failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsmError {
    /// The password is too short.
    #[error("SNMPv3 passwords must be at least {MIN_PASSWORD_BYTES} characters")]
    ShortPassword,
    /// The ciphertext or salt has the wrong size.
    #[error("cannot decrypt: {0}")]
    Decrypt(&'static str),
}

fn hash(auth: AuthProtocol, parts: &[&[u8]]) -> Vec<u8> {
    match auth {
        AuthProtocol::Md5 => {
            let mut h = Md5::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        AuthProtocol::Sha => {
            let mut h = Sha1::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
    }
}

/// RFC 3414 A.2.1/A.2.2: Ku, the digest of the password repeated to 1 MiB.
pub fn password_to_key(auth: AuthProtocol, password: &[u8]) -> Result<Vec<u8>, UsmError> {
    if password.len() < MIN_PASSWORD_BYTES {
        return Err(UsmError::ShortPassword);
    }
    let stretched: Vec<u8> = password
        .iter()
        .copied()
        .cycle()
        .take(STRETCH_BYTES)
        .collect();
    Ok(hash(auth, &[&stretched]))
}

/// RFC 3414 2.6: Kul = H(Ku || engineID || Ku).
pub fn localize_key(auth: AuthProtocol, ku: &[u8], engine_id: &[u8]) -> Vec<u8> {
    hash(auth, &[ku, engine_id, ku])
}

/// The 12-byte authentication code of `message` (whose auth params are zeroed).
pub fn auth_code(auth: AuthProtocol, key: &[u8], message: &[u8]) -> [u8; AUTH_CODE_BYTES] {
    let full = match auth {
        AuthProtocol::Md5 => {
            let mut m = <Hmac<Md5>>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        AuthProtocol::Sha => {
            let mut m = <Hmac<Sha1>>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
    };
    full[..AUTH_CODE_BYTES].try_into().expect("12 bytes")
}

fn des_iv(key: &[u8], salt: &[u8; PRIV_PARAMS_BYTES]) -> [u8; 8] {
    let mut iv = [0u8; 8];
    for (i, b) in iv.iter_mut().enumerate() {
        *b = key[8 + i] ^ salt[i];
    }
    iv
}

fn aes_iv(boots: i32, time: i32, salt: &[u8; PRIV_PARAMS_BYTES]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..4].copy_from_slice(&boots.to_be_bytes());
    iv[4..8].copy_from_slice(&time.to_be_bytes());
    iv[8..].copy_from_slice(salt);
    iv
}

/// Encrypts a scoped PDU. `salt` is the sender's fresh 8 bytes (for DES, RFC 3414 puts the
/// engine boots in the first four; the caller builds it). Returns the ciphertext; the salt goes
/// into the privacy parameters.
pub fn encrypt(
    privacy: PrivProtocol,
    key: &[u8],
    boots: i32,
    time: i32,
    salt: &[u8; PRIV_PARAMS_BYTES],
    plaintext: &[u8],
) -> Vec<u8> {
    match privacy {
        PrivProtocol::Des => {
            let mut buf = plaintext.to_vec();
            buf.resize(plaintext.len().div_ceil(8) * 8, 0);
            let len = buf.len();
            cbc::Encryptor::<des::Des>::new(key[..8].into(), (&des_iv(key, salt)).into())
                .encrypt_padded_mut::<aes::cipher::block_padding::NoPadding>(&mut buf, len)
                .expect("the buffer is a whole number of blocks");
            buf
        }
        PrivProtocol::Aes => {
            let mut buf = plaintext.to_vec();
            cfb_mode::Encryptor::<aes::Aes128>::new(
                key[..16].into(),
                (&aes_iv(boots, time, salt)).into(),
            )
            .encrypt(&mut buf);
            buf
        }
    }
}

/// Decrypts an encrypted scoped PDU with the message's boots, time and privacy parameters.
pub fn decrypt(
    privacy: PrivProtocol,
    key: &[u8],
    boots: i32,
    time: i32,
    priv_params: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, UsmError> {
    let salt: &[u8; PRIV_PARAMS_BYTES] = priv_params
        .try_into()
        .map_err(|_| UsmError::Decrypt("privacy parameters are not 8 bytes"))?;
    let mut buf = ciphertext.to_vec();
    match privacy {
        PrivProtocol::Des => {
            if buf.len() % 8 != 0 {
                return Err(UsmError::Decrypt("DES ciphertext is not whole blocks"));
            }
            cbc::Decryptor::<des::Des>::new(key[..8].into(), (&des_iv(key, salt)).into())
                .decrypt_padded_mut::<aes::cipher::block_padding::NoPadding>(&mut buf)
                .map_err(|_| UsmError::Decrypt("DES ciphertext is not whole blocks"))?;
        }
        PrivProtocol::Aes => {
            cfb_mode::Decryptor::<aes::Aes128>::new(
                key[..16].into(),
                (&aes_iv(boots, time, salt)).into(),
            )
            .decrypt(&mut buf);
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3414 appendix A.3.1 and A.3.2: "maplesyrup" and engine ID 00..02.
    #[test]
    fn rfc3414_key_localization() {
        let engine = hex("00 00 00 00 00 00 00 00 00 00 00 02");
        let ku = password_to_key(AuthProtocol::Md5, b"maplesyrup").unwrap();
        assert_eq!(ku, hex("9f af 32 83 88 4e 92 83 4e bc 98 47 d8 ed d9 63"));
        assert_eq!(
            localize_key(AuthProtocol::Md5, &ku, &engine),
            hex("52 6f 5e ed 9f cc e2 6f 89 64 c2 93 07 87 d8 2b")
        );
        let ku = password_to_key(AuthProtocol::Sha, b"maplesyrup").unwrap();
        assert_eq!(
            ku,
            hex("9f b5 cc 03 81 49 7b 37 93 52 89 39 ff 78 8d 5d 79 14 52 11")
        );
        assert_eq!(
            localize_key(AuthProtocol::Sha, &ku, &engine),
            hex("66 95 fe bc 92 88 e3 62 82 23 5f c7 15 1f 12 84 97 b3 8f 3f")
        );
        assert_eq!(
            password_to_key(AuthProtocol::Md5, b"short"),
            Err(UsmError::ShortPassword)
        );
    }

    /// RFC 2202 test case 2 (HMAC-MD5 and HMAC-SHA1, key "Jefe"), truncated to 96 bits.
    #[test]
    fn hmac_96() {
        let msg = b"what do ya want for nothing?";
        assert_eq!(
            auth_code(AuthProtocol::Md5, b"Jefe", msg).to_vec(),
            hex("750c783e6ab0b503eaa86e31")
        );
        assert_eq!(
            auth_code(AuthProtocol::Sha, b"Jefe", msg).to_vec(),
            hex("effcdf6ae5eb2fa2d27416d5")
        );
    }

    #[test]
    fn privacy_round_trips() {
        let key: Vec<u8> = (0u8..20).collect();
        let salt = [1, 2, 3, 4, 5, 6, 7, 8];
        let text = b"a scoped PDU of some odd length".to_vec();
        for p in [PrivProtocol::Des, PrivProtocol::Aes] {
            let c = encrypt(p, &key, 7, 1234, &salt, &text);
            assert_ne!(c[..text.len()], text[..]);
            let d = decrypt(p, &key, 7, 1234, &salt, &c).unwrap();
            assert_eq!(&d[..text.len()], &text[..]);
        }
        // AES is a stream: no padding; DES pads to blocks.
        assert_eq!(
            encrypt(PrivProtocol::Aes, &key, 0, 0, &salt, &text).len(),
            31
        );
        assert_eq!(
            encrypt(PrivProtocol::Des, &key, 0, 0, &salt, &text).len(),
            32
        );
        assert!(decrypt(PrivProtocol::Des, &key, 0, 0, &salt, &[0; 7]).is_err());
        assert!(decrypt(PrivProtocol::Aes, &key, 0, 0, &[0; 7], &[0; 8]).is_err());
    }

    /// FIPS 81 / NIST: DES-CBC and AES-128-CFB known answers, through the same calls.
    #[test]
    fn cipher_known_answers() {
        // AES-128-CFB128 (NIST SP 800-38A F.3.13, first block).
        let key = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let iv = hex("000102030405060708090a0b0c0d0e0f");
        let boots = i32::from_be_bytes(iv[..4].try_into().unwrap());
        let time = i32::from_be_bytes(iv[4..8].try_into().unwrap());
        let salt: [u8; 8] = iv[8..].try_into().unwrap();
        let c = encrypt(
            PrivProtocol::Aes,
            &key,
            boots,
            time,
            &salt,
            &hex("6bc1bee22e409f96e93d7e117393172a"),
        );
        assert_eq!(c, hex("3b3fd92eb72dad20333449f8e83cfb4a"));
    }
}
