//! The signing keys kept in the database, followed by every server: read at
//! start and then every `CASTELLAN_KEYS_POLL_INTERVAL`, and installed in the
//! key ring whenever they changed. Changing them (`castellan keys …`) is
//! done here too, audited.

use std::sync::Arc;
use std::time::Duration;

use castellan_core::crypto::jwk::{self, Key};
use castellan_core::models::{AuditAction, AuditActor, audit_payload};
use castellan_core::store::{KeyState, StoredKey};
use castellan_core::{ApiError, ApiResult};
use serde_json::json;

use crate::context::Ctx;

/// What was last installed: each stored key's kid, state and update time.
type Seen = Vec<(String, String, chrono::DateTime<chrono::Utc>)>;

fn seen(rows: &[StoredKey]) -> Seen {
    rows.iter()
        .map(|r| (r.kid.clone(), r.state.clone(), r.updated_at))
        .collect()
}

fn keys(ctx: &Ctx, rows: &[StoredKey]) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for r in rows {
        let plain = ctx.config.db_encryption.open(&r.kid, &r.jwk)?;
        keys.extend(jwk::from_stored(&r.kid, &plain, &r.state)?);
    }
    Ok(keys)
}

/// Reads the stored keys and installs them if they changed since `last`.
/// A key that cannot be used leaves the ring as it was (logged, counted).
pub async fn sync(ctx: &Ctx, last: &mut Option<Seen>) {
    let rows = match ctx.store.signing_keys().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "reading the stored signing keys failed; keeping the ring");
            return;
        }
    };
    let now = seen(&rows);
    if last.as_ref() == Some(&now) {
        return;
    }
    match keys(ctx, &rows).and_then(|k| ctx.jwt.install(k)) {
        Ok(()) => {
            tracing::info!(stored = rows.len(), signing_kid = %ctx.jwt.signing_kid(), "signing keys installed");
            metrics::counter!("castellan_signing_key_changes_total", "outcome" => "installed")
                .increment(1);
            *last = Some(now);
        }
        Err(e) => {
            tracing::error!(error = %e, "the stored signing keys cannot be used; keeping the ring");
            metrics::counter!("castellan_signing_key_changes_total", "outcome" => "refused")
                .increment(1);
        }
    }
}

/// Installs the stored keys now, then follows them from a task of its own
/// until `stop` resolves.
pub async fn follow(ctx: Arc<Ctx>, stop: impl std::future::Future<Output = ()> + Send + 'static) {
    let last = Arc::new(tokio::sync::Mutex::new(None));
    let every: Duration = ctx.config.keys_poll_interval;
    crate::follow::every(every, stop, move || {
        let (ctx, last) = (ctx.clone(), last.clone());
        async move { sync(&ctx, &mut *last.lock().await).await }
    })
    .await;
}

/// A stored key as the admin API shows it: never its private part.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyView {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The stored keys, with the algorithm each signs with.
pub async fn list(ctx: &Ctx) -> ApiResult<Vec<KeyView>> {
    let rows = ctx.store.signing_keys().await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let jwk = ctx
                .config
                .db_encryption
                .open(&r.kid, &r.jwk)
                .unwrap_or_default();
            let alg = serde_json::from_str::<serde_json::Value>(&jwk)
                .ok()
                .and_then(|j| j["alg"].as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into());
            KeyView {
                kid: r.kid,
                alg,
                state: r.state,
                created_at: r.created_at,
                updated_at: r.updated_at,
            }
        })
        .collect())
}

/// Adds a key (`verify` first, so it is published before it signs); the
/// private JWK is sealed when database encryption is on.
pub async fn add(ctx: &Ctx, actor: &AuditActor, jwk_json: &str) -> ApiResult<String> {
    let invalid = |e: String| ApiError::validation(e);
    let parsed: jwk::Jwk =
        serde_json::from_str(jwk_json).map_err(|e| invalid(format!("not a JWK: {e}")))?;
    let kid = parsed
        .kid
        .filter(|k| !k.is_empty())
        .ok_or_else(|| invalid("the JWK has no kid".into()))?;
    // It must be able to sign later (a private key, a known algorithm).
    jwk::from_stored(&kid, jwk_json, "sign").map_err(invalid)?;
    let sealed = ctx.config.db_encryption.seal(&kid, jwk_json);
    let now = ctx.config.clock.now();
    let mut tx = ctx.store.begin().await?;
    if let Err(e) = tx.add_signing_key(&kid, &sealed, now).await {
        let taken = e
            .as_database_error()
            .is_some_and(|d| d.is_unique_violation());
        return Err(match taken {
            true => ApiError::unprocessable(
                "key_exists",
                format!("a key with kid {kid:?} is already stored"),
            ),
            false => e.into(),
        });
    }
    audit(&mut tx, actor, AuditAction::SigningKeyAdded, &kid, now).await?;
    tx.commit().await?;
    Ok(kid)
}

/// Promotes a stored `verify` key to signing (the signer steps down to
/// `verify`), retires a `verify` key, or brings a retired one back.
pub async fn set_state(ctx: &Ctx, actor: &AuditActor, kid: &str, to: KeyState) -> ApiResult<()> {
    let now = ctx.config.clock.now();
    let mut tx = ctx.store.begin().await?;
    if !tx.set_signing_key_state(kid, to, now).await? {
        let from = match to {
            KeyState::Sign | KeyState::Retired => "verify",
            KeyState::Verify => "retired",
        };
        return Err(ApiError::not_found(
            "key_not_found",
            format!(
                "no stored key {kid:?} in the `{from}` state (`castellan keys list` shows them)"
            ),
        ));
    }
    let action = match to {
        KeyState::Sign => AuditAction::SigningKeyPromoted,
        KeyState::Retired => AuditAction::SigningKeyRetired,
        KeyState::Verify => AuditAction::SigningKeyAdded,
    };
    audit(&mut tx, actor, action, kid, now).await?;
    tx.commit().await?;
    Ok(())
}

async fn audit(
    tx: &mut castellan_core::store::Tx,
    actor: &AuditActor,
    action: AuditAction,
    kid: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> ApiResult<()> {
    let payload = audit_payload(actor.clone(), action, Some(json!({ "kid": kid })));
    Ok(tx.insert_audits(&[payload], now).await?)
}
