//! Password hashing on a bounded blocking pool.
//!
//! New hashes are argon2id with the configured (OWASP) parameters. bcrypt
//! (`$2a$`/`$2b$`/`$2y$`, as GoTrue writes them) and argon2 PHC strings verify;
//! a hash that is not argon2id with the current parameters is reported as
//! needing a re-hash so the caller can upgrade it after a successful sign-in.
//!
//! Hashing is CPU-bound: at most `pool_size` run at once on tokio's blocking
//! threads, the rest queue on a semaphore, so overload grows latency by
//! queueing, not by thrashing the async workers.

use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::Argon2Config;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    /// The stored hash is of an older kind or parameters.
    pub needs_rehash: bool,
}

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified when a user is unknown so
    /// that an unknown user costs the same as a wrong password.
    dummy: Arc<String>,
}

impl PasswordHasher {
    pub fn new(cfg: &Argon2Config) -> Self {
        let params = Params::new(cfg.memory_kib, cfg.iterations, cfg.parallelism, None)
            .expect("argon2 parameters are checked when the configuration is read");
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let random: [u8; 16] = rand::random();
        let dummy = argon
            .hash_password(&random)
            .expect("hashing random bytes")
            .to_string();
        Self {
            params,
            permits: Arc::new(Semaphore::new(cfg.pool_size)),
            dummy: Arc::new(dummy),
        }
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Runs `f` on the blocking pool once a permit is free.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let wait = Instant::now();
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ApiError::internal("hash pool", e))?;
        metrics::histogram!("castellan_hash_pool_wait_seconds")
            .record(wait.elapsed().as_secs_f64());
        let start = Instant::now();
        let out = tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| ApiError::internal("hash pool", e))?;
        metrics::histogram!("castellan_hash_duration_seconds")
            .record(start.elapsed().as_secs_f64());
        Ok(out)
    }

    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        let argon = self.argon();
        let pw = password.as_bytes().to_vec();
        self.run(move || argon.hash_password(&pw).map(|h| h.to_string()))
            .await?
            .map_err(|e| ApiError::internal("password hash", e))
    }

    /// Verifies against a stored hash. `None` (a user without a password, or
    /// an unknown user) verifies against the dummy hash and fails.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verified, ApiError> {
        let real = stored.filter(|s| !s.is_empty());
        let hash = real.unwrap_or(&self.dummy).to_string();
        let pw = password.to_string();
        let params = self.params.clone();
        let argon = self.argon();
        let has_real = real.is_some();
        self.run(move || {
            let ok = verify_any(&argon, &pw, &hash);
            Verified {
                ok: ok && has_real,
                needs_rehash: ok && has_real && !is_current(&hash, &params),
            }
        })
        .await
    }
}

fn verify_any(argon: &Argon2<'_>, password: &str, hash: &str) -> bool {
    if hash.starts_with("$argon2") {
        match PasswordHash::new(hash) {
            // The parameters come from the PHC string, not from `argon`.
            Ok(parsed) => argon.verify_password(password.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        }
    } else if hash.starts_with("$2") {
        bcrypt::verify(password, hash).unwrap_or(false)
    } else {
        false
    }
}

fn is_current(hash: &str, params: &Params) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    if parsed.algorithm.as_str() != "argon2id" {
        return false;
    }
    match Params::try_from(&parsed) {
        Ok(p) => {
            p.m_cost() == params.m_cost()
                && p.t_cost() == params.t_cost()
                && p.p_cost() == params.p_cost()
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> PasswordHasher {
        PasswordHasher::new(&Argon2Config {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            pool_size: 2,
        })
    }

    #[tokio::test]
    async fn argon2id_round_trip() {
        let h = hasher();
        let stored = h.hash("correct horse").await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert_eq!(
            h.verify("correct horse", Some(&stored)).await.unwrap(),
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(!h.verify("wrong", Some(&stored)).await.unwrap().ok);
    }

    #[tokio::test]
    async fn bcrypt_and_old_argon_need_rehash() {
        let h = hasher();
        let b = bcrypt::hash("secret1", 4)
            .unwrap()
            .replacen("$2b$", "$2a$", 1);
        assert_eq!(
            h.verify("secret1", Some(&b)).await.unwrap(),
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
        let other = PasswordHasher::new(&Argon2Config {
            memory_kib: 2048,
            iterations: 1,
            parallelism: 1,
            pool_size: 1,
        });
        let old = other.hash("secret1").await.unwrap();
        assert_eq!(
            h.verify("secret1", Some(&old)).await.unwrap(),
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }

    #[tokio::test]
    async fn missing_hash_never_verifies() {
        let h = hasher();
        assert!(!h.verify("anything", None).await.unwrap().ok);
        assert!(!h.verify("anything", Some("")).await.unwrap().ok);
        assert!(!h.verify("anything", Some("plain-text")).await.unwrap().ok);
    }
}
