//! Access tokens: HS256 over the secret's raw bytes, with GoTrue's claims.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::config::JwtConfig;
use crate::error::ApiError;

/// One authentication method of a session, newest first in `amr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmrEntry {
    pub method: String,
    pub timestamp: i64,
}

/// GoTrue's access-token claims. Optional fields are the ones GoTrue omits;
/// everything else is always present (`email`/`phone` as `""`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub phone: String,
    #[serde(default)]
    pub app_metadata: Value,
    #[serde(default)]
    pub user_metadata: Value,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub aal: String,
    #[serde(default)]
    pub amr: Vec<AmrEntry>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub is_anonymous: bool,
}

/// The part of an incoming token castellan trusts after verification. `aud`
/// may be a string or an array (GoTrue accepts both on input).
#[derive(Debug, Clone, Deserialize)]
pub struct IncomingClaims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub is_anonymous: bool,
    /// Expiry (seconds since the epoch), checked against the caller's clock.
    #[serde(default)]
    pub exp: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn first(&self) -> Option<&str> {
        match self {
            Audience::One(s) => Some(s),
            Audience::Many(v) => v.first().map(String::as_str),
        }
    }
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: Option<String>,
    pub issuer: Option<String>,
    pub exp_seconds: i64,
}

impl JwtKeys {
    pub fn new(cfg: &JwtConfig, secret: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            kid: cfg.key_id.clone(),
            issuer: cfg.issuer.clone(),
            exp_seconds: cfg.exp as i64,
        }
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| ApiError::internal("jwt sign", e))
    }

    /// Checks signature and (when present) expiry at `now` (seconds), as
    /// GoTrue does; `aud` and `iss` are not checked here.
    pub fn verify(&self, token: &str, now: i64) -> Result<IncomingClaims, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<IncomingClaims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                ApiError::forbidden(
                    "bad_jwt",
                    format!(
                        "invalid JWT: unable to parse or verify signature, {}",
                        reason(e.kind())
                    ),
                )
            })?;
        if claims.exp.is_some_and(|exp| exp <= now as f64) {
            return Err(ApiError::forbidden(
                "bad_jwt",
                "invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired",
            ));
        }
        Ok(claims)
    }
}

/// Why a token was refused, in words (GoTrue's, from golang-jwt), never a
/// library's enum name.
fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidToken => "token is malformed: token contains an invalid number of segments",
        K::Base64(_) | K::Utf8(_) => "token is malformed: could not base64 decode it",
        K::Json(_) | K::InvalidClaimFormat(_) => "token is malformed: could not JSON decode it",
        K::InvalidSignature => "token signature is invalid: signature is invalid",
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            "token is unverifiable: signing method is invalid"
        }
        _ => "token is malformed",
    }
}

/// Mints a token for tools and operators (e.g. a `service_role` key).
pub fn role_claims(role: &str, aud: &str, now: i64, ttl: i64, issuer: Option<String>) -> Claims {
    Claims {
        aud: aud.to_string(),
        exp: now + ttl,
        iat: now,
        iss: issuer,
        sub: String::new(),
        email: String::new(),
        phone: String::new(),
        app_metadata: Value::Object(Default::default()),
        user_metadata: Value::Object(Default::default()),
        role: role.to_string(),
        aal: "aal1".into(),
        amr: vec![],
        session_id: None,
        is_anonymous: false,
    }
}

/// Parses a UUID claim, mapping failure to GoTrue's errors.
pub fn parse_sub(sub: Option<&str>) -> Result<Uuid, ApiError> {
    match sub {
        None | Some("") => Err(ApiError::forbidden(
            "bad_jwt",
            "invalid claim: missing sub claim",
        )),
        Some(s) => Uuid::parse_str(s).map_err(|_| {
            ApiError::bad_request("bad_jwt", "invalid claim: sub claim must be a UUID")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        let cfg = crate::Config::for_tests(crate::config::DatabaseUrl::Sqlite("x".into())).jwt;
        JwtKeys::new(&cfg, "secret")
    }

    #[test]
    fn sign_and_verify() {
        let k = keys();
        let now = chrono::Utc::now().timestamp();
        let t = k
            .sign(&role_claims("service_role", "authenticated", now, 60, None))
            .unwrap();
        let c = k.verify(&t, now).unwrap();
        assert_eq!(c.role.as_deref(), Some("service_role"));
        let raw: Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                t.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(raw["aud"], "authenticated", "aud is a single string");
        assert!(raw.get("iss").is_none(), "iss only when configured");
        assert_eq!(raw["is_anonymous"], false);
    }

    #[test]
    fn expired_and_foreign_tokens_fail() {
        let k = keys();
        let now = chrono::Utc::now().timestamp();
        let t = k.sign(&role_claims("x", "a", now - 100, 10, None)).unwrap();
        assert_eq!(k.verify(&t, now).unwrap_err().code, "bad_jwt");
        // Expiry is judged by the caller's clock, to the second.
        let t = k.sign(&role_claims("x", "a", now, 60, None)).unwrap();
        assert!(k.verify(&t, now + 59).is_ok());
        assert_eq!(k.verify(&t, now + 60).unwrap_err().code, "bad_jwt");
        let other = JwtKeys::new(
            &crate::Config::for_tests(crate::config::DatabaseUrl::Sqlite("x".into())).jwt,
            "other",
        );
        let t = other.sign(&role_claims("x", "a", now, 60, None)).unwrap();
        assert_eq!(k.verify(&t, now).unwrap_err().status, 403);
    }

    #[test]
    fn refusals_are_worded_for_people() {
        let k = keys();
        let now = chrono::Utc::now().timestamp();
        let foreign = JwtKeys::new(
            &crate::Config::for_tests(crate::config::DatabaseUrl::Sqlite("x".into())).jwt,
            "other",
        )
        .sign(&role_claims("x", "a", now, 60, None))
        .unwrap();
        for (token, says) in [
            ("garbage", "invalid number of segments"),
            ("a.b.c", "could not base64 decode"),
            (foreign.as_str(), "signature is invalid"),
        ] {
            let msg = k.verify(token, now).unwrap_err().message;
            assert!(msg.contains(says), "{token}: {msg}");
            assert!(
                msg.chars().all(|c| c != '(') && !msg.contains("Invalid"),
                "{msg}"
            );
        }
    }
}
