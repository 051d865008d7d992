//! Web3 sign-in (`POST /token?grant_type=web3`): a wallet signs a Sign-In
//! With Solana or With Ethereum message; castellan checks the message's
//! grammar, the signature, that it was written for this site, its time
//! window, and, unlike GoTrue, that it is used once. The wallet's identity
//! (`web3:<chain>:<address>`) then signs in like any external identity.

use base64::Engine;
use castellan_core::crypto::web3::{self, Chain, SignedMessage};
use castellan_core::models::AuditAction;
use castellan_core::oauth::ExternalUser;
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::external::{External, IdTokenRefusal, Whose};
use crate::sessions::TokenGrant;

/// The grant's body.
pub struct Web3Grant {
    pub chain: String,
    pub message: String,
    pub signature: String,
}

/// A refusal after the message was read: OAuth's `invalid_grant`, GoTrue's words.
fn refused(description: impl Into<String>) -> IdTokenRefusal {
    IdTokenRefusal::OAuth {
        error: "invalid_grant",
        description: description.into(),
    }
}

impl External {
    pub async fn web3(&self, g: Web3Grant, aud: &str) -> Result<TokenGrant, IdTokenRefusal> {
        let (chain, validity) = self.chain(&g.chain)?;
        let len = g.message.len();
        if len < 64 {
            return Err(ApiError::validation("message is too short").into());
        }
        if len > 20 * 1024 {
            return Err(ApiError::validation("message must not exceed 20KB").into());
        }
        let signature = signature_bytes(chain, &g.signature)?;
        let m = web3::parse(chain, &g.message).map_err(ApiError::validation)?;
        let signed = match chain {
            Chain::Solana => web3::solana_signed(&m.address, &m.domain, &g.message, &signature),
            Chain::Ethereum => web3::ethereum_signed(&m.address, &g.message, &signature),
        };
        if !signed {
            return Err(refused("Signature does not match address in message"));
        }
        let now = self.ctx.config.clock.now();
        self.written_for_us(chain, &m)?;
        timely(chain, &m, now, validity)?;
        let Some(expires) = m.issued_at.checked_add_signed(validity) else {
            return Err(refused(format!(
                "{} message was issued too long ago",
                chain.title()
            )));
        };
        let outcome = self
            .wallet_sign_in(chain, &m, &g.message, expires, aud)
            .await;
        let label = if outcome.is_ok() { "ok" } else { "refused" };
        metrics::counter!("castellan_web3_signins_total", "chain" => chain.name(), "outcome" => label)
            .increment(1);
        outcome
    }

    /// GoTrue's answer before it reads the body when no chain is on.
    pub fn web3_off(&self) -> Option<ApiError> {
        let ext = &self.ctx.config.external;
        (ext.web3_solana.is_none() && ext.web3_ethereum.is_none())
            .then(|| disabled("Web3 provider is disabled"))
    }

    /// The chain asked for, enabled, and its validity window.
    fn chain(&self, name: &str) -> ApiResult<(Chain, chrono::Duration)> {
        let ext = &self.ctx.config.external;
        if let Some(off) = self.web3_off() {
            return Err(off);
        }
        let (chain, validity) = match name {
            "solana" => (Chain::Solana, ext.web3_solana),
            "ethereum" => (Chain::Ethereum, ext.web3_ethereum),
            _ => {
                return Err(ApiError::bad_request(
                    "web3_unsupported_chain",
                    "Unsupported chain",
                ));
            }
        };
        let validity = validity
            .ok_or_else(|| disabled(&format!("{} Web3 provider is disabled", chain.title())))?;
        Ok((
            chain,
            chrono::Duration::from_std(validity).unwrap_or(chrono::Duration::MAX),
        ))
    }

    /// The message names this site: an HTTPS URI (or localhost) the redirect
    /// rules allow, and a domain that is that URI's host.
    fn written_for_us(&self, chain: Chain, m: &SignedMessage) -> Result<(), IdTokenRefusal> {
        let cfg = &self.ctx.config;
        let c = chain.title();
        let host = m.uri.host_str().unwrap_or_default();
        let localhost = host == "localhost";
        if m.uri.scheme() != "https" && !localhost {
            return Err(refused(format!(
                "Signed {c} message is using URI which does not use HTTPS"
            )));
        }
        let allowed =
            |u: &str| castellan_core::redirect::is_allowed(u, &cfg.site_url, &cfg.uri_allow_list);
        if !allowed(m.uri.as_str()) {
            return Err(refused(format!(
                "Signed {c} message is using URI which is not allowed on this server, message was signed for another app"
            )));
        }
        let uri_host = match m.uri.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        if !localhost && (uri_host != m.domain || !allowed(&format!("https://{}/", m.domain))) {
            return Err(refused(format!(
                "Signed {c} message is using a Domain that does not match the one in URI which is not allowed on this server"
            )));
        }
        Ok(())
    }

    /// The wallet's identity signs in (made on its first sign-in); the
    /// message is spent in the same transaction.
    async fn wallet_sign_in(
        &self,
        chain: Chain,
        m: &SignedMessage,
        message: &str,
        expires: DateTime<Utc>,
        aud: &str,
    ) -> Result<TokenGrant, IdTokenRefusal> {
        let ext = identity(chain, m);
        let now = self.ctx.config.clock.now();
        let who = Whose {
            provider: "web3",
            aud,
            linking_target: None,
            invite: None,
            email_optional: true,
            new_id: uuid::Uuid::new_v4(),
        };
        let (mut tx, settled) = self.settle_once_more(&who, &ext, now).await?;
        let user = match settled {
            Ok(user) => user,
            Err(refused) => return Err(refused.answer(self).await.into()),
        };
        let hash = hex(&Sha256::digest(message.as_bytes()));
        if !tx
            .spend_signed_message(&hash, expires)
            .await
            .map_err(ApiError::from)?
        {
            return Err(refused(format!(
                "Signed {} message was already used",
                chain.title()
            )));
        }
        tx.commit().await.map_err(ApiError::from)?;
        self.after_created(&who, &user).await?;
        let traits = json!({
            "provider": "web3",
            "chain": chain.name(),
            "network": m.chain_id,
            "address": m.address,
            "domain": m.domain,
            "uri": m.uri.as_str(),
        });
        Ok(self
            .sessions
            .issue(user, "web3", vec![(AuditAction::Login, Some(traits))])
            .await?)
    }
}

fn disabled(message: &str) -> ApiError {
    ApiError::unprocessable("web3_provider_disabled", message.to_string())
}

/// The signature's bytes: Solana's 64 as base64 (standard or URL-safe,
/// padded or not), Ethereum's 65 as hex with `0x`.
fn signature_bytes(chain: Chain, s: &str) -> ApiResult<Vec<u8>> {
    match chain {
        Chain::Solana => {
            if s.len() != 86 && s.len() != 88 {
                return Err(ApiError::validation(
                    "signature must be 64 bytes encoded as base64 with or without padding",
                ));
            }
            let url_safe = s.trim_end_matches('=').replace('+', "-").replace('/', "_");
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(url_safe)
                .map_err(|_| {
                    ApiError::validation("signature does not contain valid base64 characters")
                })
        }
        Chain::Ethereum => {
            let hex = s.strip_prefix("0x").unwrap_or(s);
            let bytes = (hex.len() == 130 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| {
                    (0..130)
                        .step_by(2)
                        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()
                })
                .flatten();
            bytes.ok_or_else(|| {
                ApiError::validation(
                    "signature must be 65 bytes long, encoded as a 130 character-long hexadecimal string",
                )
            })
        }
    }
}

/// GoTrue's time rules: not before, not after expiry, and issued within
/// `validity` of now either way (the bounds themselves allowed).
fn timely(
    chain: Chain,
    m: &SignedMessage,
    now: DateTime<Utc>,
    validity: chrono::Duration,
) -> Result<(), IdTokenRefusal> {
    let c = chain.title();
    if m.not_before.is_some_and(|nb| now < nb) {
        return Err(refused(format!(
            "Signed {c} message becomes valid in the future"
        )));
    }
    // (GoTrue checks an Ethereum message's expiry only with a Not Before.)
    if m.expiration_time.is_some_and(|exp| now > exp) {
        return Err(refused(format!("Signed {c} message is expired")));
    }
    if m.issued_at
        .checked_add_signed(validity)
        .is_none_or(|end| now > end)
    {
        return Err(refused(format!("{c} message was issued too long ago")));
    }
    if m.issued_at
        .checked_sub_signed(validity)
        .is_none_or(|start| now < start)
    {
        return Err(refused(format!(
            "{c} message was issued too far in the future"
        )));
    }
    Ok(())
}

/// The wallet as an external identity, as GoTrue records it.
fn identity(chain: Chain, m: &SignedMessage) -> ExternalUser {
    // One identity per Ethereum account, in the case auth-js writes it
    // (GoTrue keeps the case as written: other spellings, other users).
    let address = match chain {
        Chain::Solana => m.address.clone(),
        Chain::Ethereum => web3::eip55(&m.address),
    };
    let sub = format!("web3:{}:{address}", chain.name());
    let statement = match (&m.statement, chain) {
        (Some(s), _) => Value::String(s.clone()),
        (None, Chain::Solana) => Value::String(String::new()),
        (None, Chain::Ethereum) => Value::Null,
    };
    let mut data = Map::new();
    data.insert("sub".into(), Value::String(sub.clone()));
    data.insert(
        "custom_claims".into(),
        json!({
            "address": m.address,
            "chain": chain.name(),
            "network": m.chain_id,
            "domain": m.domain,
            "statement": statement,
        }),
    );
    data.insert("email_verified".into(), Value::Bool(false));
    data.insert("phone_verified".into(), Value::Bool(false));
    ExternalUser {
        sub,
        emails: Vec::new(),
        data,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
