//! Password hashing on a fixed pool of hashing threads.
//!
//! New hashes are argon2id with the configured (OWASP) parameters. bcrypt
//! (`$2a$`/`$2b$`/`$2y$`, as GoTrue writes them) and argon2 PHC strings verify;
//! a hash that is not argon2id with the current parameters is reported as
//! needing a re-hash so the caller can upgrade it after a successful sign-in.
//!
//! Hashing is CPU- and memory-bound. `pool_size` dedicated threads each own
//! one argon2 memory block, allocated at its first hash and reused for every
//! later one: memory
//! stays at `pool_size` × m_cost however long the server runs, no time goes
//! to allocating and zeroing 19 MiB per sign-in, and overload queues on a
//! channel (latency grows, throughput holds) instead of thrashing.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use argon2::password_hash::phc::{Output, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{mpsc, oneshot};

use crate::config::Argon2Config;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    /// The stored hash is of an older kind or parameters.
    pub needs_rehash: bool,
}

/// Work for a hashing thread; it gets the thread's memory block.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// What one verification may cost a hashing thread. A stored hash beyond
/// these fails sign-in rather than hold a thread for seconds, and an import
/// beyond them is refused. Memory is configured
/// (`CASTELLAN_HASH_MAX_MEMORY_KIB`); the rest are fixed.
#[derive(Debug, Clone, Copy)]
pub struct CostCap {
    pub max_memory_kib: u32,
}

const MAX_ARGON2_PASSES: u32 = 10;
const MAX_ARGON2_LANES: u32 = 16;
/// 2¹⁴ bcrypt rounds: about a second; GoTrue writes cost 10.
const MAX_BCRYPT_COST: u32 = 14;

impl CostCap {
    /// Why `hash` may not be stored, if it may not: not a kind sign-in
    /// verifies, or costlier than the cap.
    pub fn refuse(&self, hash: &str) -> Option<String> {
        if let Some(rest) = ["$2a$", "$2b$", "$2y$"]
            .iter()
            .find_map(|p| hash.strip_prefix(p))
        {
            let cost = rest.get(..2).and_then(|c| c.parse::<u32>().ok());
            return match (hash.len() == 60, cost) {
                (true, Some(c)) if c <= MAX_BCRYPT_COST => None,
                (true, Some(c)) => Some(format!("bcrypt cost {c} is above {MAX_BCRYPT_COST}")),
                _ => Some("not a bcrypt hash".into()),
            };
        }
        let parsed = PasswordHash::new(hash).ok();
        let params = parsed.as_ref().and_then(|p| {
            matches!(p.algorithm.as_str(), "argon2id" | "argon2i")
                .then(|| Params::try_from(p).ok())
                .flatten()
        });
        let Some(params) = params else {
            return Some("expected a bcrypt ($2a$/$2b$) or argon2 PHC string".into());
        };
        self.argon2_over(&params)
    }

    fn argon2_over(&self, p: &Params) -> Option<String> {
        let max_m = self.max_memory_kib;
        (p.m_cost() > max_m || p.t_cost() > MAX_ARGON2_PASSES || p.p_cost() > MAX_ARGON2_LANES)
            .then(|| {
                format!(
                    "argon2 cost above the cap (m ≤ {max_m} KiB, t ≤ {MAX_ARGON2_PASSES}, p ≤ {MAX_ARGON2_LANES})"
                )
            })
    }

    fn bcrypt_over(&self, hash: &str) -> bool {
        hash.get(4..6)
            .and_then(|c| c.parse::<u32>().ok())
            .is_none_or(|cost| cost > MAX_BCRYPT_COST)
    }
}

#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    cap: CostCap,
    jobs: mpsc::Sender<(Instant, Job)>,
    /// A real hash of a random password, verified when a user is unknown so
    /// that an unknown user costs the same as a wrong password.
    dummy: Arc<String>,
}

const OUTPUT_LEN: usize = 32;

fn argon(algorithm: Algorithm, version: Version, params: Params) -> Argon2<'static> {
    Argon2::new(algorithm, version, params)
}

/// Runs argon2 into `out`, growing the thread's block only for a hash whose
/// parameters ask for more memory than the configured ones (an import).
fn run_argon(
    a: &Argon2<'_>,
    params: &Params,
    pw: &[u8],
    salt: &[u8],
    out: &mut [u8],
    mem: &mut Vec<Block>,
) -> bool {
    let need = params.block_count();
    if mem.len() < need {
        mem.resize(need, Block::default());
    }
    let ok = a
        .hash_password_into_with_memory(pw, salt, out, &mut mem[..need])
        .is_ok();
    if mem.len() > need.max(1) * 2 {
        // Give back memory taken for an unusually large imported hash.
        mem.truncate(need);
        mem.shrink_to_fit();
    }
    ok
}

/// A new argon2id PHC string.
fn hash_with(params: &Params, pw: &[u8], mem: &mut Vec<Block>) -> Option<String> {
    let salt_bytes: [u8; 16] = rand::random();
    let mut out = [0u8; OUTPUT_LEN];
    let a = argon(Algorithm::Argon2id, Version::V0x13, params.clone());
    if !run_argon(&a, params, pw, &salt_bytes, &mut out, mem) {
        return None;
    }
    let salt = Salt::new(&salt_bytes).ok()?;
    let output = Output::new(&out).ok()?;
    let mut buf = [0u8; 64];
    let hash_b64 = output.encode(&mut buf).ok()?;
    Some(format!(
        "$argon2id$v=19$m={},t={},p={}${salt}${hash_b64}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost()
    ))
}

fn verify_argon(pw: &[u8], hash: &str, cap: CostCap, mem: &mut Vec<Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let algorithm = match parsed.algorithm.as_str() {
        "argon2id" => Algorithm::Argon2id,
        "argon2i" => Algorithm::Argon2i,
        "argon2d" => Algorithm::Argon2d,
        _ => return false,
    };
    let version = match parsed.version {
        None | Some(0x13) => Version::V0x13,
        Some(0x10) => Version::V0x10,
        _ => return false,
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if cap.argon2_over(&params).is_some() {
        metrics::counter!("castellan_hash_over_cap_total").increment(1);
        return false;
    }
    let mut out = vec![0u8; expected.len()];
    let a = argon(algorithm, version, params.clone());
    run_argon(&a, &params, pw, salt.as_ref(), &mut out, mem)
        && super::secure_eq(&out, expected.as_bytes())
}

fn verify_any(pw: &str, hash: &str, cap: CostCap, mem: &mut Vec<Block>) -> bool {
    if hash.starts_with("$argon2") {
        verify_argon(pw.as_bytes(), hash, cap, mem)
    } else if hash.starts_with("$2") {
        if cap.bcrypt_over(hash) {
            metrics::counter!("castellan_hash_over_cap_total").increment(1);
            return false;
        }
        bcrypt::verify(pw, hash).unwrap_or(false)
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

impl PasswordHasher {
    /// Starts `pool_size` hashing threads. Queued work waits on a bounded
    /// channel; callers wait asynchronously.
    pub fn new(cfg: &Argon2Config) -> Self {
        let params = Params::new(
            cfg.memory_kib,
            cfg.iterations,
            cfg.parallelism,
            Some(OUTPUT_LEN),
        )
        .expect("argon2 parameters are checked when the configuration is read");
        let (tx, rx) = mpsc::channel::<(Instant, Job)>(cfg.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..cfg.pool_size {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("castellan-hash-{i}"))
                .spawn(move || {
                    // Allocated by the first hash, then kept: an idle server holds none.
                    let mut mem = Vec::new();
                    loop {
                        // One thread waits on the channel at a time; the others wait for the lock.
                        let next = rx.lock().map(|mut r| r.blocking_recv()).unwrap_or(None);
                        let Some((queued, job)) = next else { return };
                        metrics::histogram!("castellan_hash_pool_wait_seconds")
                            .record(queued.elapsed().as_secs_f64());
                        let start = Instant::now();
                        job(&mut mem);
                        metrics::histogram!("castellan_hash_duration_seconds")
                            .record(start.elapsed().as_secs_f64());
                    }
                })
                .expect("spawn a hashing thread");
        }
        let mut mem = Vec::new();
        let random: [u8; 16] = rand::random();
        let dummy = hash_with(&params, &random, &mut mem).expect("hashing random bytes");
        Self {
            params,
            cap: CostCap {
                max_memory_kib: cfg.max_memory_kib.max(cfg.memory_kib),
            },
            jobs: tx,
            dummy: Arc::new(dummy),
        }
    }

    pub fn cap(&self) -> CostCap {
        self.cap
    }

    /// Runs `f` on a hashing thread and waits for its answer.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel::<T>();
        let job: Job = Box::new(move |mem| {
            // Whoever asked has gone (its request timed out): skip the work.
            if tx.is_closed() {
                metrics::counter!("castellan_hash_abandoned_total").increment(1);
                return;
            }
            let _ = tx.send(f(mem));
        });
        // A full queue answers at once: waiting for a place would only move
        // the wait where no deadline sees it.
        self.jobs
            .try_send((Instant::now(), job))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    metrics::counter!("castellan_hash_queue_full_total").increment(1);
                    let busy = ApiError::unavailable("hash pool", "the queue is full");
                    ApiError {
                        message: "Too many password checks are waiting; please retry in a moment"
                            .into(),
                        ..busy
                    }
                }
                mpsc::error::TrySendError::Closed(_) => {
                    ApiError::internal("hash pool", "hashing threads stopped")
                }
            })?;
        rx.await
            .map_err(|_| ApiError::internal("hash pool", "a hashing thread dropped its job"))
    }

    pub async fn hash(&self, password: &str) -> Result<String, ApiError> {
        let params = self.params.clone();
        let pw = password.as_bytes().to_vec();
        self.run(move |mem| hash_with(&params, &pw, mem))
            .await?
            .ok_or_else(|| ApiError::internal("password hash", "argon2 failed"))
    }

    /// Verifies against a stored hash. `None` (a user without a password, or
    /// an unknown user) verifies against the dummy hash and fails.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verified, ApiError> {
        let real = stored.filter(|s| !s.is_empty());
        let hash = real.unwrap_or(&self.dummy).to_string();
        let pw = password.to_string();
        let params = self.params.clone();
        let has_real = real.is_some();
        let cap = self.cap;
        self.run(move |mem| {
            let ok = verify_any(&pw, &hash, cap, mem);
            Verified {
                ok: ok && has_real,
                needs_rehash: ok && has_real && !is_current(&hash, &params),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordHasher as _;

    fn hasher() -> PasswordHasher {
        PasswordHasher::new(&Argon2Config {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
            pool_size: 2,
            queue: 64,
            max_memory_kib: 65_536,
        })
    }

    #[tokio::test]
    async fn argon2id_round_trip() {
        let h = hasher();
        let stored = h.hash("correct horse").await.unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
            "{stored}"
        );
        assert_eq!(
            h.verify("correct horse", Some(&stored)).await.unwrap(),
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(!h.verify("wrong", Some(&stored)).await.unwrap().ok);
        // The PHC string is standard: the argon2 crate verifies it too.
        use argon2::password_hash::PasswordVerifier;
        Argon2::default()
            .verify_password(b"correct horse", &PasswordHash::new(&stored).unwrap())
            .unwrap();
    }

    #[tokio::test]
    async fn foreign_hashes_verify_and_need_rehash() {
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
        // argon2id with other parameters, and argon2i, made by the argon2 crate itself.
        for (alg, m) in [(Algorithm::Argon2id, 2048), (Algorithm::Argon2i, 1024)] {
            let other = Argon2::new(alg, Version::V0x13, Params::new(m, 1, 1, None).unwrap());
            let old = other.hash_password(b"secret1").unwrap().to_string();
            assert_eq!(
                h.verify("secret1", Some(&old)).await.unwrap(),
                Verified {
                    ok: true,
                    needs_rehash: true
                },
                "{old}"
            );
            assert!(!h.verify("secret2", Some(&old)).await.unwrap().ok);
        }
    }

    #[tokio::test]
    async fn missing_hash_never_verifies() {
        let h = hasher();
        assert!(!h.verify("anything", None).await.unwrap().ok);
        assert!(!h.verify("anything", Some("")).await.unwrap().ok);
        assert!(!h.verify("anything", Some("plain-text")).await.unwrap().ok);
        assert!(
            !h.verify(
                "anything",
                Some("$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaA")
            )
            .await
            .unwrap()
            .ok
        );
    }
}
