//! Secrets: password hashing, random tokens, JWTs.

pub mod jwt;
pub mod password;

use rand::RngExt;

/// `n` random characters of the lowercase base32 alphabet `[a-z2-7]`: the
/// format of GoTrue's (legacy) refresh tokens.
pub fn random_base32(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
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
    fn secure_eq_compares() {
        assert!(secure_eq(b"abc", b"abc"));
        assert!(!secure_eq(b"abc", b"abd"));
        assert!(!secure_eq(b"abc", b"ab"));
    }
}
