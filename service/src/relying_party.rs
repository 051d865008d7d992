//! The WebAuthn relying party that passkeys and WebAuthn second factors
//! share: built once from `GOTRUE_WEBAUTHN_*` (webauthn-rs checks every
//! ceremony against it), and what both read of a registration.

use castellan_core::config::WebAuthnConfig;
use uuid::Uuid;
use webauthn_rs::prelude::{Webauthn, WebauthnBuilder};

use crate::context::Ctx;

/// The relying party webauthn-rs checks every ceremony against.
pub fn build(cfg: &WebAuthnConfig) -> Result<Webauthn, String> {
    let (first, rest) = cfg.rp_origins.split_first().ok_or("no origins")?;
    let mut b = WebauthnBuilder::new(&cfg.rp_id, first)
        .map_err(|e| format!("GOTRUE_WEBAUTHN_RP_ID {:?}: {e}", cfg.rp_id))?
        .rp_name(&cfg.rp_display_name)
        .timeout(cfg.challenge_expiry);
    for o in rest {
        b = b.append_allowed_origin(o);
    }
    b.build()
        .map_err(|e| format!("the WebAuthn relying party: {e}"))
}

/// WebAuthn's longest credential id (webauthn-rs takes up to 4 KiB, which
/// PostgreSQL's unique index on the column cannot hold).
pub const MAX_CREDENTIAL_ID: usize = 1023;

pub fn credential_id_fits(id: &[u8]) -> bool {
    id.len() <= MAX_CREDENTIAL_ID
}

/// The transports a registration reports, each once, a few at most
/// (they are hints, and a client could send any number).
pub fn transports(reg: &webauthn_rs::prelude::RegisterPublicKeyCredential) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in reg.response.transports.iter().flatten() {
        let name = serde_json::to_value(t)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if !name.is_empty() && !out.contains(&name) && out.len() < 8 {
            out.push(name);
        }
    }
    out
}

/// How long a ceremony's challenge may be answered.
pub fn challenge_expiry(ctx: &Ctx) -> chrono::Duration {
    let expiry = ctx.config.webauthn.as_ref().map(|w| w.challenge_expiry);
    chrono::Duration::from_std(expiry.unwrap_or_default()).unwrap_or_default()
}

/// What GoTrue's columns keep of a registration's authenticator data
/// (already verified by webauthn-rs): <https://www.w3.org/TR/webauthn-3/#sctn-authenticator-data>.
#[derive(Debug, PartialEq)]
pub struct AuthenticatorData {
    pub sign_count: u32,
    pub backup_eligible: bool,
    pub backed_up: bool,
    pub aaguid: Option<Uuid>,
    /// The COSE key, byte for byte.
    pub public_key: Vec<u8>,
}

impl AuthenticatorData {
    pub fn of_attestation(object: &[u8]) -> Option<Self> {
        use serde_cbor_2::Value as Cbor;
        let map: std::collections::BTreeMap<Cbor, Cbor> = serde_cbor_2::from_slice(object).ok()?;
        let Some(Cbor::Bytes(data)) = map.get(&Cbor::Text("authData".into())) else {
            return None;
        };
        Self::parse(data)
    }

    /// rpIdHash (32), flags (1), signCount (4), then, with attested
    /// credential data: AAGUID (16), credential id length (2) and id, and
    /// the COSE key (one CBOR item).
    fn parse(data: &[u8]) -> Option<Self> {
        let flags = *data.get(32)?;
        let sign_count = u32::from_be_bytes(data.get(33..37)?.try_into().ok()?);
        if flags & 0x40 == 0 {
            return None;
        }
        let aaguid = Uuid::from_slice(data.get(37..53)?).ok();
        let id_len = usize::from(u16::from_be_bytes(data.get(53..55)?.try_into().ok()?));
        let key = data.get(55 + id_len..)?;
        let mut items =
            serde_cbor_2::Deserializer::from_slice(key).into_iter::<serde_cbor_2::Value>();
        items.next()?.ok()?;
        let public_key = key.get(..items.byte_offset())?.to_vec();
        Some(Self {
            sign_count,
            backup_eligible: flags & 0x08 != 0,
            backed_up: flags & 0x10 != 0,
            aaguid: aaguid.filter(|a| !a.is_nil()),
            public_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticator_data_yields_the_cose_key_byte_for_byte() {
        let key = serde_cbor_2::to_vec(&serde_cbor_2::Value::Map(
            [(
                serde_cbor_2::Value::Integer(1),
                serde_cbor_2::Value::Integer(2),
            )]
            .into(),
        ))
        .unwrap();
        let mut data = vec![0u8; 32];
        data.push(0x40 | 0x08 | 0x05);
        data.extend_from_slice(&7u32.to_be_bytes());
        data.extend_from_slice(&[9u8; 16]);
        data.extend_from_slice(&3u16.to_be_bytes());
        data.extend_from_slice(&[1, 2, 3]);
        data.extend_from_slice(&key);
        // An extension map may follow the key.
        data.extend_from_slice(&[0xa0]);
        let d = AuthenticatorData::parse(&data).unwrap();
        assert_eq!(d.public_key, key);
        assert_eq!(d.sign_count, 7);
        assert!(d.backup_eligible && !d.backed_up);
        assert_eq!(d.aaguid, Some(Uuid::from_bytes([9; 16])));
        // Without attested credential data, or cut short: nothing.
        data[32] = 0x05;
        assert_eq!(AuthenticatorData::parse(&data), None);
        assert_eq!(AuthenticatorData::parse(&data[..40]), None);
    }
}
