//! castellan as an OAuth 2.1 and OpenID Connect provider (GoTrue's "OAuth
//! server"): an app sends the browser to `/oauth/authorize`, the site's
//! consent page asks the signed-in user (`/oauth/authorizations/{id}`), the
//! app exchanges the code it gets for a session of its own (`/oauth/token`,
//! PKCE always), reads the user (`/oauth/userinfo`) and may revoke it.
//!
//! A code is single-use and kept only as its hash; its exchange starts a
//! session in the same transaction that claims it, so a replayed code is
//! known and ends the session the first exchange started (RFC 6749
//! §4.1.2). The sessions are ordinary sessions that name their client and
//! scopes: refreshed by that client only, ended when the user revokes the
//! grant or the client is deleted.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use castellan_core::models::{AuditAction, User, audit_payload};
use castellan_core::store::{Authorization, Grant, LiveSession, OAuthClient, SessionScope};
use castellan_core::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::context::Ctx;
use crate::oauth_clients::secret_hash;
use crate::refresh::Refresher;
use crate::sessions::{OAuthBinding, Sessions, TokenGrant};

/// GoTrue's scopes.
pub const SCOPES: [&str; 5] = ["openid", "profile", "email", "phone", "offline_access"];

/// The refusal of a code whose exchange already happened.
pub fn code_used() -> ApiError {
    grant_error("Authorization code has already been used")
}

fn grant_error(m: &str) -> ApiError {
    ApiError::oauth(400, "invalid_grant", m.to_string())
}

fn request_error(m: impl Into<String>) -> ApiError {
    ApiError::oauth(400, "invalid_request", m)
}

fn client_error(m: &str) -> ApiError {
    ApiError::oauth(401, "invalid_client", m.to_string())
}

fn not_found() -> ApiError {
    ApiError::not_found("oauth_authorization_not_found", "authorization not found")
}

fn scopes(s: &str) -> Vec<&str> {
    s.split(' ').filter(|s| !s.is_empty()).collect()
}

/// `/oauth/authorize`'s parameters, as sent (absent ones empty).
#[derive(Debug, Default)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub response_type: String,
    pub scope: String,
    pub state: String,
    pub resource: String,
    pub code_challenge: String,
    pub code_challenge_method: String,
    pub nonce: String,
}

/// Where `/oauth/authorize` sends the browser.
pub enum Authorized {
    /// The site's consent page.
    Consent(String),
    /// Back to the client with an error (its redirect URI was trusted).
    Refused(String),
}

/// What the consent page is shown, or where to go when an earlier consent
/// covers the request (GoTrue's auto-approval).
pub enum Details {
    Ask {
        authorization: Box<Authorization>,
        client: Box<OAuthClient>,
    },
    Approved(String),
}

/// A token request's client credentials and how they came.
#[derive(Debug, Default)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub method: &'static str,
}

/// `/oauth/token`'s parameters.
#[derive(Debug, Default)]
pub struct TokenRequest {
    pub grant_type: String,
    pub code: String,
    pub refresh_token: String,
    pub redirect_uri: String,
    pub code_verifier: String,
    pub resource: String,
}

/// A token response's parts.
pub struct Tokens {
    pub grant: TokenGrant,
    pub scope: String,
    pub id_token: Option<String>,
}

#[derive(Clone)]
pub struct OAuthServer {
    ctx: Arc<Ctx>,
    sessions: Sessions,
    refresher: Refresher,
}

impl OAuthServer {
    pub fn new(ctx: Arc<Ctx>, sessions: Sessions, refresher: Refresher) -> Self {
        Self {
            ctx,
            sessions,
            refresher,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.ctx.config.clock.now()
    }

    fn issuer(&self) -> Option<&str> {
        self.ctx.jwt.issuer.as_deref().filter(|s| !s.is_empty())
    }

    /// `url` with these query parameters added, and `iss` (RFC 9207) when
    /// castellan has an issuer.
    fn back_to(&self, url: &str, pairs: &[(&str, &str)]) -> String {
        let mut u = match url::Url::parse(url) {
            Ok(u) => u,
            Err(_) => return url.to_string(),
        };
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
                q.append_pair(k, v);
            }
            if let Some(iss) = self.issuer() {
                q.append_pair("iss", iss);
            }
        }
        u.to_string()
    }

    fn refused(&self, redirect_uri: &str, error: &str, description: &str, state: &str) -> String {
        let pairs = [
            ("error", error),
            ("error_description", description),
            ("state", state),
        ];
        self.back_to(redirect_uri, &pairs)
    }

    /// `GET /oauth/authorize`. Errors before the client and its redirect URI
    /// are known are answered here; after, they go back to the client.
    pub async fn authorize(&self, mut r: AuthorizeRequest) -> ApiResult<Authorized> {
        if r.client_id.is_empty() {
            return Err(ApiError::validation("client_id is required"));
        }
        if r.redirect_uri.is_empty() {
            return Err(ApiError::validation("redirect_uri is required"));
        }
        let missing = || ApiError::bad_request("oauth_client_not_found", "invalid client_id");
        let id = Uuid::parse_str(&r.client_id).map_err(|_| {
            ApiError::bad_request("oauth_client_not_found", "invalid client_id format")
        })?;
        let client = self.ctx.store.oauth_client(id).await?.ok_or_else(missing)?;
        // Exact string matching; a mismatch is never redirected to.
        if !client.redirect_uris().contains(&r.redirect_uri) {
            return Err(ApiError::validation("invalid redirect_uri"));
        }
        let cfg = self.cfg()?;
        if r.scope.is_empty() {
            r.scope = cfg.default_scope.clone();
        }
        if let Err((error, description)) = self.check_request(&client, &r) {
            let to = self.refused(&r.redirect_uri, error, &description, &r.state);
            return Ok(Authorized::Refused(to));
        }
        if cfg.authorization_path.is_empty() {
            let m = "oauth authorization path not configured";
            let to = self.refused(&r.redirect_uri, "server_error", m, &r.state);
            return Ok(Authorized::Refused(to));
        }
        let now = self.now();
        let ttl = chrono::Duration::from_std(cfg.authorization_ttl).unwrap_or_default();
        let method = r.code_challenge_method.to_ascii_lowercase();
        let some = |s: String| Some(s).filter(|s| !s.is_empty());
        let a = Authorization {
            id: Uuid::new_v4(),
            authorization_id: castellan_core::crypto::random_alphanumeric(32),
            client_id: client.id,
            user_id: None,
            redirect_uri: r.redirect_uri,
            scope: scopes(&r.scope).join(" "),
            state: some(r.state),
            resource: some(r.resource),
            code_challenge: some(r.code_challenge),
            code_challenge_method: some(method),
            status: "pending".into(),
            created_at: now,
            expires_at: now + ttl,
            nonce: some(r.nonce),
            castellan_auth_time: None,
            castellan_session_id: None,
        };
        let mut tx = self.ctx.store.begin().await?;
        tx.insert_oauth_authorization(&a).await?;
        tx.commit().await?;
        count("authorize", "ok");
        let base = self.ctx.config.site_url.trim_end_matches('/');
        let path = cfg.authorization_path.trim_start_matches('/');
        let page = format!("{base}/{path}?authorization_id={}", a.authorization_id);
        Ok(Authorized::Consent(page))
    }

    fn cfg(&self) -> ApiResult<&castellan_core::config::OAuthServerConfig> {
        self.ctx
            .config
            .oauth_server
            .as_ref()
            .ok_or_else(|| ApiError::not_found("feature_disabled", "OAuth server is disabled"))
    }

    /// The rest of a request's rules, as an OAuth error and its description.
    fn check_request(
        &self,
        client: &OAuthClient,
        r: &AuthorizeRequest,
    ) -> Result<(), (&'static str, String)> {
        let invalid = |m: &str| Err(("invalid_request", m.to_string()));
        if !r.response_type.is_empty() && r.response_type != "code" {
            return Err((
                "unsupported_response_type",
                "only response_type=code is supported".into(),
            ));
        }
        if !client
            .grant_types()
            .iter()
            .any(|g| g == "authorization_code")
        {
            return Err((
                "unauthorized_client",
                "the client may not use the authorization code grant".into(),
            ));
        }
        let requested = scopes(&r.scope);
        if requested.is_empty() {
            return Err(("invalid_scope", "scope parameter cannot be empty".into()));
        }
        if let Some(s) = requested.iter().find(|s| !SCOPES.contains(s)) {
            return Err(("invalid_scope", format!("unsupported scope: {s}")));
        }
        if requested.contains(&"openid") && !asymmetric(self.ctx.jwt.signing_alg()) {
            return Err((
                "invalid_scope",
                "openid needs an asymmetric signing key (GOTRUE_JWT_KEYS)".into(),
            ));
        }
        if let Err(e) = resource(&r.resource) {
            return invalid(e);
        }
        if r.code_challenge.is_empty() || r.code_challenge_method.is_empty() {
            return invalid("PKCE flow requires both code_challenge and code_challenge_method");
        }
        if let Err(e) =
            castellan_core::validate::pkce(Some(&r.code_challenge), Some(&r.code_challenge_method))
        {
            return invalid(&e.message);
        }
        // OAuth 2.1 §7.5.2: a public client cannot keep a plain challenge secret.
        if client.client_type == "public" && !r.code_challenge_method.eq_ignore_ascii_case("s256") {
            return invalid("public clients must use code_challenge_method S256");
        }
        if r.state.len() > 4096 || r.nonce.len() > 255 || r.scope.len() > 4096 {
            return invalid("state, nonce or scope is too long");
        }
        if r.state.contains('\0') || r.nonce.contains('\0') {
            return invalid("state and nonce cannot contain NUL");
        }
        Ok(())
    }

    /// `GET /oauth/authorizations/{id}`: the first signed-in user to open a
    /// request owns it; an earlier consent covering its scopes approves it.
    pub async fn details(
        &self,
        user: &User,
        session: Option<Uuid>,
        authorization_id: &str,
    ) -> ApiResult<Details> {
        well_formed(authorization_id)?;
        let mut tx = self.ctx.store.begin().await?;
        let mut a = self.pending(&mut tx, authorization_id).await?;
        let mut approve = false;
        match a.user_id {
            None => {
                tx.set_oauth_authorization_user(a.id, user.id).await?;
                a.user_id = Some(user.id);
                let consent = tx.active_oauth_consent(user.id, a.client_id).await?;
                approve = consent.is_some_and(|c| covers(&c, &a.scope));
            }
            Some(owner) if owner != user.id => return Err(not_found()),
            Some(_) => {}
        }
        if approve {
            let to = self.approve(&mut tx, &a, session).await?;
            tx.commit().await?;
            count("consent", "auto_approved");
            return Ok(Details::Approved(to));
        }
        tx.commit().await?;
        let client = self.ctx.store.oauth_client(a.client_id).await?;
        let client = client.ok_or_else(not_found)?;
        Ok(Details::Ask {
            authorization: Box::new(a),
            client: Box::new(client),
        })
    }

    /// `POST /oauth/authorizations/{id}/consent`: where the browser goes next.
    pub async fn consent(
        &self,
        user: &User,
        session: Option<Uuid>,
        authorization_id: &str,
        approve: bool,
    ) -> ApiResult<String> {
        well_formed(authorization_id)?;
        let mut tx = self.ctx.store.begin().await?;
        let a = self.pending(&mut tx, authorization_id).await.map_err(|e| {
            match e.code == "validation_failed" {
                true => e.with_message("authorization request is no longer pending"),
                false => e,
            }
        })?;
        if a.user_id != Some(user.id) {
            return Err(not_found());
        }
        let to = if approve {
            let to = self.approve(&mut tx, &a, session).await?;
            let granted = tx.active_oauth_consent(user.id, a.client_id).await?;
            let all = union(granted.as_deref().unwrap_or(""), &a.scope);
            tx.upsert_oauth_consent(user.id, a.client_id, &all, self.now())
                .await?;
            to
        } else {
            tx.deny_oauth_authorization(a.id).await?;
            let state = a.state.as_deref().unwrap_or("");
            self.refused(
                &a.redirect_uri,
                "access_denied",
                "User denied the request",
                state,
            )
        };
        tx.commit().await?;
        count("consent", if approve { "approved" } else { "denied" });
        Ok(to)
    }

    /// A request still waiting for its answer, locked. An expired one is
    /// not found (its time says so; the sweep removes it a day later).
    async fn pending(
        &self,
        tx: &mut castellan_core::store::Tx,
        authorization_id: &str,
    ) -> ApiResult<Authorization> {
        let a = tx.oauth_authorization_for_update(authorization_id).await?;
        let a = a.ok_or_else(not_found)?;
        if self.now() > a.expires_at {
            return Err(not_found());
        }
        if a.status != "pending" {
            return Err(ApiError::validation(
                "authorization request cannot be processed",
            ));
        }
        Ok(a)
    }

    /// Approves `a` with a new code (kept as its hash): the client's redirect.
    async fn approve(
        &self,
        tx: &mut castellan_core::store::Tx,
        a: &Authorization,
        session: Option<Uuid>,
    ) -> ApiResult<String> {
        let code = B64.encode(castellan_core::crypto::random_bytes::<32>());
        let auth_time = match session {
            Some(s) => self.ctx.store.session_auth_time(s).await?,
            None => None,
        };
        tx.approve_oauth_authorization(a.id, &secret_hash(&code), auth_time, self.now())
            .await?;
        let state = a.state.as_deref().unwrap_or("");
        Ok(self.back_to(&a.redirect_uri, &[("code", &code), ("state", state)]))
    }

    /// Authenticates a client at the token or revocation endpoint by the
    /// method it registered; a secret is compared by its hash in constant time.
    pub async fn client(&self, creds: &ClientCredentials) -> ApiResult<OAuthClient> {
        if creds.client_id.is_empty() {
            return Err(client_error("Client authentication required"));
        }
        let refused = || client_error("Invalid client credentials");
        let id = Uuid::parse_str(&creds.client_id).map_err(|_| refused())?;
        let client = self.ctx.store.oauth_client(id).await?.ok_or_else(refused)?;
        if client.token_endpoint_auth_method != creds.method {
            return Err(client_error(&format!(
                "invalid authentication method: client is registered for '{}' but '{}' was used",
                client.token_endpoint_auth_method, creds.method
            )));
        }
        if let Some(stored) = &client.client_secret_hash {
            let given = secret_hash(&creds.client_secret);
            if !castellan_core::crypto::secure_eq(given.as_bytes(), stored.as_bytes()) {
                return Err(refused());
            }
        }
        Ok(client)
    }

    /// `POST /oauth/token` for an authenticated client.
    pub async fn token(&self, client: &OAuthClient, r: TokenRequest) -> ApiResult<Tokens> {
        if r.grant_type.is_empty() {
            return Err(request_error("grant_type is required"));
        }
        if !["authorization_code", "refresh_token"].contains(&r.grant_type.as_str()) {
            let named = match r.grant_type.len() <= 64 {
                true => r.grant_type.as_str(),
                false => "(too long to repeat)",
            };
            let m = format!("Unsupported grant type: {named}");
            return Err(ApiError::oauth(400, "unsupported_grant_type", m));
        }
        if !client.grant_types().contains(&r.grant_type) {
            let m = format!("Client is not allowed to use grant type: {}", r.grant_type);
            return Err(ApiError::oauth(400, "unauthorized_client", m));
        }
        let r = match r.grant_type.as_str() {
            "authorization_code" => self.exchange(client, r).await,
            _ => self.refresh(client, &r.refresh_token).await,
        };
        let outcome = if r.is_ok() { "ok" } else { "refused" };
        count("token", outcome);
        r
    }

    async fn exchange(&self, client: &OAuthClient, r: TokenRequest) -> ApiResult<Tokens> {
        if r.code.is_empty() {
            return Err(request_error(
                "code is required for authorization_code grant",
            ));
        }
        let a = self
            .ctx
            .store
            .oauth_authorization_by_code(&secret_hash(&r.code))
            .await?;
        let a = a.ok_or_else(|| grant_error("Invalid authorization code"))?;
        // Another client's code is not its to replay (nor to end).
        if a.client_id != client.id {
            return Err(grant_error(
                "Authorization code was not issued for this client",
            ));
        }
        if let Some(session) = a.castellan_session_id {
            return Err(self.replayed(&a, session).await);
        }
        let user_id = self.check_exchange(&a, &r)?;
        let now = self.now();
        let user = self.ctx.store.user_by_id(user_id).await?;
        let user = user.ok_or_else(|| grant_error("User not found for authorization code"))?;
        if user.is_banned(now) {
            return Err(ApiError::oauth(400, "access_denied", "User is banned"));
        }
        let traits = json!({"provider_type": "oauth_provider_authorization_code", "client_id": client.id.to_string()});
        let binding = OAuthBinding {
            client: client.id,
            scope: &a.scope,
            authorization: a.id,
        };
        let audits = vec![(AuditAction::Login, Some(traits))];
        let grant = match self.sessions.issue_oauth(user, &binding, audits).await {
            Err(e) if e == code_used() => return Err(self.lost_race(&r.code).await),
            other => other?,
        };
        let id_token = match scopes(&a.scope).contains(&"openid") {
            true => Some(self.id_token(&grant, client, &a, now)?),
            false => None,
        };
        Ok(Tokens {
            grant,
            scope: a.scope,
            id_token,
        })
    }

    /// The code's other rules, checked before it is spent: its owner.
    fn check_exchange(&self, a: &Authorization, r: &TokenRequest) -> ApiResult<Uuid> {
        if a.status != "approved" {
            return Err(grant_error("Invalid authorization code"));
        }
        if self.now() > a.expires_at {
            return Err(grant_error("Authorization code has expired"));
        }
        if !r.resource.is_empty() && Some(&r.resource) != a.resource.as_ref() {
            return Err(grant_error(
                "Authorization code resource does not match the resource parameter",
            ));
        }
        if !r.redirect_uri.is_empty() && r.redirect_uri != a.redirect_uri {
            return Err(grant_error("Invalid redirect_uri"));
        }
        if let Some(challenge) = &a.code_challenge {
            if r.code_verifier.is_empty() {
                return Err(grant_error(
                    "PKCE verification failed: code_verifier is required when PKCE challenge is present",
                ));
            }
            let method = a.code_challenge_method.as_deref();
            if !crate::accounts::verifier_matches(method, challenge, &r.code_verifier) {
                return Err(grant_error(
                    "PKCE verification failed: code challenge does not match previously saved code verifier",
                ));
            }
        }
        a.user_id
            .ok_or_else(|| grant_error("Authorization code has no associated user"))
    }

    /// A code presented again: the session its first exchange started ends
    /// (RFC 6749 §4.1.2), and the request is refused.
    async fn replayed(&self, a: &Authorization, session: Uuid) -> ApiError {
        if let Some(user) = a.user_id {
            let ended = async {
                let mut tx = self.ctx.store.begin().await?;
                crate::sessions::end(&mut tx, user, SessionScope::Only(session)).await?;
                tx.commit().await?;
                Ok::<_, ApiError>(())
            };
            if let Err(e) = ended.await {
                return e;
            }
        }
        tracing::warn!(client_id = %a.client_id, %session, "OAuth authorization code replayed; its session ended");
        count("code_replay", "session_ended");
        code_used()
    }

    /// Two exchanges of one code at once: the other one claimed it (and
    /// has committed: the claim waited for it), so this is a replay too.
    async fn lost_race(&self, code: &str) -> ApiError {
        let store = &self.ctx.store;
        match store.oauth_authorization_by_code(&secret_hash(code)).await {
            Ok(Some(a)) => match a.castellan_session_id {
                Some(session) => self.replayed(&a, session).await,
                None => code_used(),
            },
            Ok(None) => code_used(),
            Err(e) => e.into(),
        }
    }

    async fn refresh(&self, client: &OAuthClient, token: &str) -> ApiResult<Tokens> {
        if token.is_empty() {
            return Err(request_error(
                "refresh_token is required for refresh_token grant",
            ));
        }
        let grant = self
            .refresher
            .refresh_for(token, Some(client.id))
            .await
            .map_err(as_grant_error)?;
        Ok(Tokens {
            scope: grant.scope.clone().unwrap_or_default(),
            grant,
            id_token: None,
        })
    }

    /// OpenID Connect's ID token for a code's session: the client is its
    /// audience; the claims are the granted scopes'.
    fn id_token(
        &self,
        grant: &TokenGrant,
        client: &OAuthClient,
        a: &Authorization,
        now: DateTime<Utc>,
    ) -> ApiResult<String> {
        let alg = self.ctx.jwt.signing_alg();
        if !asymmetric(alg) {
            return Err(ApiError::internal(
                "id token",
                "HS256 is not supported for ID token signing",
            ));
        }
        let user = &grant.user;
        let auth_time = a
            .castellan_auth_time
            .or(user.last_sign_in_at)
            .unwrap_or(now);
        let mut claims = Map::new();
        let iat = now.timestamp();
        claims.insert("iss".into(), json!(self.issuer().unwrap_or_default()));
        claims.insert("sub".into(), json!(user.id.to_string()));
        claims.insert("aud".into(), json!(client.id.to_string()));
        claims.insert("iat".into(), json!(iat));
        claims.insert("exp".into(), json!(iat + 3600));
        claims.insert("auth_time".into(), json!(auth_time.timestamp()));
        claims.insert("client_id".into(), json!(client.id.to_string()));
        claims.insert("at_hash".into(), json!(at_hash(alg, &grant.access_token)));
        if let Some(nonce) = &a.nonce {
            claims.insert("nonce".into(), json!(nonce));
        }
        scoped_claims(&mut claims, user, &scopes(&a.scope), false);
        self.ctx.jwt.sign(&Value::Object(claims))
    }

    /// `GET /oauth/userinfo`: the claims the session's scopes allow (only
    /// `sub` for a first-party session, as GoTrue answers).
    pub fn userinfo(&self, user: &User, session: Option<&LiveSession>) -> Value {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(user.id.to_string()));
        if let Some(LiveSession {
            oauth_client_id: Some(_),
            scopes: Some(scope),
            ..
        }) = session
        {
            scoped_claims(&mut claims, user, &scopes(scope), true);
        }
        Value::Object(claims)
    }

    /// `GET /user/oauth/grants`.
    pub async fn grants(&self, user: &User) -> ApiResult<Vec<Grant>> {
        Ok(self.ctx.store.oauth_grants(user.id).await?)
    }

    /// `DELETE /user/oauth/grants?client_id=`: the consent is revoked and
    /// every session the client holds for the user ends.
    pub async fn revoke_grant(&self, user: &User, client_id: &str) -> ApiResult<()> {
        if client_id.is_empty() {
            return Err(ApiError::validation(
                "client_id query parameter is required",
            ));
        }
        let client = Uuid::parse_str(client_id)
            .map_err(|_| ApiError::validation("invalid client_id format"))?;
        let now = self.now();
        let mut tx = self.ctx.store.begin().await?;
        // Codes not yet exchanged go first: an exchange under way holds its
        // request, so this waits for it and the session it starts is seen below.
        tx.drop_open_oauth_authorizations(Some(user.id), client)
            .await?;
        if !tx.revoke_oauth_consent(user.id, client, now).await? {
            return Err(ApiError::not_found(
                "oauth_consent_not_found",
                "No active grant found for this client",
            ));
        }
        crate::sessions::end(&mut tx, user.id, SessionScope::OfClient(client)).await?;
        let traits = json!({"oauth_client_id": client.to_string(), "action": "revoke_oauth_grant"});
        let audit = audit_payload(user, AuditAction::TokenRevoked, Some(traits));
        tx.insert_audits(&[audit], now).await?;
        tx.commit().await?;
        count("grant_revoked", "ok");
        Ok(())
    }

    /// `POST /oauth/revoke` (RFC 7009): a refresh or access token of this
    /// client's ends its session. Anything else (unknown, malformed,
    /// another client's) is answered the same, and nothing changes.
    pub async fn revoke(&self, client: &OAuthClient, token: &str) -> ApiResult<()> {
        if token.is_empty() {
            return Err(request_error("token is required"));
        }
        let session = match self.refresher.session_of(token).await? {
            Some(found) => Some(found),
            None => self.access_token_session(token),
        };
        let Some((user, session, owner)) = session else {
            count("revoke", "unknown");
            return Ok(());
        };
        if owner != Some(client.id) {
            count("revoke", "not_the_clients");
            return Ok(());
        }
        let mut tx = self.ctx.store.begin().await?;
        crate::sessions::end(&mut tx, user, SessionScope::Only(session)).await?;
        tx.commit().await?;
        count("revoke", "ok");
        Ok(())
    }

    /// The user, session and client an access token of castellan's names.
    fn access_token_session(&self, token: &str) -> Option<(Uuid, Uuid, Option<Uuid>)> {
        #[derive(serde::Deserialize)]
        struct Named {
            sub: Option<String>,
            session_id: Option<String>,
            client_id: Option<String>,
        }
        let now = self.now().timestamp();
        self.ctx.jwt.verify(token, now).ok()?;
        let payload = token.split('.').nth(1)?;
        let named: Named = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        let parse = |s: Option<String>| s.and_then(|s| Uuid::parse_str(&s).ok());
        Some((
            parse(named.sub)?,
            parse(named.session_id)?,
            parse(named.client_id),
        ))
    }
}

/// RFC 6749 §2.3.1's HTTP Basic credentials: base64 of the form-encoded
/// client id and secret, joined by a colon.
pub fn basic_credentials(encoded: &str) -> ApiResult<ClientCredentials> {
    let refused = || client_error("invalid basic auth encoding");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| refused())?;
    let text = String::from_utf8(decoded).map_err(|_| refused())?;
    let (id, secret) = text.split_once(':').ok_or_else(refused)?;
    let decode = |s: &str| -> String {
        url::form_urlencoded::parse(s.as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default()
    };
    Ok(ClientCredentials {
        client_id: decode(id),
        client_secret: decode(secret),
        method: "client_secret_basic",
    })
}

/// A first-party error of the refresh grant, as OAuth says it.
fn as_grant_error(e: ApiError) -> ApiError {
    match e.oauth || e.status >= 500 {
        true => e,
        false => ApiError::oauth(400, "invalid_grant", e.message),
    }
}

fn count(op: &'static str, outcome: &'static str) {
    metrics::counter!("castellan_oauth_server_total", "op" => op, "outcome" => outcome)
        .increment(1);
}

fn asymmetric(alg: jsonwebtoken::Algorithm) -> bool {
    !matches!(
        alg,
        jsonwebtoken::Algorithm::HS256
            | jsonwebtoken::Algorithm::HS384
            | jsonwebtoken::Algorithm::HS512
    )
}

/// OpenID Connect's `at_hash`: the left half of the access token's hash by
/// the signing algorithm's hash function, base64url.
fn at_hash(alg: jsonwebtoken::Algorithm, access_token: &str) -> String {
    use jsonwebtoken::Algorithm::*;
    use sha2::Digest;
    let digest: Vec<u8> = match alg {
        RS384 | ES384 | PS384 | HS384 => sha2::Sha384::digest(access_token).to_vec(),
        RS512 | PS512 | HS512 | EdDSA => sha2::Sha512::digest(access_token).to_vec(),
        _ => sha2::Sha256::digest(access_token).to_vec(),
    };
    B64.encode(&digest[..digest.len() / 2])
}

/// The claims the `email`, `phone` and `profile` scopes allow; `userinfo`
/// adds GoTrue's names beside OpenID Connect's.
fn scoped_claims(claims: &mut Map<String, Value>, user: &User, granted: &[&str], userinfo: bool) {
    let email = user.email_str();
    let phone = user.phone_str();
    if granted.contains(&"email") {
        if !email.is_empty() || !userinfo {
            claims.insert("email".into(), json!(email));
        }
        claims.insert(
            "email_verified".into(),
            json!(user.email_confirmed_at.is_some()),
        );
    }
    if granted.contains(&"phone") {
        claims.insert("phone_number".into(), json!(phone));
        claims.insert(
            "phone_number_verified".into(),
            json!(user.phone_confirmed_at.is_some()),
        );
        if userinfo {
            claims.insert("phone".into(), json!(phone));
            claims.insert(
                "phone_verified".into(),
                json!(user.phone_confirmed_at.is_some()),
            );
        }
    }
    if granted.contains(&"profile") {
        let meta = user.user_metadata();
        let text = |k: &str| {
            meta.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        if let Some(name) = text("name").or(Some(email).filter(|e| !e.is_empty())) {
            claims.insert("name".into(), json!(name));
        }
        if let Some(p) = text("picture").or(text("avatar_url")) {
            claims.insert("picture".into(), json!(p));
        }
        if let Some(u) = text("preferred_username").or(text("username")) {
            claims.insert("preferred_username".into(), json!(u));
        }
        if let Some(t) = user.updated_at {
            claims.insert("updated_at".into(), json!(t.timestamp()));
        }
        if userinfo {
            claims.insert("user_metadata".into(), meta);
        }
    }
}

/// RFC 8707: an absolute URI without fragment or query (empty: none).
fn resource(r: &str) -> Result<(), &'static str> {
    if r.is_empty() {
        return Ok(());
    }
    let u = url::Url::parse(r).map_err(|_| "resource must be an absolute URI")?;
    if u.fragment().is_some() {
        return Err("resource must not include a fragment component");
    }
    if u.query().is_some() {
        return Err("resource must not include a query component");
    }
    if r.len() > 2048 {
        return Err("resource cannot exceed 2048 characters");
    }
    Ok(())
}

/// An authorization id as castellan makes them (letters and digits);
/// anything else is not found without a lookup.
fn well_formed(authorization_id: &str) -> ApiResult<()> {
    let ok = !authorization_id.is_empty()
        && authorization_id.len() <= 64
        && authorization_id.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(()).ok_or_else(not_found)
}

/// Whether an earlier consent's scopes cover every requested one.
fn covers(granted: &str, requested: &str) -> bool {
    let granted = scopes(granted);
    scopes(requested).iter().all(|s| granted.contains(s))
}

/// Both scope lists, each scope once, in order.
fn union(a: &str, b: &str) -> String {
    let mut all: Vec<&str> = scopes(a);
    for s in scopes(b) {
        if !all.contains(&s) {
            all.push(s);
        }
    }
    all.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consents_cover_and_merge_scopes() {
        assert!(covers("openid email profile", "email openid"));
        assert!(!covers("email", "email phone"));
        assert_eq!(union("email openid", "openid phone"), "email openid phone");
    }

    #[test]
    fn resources_follow_rfc_8707() {
        assert!(resource("").is_ok());
        assert!(resource("https://api.example.com/v1").is_ok());
        assert!(resource("/relative").is_err());
        assert!(resource("https://api.example.com/#frag").is_err());
        assert!(resource("https://api.example.com/?q=1").is_err());
    }

    #[test]
    fn at_hash_is_the_left_half_of_the_token_hash() {
        // Computed apart: base64url(sha256(token)[..16]) with Python's hashlib.
        assert_eq!(
            at_hash(
                jsonwebtoken::Algorithm::RS256,
                "jHkWEdUXMU1BwAsC4vtUsZwnNgCATg"
            ),
            "ixsuzcVEq9R1EKI4atYWQA"
        );
        assert_eq!(at_hash(jsonwebtoken::Algorithm::EdDSA, "t").len(), 43);
    }
}
