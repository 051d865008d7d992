//! OAuth 1.0a (RFC 5849) as Twitter speaks it: the three signed requests of
//! a sign-in (request token, access token, profile). Signing is the
//! `oauth1-request` crate's (HMAC-SHA1); the timestamp is castellan's clock.
//! Which provider, its URLs and what is kept between the steps are the
//! `ProviderBroker`'s.

use std::num::NonZeroU64;

use oauth1_request as oauth;
use serde::{Deserialize, Serialize};

use crate::providers::{ProviderError, answer};

/// A token and its secret: the request token kept between `/authorize` and
/// `/callback` (in the flow's client state), or the access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    pub token: String,
    pub secret: String,
}

impl TokenPair {
    /// What the flow keeps for the callback.
    pub fn keep(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn kept(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }
}

/// Who signs: the client (`_CLIENT_ID`, `_SECRET`), at a time.
pub struct Signer<'a> {
    pub key: &'a str,
    pub secret: &'a str,
    pub unix_time: i64,
}

/// The parts of a request the signature covers besides the URL's query.
#[derive(Default)]
pub struct Extra<'a> {
    pub token: Option<&'a TokenPair>,
    pub callback: Option<&'a str>,
    pub verifier: Option<&'a str>,
}

impl<'a> Signer<'a> {
    /// The `Authorization` header of a request to `url`: its query's
    /// parameters are signed with the protocol's.
    pub fn authorization(&self, method: &str, url: &str, extra: &Extra<'_>) -> String {
        sign(&self.builder(extra), method, url)
    }

    fn builder<'b>(&'b self, extra: &'b Extra<'b>) -> Builder<'b> {
        let mut b = Builder::new(
            oauth::Credentials::new(self.key, self.secret),
            oauth::HMAC_SHA1,
        );
        b.token(
            extra
                .token
                .map(|t| oauth::Credentials::new(t.token.as_str(), t.secret.as_str())),
        )
        .callback(extra.callback)
        .verifier(extra.verifier)
        .timestamp(u64::try_from(self.unix_time).ok().and_then(NonZeroU64::new))
        .version(true);
        b
    }
}

type Builder<'b> = oauth::Builder<'b, oauth::HmacSha1, &'b str, &'b str>;

fn sign(b: &Builder<'_>, method: &str, url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let params: oauth::ParameterList<String, String, Vec<(String, String)>> =
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect::<Vec<_>>()
            .into();
    b.authorize(method, base, &params)
}

/// A token answer (`application/x-www-form-urlencoded`): the pair, and
/// the other fields. A request token must confirm the callback (1.0a).
pub fn token_answer(body: &[u8], request_token: bool) -> Result<TokenPair, ProviderError> {
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str| {
        fields
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let unreadable = || ProviderError::Unavailable("the token answer cannot be read".into());
    if request_token && get("oauth_callback_confirmed").as_deref() != Some("true") {
        return Err(unreadable());
    }
    Ok(TokenPair {
        token: get("oauth_token").ok_or_else(unreadable)?,
        secret: get("oauth_token_secret").ok_or_else(unreadable)?,
    })
}

/// A signed token request's answer (a used verifier or bad credentials
/// are refused); a request token's must confirm the callback.
pub async fn post_for_token(
    http: &oauth2::reqwest::Client,
    signer: &Signer<'_>,
    url: &str,
    extra: &Extra<'_>,
) -> Result<TokenPair, ProviderError> {
    let req = http
        .post(url)
        .header("authorization", signer.authorization("POST", url, extra));
    let request_token = extra.callback.is_some();
    token_answer(&answer(req, "the token endpoint").await?, request_token)
}

/// Whether a callback's `oauth_token` is the request token the flow kept
/// (in constant time).
pub fn same_token(kept: &TokenPair, returned: &str) -> bool {
    castellan_core::crypto::secure_eq(kept.token.as_bytes(), returned.as_bytes())
}

/// The profile document's parts are read with the access token.
pub fn profile_request(
    http: &oauth2::reqwest::Client,
    signer: &Signer<'_>,
    access: &TokenPair,
    url: &str,
) -> oauth2::reqwest::RequestBuilder {
    let extra = Extra {
        token: Some(access),
        ..Extra::default()
    };
    http.get(url)
        .header("authorization", signer.authorization("GET", url, &extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twitter's documented example ("Creating a signature"): the same
    /// signature from the same parts, with the query's parameters signed.
    #[test]
    fn signs_twitters_documented_example() {
        let signer = Signer {
            key: "xvz1evFS4wEEPTGEFPHBog",
            secret: "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
            unix_time: 1318622958,
        };
        let token = TokenPair {
            token: "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb".into(),
            secret: "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE".into(),
        };
        let extra = Extra {
            token: Some(&token),
            ..Extra::default()
        };
        let url = "https://api.twitter.com/1.1/statuses/update.json?include_entities=true&status=Hello%20Ladies%20%2b%20Gentlemen%2c%20a%20signed%20OAuth%20request%21";
        let mut b = signer.builder(&extra);
        // The documented nonce; a request gets a random one.
        b.nonce("kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg");
        let header = sign(&b, "POST", url);
        assert!(
            header.contains("oauth_signature=\"hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D\""),
            "{header}"
        );
    }

    #[test]
    fn a_request_token_must_confirm_the_callback() {
        let ok = token_answer(
            b"oauth_token=t&oauth_token_secret=s&oauth_callback_confirmed=true",
            true,
        );
        assert_eq!(
            ok.unwrap(),
            TokenPair {
                token: "t".into(),
                secret: "s".into()
            }
        );
        assert!(token_answer(b"oauth_token=t&oauth_token_secret=s", true).is_err());
        assert!(token_answer(b"oauth_token=t&oauth_token_secret=s", false).is_ok());
        assert!(token_answer(b"oauth_token=t", false).is_err());
        assert!(token_answer(b"{\"errors\":[]}", false).is_err());
    }
}
