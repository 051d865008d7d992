//! Secrets: password hashing, random tokens, JWTs.

pub mod at_rest;
pub mod id_token;
pub mod jwk;
pub mod jwt;
pub mod password;
pub mod refresh;
pub mod totp;
pub mod web3;
pub mod webhook;

use rand::RngExt;

/// `n` random characters of the lowercase base32 alphabet `[a-z2-7]`: the
/// format of GoTrue's (legacy) refresh tokens.
pub fn random_base32(n: usize) -> String {
    random_from(b"abcdefghijklmnopqrstuvwxyz234567", n)
}

/// `n` random letters and digits (GoTrue's `SecureAlphanumeric`).
pub fn random_alphanumeric(n: usize) -> String {
    random_from(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        n,
    )
}

fn random_from(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

/// `N` bytes from the thread's cryptographically secure generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    rand::random()
}

/// A one-time code of `len` decimal digits, uniform and zero-padded.
pub fn otp(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// A one-time token's hash, as stored and as a link carries it: lowercase
/// hex of HMAC-SHA-224 under the server's `key` of identifier, NUL, otp,
/// where the identifier is the lower-cased email or the digits-only phone.
/// GoTrue's is the bare SHA-224 of identifier and otp, which anyone who knows
/// the address can compute for each of the 10^6 codes and present as a link,
/// uncounted; this one is as long (clients treat it as opaque) and cannot be
/// made without the key.
pub fn token_hash(key: &[u8], identifier: &str, otp: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha224>::new_from_slice(key).expect("any key length");
    mac.update(identifier.as_bytes());
    mac.update(&[0]);
    mac.update(otp.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key of [`token_hash`], derived from the server's secret.
pub fn token_hash_key(secret: &str) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"castellan/one-time-token-hash/v1");
    mac.finalize().into_bytes().into()
}

/// HMAC-SHA256 of `msg` under `key`, in lowercase hex (Facebook's
/// `appsecret_proof`).
pub fn hmac_sha256_hex(key: &[u8], msg: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(msg);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time equality of two secrets.
pub fn secure_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_tokens() {
        let t = random_base32(12);
        assert_eq!(t.len(), 12);
        assert!(
            t.chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_ne!(random_base32(12), random_base32(12));
    }

    #[test]
    fn otps_and_hashes() {
        let o = otp(8);
        assert_eq!(o.len(), 8);
        assert!(o.chars().all(|c| c.is_ascii_digit()));
        let key = token_hash_key("secret");
        let h = token_hash(&key, "a@b.co", "123456");
        // As long as GoTrue's, so a link looks the same.
        assert_eq!(h.len(), 56);
        assert_eq!(h, token_hash(&key, "a@b.co", "123456"));
        assert_ne!(h, token_hash(&key, "a@b.co", "123457"));
        // Not the bare SHA-224 anyone could compute, and keyed.
        use sha2::Digest;
        let bare: String = sha2::Sha224::digest(b"a@b.co123456")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(h, bare);
        assert_ne!(h, token_hash(&token_hash_key("other"), "a@b.co", "123456"));
        // The separator keeps (identifier, otp) pairs apart.
        assert_ne!(
            token_hash(&key, "a@b.co1", "23456"),
            token_hash(&key, "a@b.co", "123456")
        );
    }

    #[test]
    fn secure_eq_compares() {
        assert!(secure_eq(b"abc", b"abc"));
        assert!(!secure_eq(b"abc", b"abd"));
        assert!(!secure_eq(b"abc", b"ab"));
    }
}
