//! WebAuthn second factors: a factor's first challenge registers an
//! authenticator (a `create` ceremony), later ones ask it to sign (a
//! `request` ceremony); webauthn-rs checks each answer against the state
//! the challenge row kept. The factor's guard remembers the last counter
//! accepted, as it remembers a TOTP factor's last step: a counter that does
//! not move forward is a cloned authenticator's, or an answer replayed.

use castellan_core::models::User;
use castellan_core::store::{Challenge, Factor, Tx};
use castellan_core::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;
use webauthn_rs::Webauthn;
use webauthn_rs::prelude::{
    PublicKeyCredential, RegisterPublicKeyCredential, SecurityKey, SecurityKeyAuthentication,
    SecurityKeyRegistration,
};

use super::Factors;
use crate::relying_party::AuthenticatorData;

/// The browser's answer to a challenge (`webauthn` in the verify body).
pub struct WebAuthnAnswer {
    /// `create` or `request`, as the challenge said.
    pub kind: String,
    pub credential: Option<Value>,
}

/// What a challenge hands the browser: the ceremony and its options
/// (`{"publicKey": …}`, for `navigator.credentials`).
pub struct Ceremony {
    pub kind: &'static str,
    pub options: Value,
}

/// A challenge's state, kept in its row until it is answered.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "state", rename_all = "lowercase")]
enum State {
    Create(SecurityKeyRegistration),
    Request(SecurityKeyAuthentication),
}

/// A credential a verification leaves on the factor: its verifier state,
/// its authenticator's AAGUID (a registration's), its counter.
pub(super) struct Accepted {
    pub credential: String,
    pub aaguid: Option<Uuid>,
    pub counter: i64,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal("webauthn factor", e)
}

fn failed() -> ApiError {
    ApiError::unprocessable("mfa_verification_failed", "WebAuthn verification failed")
}

fn invalid() -> ApiError {
    ApiError::validation("Invalid credential_response")
}

/// The factor's registered key (a verified WebAuthn factor has one).
fn key_of(f: &Factor) -> ApiResult<SecurityKey> {
    let stored = f.web_authn_credential.as_deref().unwrap_or_default();
    serde_json::from_str(stored).map_err(internal)
}

impl Factors {
    /// The relying party, or GoTrue's 422 when WebAuthn factors are off.
    fn relying_party(&self) -> ApiResult<&Webauthn> {
        self.ctx.relying_party.as_ref().ok_or_else(|| {
            ApiError::unprocessable(
                "mfa_webauthn_verify_not_enabled",
                "MFA verification is disabled for WebAuthn",
            )
        })
    }

    /// A challenge's ceremony: `create` for a factor not yet verified (the
    /// user's other keys excluded), `request` for its key; and the state to keep.
    pub(super) async fn webauthn_ceremony(
        &self,
        tx: &mut Tx,
        user: &User,
        f: &Factor,
    ) -> ApiResult<(Ceremony, String)> {
        let rp = self.relying_party()?;
        let (ceremony, state) = if f.verified() {
            let (mut rcr, state) = rp
                .start_securitykey_authentication(&[key_of(f)?])
                .map_err(internal)?;
            // Any authenticator may be a second factor (a laptop's, a
            // phone's), not only a security key: no hint, as GoTrue's.
            rcr.public_key.hints = None;
            let options = serde_json::to_value(&rcr).map_err(internal)?;
            (("request", options), State::Request(state))
        } else {
            let mut others = Vec::new();
            for other in tx.user_factors(user.id).await? {
                if other.factor_type == "webauthn" && other.verified() {
                    others.push(key_of(&other)?.cred_id().clone());
                }
            }
            let name = match user.email_str() {
                "" => user.phone_str(),
                email => email,
            };
            let (mut ccr, state) = rp
                .start_securitykey_registration(user.id, name, name, Some(others), None, None)
                .map_err(internal)?;
            ccr.public_key.hints = None;
            // No credential protection either: browsers refuse a policy of
            // user verification required beside verification preferred.
            if let Some(ext) = ccr.public_key.extensions.as_mut() {
                ext.cred_protect = None;
            }
            let options = serde_json::to_value(&ccr).map_err(internal)?;
            (("create", options), State::Create(state))
        };
        let state = serde_json::to_string(&state).map_err(internal)?;
        let (kind, options) = ceremony;
        Ok((Ceremony { kind, options }, state))
    }

    /// The answer checked against the challenge's state and, for a
    /// `request`, the counter last accepted (`last`).
    pub(super) fn webauthn_answer(
        &self,
        challenge: &Challenge,
        answer: &WebAuthnAnswer,
        f: &Factor,
        last: Option<i64>,
    ) -> ApiResult<Accepted> {
        let rp = self.relying_party()?;
        let state = challenge.web_authn_session_data.as_deref().unwrap_or("{}");
        let state: State = serde_json::from_str(state).map_err(|_| invalid())?;
        let credential = answer.credential.clone().unwrap_or_default();
        match (state, answer.kind.as_str()) {
            (State::Create(state), "create") => {
                let reg: RegisterPublicKeyCredential =
                    serde_json::from_value(credential).map_err(|_| invalid())?;
                let key = rp
                    .finish_securitykey_registration(&reg, &state)
                    .map_err(|_| failed())?;
                if !crate::relying_party::credential_id_fits(key.cred_id()) {
                    return Err(failed());
                }
                let facts = AuthenticatorData::of_attestation(&reg.response.attestation_object)
                    .ok_or_else(invalid)?;
                Ok(Accepted {
                    credential: serde_json::to_string(&key).map_err(internal)?,
                    aaguid: facts.aaguid,
                    counter: i64::from(facts.sign_count),
                })
            }
            (State::Request(state), "request") => {
                let assertion: PublicKeyCredential =
                    serde_json::from_value(credential).map_err(|_| invalid())?;
                let result = rp
                    .finish_securitykey_authentication(&assertion, &state)
                    .map_err(|_| failed())?;
                // The state holds the counter of when the challenge was
                // made; the guard holds the last one accepted since.
                let counter = i64::from(result.counter());
                let last = last.unwrap_or(0);
                if (counter > 0 || last > 0) && counter <= last {
                    return Err(failed());
                }
                let mut key = key_of(f)?;
                key.update_credential(&result);
                Ok(Accepted {
                    credential: serde_json::to_string(&key).map_err(internal)?,
                    aaguid: None,
                    counter,
                })
            }
            // An answer of the other ceremony than the challenge's.
            _ => Err(invalid()),
        }
    }
}

/// GoTrue's checks of the `webauthn` parameter, in its order.
pub(super) fn well_formed(answer: Option<&WebAuthnAnswer>) -> ApiResult<&WebAuthnAnswer> {
    let a = answer.ok_or_else(|| ApiError::validation("WebAuthn config required"))?;
    if a.kind != "create" && a.kind != "request" {
        return Err(ApiError::validation(
            "WebAuthn type must be create or request",
        ));
    }
    if a.credential.as_ref().is_none_or(Value::is_null) {
        return Err(ApiError::validation("credential_response required"));
    }
    Ok(a)
}
