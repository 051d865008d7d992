//! Sessions: starting one, rotating its refresh tokens (with reuse
//! detection), minting access tokens and ending sessions. This is a plain
//! service, run in the caller's task: the order of one session's refreshes
//! is kept by the database (the row lock on PostgreSQL, the single writer on
//! SQLite), not by a mailbox. Every session ends here (`end`), inside the
//! transaction that ends it, so the `SessionManager`'s cache hears of it at
//! commit.

use std::sync::Arc;

use castellan_core::crypto::jwt::{AmrEntry, Claims};
use castellan_core::crypto::{random_base32, refresh};
use castellan_core::models::{AuditAction, Identity, RefreshToken, User, audit_payload};
use castellan_core::store::{self, LiveUser, SessionScope, Tx};
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::context::Ctx;
use crate::session_manager::SessionCache;

/// A session's tokens and the user they belong to.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: i64,
    /// Seconds the access token lives (GoTrue's `expires_in`).
    pub expires_in: i64,
    pub user: User,
    pub identities: Vec<Identity>,
    pub session_id: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    Global,
    Local,
    Others,
}

/// An audit entry to write with the change it describes.
pub type Audit = (AuditAction, Option<Value>);

/// Builds GoTrue's claims for a user and session.
pub fn claims_for(
    ctx: &Ctx,
    user: &User,
    session_id: Uuid,
    amr: Vec<AmrEntry>,
    now: i64,
) -> Claims {
    Claims {
        aud: user.aud.clone().unwrap_or_default(),
        exp: now + ctx.jwt.exp_seconds,
        iat: now,
        iss: ctx.jwt.issuer.clone(),
        sub: user.id.to_string(),
        email: user.email_str().to_string(),
        phone: user.phone_str().to_string(),
        app_metadata: user.app_metadata(),
        user_metadata: user.user_metadata(),
        role: user.role.clone().unwrap_or_default(),
        aal: castellan_core::crypto::jwt::aal(amr.iter().map(|a| a.method.as_str())).into(),
        amr,
        session_id: Some(session_id.to_string()),
        is_anonymous: user.is_anonymous,
    }
}

/// When a session below the user's highest possible level stops being
/// usable (`GOTRUE_SESSIONS_ALLOW_LOW_AAL`): `None` when that is never.
fn low_aal_deadline(
    ctx: &Ctx,
    user: &User,
    aal: &str,
    created: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let allow = ctx.config.sessions_allow_low_aal?;
    let could_be_aal2 = user.factors.iter().any(|f| f.status == "verified");
    (aal == "aal1" && could_be_aal2)
        .then(|| created.map(|c| c + chrono::Duration::from_std(allow).unwrap_or_default()))
        .flatten()
}

/// Tokens for a session read with its context (a refresh, an MFA verification).
pub(crate) fn grant_for(
    ctx: &Ctx,
    c: store::RefreshContext,
    refresh_token: String,
    now: DateTime<Utc>,
) -> ApiResult<TokenGrant> {
    let created = c.session.created_at;
    let amr = amr_entries(c.amr);
    grant(
        ctx,
        c.user,
        c.identities,
        (c.session.id, created),
        refresh_token,
        amr,
        now,
    )
}

/// Signs the access token; `session` is the session's id and start.
pub(crate) fn grant(
    ctx: &Ctx,
    user: User,
    identities: Vec<Identity>,
    session: (Uuid, Option<DateTime<Utc>>),
    refresh_token: String,
    amr: Vec<AmrEntry>,
    now: DateTime<Utc>,
) -> ApiResult<TokenGrant> {
    let (session_id, created) = session;
    let mut claims = claims_for(ctx, &user, session_id, amr, now.timestamp());
    // A low-level session of a user with a factor lives no longer than allowed.
    if let Some(deadline) = low_aal_deadline(ctx, &user, &claims.aal, created) {
        claims.exp = claims.exp.min(deadline.timestamp().max(claims.iat));
    }
    let access_token = ctx.jwt.sign(&claims)?;
    Ok(TokenGrant {
        access_token,
        refresh_token,
        expires_at: claims.exp,
        expires_in: claims.exp - claims.iat,
        user,
        identities,
        session_id,
    })
}

fn audit_payloads(user: &User, audits: &[Audit]) -> Vec<Value> {
    audits
        .iter()
        .map(|(action, traits)| audit_payload(user, *action, traits.clone()))
        .collect()
}

async fn issue(
    ctx: &Ctx,
    session_id: Uuid,
    mut user: User,
    method: &'static str,
    audits: &[Audit],
) -> ApiResult<TokenGrant> {
    let now = ctx.config.clock.now();
    // v2: the session's own key signs its tokens (stored sealed when
    // database encryption is on), and no row is written.
    let key = ctx.refresh_v2.then(refresh::new_key);
    let token = match &key {
        Some(k) => refresh::encode(k, session_id, 0).expect("a new key is base64url"),
        None => random_base32(12),
    };
    let stored = key.map(|k| ctx.config.db_encryption.seal(&session_id.to_string(), &k));
    let first = match &stored {
        Some(k) => store::FirstToken::V2Key(k),
        None => store::FirstToken::Legacy(&token),
    };
    let payloads = audit_payloads(&user, audits);
    let mut tx = ctx.store.begin().await?;
    // The user JSON lists the factors (auth-js reads them for the next level).
    let (identities, factors) = tx
        .start_session(&store::NewSession {
            id: session_id,
            user_id: user.id,
            method,
            refresh: first,
            audits: &payloads,
            now,
        })
        .await?;
    user.factors = factors;
    tx.commit().await?;
    user.last_sign_in_at = Some(now);
    user.updated_at = Some(now);
    let amr = vec![AmrEntry {
        method: method.into(),
        timestamp: now.timestamp(),
    }];
    grant(
        ctx,
        user,
        identities,
        (session_id, Some(now)),
        token,
        amr,
        now,
    )
}

pub(crate) fn not_found() -> ApiError {
    ApiError::bad_request(
        "refresh_token_not_found",
        "Invalid Refresh Token: Refresh Token Not Found",
    )
}

/// What to do with a presented refresh token, decided under the session lock.
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

fn decide(
    ctx: &Ctx,
    token: &RefreshToken,
    active: Option<RefreshToken>,
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
    let interval =
        chrono::Duration::from_std(ctx.config.refresh_token_reuse_interval).unwrap_or_default();
    match token.updated_at {
        Some(t) if now <= t + interval => Rotation::Fork,
        _ => Rotation::Reject,
    }
}

pub(crate) fn check_session_validity(
    ctx: &Ctx,
    s: &castellan_core::models::Session,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let expired = |m: &str| Err(ApiError::bad_request("session_expired", m.to_string()));
    if s.not_after.is_some_and(|t| now > t) {
        return expired("Invalid Refresh Token: Session Expired");
    }
    if let (Some(timebox), Some(created)) = (ctx.config.sessions_timebox, s.created_at)
        && now > created + chrono::Duration::from_std(timebox).unwrap_or_default()
    {
        return expired("Invalid Refresh Token: Session Expired");
    }
    if let Some(idle) = ctx.config.sessions_inactivity_timeout {
        let last = s.refreshed_at.map(|t| t.and_utc()).or(s.created_at);
        if last.is_some_and(|l| now > l + chrono::Duration::from_std(idle).unwrap_or_default()) {
            return expired("Invalid Refresh Token: Session Expired (Inactivity)");
        }
    }
    Ok(())
}

/// A refresh. The common case, an unrevoked token, is decided on an
/// unlocked read and written in one guarded step; when the guard finds the
/// token already revoked (a concurrent refresh of it won), or it was
/// revoked to begin with, the decision is taken again under the lock.
async fn refresh(ctx: &Ctx, cache: &SessionCache, presented: &str) -> ApiResult<TokenGrant> {
    if let Some(v2) = refresh::parse(presented) {
        return crate::refresh_v2::refresh(ctx, cache, v2).await;
    }
    let now = ctx.config.clock.now();
    let Some(c) = ctx.store.peek_refresh(presented).await? else {
        return Err(not_found());
    };
    let token = c.token.as_ref().ok_or_else(not_found)?;
    check_usable(ctx, &c, now)?;
    // A legacy token moves its session to v2 under the lock.
    if token.revoked == Some(true) || ctx.refresh_v2 {
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
    grant_for(ctx, c, child, now)
}

/// A banned user or an ended session refreshes nothing.
pub(crate) fn check_usable(
    ctx: &Ctx,
    c: &store::RefreshContext,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    if c.user.is_banned(now) {
        return Err(ApiError::bad_request(
            "user_banned",
            "Invalid Refresh Token: User Banned",
        ));
    }
    check_session_validity(ctx, &c.session, now)?;
    let aal = castellan_core::crypto::jwt::aal(c.amr.iter().map(|(m, _)| m.as_str()));
    if low_aal_deadline(ctx, &c.user, aal, c.session.created_at).is_some_and(|d| now > d) {
        return Err(ApiError::bad_request(
            "session_expired",
            "Invalid Refresh Token: Session Expired (Low AAL: User Needs MFA Verification)",
        ));
    }
    Ok(())
}

pub(crate) fn amr_entries(amr: Vec<(String, DateTime<Utc>)>) -> Vec<AmrEntry> {
    amr.into_iter()
        .map(|(method, t)| AmrEntry {
            method,
            timestamp: t.timestamp(),
        })
        .collect()
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
    let issued = match decide(ctx, &token, active, now) {
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
    tx.commit().await?;
    grant_for(ctx, c, issued, now)
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
        Some(stored) => (
            crate::refresh_v2::open_key(ctx, s.id, stored)?,
            stored.clone(),
        ),
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
        let key = crate::refresh_v2::open_key(ctx, s.id, stored)?;
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

/// Ends the sessions of `user` that `scope` names, inside `tx`: every session
/// ends here, so the cache hears of it when `tx` commits.
pub async fn end(tx: &mut Tx, user: Uuid, scope: SessionScope) -> ApiResult<u64> {
    Ok(tx.delete_sessions(user, scope).await?)
}

/// What handlers and services hold.
#[derive(Clone)]
pub struct Sessions {
    ctx: Arc<Ctx>,
    cache: SessionCache,
}

impl Sessions {
    pub fn new(ctx: Arc<Ctx>, cache: SessionCache) -> Self {
        Self { ctx, cache }
    }

    /// Starts a session for a user who just proved who they are.
    pub async fn issue(
        &self,
        user: User,
        method: &'static str,
        audits: Vec<Audit>,
    ) -> ApiResult<TokenGrant> {
        let grant = issue(&self.ctx, Uuid::new_v4(), user, method, &audits).await?;
        // Every successful sign-in, whatever its method, is counted here.
        metrics::counter!("castellan_signins_total", "method" => method, "outcome" => "ok")
            .increment(1);
        Ok(grant)
    }

    /// Rotates a refresh token.
    pub async fn refresh(&self, token: &str) -> ApiResult<TokenGrant> {
        // GoTrue's syntax rule for legacy tokens: at least 12 characters.
        if token.len() < 12 {
            return Err(ApiError::validation("Refresh token is not valid"));
        }
        let r = refresh(&self.ctx, &self.cache, token).await;
        let outcome = if r.is_ok() { "ok" } else { "refused" };
        metrics::counter!("castellan_refreshes_total", "outcome" => outcome).increment(1);
        r
    }

    /// `POST /logout`. A token without a session always logs out everywhere.
    pub async fn logout(
        &self,
        user: &User,
        session_id: Option<Uuid>,
        scope: LogoutScope,
    ) -> ApiResult<()> {
        let now = self.ctx.config.clock.now();
        let scope = match (scope, session_id) {
            (_, None) | (LogoutScope::Global, _) => SessionScope::All,
            (LogoutScope::Local, Some(s)) => SessionScope::Only(s),
            (LogoutScope::Others, Some(s)) => SessionScope::AllBut(s),
        };
        let mut tx = self.ctx.store.begin().await?;
        let audits = audit_payloads(user, &[(AuditAction::Logout, None)]);
        tx.insert_audits(&audits, now).await?;
        end(&mut tx, user.id, scope).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user and session an access token names, from the live-session
    /// cache (one store read on a miss).
    pub async fn live(
        &self,
        user: Uuid,
        session: Option<Uuid>,
    ) -> ApiResult<Option<Arc<LiveUser>>> {
        let store = &self.ctx.store;
        self.cache
            .get(user, session, || async move {
                Ok(store.live_user(user, session).await?)
            })
            .await
    }
}
