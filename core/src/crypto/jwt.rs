//! Access tokens with GoTrue's claims, signed by the key ring: HS256 over
//! the secret's raw bytes by default, or the `GOTRUE_JWT_KEYS` signing key.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::config::JwtConfig;
use crate::crypto::jwk::{self, Key};
use crate::error::ApiError;

/// One authentication method of a session, newest first in `amr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmrEntry {
    pub method: String,
    pub timestamp: i64,
}

/// The methods that prove a second factor (GoTrue's `IsAAL2Claim`).
pub const SECOND_FACTORS: [&str; 3] = ["totp", "mfa/phone", "mfa/webauthn"];

/// The assurance level a session's methods give: the one place it is
/// decided (tokens, refreshes, the unenroll rule).
pub fn aal<'a>(mut methods: impl Iterator<Item = &'a str>) -> &'static str {
    if methods.any(|m| SECOND_FACTORS.contains(&m)) {
        "aal2"
    } else {
        "aal1"
    }
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
    /// The OAuth client a session started by its authorization code
    /// belongs to, and the scopes granted to it (GoTrue's claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
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
    /// The assurance level the token was minted at (`aal1`, `aal2`).
    #[serde(default)]
    pub aal: Option<String>,
    /// Expiry (seconds since the epoch), checked against the caller's clock.
    #[serde(default)]
    pub exp: Option<f64>,
    /// Not before (seconds since the epoch), checked like `exp`.
    #[serde(default)]
    pub nbf: Option<f64>,
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

/// The key ring: every key that signs or verifies a JWT, built from
/// `GOTRUE_JWT_KEYS` (or the secret alone) and the keys kept in the
/// database, with GoTrue's rules for which key checks an incoming token.
/// A change of the stored keys swaps the whole ring at once.
#[derive(Clone)]
pub struct JwtKeys {
    base: std::sync::Arc<Base>,
    ring: std::sync::Arc<arc_swap::ArcSwap<Ring>>,
    pub issuer: Option<String>,
    pub exp_seconds: i64,
}

/// What the environment configures, from which every ring is built.
struct Base {
    /// `GOTRUE_JWT_KEYS`, or the secret as one `oct` key when there are none.
    keys: Vec<Key>,
    /// `GOTRUE_JWT_SECRET`: checks kid-less HS256 tokens (existing `anon`
    /// and `service_role` keys) and tokens naming `GOTRUE_JWT_KEY_ID`.
    secret: DecodingKey,
    secret_kid: Option<String>,
    /// `GOTRUE_JWT_VALID_METHODS`; empty: the algorithms of the keys.
    methods: Vec<Algorithm>,
}

struct Ring {
    keys: Vec<Key>,
    /// Index of the signing key in `keys`.
    signer: usize,
    /// The algorithms incoming tokens may use.
    valid: Vec<Algorithm>,
}

impl Base {
    /// The ring of these keys and `stored` (the database's): a stored key
    /// replaces a configured one of its kid, and a stored signing key
    /// takes over signing.
    fn ring(&self, stored: Vec<Key>) -> Result<Ring, String> {
        let stored_signs = stored.iter().any(|k| k.sign);
        let mut keys: Vec<Key> = self
            .keys
            .iter()
            .filter(|k| !stored.iter().any(|s| s.kid == k.kid))
            .cloned()
            .map(|mut k| {
                k.sign &= !stored_signs;
                k
            })
            .collect();
        keys.extend(stored);
        let signer = keys.iter().position(|k| k.sign).ok_or("no signing key")?;
        let mut valid = match self.methods.as_slice() {
            [] => keys.iter().map(|k| k.alg).collect(),
            named => named.to_vec(),
        };
        valid.dedup();
        Ok(Ring {
            keys,
            signer,
            valid,
        })
    }
}

impl JwtKeys {
    /// The ring for `cfg` and the resolved secret; `Err` names what is wrong.
    pub fn new(cfg: &JwtConfig, secret: &str) -> Result<Self, String> {
        let keys = match &cfg.keys {
            Some(json) => jwk::load_all(json).map_err(|e| format!("GOTRUE_JWT_KEYS: {e}"))?,
            None => vec![Key {
                kid: cfg.key_id.clone().unwrap_or_default(),
                alg: Algorithm::HS256,
                sign: true,
                encoding: Some(EncodingKey::from_secret(secret.as_bytes())),
                decoding: DecodingKey::from_secret(secret.as_bytes()),
                public: None,
            }],
        };
        let methods = cfg
            .valid_methods
            .iter()
            .map(|m| {
                m.parse()
                    .map_err(|_| format!("GOTRUE_JWT_VALID_METHODS: unknown method {m:?}"))
            })
            .collect::<Result<_, _>>()?;
        let base = Base {
            keys,
            secret: DecodingKey::from_secret(secret.as_bytes()),
            secret_kid: cfg.key_id.clone(),
            methods,
        };
        let ring = base.ring(vec![])?;
        Ok(Self {
            base: std::sync::Arc::new(base),
            ring: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(ring)),
            issuer: cfg.issuer.clone(),
            exp_seconds: cfg.exp as i64,
        })
    }

    /// Rebuilds the ring with the database's keys (`stored`, retired ones
    /// left out); every later token is signed and checked by the new ring.
    pub fn install(&self, stored: Vec<Key>) -> Result<(), String> {
        let ring = self.base.ring(stored)?;
        self.ring.store(std::sync::Arc::new(ring));
        Ok(())
    }

    /// The algorithm new tokens are signed with.
    pub fn signing_alg(&self) -> Algorithm {
        let ring = self.ring.load();
        ring.keys[ring.signer].alg
    }

    /// The kid new tokens carry.
    pub fn signing_kid(&self) -> String {
        let ring = self.ring.load();
        ring.keys[ring.signer].kid.clone()
    }

    pub fn sign(&self, claims: &impl serde::Serialize) -> Result<String, ApiError> {
        let ring = self.ring.load();
        let key = &ring.keys[ring.signer];
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone()).filter(|k| !k.is_empty());
        let encoding = key.encoding.as_ref().expect("the signing key is private");
        jsonwebtoken::encode(&header, claims, encoding)
            .map_err(|e| ApiError::internal("jwt sign", e))
    }

    /// `{"keys": [...]}`: the public half of every asymmetric key, never a
    /// symmetric one (GoTrue's `/.well-known/jwks.json`).
    pub fn jwks(&self) -> Value {
        let ring = self.ring.load();
        let keys: Vec<&Value> = ring.keys.iter().filter_map(|k| k.public.as_ref()).collect();
        serde_json::json!({ "keys": keys })
    }

    /// The algorithms incoming tokens may use, as JOSE names them.
    pub fn algorithms(&self) -> Vec<String> {
        self.ring
            .load()
            .valid
            .iter()
            .map(|a| format!("{a:?}"))
            .collect()
    }

    /// The key that checks a token with this header, by GoTrue's rules: a
    /// known `kid` picks its key; `GOTRUE_JWT_KEY_ID`, or no known kid with
    /// HS256, picks the secret; anything else is refused.
    fn key_for<'r>(
        &'r self,
        ring: &'r Ring,
        header: &Header,
    ) -> Result<&'r DecodingKey, &'static str> {
        if !ring.valid.contains(&header.alg) {
            return Err("token is unverifiable: signing method is invalid");
        }
        if let Some(kid) = header.kid.as_deref() {
            if let Some(k) = ring.keys.iter().find(|k| k.kid == kid) {
                // An algorithm the key was not made for (HS256 over an RSA
                // key's public bytes, say) never reaches a verifier.
                return match k.alg == header.alg {
                    true => Ok(&k.decoding),
                    false => Err("token is unverifiable: signing method is invalid"),
                };
            }
            if self.base.secret_kid.as_deref() == Some(kid) {
                return Ok(&self.base.secret);
            }
        }
        match header.alg {
            Algorithm::HS256 => Ok(&self.base.secret),
            _ => Err("token is unverifiable: error while executing keyfunc: unrecognized JWT kid"),
        }
    }

    /// Checks signature and (when present) expiry and not-before at `now`
    /// (seconds), as GoTrue does; `aud` and `iss` are not checked here.
    pub fn verify(&self, token: &str, now: i64) -> Result<IncomingClaims, ApiError> {
        let refuse = |why: &str| {
            ApiError::forbidden(
                "bad_jwt",
                format!("invalid JWT: unable to parse or verify signature, {why}"),
            )
        };
        let header = jsonwebtoken::decode_header(token).map_err(|e| refuse(reason(e.kind())))?;
        let ring = self.ring.load();
        let key = self.key_for(&ring, &header).map_err(refuse)?;
        let mut v = Validation::new(header.alg);
        v.validate_aud = false;
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<IncomingClaims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| refuse(reason(e.kind())))?;
        if claims.exp.is_some_and(|exp| exp <= now as f64) {
            return Err(refuse("token has invalid claims: token is expired"));
        }
        if claims.nbf.is_some_and(|nbf| nbf > now as f64) {
            return Err(refuse("token has invalid claims: token is not valid yet"));
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
        client_id: None,
        scope: None,
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
        JwtKeys::new(&cfg, "secret").unwrap()
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
        )
        .unwrap();
        let t = other.sign(&role_claims("x", "a", now, 60, None)).unwrap();
        assert_eq!(k.verify(&t, now).unwrap_err().status, 403);
    }

    #[test]
    fn tokens_not_valid_yet_fail() {
        let now = chrono::Utc::now().timestamp();
        let key = jsonwebtoken::EncodingKey::from_secret(b"secret");
        let with_nbf = |nbf: i64| {
            let claims = serde_json::json!({"sub": "x", "exp": now + 600, "nbf": nbf});
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let k = keys();
        assert!(k.verify(&with_nbf(now), now).is_ok());
        let e = k.verify(&with_nbf(now + 30), now).unwrap_err();
        assert_eq!((e.status, e.code), (403, "bad_jwt"));
        assert!(e.message.contains("not valid yet"), "{}", e.message);
        // Judged by the caller's clock.
        assert!(k.verify(&with_nbf(now + 30), now + 30).is_ok());
    }

    #[test]
    fn refusals_are_worded_for_people() {
        let k = keys();
        let now = chrono::Utc::now().timestamp();
        let foreign = JwtKeys::new(
            &crate::Config::for_tests(crate::config::DatabaseUrl::Sqlite("x".into())).jwt,
            "other",
        )
        .unwrap()
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

    use crate::crypto::jwk::{KeyKind, generate};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use serde_json::json;

    fn ring(keys: &[Value], valid: &[&str]) -> Result<JwtKeys, String> {
        let mut cfg = crate::Config::for_tests(crate::config::DatabaseUrl::Sqlite("x".into())).jwt;
        cfg.keys = Some(serde_json::to_string(keys).unwrap());
        cfg.valid_methods = valid.iter().map(|s| s.to_string()).collect();
        JwtKeys::new(&cfg, "secret")
    }

    fn verify_only(mut k: Value) -> Value {
        k["key_ops"] = json!(["verify"]);
        k
    }

    fn header(token: &str) -> Value {
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap()
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims() -> Claims {
        role_claims("service_role", "authenticated", now(), 60, None)
    }

    #[test]
    fn each_algorithm_signs_verifies_and_publishes() {
        for (kind, alg, kty) in [
            (KeyKind::Es256, "ES256", "EC"),
            (KeyKind::Rs256, "RS256", "RSA"),
            (KeyKind::EdDsa, "EdDSA", "OKP"),
        ] {
            let key = generate(kind);
            let r = ring(std::slice::from_ref(&key), &[]).unwrap();
            let t = r.sign(&claims()).unwrap();
            assert_eq!(header(&t)["alg"], alg);
            assert_eq!(header(&t)["kid"], key["kid"]);
            assert_eq!(
                r.verify(&t, now()).unwrap().role.as_deref(),
                Some("service_role")
            );
            let jwks = r.jwks();
            let public = &jwks["keys"][0];
            assert_eq!(
                (public["kty"].as_str(), public["alg"].as_str()),
                (Some(kty), Some(alg))
            );
            assert_eq!(public["kid"], key["kid"]);
            assert_eq!(
                (&public["use"], &public["key_ops"]),
                (&json!("sig"), &json!(["verify"]))
            );
            for private in ["d", "p", "q"] {
                assert!(public.get(private).is_none(), "{alg} publishes {private}");
            }
            // A public-only copy of the key verifies what the private one signed.
            let mut published = public.clone();
            published["key_ops"] = json!(["verify"]);
            let verifier = ring(&[generate(KeyKind::Es256), published], &[]).unwrap();
            assert!(verifier.verify(&t, now()).is_ok(), "{alg}");
        }
    }

    #[test]
    fn the_ring_picks_keys_by_kid_and_refuses_confusion() {
        let es = generate(KeyKind::Es256);
        let rsa = generate(KeyKind::Rs256);
        let mut rsa_public = r#"{"kty":"RSA"}"#.parse::<Value>().unwrap();
        for f in ["kid", "alg", "n", "e"] {
            rsa_public[f] = rsa[f].clone();
        }
        let oct = json!({"kty": "oct", "kid": "legacy", "alg": "HS256", "k": B64.encode("secret"), "key_ops": ["verify"]});
        let r = ring(&[es.clone(), verify_only(rsa_public), oct], &[]).unwrap();
        let t = now();
        // A verify-only key still verifies what it signed before its retirement as signer.
        let by_rsa = ring(std::slice::from_ref(&rsa), &[])
            .unwrap()
            .sign(&claims())
            .unwrap();
        assert!(r.verify(&by_rsa, t).is_ok());
        // Kid-less HS256 over the secret: existing anon and service_role keys.
        let legacy = JwtKeys::new(
            &crate::Config::for_tests(crate::config::DatabaseUrl::Sqlite("x".into())).jwt,
            "secret",
        )
        .unwrap()
        .sign(&claims())
        .unwrap();
        assert!(r.verify(&legacy, t).is_ok());
        let refused = |token: &str, says: &str| {
            let e = r.verify(token, t).unwrap_err();
            assert_eq!((e.status, e.code), (403, "bad_jwt"));
            assert!(e.message.contains(says), "{says}: {}", e.message);
        };
        // HS256 keyed with the RSA key's published modulus, under its kid.
        let hs = |kid: &str, key: &[u8]| {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some(kid.into());
            jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(key)).unwrap()
        };
        let n = B64.decode(rsa["n"].as_str().unwrap()).unwrap();
        refused(
            &hs(rsa["kid"].as_str().unwrap(), &n),
            "signing method is invalid",
        );
        refused(
            &hs(
                rsa["kid"].as_str().unwrap(),
                rsa["n"].as_str().unwrap().as_bytes(),
            ),
            "signing method is invalid",
        );
        // The same without a kid falls to the secret, which it does not match.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = None;
        let kidless = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&n)).unwrap();
        refused(&kidless, "signature is invalid");
        // `alg: none`.
        let payload = legacy.split('.').nth(1).unwrap();
        refused(
            &format!("{}.{payload}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#)),
            "token is malformed",
        );
        // A key that is not (or no longer) in the ring.
        let retired = ring(&[generate(KeyKind::Es256)], &[])
            .unwrap()
            .sign(&claims())
            .unwrap();
        refused(&retired, "unrecognized JWT kid");
        // Expired, signed by the current key.
        let old = ring(&[es], &[])
            .unwrap()
            .sign(&role_claims("x", "a", t - 100, 10, None))
            .unwrap();
        refused(&old, "token is expired");
    }

    #[test]
    fn valid_methods_decide_whether_the_secret_still_counts() {
        let legacy = keys().sign(&claims()).unwrap();
        let es = generate(KeyKind::Es256);
        let only_es = ring(std::slice::from_ref(&es), &[]).unwrap();
        let e = only_es.verify(&legacy, now()).unwrap_err();
        assert!(
            e.message.contains("signing method is invalid"),
            "{}",
            e.message
        );
        let both = ring(&[es], &["ES256", "HS256"]).unwrap();
        assert!(both.verify(&legacy, now()).is_ok());
        assert_eq!(both.algorithms(), ["ES256", "HS256"]);
        assert!(ring(&[generate(KeyKind::Es256)], &["HS999"]).is_err());
    }

    #[test]
    fn bad_key_sets_are_refused_by_name() {
        let es = generate(KeyKind::Es256);
        let d = es["d"].as_str().unwrap().to_string();
        let mut public = es.clone();
        public.as_object_mut().unwrap().remove("d");
        let mut es512 = es.clone();
        es512["alg"] = json!("ES512");
        let mut rs_on_ec = es.clone();
        rs_on_ec["alg"] = json!("RS256");
        let mut no_kid = es.clone();
        no_kid.as_object_mut().unwrap().remove("kid");
        for (keys, says) in [
            (vec![verify_only(es.clone())], "no signing key"),
            (vec![es.clone(), generate(KeyKind::EdDsa)], "2 signing keys"),
            (vec![public], "a public key cannot be the signing key"),
            (vec![es512], "unknown alg \"ES512\""),
            (vec![rs_on_ec], "does not fit a EC key"),
            (vec![no_kid], "`kid` is missing"),
            (
                vec![es.clone(), verify_only(es.clone())],
                "the kid is used by another key",
            ),
        ] {
            let e = ring(&keys, &[]).err().expect(says);
            assert!(e.starts_with("GOTRUE_JWT_KEYS: "), "{e}");
            assert!(e.contains(says), "{says}: {e}");
            assert!(!e.contains(&d), "the key's material is never shown");
        }
    }
}
