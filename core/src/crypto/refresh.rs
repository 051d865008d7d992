//! GoTrue's v2 refresh tokens: stateless, base64url (no padding) of
//! `0x00` (version) ‖ the session's 16-byte id ‖ the counter as an unsigned
//! varint ‖ the first 16 bytes of HMAC-SHA-256 over all that with the
//! session's own key ‖ the first 4 bytes of SHA-256 over everything before.
//! The key and the last counter issued live on the session row; nothing
//! else is stored, so the table holds nothing a reader could present.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

const SIGNATURE: usize = 16;
const CHECKSUM: usize = 4;
const MIN_LEN: usize = 1 + 16 + 1 + SIGNATURE + CHECKSUM;
const MAX_LEN: usize = MIN_LEN + 9;

/// A presented v2 token whose shape and checksum are right; its signature
/// is checked against the session's key with [`V2Token::signed_by`].
#[derive(Debug)]
pub struct V2Token {
    pub session_id: Uuid,
    pub counter: i64,
    /// Version, session id and counter: what the signature covers.
    body: Vec<u8>,
    signature: [u8; SIGNATURE],
}

/// A new per-session key: 32 random bytes, stored base64url.
pub fn new_key() -> String {
    B64.encode(rand::random::<[u8; 32]>())
}

fn signature(key: &str, body: &[u8]) -> Option<[u8; SIGNATURE]> {
    let key = B64.decode(key).ok()?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(body);
    mac.finalize().into_bytes()[..SIGNATURE].try_into().ok()
}

/// The token for counter `counter` of session `session_id`; `None` when
/// the stored key is not base64url (a damaged row).
pub fn encode(key: &str, session_id: Uuid, counter: i64) -> Option<String> {
    let mut out = Vec::with_capacity(MAX_LEN);
    out.push(0);
    out.extend_from_slice(session_id.as_bytes());
    let mut n = counter.max(0) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(&signature(key, &out)?);
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum[..CHECKSUM]);
    Some(B64.encode(out))
}

/// Reads a token's varint counter: the value and the bytes it took.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// A v2 token's parts when `token` has the v2 shape (length, version 0 and
/// checksum); `None` for anything else, legacy tokens included.
pub fn parse(token: &str) -> Option<V2Token> {
    if token.len() < 48 || token.len() > 64 {
        return None;
    }
    let raw = B64.decode(token).ok()?;
    if !(MIN_LEN..=MAX_LEN).contains(&raw.len()) || raw[0] != 0 {
        return None;
    }
    let (rest, checksum) = raw.split_at(raw.len() - CHECKSUM);
    if !bool::from(Sha256::digest(rest)[..CHECKSUM].ct_eq(checksum)) {
        return None;
    }
    let session_id = Uuid::from_slice(&rest[1..17]).ok()?;
    let (counter, used) = uvarint(&rest[17..])?;
    let (body, signature) = rest.split_at(17 + used);
    Some(V2Token {
        session_id,
        counter: i64::try_from(counter).unwrap_or(i64::MAX),
        body: body.to_vec(),
        signature: signature.try_into().ok()?,
    })
}

impl V2Token {
    /// Whether the session's key made this token (constant time).
    pub fn signed_by(&self, key: &str) -> bool {
        signature(key, &self.body).is_some_and(|s| bool::from(s.ct_eq(&self.signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_tampering() {
        let key = new_key();
        let id = Uuid::new_v4();
        for counter in [0, 1, 127, 128, 300, 1 << 40, i64::MAX] {
            let t = encode(&key, id, counter).unwrap();
            assert!((51..=62).contains(&t.len()), "{counter}: {}", t.len());
            let p = parse(&t).unwrap();
            assert_eq!((p.session_id, p.counter), (id, counter));
            assert!(p.signed_by(&key));
            assert!(!p.signed_by(&new_key()), "another session's key");
        }
        // A changed counter with a fixed checksum: the signature fails.
        let t = encode(&key, id, 5).unwrap();
        let mut raw = B64.decode(&t).unwrap();
        raw[17] = 6;
        let n = raw.len() - CHECKSUM;
        let sum = Sha256::digest(&raw[..n]);
        raw[n..].copy_from_slice(&sum[..CHECKSUM]);
        let forged = parse(&B64.encode(&raw)).unwrap();
        assert_eq!(forged.counter, 6);
        assert!(!forged.signed_by(&key));
        // A changed byte without a fixed checksum is not even a token.
        let mut raw = B64.decode(&t).unwrap();
        raw[20] ^= 1;
        assert!(parse(&B64.encode(&raw)).is_none());
        // Legacy tokens and junk are not v2.
        for other in ["abcdefghijkl", "", "x".repeat(55).as_str()] {
            assert!(parse(other).is_none(), "{other}");
        }
    }
}
