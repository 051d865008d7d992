//! What every actor and service shares: configuration, store, crypto.

use std::sync::Arc;

use castellan_core::crypto::jwt::JwtKeys;
use castellan_core::crypto::password::PasswordHasher;
use castellan_core::{Config, Store};

pub struct Ctx {
    pub config: Config,
    pub store: Store,
    pub hasher: PasswordHasher,
    pub jwt: JwtKeys,
}

impl Ctx {
    /// `secret` is the resolved JWT secret (configured or generated).
    pub fn new(config: Config, store: Store, secret: &str) -> Arc<Self> {
        let hasher = PasswordHasher::new(&config.argon2);
        let jwt = JwtKeys::new(&config.jwt, secret);
        Arc::new(Ctx {
            config,
            store,
            hasher,
            jwt,
        })
    }
}
