//! JSON Web Keys: reading `GOTRUE_JWT_KEYS` (GoTrue's array of private JWKs)
//! into keys jsonwebtoken signs and verifies with, publishing their public
//! halves, and generating new ones.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Deserialize;
use serde_json::{Value, json};

/// A JWK as GoTrue reads it: any of `oct`, `RSA`, `EC` (P-256) and `OKP`
/// (Ed25519), private or public.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub key_ops: Vec<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    d: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    p: Option<String>,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

/// One key, ready for use.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    /// Whether `key_ops` names `sign`: the one key new tokens are signed with.
    pub sign: bool,
    /// `None` for a public key (verify only).
    pub encoding: Option<EncodingKey>,
    pub decoding: DecodingKey,
    /// The public JWK `/.well-known/jwks.json` publishes; `None` for `oct`.
    pub public: Option<Value>,
}

/// The algorithms a key may name, by key type.
const SUPPORTED: &str = "RS256, RS384, RS512, PS256, PS384, PS512 (RSA), ES256 (EC P-256), EdDSA (OKP Ed25519), HS256, HS384, HS512 (oct)";

fn b64(field: &'static str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let s = v
        .as_deref()
        .ok_or_else(|| format!("`{field}` is missing"))?;
    B64.decode(s.trim_end_matches('='))
        .map_err(|_| format!("`{field}` is not base64url"))
}

impl Jwk {
    /// The algorithm: the key's `alg`, else the usual one for its type.
    fn algorithm(&self) -> Result<Algorithm, String> {
        let named = match (&self.alg, self.kty.as_str(), self.crv.as_deref()) {
            (Some(a), ..) => a.as_str(),
            (None, "RSA", _) => "RS256",
            (None, "EC", _) => "ES256",
            (None, "OKP", _) => "EdDSA",
            (None, "oct", _) => "HS256",
            (None, other, _) => return Err(format!("unknown key type {other:?}")),
        };
        let alg: Algorithm = named
            .parse()
            .map_err(|_| format!("unknown alg {named:?} (supported: {SUPPORTED})"))?;
        let fits = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self.kty == "oct",
            Algorithm::ES256 => self.kty == "EC" && self.crv.as_deref() == Some("P-256"),
            Algorithm::EdDSA => self.kty == "OKP" && self.crv.as_deref() == Some("Ed25519"),
            Algorithm::ES384 => false,
            _ => self.kty == "RSA",
        };
        if !fits {
            return Err(format!(
                "alg {named} does not fit a {} key{} (supported: {SUPPORTED})",
                self.kty,
                self.crv
                    .as_deref()
                    .map(|c| format!(" on {c}"))
                    .unwrap_or_default()
            ));
        }
        Ok(alg)
    }

    /// The key for use; `sign` keys must be private.
    pub fn load(&self) -> Result<Key, String> {
        let kid = self
            .kid
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or("`kid` is missing")?;
        let alg = self.algorithm()?;
        let sign = self.key_ops.iter().any(|o| o == "sign");
        let (encoding, decoding, public) = match self.kty.as_str() {
            "oct" => {
                let k = b64("k", &self.k)?;
                let pair = (EncodingKey::from_secret(&k), DecodingKey::from_secret(&k));
                (Some(pair.0), pair.1, None)
            }
            "RSA" => self.rsa()?,
            "EC" => self.p256()?,
            _ => self.ed25519()?,
        };
        if sign && encoding.is_none() {
            return Err("a public key cannot be the signing key (`key_ops` has `sign`): give the private key (`d`)".into());
        }
        let public = public.map(|mut p: Value| {
            p["kid"] = json!(kid);
            p["alg"] = json!(format!("{alg:?}"));
            p["use"] = json!("sig");
            p["key_ops"] = json!(["verify"]);
            p
        });
        Ok(Key {
            kid,
            alg,
            sign,
            encoding,
            decoding,
            public,
        })
    }

    fn rsa(&self) -> Result<(Option<EncodingKey>, DecodingKey, Option<Value>), String> {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        use rsa::{BigUint, RsaPrivateKey};
        let n = b64("n", &self.n)?;
        let e = b64("e", &self.e)?;
        let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
        let public = json!({"kty": "RSA", "n": B64.encode(&n), "e": B64.encode(&e)});
        if self.d.is_none() {
            return Ok((None, decoding, Some(public)));
        }
        let big = |v: &[u8]| BigUint::from_bytes_be(v);
        let primes = match (&self.p, &self.q) {
            (Some(_), Some(_)) => vec![big(&b64("p", &self.p)?), big(&b64("q", &self.q)?)],
            _ => vec![],
        };
        let key =
            RsaPrivateKey::from_components(big(&n), big(&e), big(&b64("d", &self.d)?), primes)
                .map_err(|e| format!("not a valid RSA private key: {e}"))?;
        key.validate()
            .map_err(|e| format!("not a valid RSA private key: {e}"))?;
        if key.size() < 256 {
            return Err("RSA keys must have 2048 bits or more".into());
        }
        let der = key
            .to_pkcs1_der()
            .map_err(|e| format!("not a valid RSA private key: {e}"))?;
        Ok((
            Some(EncodingKey::from_rsa_der(der.as_bytes())),
            decoding,
            Some(public),
        ))
    }

    fn p256(&self) -> Result<(Option<EncodingKey>, DecodingKey, Option<Value>), String> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        let (x, y, encoding) = match &self.d {
            Some(_) => {
                let secret = p256::SecretKey::from_slice(&b64("d", &self.d)?)
                    .map_err(|_| "`d` is not a P-256 private key")?;
                // The public half is derived, so what is published matches.
                let point = secret.public_key().to_encoded_point(false);
                let (x, y) = (point.x().ok_or("no x")?, point.y().ok_or("no y")?);
                let der = secret
                    .to_pkcs8_der()
                    .map_err(|e| format!("not a valid P-256 key: {e}"))?;
                (
                    x.to_vec(),
                    y.to_vec(),
                    Some(EncodingKey::from_ec_der(der.as_bytes())),
                )
            }
            None => (b64("x", &self.x)?, b64("y", &self.y)?, None),
        };
        let (x, y) = (B64.encode(x), B64.encode(y));
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|_| "`x` and `y` are not a P-256 point")?;
        let public = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        Ok((encoding, decoding, Some(public)))
    }

    fn ed25519(&self) -> Result<(Option<EncodingKey>, DecodingKey, Option<Value>), String> {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let (x, encoding) = match &self.d {
            Some(_) => {
                let d: [u8; 32] = b64("d", &self.d)?
                    .try_into()
                    .map_err(|_| "`d` is not 32 bytes")?;
                let key = ed25519_dalek::SigningKey::from_bytes(&d);
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| format!("not a valid Ed25519 key: {e}"))?;
                (
                    key.verifying_key().to_bytes().to_vec(),
                    Some(EncodingKey::from_ed_der(der.as_bytes())),
                )
            }
            None => (b64("x", &self.x)?, None),
        };
        let x = B64.encode(x);
        let decoding =
            DecodingKey::from_ed_components(&x).map_err(|_| "`x` is not an Ed25519 key")?;
        Ok((
            encoding,
            decoding,
            Some(json!({"kty": "OKP", "crv": "Ed25519", "x": x})),
        ))
    }
}

/// Reads `GOTRUE_JWT_KEYS`: every key loads, kids are unique, and exactly
/// one key signs. Errors name the key.
pub fn load_all(json: &str) -> Result<Vec<Key>, String> {
    let jwks: Vec<Jwk> =
        serde_json::from_str(json).map_err(|e| format!("not a JSON array of JWKs: {e}"))?;
    let mut keys: Vec<Key> = Vec::with_capacity(jwks.len());
    for (i, jwk) in jwks.iter().enumerate() {
        let name = match &jwk.kid {
            Some(kid) => format!("key {} (kid {kid:?})", i + 1),
            None => format!("key {}", i + 1),
        };
        let key = jwk.load().map_err(|e| format!("{name}: {e}"))?;
        if keys.iter().any(|k| k.kid == key.kid) {
            return Err(format!("{name}: the kid is used by another key"));
        }
        keys.push(key);
    }
    match keys.iter().filter(|k| k.sign).count() {
        1 => Ok(keys),
        0 => Err("no signing key: exactly one key needs `\"key_ops\": [\"sign\", …]`".into()),
        n => Err(format!(
            "{n} signing keys: exactly one key may have `sign` in `key_ops`"
        )),
    }
}

/// A key kept in the database: its JWK (opened if sealed) in a state
/// (`sign`, `verify` or `retired`) that overrides its `key_ops`. `None`
/// for a retired key.
pub fn from_stored(kid: &str, jwk: &str, state: &str) -> Result<Option<Key>, String> {
    let ops = match state {
        "retired" => return Ok(None),
        "sign" => vec!["sign".to_string(), "verify".to_string()],
        _ => vec!["verify".to_string()],
    };
    let mut jwk: Jwk =
        serde_json::from_str(jwk).map_err(|e| format!("stored key {kid:?}: not a JWK: {e}"))?;
    jwk.kid = Some(kid.to_string());
    jwk.key_ops = ops;
    jwk.load()
        .map(Some)
        .map_err(|e| format!("stored key {kid:?}: {e}"))
}

/// The key types `castellan keys generate` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Es256,
    Rs256,
    EdDsa,
}

/// A new private JWK (a signing key: `key_ops` sign and verify) with a
/// random `kid`.
pub fn generate(kind: KeyKind) -> Value {
    use rand_core_06::OsRng;
    let kid = uuid::Uuid::new_v4().to_string();
    let mut jwk = match kind {
        KeyKind::Es256 => {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            let secret = p256::SecretKey::random(&mut OsRng);
            let point = secret.public_key().to_encoded_point(false);
            json!({"kty": "EC", "crv": "P-256", "alg": "ES256",
                   "x": B64.encode(point.x().expect("uncompressed point")),
                   "y": B64.encode(point.y().expect("uncompressed point")),
                   "d": B64.encode(secret.to_bytes())})
        }
        KeyKind::EdDsa => {
            let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
                   "x": B64.encode(key.verifying_key().to_bytes()),
                   "d": B64.encode(key.to_bytes())})
        }
        KeyKind::Rs256 => {
            use rsa::traits::{PrivateKeyParts, PublicKeyParts};
            let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("RSA key generation");
            let enc = |v: &rsa::BigUint| B64.encode(v.to_bytes_be());
            let primes = key.primes();
            json!({"kty": "RSA", "alg": "RS256", "n": enc(key.n()), "e": enc(key.e()),
                   "d": enc(key.d()), "p": enc(&primes[0]), "q": enc(&primes[1])})
        }
    };
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    jwk["key_ops"] = json!(["sign", "verify"]);
    jwk
}
