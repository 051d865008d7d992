//! A software passkey authenticator for the tests: it answers a ceremony's
//! options as a browser with a platform authenticator would (packed into
//! WebAuthn's JSON), with "none" attestation, a P-256 key, user presence
//! and verification, and a counter. The browser test uses Chromium's own.

#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use serde_cbor_2::Value as Cbor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub struct SoftAuthenticator {
    pub origin: String,
    pub rp_id: String,
    key: SigningKey,
    pub credential_id: Vec<u8>,
    pub user_handle: Vec<u8>,
    pub counter: u32,
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn text(v: &Value, at: &str) -> String {
    v.pointer(at)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {at} in {v}"))
        .to_string()
}

impl SoftAuthenticator {
    pub fn new(origin: &str, rp_id: &str) -> Self {
        Self {
            origin: origin.into(),
            rp_id: rp_id.into(),
            key: SigningKey::random(&mut rand_core_06::OsRng),
            credential_id: rand::random::<[u8; 16]>().to_vec(),
            user_handle: Vec::new(),
            counter: 0,
        }
    }

    /// The user handle as an assertion carries it.
    pub fn handle(&self) -> String {
        b64(&self.user_handle)
    }

    fn client_data(&self, kind: &str, options: &Value) -> Vec<u8> {
        let challenge = text(options, "/challenge");
        serde_json::to_vec(&json!({
            "type": kind, "challenge": challenge, "origin": self.origin, "crossOrigin": false
        }))
        .unwrap()
    }

    /// rpIdHash, flags (user present and verified, and `extra`), counter.
    fn auth_data(&self, extra: u8) -> Vec<u8> {
        let mut d = Sha256::digest(self.rp_id.as_bytes()).to_vec();
        d.push(0x01 | 0x04 | extra);
        d.extend_from_slice(&self.counter.to_be_bytes());
        d
    }

    fn cose_key(&self) -> Vec<u8> {
        let point = self.key.verifying_key().to_encoded_point(false);
        let int = |i: i64| Cbor::Integer(i.into());
        let key = [
            (int(1), int(2)),
            (int(3), int(-7)),
            (int(-1), int(1)),
            (int(-2), Cbor::Bytes(point.x().unwrap().to_vec())),
            (int(-3), Cbor::Bytes(point.y().unwrap().to_vec())),
        ];
        serde_cbor_2::to_vec(&Cbor::Map(key.into_iter().collect())).unwrap()
    }

    /// `navigator.credentials.create` on these options: the credential's JSON.
    pub fn create(&mut self, options: &Value) -> Value {
        self.user_handle = B64.decode(text(options, "/user/id")).unwrap();
        let client_data = self.client_data("webauthn.create", options);
        let mut data = self.auth_data(0x40);
        data.extend_from_slice(&[0u8; 16]);
        data.extend_from_slice(&(self.credential_id.len() as u16).to_be_bytes());
        data.extend_from_slice(&self.credential_id);
        data.extend_from_slice(&self.cose_key());
        let object = Cbor::Map(
            [
                (Cbor::Text("fmt".into()), Cbor::Text("none".into())),
                (Cbor::Text("attStmt".into()), Cbor::Map(Default::default())),
                (Cbor::Text("authData".into()), Cbor::Bytes(data)),
            ]
            .into_iter()
            .collect(),
        );
        let id = b64(&self.credential_id);
        json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "clientDataJSON": b64(&client_data),
                "attestationObject": b64(&serde_cbor_2::to_vec(&object).unwrap()),
                "transports": ["internal"],
            },
            "clientExtensionResults": {},
        })
    }

    /// `navigator.credentials.get` on these options: the assertion's JSON
    /// (the counter moves first).
    pub fn get(&mut self, options: &Value) -> Value {
        self.counter += 1;
        self.assert(options)
    }

    /// An assertion at the current counter (a clone's, once another moved it).
    pub fn assert(&self, options: &Value) -> Value {
        let client_data = self.client_data("webauthn.get", options);
        let data = self.auth_data(0);
        let mut signed = data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data));
        let sig: DerSignature = self.key.sign(&signed);
        let id = b64(&self.credential_id);
        json!({
            "id": id, "rawId": id, "type": "public-key",
            "response": {
                "clientDataJSON": b64(&client_data),
                "authenticatorData": b64(&data),
                "signature": b64(sig.as_bytes()),
                "userHandle": b64(&self.user_handle),
            },
            "clientExtensionResults": {},
        })
    }
}
