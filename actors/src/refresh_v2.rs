//! Refreshing with a v2 token (GoTrue's stateless format): the token names
//! its session and a counter, signed with the session's own key. The
//! session's counter says what happened since: equal, the normal rotation;
//! one ahead, the client lost the last answer and gets it again; further
//! ahead, a reuse, allowed within the reuse interval of the last refresh
//! (concurrent tabs) and otherwise the end of the session. The counter
//! moves in one guarded write, so two refreshes of one token cannot both
//! rotate: the loser reads the counter again and gets the winner's token.

use castellan_core::crypto::refresh::{self, V2Token};
use castellan_core::models::{AuditAction, audit_payload};
use castellan_core::store::{self, RefreshContext, SessionScope};
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Utc};

use crate::context::Ctx;
use std::sync::Arc;

use crate::session_manager::{RefreshEntry, SessionCache};
use crate::sessions::{TokenGrant, check_usable, end, grant_for, not_found};

/// Reads of a moving counter before giving up (each lost race means
/// another refresh of the session succeeded in between).
const ATTEMPTS: usize = 8;

pub(crate) async fn refresh(
    ctx: &Ctx,
    cache: &SessionCache,
    token: V2Token,
) -> ApiResult<TokenGrant> {
    let looked = cache.refresh_entry(token.session_id).await;
    let since = looked.generation;
    if let Some(entry) = looked.entry
        && let Some(grant) = from_cache(ctx, cache, entry, &token).await?
    {
        return Ok(grant);
    }
    for _ in 0..ATTEMPTS {
        let now = ctx.config.clock.now();
        let c = ctx
            .store
            .peek_session_refresh(token.session_id)
            .await?
            .ok_or_else(not_found)?;
        let stored = c.session.refresh_token_hmac_key.as_deref();
        let key = open_key(ctx, c.session.id, stored.ok_or_else(not_found)?)?;
        // A token this session's key did not sign is as good as unknown.
        if !token.signed_by(&key) {
            return Err(not_found());
        }
        check_usable(ctx, &c, now)?;
        let current = c.session.refresh_token_counter.unwrap_or(0);
        let to = match current - token.counter {
            behind if behind < 0 => {
                return Err(ApiError::validation(
                    "Invalid Refresh Token: Not Issued By This Server",
                ));
            }
            0 => current + 1,
            behind if reuse_allowed(ctx, &c, behind, now) => current,
            _ => return Err(reused(ctx, &c).await),
        };
        if !advance(ctx, &c, current, to, now).await? {
            continue;
        }
        let issued = encode(&key, &c, to)?;
        if to == current + 1 {
            cache.keep_refresh(since, rotated(&c, to, now), key.clone());
        }
        return grant_for(ctx, c, issued, now);
    }
    Err(ApiError::unavailable(
        "refresh v2",
        "the session's counter kept moving",
    ))
}

/// The normal rotation (the session's current token, nothing refused),
/// decided on what this process's last refresh of the session left;
/// `None` sends everything else, and a lost guard, to the store.
async fn from_cache(
    ctx: &Ctx,
    cache: &SessionCache,
    e: Arc<RefreshEntry>,
    token: &V2Token,
) -> ApiResult<Option<TokenGrant>> {
    let now = ctx.config.clock.now();
    let current = e.context.session.refresh_token_counter.unwrap_or(0);
    if token.counter != current
        || !token.signed_by(&e.key)
        || check_usable(ctx, &e.context, now).is_err()
    {
        return Ok(None);
    }
    if !advance(ctx, &e.context, current, current + 1, now).await? {
        cache.forget_refresh(token.session_id);
        return Ok(None);
    }
    let issued = encode(&e.key, &e.context, current + 1)?;
    let context = e.context.clone();
    cache.replace_refresh(e, rotated(&context, current + 1, now));
    grant_for(ctx, context, issued, now).map(Some)
}

/// The context as a rotation to `counter` at `now` leaves it.
fn rotated(c: &RefreshContext, counter: i64, now: DateTime<Utc>) -> RefreshContext {
    let mut next = c.clone();
    next.session.refresh_token_counter = Some(counter);
    next.session.refreshed_at = Some(now.naive_utc());
    next
}

/// Moves the session's counter `from` → `to` (audited), if it still is `from`.
async fn advance(
    ctx: &Ctx,
    c: &RefreshContext,
    from: i64,
    to: i64,
    now: DateTime<Utc>,
) -> ApiResult<bool> {
    let audit = audit_payload(&c.user, AuditAction::TokenRefreshed, None);
    let advance = store::Advance {
        session_id: c.session.id,
        from,
        to,
        audit: &audit,
        now,
    };
    Ok(ctx.store.advance_refresh_counter(&advance).await?)
}

fn encode(key: &str, c: &RefreshContext, counter: i64) -> ApiResult<String> {
    refresh::encode(key, c.session.id, counter)
        .ok_or_else(|| ApiError::internal("refresh v2", "the session's key is not base64url"))
}

/// A session's key as stored: sealed under the database encryption key
/// when that is on. A key that cannot be opened (its decryption key is no
/// longer configured) is a server fault, logged with the key's id.
pub(crate) fn open_key(ctx: &Ctx, session: uuid::Uuid, stored: &str) -> ApiResult<String> {
    ctx.config
        .db_encryption
        .open(&session.to_string(), stored)
        .map_err(|e| ApiError::internal("session refresh key", e))
}

/// GoTrue's allowed reuses: the token just before the current one (the
/// client failed to save the answer), or any within the reuse interval of
/// the session's last refresh (concurrent refreshes from several tabs).
fn reuse_allowed(ctx: &Ctx, c: &RefreshContext, behind: i64, now: DateTime<Utc>) -> bool {
    let interval =
        chrono::Duration::from_std(ctx.config.refresh_token_reuse_interval).unwrap_or_default();
    let last = c
        .session
        .refreshed_at
        .map(|t| t.and_utc())
        .or(c.session.created_at);
    behind == 1 || last.is_some_and(|l| (now - l).abs() < interval)
}

/// A reuse outside the rules: with rotation on, the session ends (every
/// access and refresh token of it dies), committed though the request fails.
async fn reused(ctx: &Ctx, c: &RefreshContext) -> ApiError {
    let outcome = if ctx.config.refresh_token_rotation_enabled {
        let ended = async {
            let mut tx = ctx.store.begin().await?;
            end(&mut tx, c.user.id, SessionScope::Only(c.session.id)).await?;
            tx.commit().await?;
            Ok::<_, ApiError>(())
        };
        if let Err(e) = ended.await {
            return e;
        }
        tracing::warn!(session_id = %c.session.id, "v2 refresh token reused; session ended");
        "session_ended"
    } else {
        "refused"
    };
    metrics::counter!("castellan_refresh_token_reuse_total", "outcome" => outcome).increment(1);
    ApiError::bad_request(
        "refresh_token_already_used",
        "Invalid Refresh Token: Already Used",
    )
}
