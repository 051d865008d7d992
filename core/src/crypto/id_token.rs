//! Checking an OpenID Connect ID token against its issuer's keys (the
//! `id_token` grant): the signature by a key of the issuer's JWKS (never
//! `HS*`, never `none`), the issuer, the expiry. The audience and nonce
//! are the caller's, so it can answer GoTrue's messages for them.

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwk::{Jwk, Key};

/// The usable verification keys of a JWKS document (others are skipped:
/// a provider may publish key types castellan has no use for).
pub fn keys(jwks: &Value) -> Vec<Key> {
    jwks.get("keys")
        .and_then(Value::as_array)
        .map(|ks| {
            ks.iter()
                .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
                .filter(|j| j.kty != "oct")
                .filter_map(|j| j.load().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The `kid` a token names in its header.
pub fn kid(token: &str) -> Result<Option<String>, String> {
    jsonwebtoken::decode_header(token)
        .map(|h| h.kid)
        .map_err(|e| e.to_string())
}

/// The token's `iss`, unverified: only to choose whose keys check it.
pub fn claimed_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// The token's claims when a key of `keys` signed it, `iss` is `issuer`
/// and it has not expired.
pub fn verify(token: &str, keys: &[Key], issuer: &str) -> Result<Map<String, Value>, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    if matches!(
        header.alg,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err("a shared-secret algorithm".into());
    }
    let candidates: Vec<&Key> = keys
        .iter()
        .filter(|k| k.alg == header.alg)
        .filter(|k| header.kid.as_deref().is_none_or(|kid| kid == k.kid))
        .collect();
    if candidates.is_empty() {
        return Err(format!("no key for kid {:?}", header.kid));
    }
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss"]);
    // The audience is checked by the caller, against every client id.
    validation.validate_aud = false;
    let mut last = String::new();
    for key in candidates {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// The token's `aud`, a string or a list.
pub fn audiences(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec![],
    }
}
