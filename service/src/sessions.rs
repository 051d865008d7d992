//! Sessions: starting one, minting access tokens, the live-session check
//! (asking the `SessionManager`) and ending sessions. Refreshing is
//! [`crate::refresh`]'s. Every session ends here (`end`), inside the
//! transaction that ends it, so the `SessionManager`'s cache hears of it at
//! commit.

use castellan_core::hooks::Hook;
use std::sync::Arc;

use castellan_core::crypto::jwt::{AmrEntry, Claims};
use castellan_core::crypto::{random_base32, refresh};
use castellan_core::models::{AuditAction, Identity, User, audit_payload};
use castellan_core::store::{self, LiveUser, SessionScope, Tx};
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::actors::session_manager::SessionCache;
use crate::context::Ctx;

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
    /// The scopes an OAuth client's session was granted (none for the user's own).
    pub scope: Option<String>,
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
        client_id: None,
        scope: None,
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

/// Tokens for a session read with its context (a refresh, an MFA
/// verification); `method` is how they were earned, as hooks are told.
pub(crate) async fn grant_for(
    ctx: &Ctx,
    c: store::RefreshContext,
    refresh_token: String,
    method: &str,
    now: DateTime<Utc>,
) -> ApiResult<TokenGrant> {
    grant_for_in(ctx, None, c, refresh_token, method, now).await
}

/// Commits `tx`, which wrote the session's new state, and mints its tokens:
/// a custom access token hook that is a PostgreSQL function runs inside the
/// transaction before it commits (GoTrue's place: it sees what the request
/// wrote, and its refusal rolls the request back); any other mints after.
pub(crate) async fn commit_and_grant(
    ctx: &Ctx,
    mut tx: Tx,
    c: store::RefreshContext,
    refresh_token: String,
    method: &str,
    now: DateTime<Utc>,
) -> ApiResult<TokenGrant> {
    if !crate::hooks::in_database(ctx, Hook::CustomAccessToken) {
        tx.commit().await?;
        return grant_for(ctx, c, refresh_token, method, now).await;
    }
    let grant = grant_for_in(ctx, Some(&mut tx), c, refresh_token, method, now).await?;
    tx.commit().await?;
    Ok(grant)
}

/// A transaction for a write whose tokens the custom access token hook
/// shapes from inside it (see [`commit_and_grant`]); `None` without such a
/// hook, the write then going its usual way.
pub(crate) async fn hook_transaction(ctx: &Ctx) -> ApiResult<Option<Tx>> {
    match crate::hooks::in_database(ctx, Hook::CustomAccessToken) {
        true => Ok(Some(ctx.store.begin().await?)),
        false => Ok(None),
    }
}

async fn grant_for_in(
    ctx: &Ctx,
    tx: Option<&mut Tx>,
    c: store::RefreshContext,
    refresh_token: String,
    method: &str,
    now: DateTime<Utc>,
) -> ApiResult<TokenGrant> {
    let session = Minting {
        id: c.session.id,
        created: c.session.created_at,
        client: c.session.oauth_client_id,
        scope: c.session.scopes,
    };
    let amr = amr_entries(c.amr);
    let minted = mint(ctx, tx, &c.user, &session, amr, method, now).await?;
    Ok(minted.grant(c.user, c.identities, session, refresh_token))
}

/// The session a token is minted for: its id and start, and the OAuth
/// client (and granted scopes) a session its authorization code started
/// belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Minting {
    pub id: Uuid,
    pub created: Option<DateTime<Utc>>,
    pub client: Option<Uuid>,
    pub scope: Option<String>,
}

impl Minting {
    fn first_party(id: Uuid, created: DateTime<Utc>) -> Self {
        Minting {
            id,
            created: Some(created),
            client: None,
            scope: None,
        }
    }
}

/// A signed access token and its times.
pub(crate) struct Minted {
    access_token: String,
    exp: i64,
    iat: i64,
}

impl Minted {
    fn grant(
        self,
        user: User,
        identities: Vec<Identity>,
        session: Minting,
        refresh_token: String,
    ) -> TokenGrant {
        TokenGrant {
            access_token: self.access_token,
            refresh_token,
            expires_at: self.exp,
            expires_in: self.exp - self.iat,
            user,
            identities,
            session_id: session.id,
            scope: session.scope,
        }
    }
}

/// The access token of `user`'s session: its claims, shaped by the custom
/// access token hook when it is on (a refusal is the answer), signed.
async fn mint(
    ctx: &Ctx,
    tx: Option<&mut Tx>,
    user: &User,
    session: &Minting,
    amr: Vec<AmrEntry>,
    method: &str,
    now: DateTime<Utc>,
) -> ApiResult<Minted> {
    let mut claims = claims_for(ctx, user, session.id, amr, now.timestamp());
    claims.client_id = session.client.map(|c| c.to_string());
    claims.scope = session.scope.clone();
    // A low-level session of a user with a factor lives no longer than allowed.
    if let Some(deadline) = low_aal_deadline(ctx, user, &claims.aal, session.created) {
        claims.exp = claims.exp.min(deadline.timestamp().max(claims.iat));
    }
    let access_token = match crate::hooks::on(ctx, Hook::CustomAccessToken) {
        false => ctx.jwt.sign(&claims)?,
        true => {
            let value =
                serde_json::to_value(&claims).map_err(|e| ApiError::internal("claims", e))?;
            let custom = crate::hooks::custom_access_token(ctx, tx, user.id, value, method).await?;
            ctx.jwt.sign(&custom)?
        }
    };
    // As GoTrue: the answer's times are the server's, whatever a hook set.
    Ok(Minted {
        access_token,
        exp: claims.exp,
        iat: claims.iat,
    })
}

fn audit_payloads(user: &User, audits: &[Audit]) -> Vec<Value> {
    audits
        .iter()
        .map(|(action, traits)| audit_payload(user, *action, traits.clone()))
        .collect()
}

/// What binds a new session to an OAuth client: the client, the scopes
/// granted, and the approved request whose code is being exchanged (claimed
/// in the session's own transaction, so a code starts one session at most).
pub struct OAuthBinding<'a> {
    pub client: Uuid,
    pub scope: &'a str,
    pub authorization: Uuid,
}

async fn issue(
    ctx: &Ctx,
    session_id: Uuid,
    mut user: User,
    (method, oauth): (&'static str, Option<&OAuthBinding<'_>>),
    audits: &[Audit],
) -> ApiResult<TokenGrant> {
    let now = ctx.config.clock.now();
    let minting = match oauth {
        None => Minting::first_party(session_id, now),
        Some(b) => Minting {
            client: Some(b.client),
            scope: Some(b.scope.to_string()),
            ..Minting::first_party(session_id, now)
        },
    };
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
    let amr = vec![AmrEntry {
        method: method.into(),
        timestamp: now.timestamp(),
    }];
    // With the custom access token hook over HTTP, the token first: a hook
    // that refuses it (or is slow) leaves nothing written and holds no
    // transaction open. Its claims read the user's factors (the aal1
    // deadline), read here for it. A PostgreSQL function hook runs inside
    // the transaction instead, once the session is written.
    let in_tx = crate::hooks::in_database(ctx, Hook::CustomAccessToken);
    let early = match crate::hooks::on(ctx, Hook::CustomAccessToken) && !in_tx {
        true => {
            user.factors = ctx.store.factors_of(user.id).await?;
            Some(mint(ctx, None, &user, &minting, amr.clone(), method, now).await?)
        }
        false => None,
    };
    let mut tx = ctx.store.begin().await?;
    if let Some(b) = oauth
        && !tx.claim_oauth_code(b.authorization, session_id).await?
    {
        return Err(crate::oauth_server::code_used());
    }
    // The user JSON lists the factors (auth-js reads them for the next level).
    let (identities, factors) = tx
        .start_session(&store::NewSession {
            id: session_id,
            user_id: user.id,
            method,
            refresh: first,
            audits: &payloads,
            now,
            oauth: oauth.map(|b| (b.client, b.scope)),
        })
        .await?;
    user.factors = factors;
    let inside = match in_tx {
        true => Some(
            mint(
                ctx,
                Some(&mut tx),
                &user,
                &minting,
                amr.clone(),
                method,
                now,
            )
            .await?,
        ),
        false => None,
    };
    tx.commit().await?;
    user.last_sign_in_at = Some(now);
    user.updated_at = Some(now);
    let minted = match early.or(inside) {
        Some(m) => m,
        None => mint(ctx, None, &user, &minting, amr, method, now).await?,
    };
    Ok(minted.grant(user, identities, minting, token))
}

pub(crate) fn not_found() -> ApiError {
    ApiError::bad_request(
        "refresh_token_not_found",
        "Invalid Refresh Token: Refresh Token Not Found",
    )
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
        let grant = issue(&self.ctx, Uuid::new_v4(), user, (method, None), &audits).await?;
        // Every successful sign-in, whatever its method, is counted here.
        metrics::counter!("castellan_signins_total", "method" => method, "outcome" => "ok")
            .increment(1);
        Ok(grant)
    }

    /// Starts the session an OAuth client's authorization code buys.
    pub async fn issue_oauth(
        &self,
        user: User,
        binding: &OAuthBinding<'_>,
        audits: Vec<Audit>,
    ) -> ApiResult<TokenGrant> {
        let method = "oauth_provider/authorization_code";
        let grant = issue(
            &self.ctx,
            Uuid::new_v4(),
            user,
            (method, Some(binding)),
            &audits,
        )
        .await?;
        metrics::counter!("castellan_signins_total", "method" => method, "outcome" => "ok")
            .increment(1);
        Ok(grant)
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
