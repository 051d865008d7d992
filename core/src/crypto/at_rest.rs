//! GoTrue's encrypted column values (`GOTRUE_SECURITY_DB_ENCRYPTION_*`): a
//! JSON object `{"key_id", "alg": "aes-gcm-hkdf", "data", "nonce"}` where
//! the data is AES-256-GCM under a key derived (HKDF-SHA-256) from the named
//! 256-bit key and the row's id, so a value cannot be moved to another row.
//! Values written before encryption was on stay readable as they are.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

const ALG: &str = "aes-gcm-hkdf";

/// The configured keys: which one encrypts (if any), and every one that
/// may decrypt, by id.
#[derive(Clone, Default)]
pub struct DbEncryption {
    encrypt_with: Option<String>,
    keys: HashMap<String, [u8; 32]>,
}

impl std::fmt::Debug for DbEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        write!(f, "encrypt with {:?}, keys {ids:?}", self.encrypt_with)
    }
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    key_id: String,
    alg: String,
    /// Go's `[]byte` in JSON: standard base64.
    data: String,
    nonce: String,
}

/// A 256-bit key given base64url, as GoTrue's variables give it.
pub fn parse_key(b64: &str) -> Result<[u8; 32], String> {
    URL_SAFE_NO_PAD
        .decode(b64.trim().trim_end_matches('='))
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| "not a 256-bit key in base64url".to_string())
}

fn cipher(key: &[u8; 32], row_id: &str) -> Aes256Gcm {
    let mut derived = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, key)
        .expand(row_id.as_bytes(), &mut derived)
        .expect("32 bytes is a valid HKDF-SHA-256 length");
    Aes256Gcm::new((&derived).into())
}

impl DbEncryption {
    /// `encrypt_with` names a key of `keys` (the caller checks it is there).
    pub fn new(encrypt_with: Option<String>, keys: HashMap<String, [u8; 32]>) -> Self {
        Self { encrypt_with, keys }
    }

    /// What to store for `plain` in the row `row_id`: sealed when
    /// encryption is on, else `plain` itself.
    pub fn seal(&self, row_id: &str, plain: &str) -> String {
        let Some((id, key)) = self
            .encrypt_with
            .as_ref()
            .and_then(|id| Some((id, self.keys.get(id)?)))
        else {
            return plain.to_string();
        };
        let nonce: [u8; 12] = rand::random();
        let data = cipher(key, row_id)
            .encrypt(&Nonce::from(nonce), plain.as_bytes())
            .expect("AES-GCM encrypts any length this small");
        let sealed = Sealed {
            key_id: id.clone(),
            alg: ALG.into(),
            data: STANDARD.encode(data),
            nonce: STANDARD.encode(nonce),
        };
        serde_json::to_string(&sealed).expect("serializes")
    }

    /// The plain value stored for row `row_id`: opened when sealed, as it
    /// is otherwise. `Err` names what is missing (the key, or a value that
    /// does not open under it).
    pub fn open(&self, row_id: &str, stored: &str) -> Result<String, String> {
        let sealed = match stored.starts_with('{') {
            true => serde_json::from_str::<Sealed>(stored).ok(),
            false => None,
        };
        let Some(s) = sealed.filter(|s| s.alg == ALG) else {
            return Ok(stored.to_string());
        };
        let key = self
            .keys
            .get(&s.key_id)
            .ok_or_else(|| format!("no decryption key {:?}", s.key_id))?;
        let nonce = STANDARD.decode(&s.nonce).ok();
        let nonce: Option<[u8; 12]> = nonce.and_then(|n| n.try_into().ok());
        let data = STANDARD.decode(&s.data).ok();
        let (Some(nonce), Some(data)) = (nonce, data) else {
            return Err("a damaged encrypted value".into());
        };
        let plain = cipher(key, row_id)
            .decrypt(&Nonce::from(nonce), data.as_slice())
            .map_err(|_| format!("the value does not open with key {:?}", s.key_id))?;
        String::from_utf8(plain).map_err(|_| "the opened value is not text".into())
    }
}

/// The key queued jobs rest under: an email's or SMS's code, link and
/// rendered message are sealed (AES-256-GCM, a key derived from the server's
/// secret) in the queue's table, so a reader of the database or a backup
/// finds no usable code there; the workers, which have the secret, open them.
#[derive(Clone)]
pub struct JobSeal(Aes256Gcm);

impl JobSeal {
    pub fn from_secret(secret: &str) -> Self {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(b"castellan"), secret.as_bytes())
            .expand(b"queued-jobs/v1", &mut key)
            .expect("32 bytes is a valid HKDF-SHA-256 length");
        JobSeal(Aes256Gcm::new((&key).into()))
    }

    /// `plain` sealed: standard base64 of nonce and ciphertext.
    pub fn seal(&self, plain: &[u8]) -> String {
        let nonce: [u8; 12] = rand::random();
        let mut out = nonce.to_vec();
        out.extend(
            self.0
                .encrypt(&Nonce::from(nonce), plain)
                .expect("AES-GCM encrypts any length this small"),
        );
        STANDARD.encode(out)
    }

    /// What [`Self::seal`] sealed; `Err` when it was sealed under another
    /// secret or damaged.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, String> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| "a damaged sealed job".to_string())?;
        if bytes.len() < 12 {
            return Err("a damaged sealed job".into());
        }
        let (nonce, data) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().expect("12 bytes");
        self.0
            .decrypt(&Nonce::from(nonce), data)
            .map_err(|_| "a job sealed under another secret, or damaged".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[&str]) -> HashMap<String, [u8; 32]> {
        ids.iter()
            .map(|id| (id.to_string(), rand::random()))
            .collect()
    }

    #[test]
    fn sealed_jobs_open_only_under_their_secret() {
        let seal = JobSeal::from_secret("one");
        let sealed = seal.seal(b"code 123456");
        assert!(!sealed.contains("123456"));
        assert_ne!(sealed, seal.seal(b"code 123456"), "a fresh nonce each time");
        assert_eq!(seal.open(&sealed).unwrap(), b"code 123456");
        assert!(JobSeal::from_secret("two").open(&sealed).is_err());
        assert!(seal.open("not base64!").is_err());
        assert!(seal.open("AAAA").is_err());
    }

    #[test]
    fn sealed_values_open_only_in_their_row_with_their_key() {
        let k = keys(&["k1", "k2"]);
        let enc = DbEncryption::new(Some("k1".into()), k.clone());
        let sealed = enc.seal("row-a", "secret-value");
        assert!(
            sealed.starts_with('{') && !sealed.contains("secret-value"),
            "{sealed}"
        );
        let v: serde_json::Value = serde_json::from_str(&sealed).unwrap();
        assert_eq!(
            (v["key_id"].as_str(), v["alg"].as_str()),
            (Some("k1"), Some(ALG))
        );
        assert_eq!(enc.open("row-a", &sealed).unwrap(), "secret-value");
        assert!(enc.open("row-b", &sealed).is_err(), "bound to its row");
        // Rotated: encrypting with k2, k1's values still open.
        let rotated = DbEncryption::new(Some("k2".into()), k.clone());
        assert_eq!(rotated.open("row-a", &sealed).unwrap(), "secret-value");
        // Without k1 they do not, and say why.
        let without = DbEncryption::new(None, keys(&["k2"]));
        assert!(without.open("row-a", &sealed).unwrap_err().contains("k1"));
        // Plain values (written before encryption) read as they are.
        assert_eq!(enc.open("row-a", "plain").unwrap(), "plain");
        assert_eq!(DbEncryption::default().seal("row-a", "plain"), "plain");
    }

    #[test]
    fn keys_are_256_bits_of_base64url() {
        let k: [u8; 32] = rand::random();
        assert_eq!(parse_key(&URL_SAFE_NO_PAD.encode(k)).unwrap(), k);
        assert!(parse_key("short").is_err());
        assert!(parse_key(&URL_SAFE_NO_PAD.encode([0u8; 16])).is_err());
    }
}
