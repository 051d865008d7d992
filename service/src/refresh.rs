//! Refreshing a session: the refresh-token grant in GoTrue's two token
//! formats, and the new token a session gets when its assurance level
//! rises. The rules are pure functions of what was read and the time
//! ([`legacy_step`], [`v2_step`]), tested row by row; the rest reads those
//! facts and writes what the step says. The order of one session's
//! refreshes is kept by the database (a guarded write, the row lock on
//! PostgreSQL, the single writer on SQLite), not by a mailbox.
//!
//! - A legacy token is a random string stored in `refresh_tokens`: an
//!   unrevoked one rotates into a child in one guarded write; a revoked one
//!   is decided again under the session's lock (a lost answer, a reuse
//!   within the interval, a reuse beyond it).
//! - A v2 token (GoTrue's stateless format) names its session and a counter,
//!   signed with the session's own key. The counter says what happened
//!   since: equal, the normal rotation; one ahead, the client lost the last
//!   answer and gets it again; further ahead, a reuse, allowed within the
//!   reuse interval of the last refresh (concurrent tabs) and otherwise the
//!   end of the session. The counter moves in one guarded write, so two
//!   refreshes of one token cannot both rotate: the loser reads again.
//!   The normal rotation is served from what this process's last refresh of
//!   the session left in the `SessionManager` (asked by message).

use std::sync::Arc;

use castellan_core::crypto::random_base32;
use castellan_core::crypto::refresh::{self, V2Token};
use castellan_core::hooks::Hook;
use castellan_core::models::{AuditAction, RefreshToken, User, audit_payload};
use castellan_core::store::{self, RefreshContext, SessionScope, Tx};
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::actors::session_manager::{RefreshEntry, SessionCache};
use crate::context::Ctx;
use crate::sessions::{
    TokenGrant, check_usable, commit_and_grant, end, grant_for, hook_transaction, not_found,
};

/// Reads of a moving counter before giving up (each lost race means
/// another refresh of the session succeeded in between).
const ATTEMPTS: usize = 8;

/// What handlers hold: the refresh-token grant.
#[derive(Clone)]
pub struct Refresher {
    ctx: Arc<Ctx>,
    cache: SessionCache,
}

impl Refresher {
    pub fn new(ctx: Arc<Ctx>, cache: SessionCache) -> Self {
        Self { ctx, cache }
    }

    /// Rotates a first-party session's refresh token (`POST /token`).
    pub async fn refresh(&self, token: &str) -> ApiResult<TokenGrant> {
        self.refresh_for(token, None).await
    }

    /// Rotates a refresh token presented by `client` (an authenticated OAuth
    /// client at `/oauth/token`, `None` at `/token`): a session an OAuth
    /// client's code started is refreshed by that client only, and a
    /// first-party session by no client.
    pub async fn refresh_for(&self, token: &str, client: Option<Uuid>) -> ApiResult<TokenGrant> {
        let r = match well_formed(token)? {
            Some(v2) => refresh_v2(&self.ctx, &self.cache, v2, client).await,
            None => refresh_legacy(&self.ctx, token, client).await,
        };
        let outcome = if r.is_ok() { "ok" } else { "refused" };
        metrics::counter!("castellan_refreshes_total", "outcome" => outcome).increment(1);
        r
    }
}

impl Refresher {
    /// The user, session and OAuth client of a refresh token this server
    /// issued and has not revoked, without rotating it; `None` for anything
    /// else (revocation answers every token alike).
    pub async fn session_of(&self, token: &str) -> ApiResult<Option<(Uuid, Uuid, Option<Uuid>)>> {
        let c = match well_formed(token) {
            Err(_) => return Ok(None),
            Ok(None) => match self.ctx.store.peek_refresh(token).await? {
                Some(c) if c.token.as_ref().is_some_and(|t| t.revoked != Some(true)) => c,
                _ => return Ok(None),
            },
            Ok(Some(v2)) => {
                let Some(c) = self.ctx.store.peek_session_refresh(v2.session_id).await? else {
                    return Ok(None);
                };
                let stored = c.session.refresh_token_hmac_key.as_deref();
                let key = match stored.map(|k| open_key(&self.ctx, c.session.id, k)) {
                    Some(Ok(key)) => key,
                    _ => return Ok(None),
                };
                if !v2.signed_by(&key) {
                    return Ok(None);
                }
                c
            }
        };
        Ok(Some((c.user.id, c.session.id, c.session.oauth_client_id)))
    }
}

/// GoTrue's syntax rules: a legacy token is 12 lowercase letters and
/// digits, anything longer a v2 token that parses (`Some`); else 400
/// `validation_failed`, before any lookup.
fn well_formed(token: &str) -> ApiResult<Option<V2Token>> {
    let legacy = |t: &str| {
        t.len() == 12
            && t.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if legacy(token) {
        return Ok(None);
    }
    match refresh::parse(token) {
        Some(v2) if token.len() > 12 => Ok(Some(v2)),
        _ => Err(ApiError::validation("Refresh token is not valid")),
    }
}

/// What to do with a presented legacy token, decided under the session lock.
#[derive(Debug, PartialEq)]
enum Rotation {
    /// Revoke it and issue a child.
    Rotate,
    /// A retry of a refresh whose answer was lost: hand back the active child.
    ReturnActive(RefreshToken),
    /// Reuse within the grace interval: fork a new child of the revoked token.
    Fork,
    /// Reuse outside the interval.
    Reject,
}

/// The legacy rules: `token` as presented, the session's `active` token
/// (read only when `token` is revoked), the reuse interval.
fn legacy_step(
    token: &RefreshToken,
    active: Option<RefreshToken>,
    interval: Duration,
    now: DateTime<Utc>,
) -> Rotation {
    if token.revoked != Some(true) {
        return Rotation::Rotate;
    }
    if let Some(active) = active
        && active.parent.is_some()
        && active.parent == token.token
    {
        return Rotation::ReturnActive(active);
    }
    match token.updated_at {
        Some(t) if now <= t + interval => Rotation::Fork,
        _ => Rotation::Reject,
    }
}

/// What a v2 token's counter, against its session's, says.
#[derive(Debug, PartialEq, Eq)]
enum V2Step {
    /// The current token: the counter moves to `to`.
    Rotate { to: i64 },
    /// An allowed reuse: the current token is handed out again.
    Again,
    /// A reuse outside the rules.
    Reused,
    /// A counter the session never reached.
    Ahead,
}

/// The v2 rules: the session's `current` counter, the `presented` one, the
/// session's last refresh (or start) and the reuse interval.
fn v2_step(
    current: i64,
    presented: i64,
    last: Option<DateTime<Utc>>,
    interval: Duration,
    now: DateTime<Utc>,
) -> V2Step {
    match current - presented {
        behind if behind < 0 => V2Step::Ahead,
        0 => V2Step::Rotate { to: current + 1 },
        // The token just before the current one: the client lost the answer.
        1 => V2Step::Again,
        _ if last.is_some_and(|l| (now - l).abs() < interval) => V2Step::Again,
        _ => V2Step::Reused,
    }
}

/// GoTrue's rule: an OAuth client's session is refreshed by that client
/// (authenticated), any other session by no client.
fn check_client(c: &RefreshContext, client: Option<Uuid>) -> ApiResult<()> {
    let refuse = |m: &str| Err(ApiError::oauth(400, "invalid_client", m.to_string()));
    match (c.session.oauth_client_id, client) {
        (None, None) => Ok(()),
        (Some(_), None) => refuse("Client authentication required for OAuth session"),
        (Some(s), Some(c)) if s == c => Ok(()),
        (Some(_), Some(_)) => refuse("Client does not match the session's OAuth client"),
        (None, Some(_)) => refuse("Client authentication not allowed for non-OAuth session"),
    }
}

fn reuse_interval(ctx: &Ctx) -> Duration {
    Duration::from_std(ctx.config.refresh_token_reuse_interval).unwrap_or_default()
}

/// A refresh. The common case, an unrevoked token, is decided on an
/// unlocked read and written in one guarded step; when the guard finds the
/// token already revoked (a concurrent refresh of it won), or it was
/// revoked to begin with, the decision is taken again under the lock.
async fn refresh_legacy(ctx: &Ctx, presented: &str, client: Option<Uuid>) -> ApiResult<TokenGrant> {
    let now = ctx.config.clock.now();
    let Some(c) = ctx.store.peek_refresh(presented).await? else {
        return Err(not_found());
    };
    let token = c.token.as_ref().ok_or_else(not_found)?;
    check_client(&c, client)?;
    check_usable(ctx, &c, now)?;
    // A legacy token moves its session to v2 under the lock; a function
    // hook shapes the token inside the locked path's transaction.
    let hooked = crate::hooks::in_database(ctx, Hook::CustomAccessToken);
    if token.revoked == Some(true) || ctx.refresh_v2 || hooked {
        return refresh_locked(ctx, presented, now).await;
    }
    let child = random_base32(12);
    let [refreshed, revoked] = rotation_audits(&c.user);
    let rotation = store::Rotation {
        session_id: c.session.id,
        user_id: c.user.id,
        revoke: Some(token.id),
        child: &child,
        parent: token.token.as_deref(),
        audits: [&refreshed, &revoked],
        now,
    };
    if !ctx.store.rotate_if_current(&rotation).await? {
        return refresh_locked(ctx, presented, now).await;
    }
    grant_for(ctx, c, child, "token_refresh", now).await
}

/// The decision under the session's lock: the rules for a token presented
/// again (a lost answer, reuse within the interval, reuse beyond it).
async fn refresh_locked(ctx: &Ctx, presented: &str, now: DateTime<Utc>) -> ApiResult<TokenGrant> {
    let mut tx = ctx.store.begin().await?;
    let Some(c) = tx.refresh_context(presented).await? else {
        return Err(not_found());
    };
    let session_id = c.session.id;
    let token = c.token.clone().ok_or_else(not_found)?;
    check_usable(ctx, &c, now)?;
    let active = if token.revoked == Some(true) {
        tx.active_refresh_token(session_id).await?
    } else {
        None
    };
    let issued = match legacy_step(&token, active, reuse_interval(ctx), now) {
        Rotation::ReturnActive(active) => {
            tx.touch_session(session_id, now).await?;
            active.token.unwrap_or_default()
        }
        Rotation::Reject => {
            if ctx.config.refresh_token_rotation_enabled {
                // The revocation is committed even though the request fails;
                // a session already on v2 tokens ends (as a v2 reuse does).
                let revoked = match c.session.refresh_token_hmac_key {
                    Some(_) => end(&mut tx, c.user.id, SessionScope::Only(session_id)).await?,
                    None => tx.revoke_session_tokens(session_id, now).await?,
                };
                tx.commit().await?;
                metrics::counter!("castellan_refresh_token_reuse_total", "outcome" => "family_revoked").increment(1);
                tracing::warn!(%session_id, revoked, "refresh token reused; session's tokens revoked");
            } else {
                metrics::counter!("castellan_refresh_token_reuse_total", "outcome" => "refused")
                    .increment(1);
            }
            return Err(ApiError::bad_request(
                "refresh_token_already_used",
                "Invalid Refresh Token: Already Used",
            ));
        }
        rotation => {
            let revoke = matches!(rotation, Rotation::Rotate).then_some(token.id);
            if ctx.refresh_v2 {
                upgrade_to_v2(ctx, &mut tx, &c, revoke, rotation_audits(&c.user), now).await?
            } else {
                record_legacy(&mut tx, &c, revoke, token.token.as_deref(), now).await?
            }
        }
    };
    commit_and_grant(ctx, tx, c, issued, "token_refresh", now).await
}

/// GoTrue's gradual upgrade: a legacy token is spent (revoked, unless it
/// already was) and answered with a v2 token; the session gets its key
/// (or keeps the one it has) and the next counter.
async fn upgrade_to_v2(
    ctx: &Ctx,
    tx: &mut Tx,
    c: &store::RefreshContext,
    revoke: Option<i64>,
    audits: [Value; 2],
    now: DateTime<Utc>,
) -> ApiResult<String> {
    let s = &c.session;
    let (key, stored) = match &s.refresh_token_hmac_key {
        Some(stored) => (open_key(ctx, s.id, stored)?, stored.clone()),
        None => {
            let key = refresh::new_key();
            let stored = ctx.config.db_encryption.seal(&s.id.to_string(), &key);
            (key, stored)
        }
    };
    let counter = s.refresh_token_counter.map_or(0, |n| n + 1);
    if let Some(id) = revoke {
        tx.revoke_refresh_token(id, now).await?;
    }
    tx.set_refresh_v2(s.id, &stored, counter).await?;
    tx.touch_session(s.id, now).await?;
    tx.insert_audits(&audits, now).await?;
    metrics::counter!("castellan_refresh_token_upgrades_total").increment(1);
    refresh::encode(&key, s.id, counter)
        .ok_or_else(|| ApiError::internal("refresh v2", "the session's key is not base64url"))
}

/// A new refresh token for a session whose assurance level rose (an MFA
/// verification), inside `tx`: a v2 session skips a counter, so the token
/// held before cannot be refreshed into the new level as "the last one";
/// a legacy session revokes its active token for a child, as a refresh does.
pub(crate) async fn reissue(
    ctx: &Ctx,
    tx: &mut Tx,
    c: &store::RefreshContext,
    now: DateTime<Utc>,
) -> ApiResult<String> {
    let s = &c.session;
    if let Some(stored) = &s.refresh_token_hmac_key {
        let key = open_key(ctx, s.id, stored)?;
        let counter = s.refresh_token_counter.unwrap_or(0) + 2;
        tx.set_refresh_v2(s.id, stored, counter).await?;
        return refresh::encode(&key, s.id, counter)
            .ok_or_else(|| ApiError::internal("refresh v2", "the session's key is not base64url"));
    }
    let active = tx.active_refresh_token(s.id).await?;
    let (revoke, parent) = match &active {
        Some(t) => (Some(t.id), t.token.as_deref()),
        None => (None, None),
    };
    record_legacy(tx, c, revoke, parent, now).await
}

/// The audit entries every rotation writes.
fn rotation_audits(user: &User) -> [Value; 2] {
    [
        audit_payload(user, AuditAction::TokenRefreshed, None),
        audit_payload(user, AuditAction::TokenRevoked, None),
    ]
}

/// A legacy rotation inside `tx`: `revoke` revoked and a new child of
/// `parent` issued, audited; the child.
async fn record_legacy(
    tx: &mut Tx,
    c: &store::RefreshContext,
    revoke: Option<i64>,
    parent: Option<&str>,
    now: DateTime<Utc>,
) -> ApiResult<String> {
    let child = random_base32(12);
    let [refreshed, revoked] = rotation_audits(&c.user);
    tx.record_rotation(&store::Rotation {
        session_id: c.session.id,
        user_id: c.user.id,
        revoke,
        child: &child,
        parent,
        audits: [&refreshed, &revoked],
        now,
    })
    .await?;
    Ok(child)
}

async fn refresh_v2(
    ctx: &Ctx,
    cache: &SessionCache,
    token: V2Token,
    client: Option<Uuid>,
) -> ApiResult<TokenGrant> {
    let looked = cache.refresh_entry(token.session_id).await;
    let since = looked.generation;
    if let Some(entry) = looked.entry
        && check_client(&entry.context, client).is_ok()
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
        check_client(&c, client)?;
        check_usable(ctx, &c, now)?;
        let current = c.session.refresh_token_counter.unwrap_or(0);
        let last = c
            .session
            .refreshed_at
            .map(|t| t.and_utc())
            .or(c.session.created_at);
        let to = match v2_step(current, token.counter, last, reuse_interval(ctx), now) {
            V2Step::Rotate { to } => to,
            V2Step::Again => current,
            V2Step::Reused => return Err(reused(ctx, &c).await),
            V2Step::Ahead => {
                return Err(ApiError::validation(
                    "Invalid Refresh Token: Not Issued By This Server",
                ));
            }
        };
        let mut tx = hook_transaction(ctx).await?;
        if !advance(ctx, tx.as_mut(), &c, current, to, now).await? {
            continue;
        }
        let issued = encode(&key, &c, to)?;
        let kept = (to == current + 1).then(|| rotated(&c, to, now));
        let grant = match tx {
            Some(tx) => commit_and_grant(ctx, tx, c, issued, "token_refresh", now).await?,
            None => grant_for(ctx, c, issued, "token_refresh", now).await?,
        };
        // Once written: a rotation a hook refused inside its transaction
        // never happened.
        if let Some(kept) = kept {
            cache.keep_refresh(since, kept, key.clone());
        }
        return Ok(grant);
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
    // A function hook shapes the token inside the write's transaction,
    // which the store's path opens.
    if crate::hooks::in_database(ctx, Hook::CustomAccessToken) {
        return Ok(None);
    }
    if token.counter != current
        || !token.signed_by(&e.key)
        || check_usable(ctx, &e.context, now).is_err()
    {
        return Ok(None);
    }
    if !advance(ctx, None, &e.context, current, current + 1, now).await? {
        cache.forget_refresh(token.session_id);
        return Ok(None);
    }
    let issued = encode(&e.key, &e.context, current + 1)?;
    let context = e.context.clone();
    cache.replace_refresh(e, rotated(&context, current + 1, now));
    grant_for(ctx, context, issued, "token_refresh", now)
        .await
        .map(Some)
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
    tx: Option<&mut Tx>,
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
    Ok(match tx {
        Some(tx) => tx.advance_refresh_counter(&advance).await?,
        None => ctx.store.advance_refresh_counter(&advance).await?,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, revoked: bool, parent: Option<&str>, at: DateTime<Utc>) -> RefreshToken {
        RefreshToken {
            id: 1,
            token: Some(name.into()),
            user_id: None,
            revoked: Some(revoked),
            created_at: Some(at),
            updated_at: Some(at),
            parent: parent.map(str::to_string),
            session_id: None,
        }
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_lookup() {
        for bad in [
            "",
            "short",
            "ABCDEFGHIJKL",
            "abcdefghij-1",
            "abcdefghijklm",
            "not-a-real-token-at-all",
        ] {
            assert!(well_formed(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(well_formed("abcdefghij12"), Ok(None)));
    }

    #[test]
    fn legacy_rules_row_by_row() {
        let t0 = Utc::now();
        let ten = Duration::seconds(10);
        let child = token("child", false, Some("a"), t0);
        let rows = [
            // (presented, active, interval, at, expected)
            (token("a", false, None, t0), None, ten, t0, Rotation::Rotate),
            (
                token("a", true, None, t0),
                Some(child.clone()),
                Duration::zero(),
                t0 + Duration::hours(1),
                Rotation::ReturnActive(child.clone()),
            ),
            (
                token("a", true, None, t0),
                Some(token("other", false, Some("b"), t0)),
                ten,
                t0 + Duration::seconds(10),
                Rotation::Fork,
            ),
            (
                token("a", true, None, t0),
                Some(token("other", false, Some("b"), t0)),
                ten,
                t0 + Duration::seconds(11),
                Rotation::Reject,
            ),
            (
                token("a", true, None, t0),
                None,
                Duration::zero(),
                t0 + Duration::seconds(1),
                Rotation::Reject,
            ),
        ];
        for (i, (presented, active, interval, now, expected)) in rows.into_iter().enumerate() {
            assert_eq!(
                legacy_step(&presented, active, interval, now),
                expected,
                "row {i}"
            );
        }
    }

    #[test]
    fn v2_rules_row_by_row() {
        let t0 = Utc::now();
        let ten = Duration::seconds(10);
        let rows = [
            // (current, presented, last refresh, interval, at, expected)
            (5, 5, Some(t0), ten, t0, V2Step::Rotate { to: 6 }),
            (0, 0, None, ten, t0, V2Step::Rotate { to: 1 }),
            (
                5,
                4,
                Some(t0),
                Duration::zero(),
                t0 + Duration::days(1),
                V2Step::Again,
            ),
            (
                5,
                3,
                Some(t0),
                ten,
                t0 + Duration::seconds(9),
                V2Step::Again,
            ),
            (
                5,
                3,
                Some(t0),
                ten,
                t0 + Duration::seconds(10),
                V2Step::Reused,
            ),
            (5, 3, None, ten, t0, V2Step::Reused),
            (5, 6, Some(t0), ten, t0, V2Step::Ahead),
        ];
        for (i, (current, presented, last, interval, now, expected)) in rows.into_iter().enumerate()
        {
            assert_eq!(
                v2_step(current, presented, last, interval, now),
                expected,
                "row {i}"
            );
        }
    }
}
