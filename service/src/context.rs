//! What every actor and service shares: configuration, store, crypto.

use std::sync::Arc;

use castellan_core::crypto::jwt::JwtKeys;
use castellan_core::crypto::password::PasswordHasher;
use castellan_core::hooks::Hook;
use castellan_core::{Config, Store};
use castellan_jobs::templates::Templates;

pub struct Ctx {
    pub config: Config,
    pub store: Store,
    pub hasher: PasswordHasher,
    pub jwt: JwtKeys,
    /// Email templates: messages are rendered when they are queued.
    pub templates: Templates,
    /// Whether new refresh tokens are v2 (stateless, HMAC-signed).
    pub refresh_v2: bool,
    /// The SMS provider (or the log), for the sends a request makes itself.
    pub sms: castellan_jobs::sms::Gateway,
    /// The key one-time tokens are hashed under (from the secret).
    pub otp_key: [u8; 32],
    /// The key queued jobs rest under (from the secret).
    pub job_seal: castellan_core::crypto::at_rest::JobSeal,
    /// Leaked-password lookups, when enabled.
    pub pwned: Option<crate::pwned::Pwned>,
    /// The transport of the auth hooks.
    pub hooks: Option<castellan_core::hooks::Caller>,
    /// The WebAuthn relying party, when passkeys or WebAuthn factors are on.
    pub relying_party: Option<webauthn_rs::Webauthn>,
}

impl Ctx {
    /// A one-time token's stored hash: see [`castellan_core::crypto::token_hash`].
    pub fn token_hash(&self, identifier: &str, otp: &str) -> String {
        castellan_core::crypto::token_hash(&self.otp_key, identifier, otp)
    }
}

impl Ctx {
    /// `secret` is the resolved JWT secret (configured or generated); the
    /// configured email templates are read (files or URLs).
    pub async fn load(config: Config, store: Store, secret: &str) -> Result<Arc<Self>, String> {
        let templates = Templates::load(&config.mailer).await?;
        let hasher = PasswordHasher::new(&config.argon2);
        let jwt = JwtKeys::new(&config.jwt, secret)?;
        // Built only when a hook is on (every CLI command loads a Ctx).
        let hooks = match config.hooks.any() {
            true => Some(castellan_core::hooks::Caller::new(store.clone())?),
            false => None,
        };
        let pwned = config
            .password
            .hibp
            .as_ref()
            .map(crate::pwned::Pwned::new)
            .transpose()?;
        // Its warning, if any, is said at start by `preflight`.
        let sms = castellan_jobs::sms::Gateway::from_config(&config.sms).with_hook(
            hooks.as_ref().and_then(|caller| {
                castellan_jobs::hooked::HookDelivery::of(&config, Hook::SendSms, caller)
            }),
        );
        // GoTrue's variable decides; unset, v2 unless the database is an
        // adopted GoTrue one (whose clients hold legacy tokens and may run
        // GoTrue beside castellan).
        let refresh_v2 = match config.refresh_token_algorithm_version {
            Some(v) => v == 2,
            None => !store.adopted_gotrue().await.map_err(|e| e.to_string())?,
        };
        // An ID that is not the origins' domain is refused at start.
        let relying_party = config
            .webauthn
            .as_ref()
            .map(crate::relying_party::build)
            .transpose()?;
        Ok(Arc::new(Ctx {
            relying_party,
            config,
            store,
            hasher,
            jwt,
            templates,
            refresh_v2,
            sms,
            otp_key: castellan_core::crypto::token_hash_key(secret),
            job_seal: castellan_core::crypto::at_rest::JobSeal::from_secret(secret),
            pwned,
            hooks,
        }))
    }
}
