//! Rate limits changed while castellan runs (`PUT /admin/rate_limits`,
//! `castellan limits set`): stored in the database, audited, and applied
//! by every process sharing it within a second (each `RateLimiter` follows
//! the few rows). The environment's values are the defaults until changed.

use std::collections::BTreeMap;

use castellan_core::config::RateLimits as Settings;
use castellan_core::models::{AuditAction, AuditActor, audit_payload};
use castellan_core::store::LimitOverride;
use castellan_core::{ApiError, ApiResult};
use serde_json::{Map, Value, json};

use crate::actors::supervisor::Actors;
use crate::context::Ctx;

/// Each changeable limit and the number it allows per its GoTrue window.
pub fn current(settings: &Settings) -> BTreeMap<&'static str, u32> {
    Settings::names()
        .map(|n| (n, settings.events(n).expect("a known name")))
        .collect()
}

/// The environment's limits with the stored changes applied.
pub(crate) fn effective(ctx: &Ctx, stored: &[LimitOverride]) -> Settings {
    stored.iter().fold(ctx.config.rate_limits.clone(), |s, o| {
        let events = u32::try_from(o.events).unwrap_or(u32::MAX);
        s.with(&o.name, events).unwrap_or(s)
    })
}

/// Checks a partial object of changes: every key a known limit, every
/// value a whole number from 0 up; a 400 naming the key otherwise.
pub fn parse(body: &Map<String, Value>) -> ApiResult<Vec<(String, u32)>> {
    let mut changes = Vec::new();
    for (name, value) in body {
        if !Settings::names().any(|n| n == name) {
            return Err(ApiError::validation(format!(
                "Unknown rate limit {name:?} (known: {})",
                Settings::names().collect::<Vec<_>>().join(", ")
            )));
        }
        let events = value
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "Rate limit {name:?} must be a whole number from 0 to {}",
                    u32::MAX
                ))
            })?;
        changes.push((name.clone(), events));
    }
    Ok(changes)
}

/// Stores and audits the changes; answers the limits in force with them
/// (processes apply them within a second).
pub async fn store(
    ctx: &Ctx,
    actor: &AuditActor,
    changes: &[(String, u32)],
) -> ApiResult<Settings> {
    let now = ctx.config.clock.now();
    let mut tx = ctx.store.begin().await?;
    for (name, events) in changes {
        tx.set_rate_limit(name, i64::from(*events), now).await?;
    }
    let traits: Map<String, Value> = changes.iter().map(|(n, e)| (n.clone(), json!(e))).collect();
    let payload = audit_payload(
        actor.clone(),
        AuditAction::RateLimitsChanged,
        Some(Value::Object(traits)),
    );
    tx.insert_audits(&[payload], now).await?;
    tx.commit().await?;
    stored(ctx).await
}

/// The limits in force: the environment's, with the stored changes.
pub async fn stored(ctx: &Ctx) -> ApiResult<Settings> {
    Ok(effective(ctx, &ctx.store.rate_limit_overrides().await?))
}

/// As `store`, and applied in this process at once (the others' actors
/// read it within a second).
pub async fn set(
    ctx: &Ctx,
    actors: &Actors,
    actor: &AuditActor,
    changes: &[(String, u32)],
) -> ApiResult<BTreeMap<&'static str, u32>> {
    let settings = store(ctx, actor, changes).await?;
    actors.rate_limits.apply(settings.clone()).await;
    Ok(current(&settings))
}

/// Applies the stored limits now (before the first request is served);
/// the `RateLimiter` follows them from then on.
pub async fn apply_stored(ctx: &Ctx, actors: &Actors) -> ApiResult<()> {
    let settings = stored(ctx).await?;
    actors.rate_limits.apply(settings).await;
    Ok(())
}
