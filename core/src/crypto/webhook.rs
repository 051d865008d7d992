//! Standard Webhooks signatures (what GoTrue signs its HTTP hooks with): a
//! secret is `v1,whsec_<base64 key>`; a signature is
//! `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The key of a `v1,whsec_…` secret.
pub fn key(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix("v1,whsec_")
        .ok_or_else(|| "invalid secret format (expected v1,whsec_<base64>)".to_string())?;
    // GoTrue's rule: 32 to 88 base64 characters (a key of 24 bytes or more).
    if !(32..=88).contains(&b64.len()) {
        return Err("invalid secret format (its key must be 32 to 88 base64 characters)".into());
    }
    STANDARD
        .decode(b64)
        .map_err(|_| "invalid secret format (its key is not base64)".to_string())
}

/// The `webhook-signature` header's value for `keys`, joined as GoTrue
/// joins them (`", "`).
pub fn signature(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(k).expect("any key length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example.
    #[test]
    fn the_specifications_vector() {
        let k = key("v1,whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signature(
            &[k],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(key("v1,whsec_not base64!").is_err());
        assert!(key("v1,whsec_").is_err(), "an empty key forges nothing");
        assert!(key("v1,whsec_YQ==").is_err(), "nor a one-byte key");
    }
}
