//! External sign-in: the OAuth round trip (`/authorize` → provider →
//! `/callback`) and the linking decision, in one place, with GoTrue's
//! rules: a returning identity signs in; a *verified* provider email that
//! exactly one user holds links to that user; otherwise a user is made. An
//! unconfirmed account claimed this way loses its other identities and its
//! password (GoTrue's defence against pre-account takeover), and an
//! unverified provider email must be confirmed by mail first.

use crate::hooks;
use castellan_core::hooks::Hook;
use std::sync::Arc;

use castellan_core::models::{AuditAction, Identity, Pkce, User, audit_payload};
use castellan_core::oauth::{ExpectedIssuer, ExternalUser};
use castellan_core::store::{NewOAuthFlow, NewUser, OAuthFlow, TokenType, Tx};
use castellan_core::{ApiError, ApiResult};
use castellan_jobs::EmailKind;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::context::Ctx;
use crate::otp::{OtpIssuer, SendRequest};
use crate::providers::{Configured, ProviderBroker, ProviderError, Returned, SignedIn};
use crate::sessions::{Sessions, TokenGrant};

/// `GET /authorize`, as the handler parsed it.
pub struct Authorize {
    pub provider: String,
    pub scopes: Option<String>,
    /// The request's other parameters, passed on to the provider.
    pub params: Vec<(String, String)>,
    /// Where the round trip ends (already checked against the allow list).
    pub redirect_to: String,
    pub pkce: Option<Pkce>,
    /// Manual linking: the signed-in user the identity joins.
    pub linking_target: Option<Uuid>,
    /// `invite_token`: the invitation (its link's token hash) the sign-in accepts.
    pub invite_token: Option<String>,
}

/// `POST /token?grant_type=id_token`, as the handler parsed it.
#[derive(Debug, Default)]
pub struct IdTokenGrant {
    pub id_token: String,
    pub nonce: String,
    pub provider: String,
    pub client_id: String,
    pub issuer: String,
    /// `link_identity`: the signed-in user the identity joins.
    pub linking_target: Option<Uuid>,
}

/// The `id_token` grant's refusals: GoTrue's OAuth-shaped ones for the
/// token's own checks, ordinary ones otherwise.
#[derive(Debug)]
pub enum IdTokenRefusal {
    OAuth {
        error: &'static str,
        description: String,
    },
    Api(ApiError),
}

impl From<ApiError> for IdTokenRefusal {
    fn from(e: ApiError) -> Self {
        IdTokenRefusal::Api(e)
    }
}

fn invalid(description: impl Into<String>) -> IdTokenRefusal {
    IdTokenRefusal::OAuth {
        error: "invalid request",
        description: description.into(),
    }
}

/// `GET|POST /callback`, as the handler parsed it.
pub struct Callback {
    pub state: Option<String>,
    /// OAuth 2.0's `code`, or OAuth 1.0a's `oauth_verifier`.
    pub code: Option<String>,
    /// OAuth 1.0a's `oauth_token`.
    pub request_token: Option<String>,
    /// The provider's own `error` and `error_description`.
    pub error: Option<(String, String)>,
}

/// How a round trip ended, and where the browser goes.
pub enum Landing {
    /// Tokens in the fragment, with the provider's.
    Session {
        grant: Box<TokenGrant>,
        provider_token: String,
        provider_refresh_token: String,
    },
    /// A code for `/token?grant_type=pkce`.
    Code(String),
}

/// A refusal, and where to send the browser with it.
pub struct Refused {
    pub to: String,
    pub error: CallbackError,
    /// Refused before the flow state was read (missing, invalid, used):
    /// GoTrue answers these 303 See Other, the others 302.
    pub before_state: bool,
}

pub enum CallbackError {
    /// One of ours, with its code.
    Api(ApiError),
    /// The provider's `error` passed on.
    Provider { error: String, description: String },
}

/// Whose identity a sign-in settles: the provider, the audience, and
/// the signed-in user it joins when linking.
pub(crate) struct Whose<'a> {
    pub(crate) provider: &'a str,
    pub(crate) aud: &'a str,
    pub(crate) linking_target: Option<Uuid>,
    /// An invitation the sign-in accepts.
    pub(crate) invite: Option<&'a str>,
    pub(crate) email_optional: bool,
    /// The id a user made by this sign-in takes (so the hooks asked before
    /// and after see one user).
    pub(crate) new_id: Uuid,
}

/// An unverified provider email: the user must confirm it by mail first.
pub(crate) struct Unverified {
    user: User,
    provider: String,
    email: Option<String>,
}

impl Unverified {
    pub(crate) async fn answer(self, external: &External) -> ApiError {
        external
            .needs_verification(&self.user, &self.provider, self.email)
            .await
    }
}

/// The linking decision.
enum Decision {
    /// This provider knows this user already.
    Exists { user: User, identity: Identity },
    /// A verified email one user holds: the identity joins that user.
    Link(User),
    /// A new user, with this email (none when it is unverified and taken).
    Create(Option<String>),
}

#[derive(Clone)]
pub struct External {
    pub(crate) ctx: Arc<Ctx>,
    broker: ProviderBroker,
    pub(crate) sessions: Sessions,
    otp: OtpIssuer,
}

/// GoTrue's answer for a provider it cannot use: enabled without what it
/// needs (`why`), one of its providers left off, or one it does not know.
fn unsupported(name: &str, why: Option<&str>) -> ApiError {
    let known = castellan_core::config::gotrue_provider(name);
    ApiError::validation(match why {
        Some(why) => format!("Unsupported provider: {why}"),
        None if known => "Unsupported provider: provider is not enabled".into(),
        None => format!("Unsupported provider: Provider {name} could not be found"),
    })
}

fn provider_failed(e: ProviderError) -> ApiError {
    match e {
        // A bad, used or expired code: the request's fault, not ours.
        ProviderError::Refused(m) => ApiError::bad_request(
            "bad_oauth_callback",
            format!("Unable to exchange external code: {m}"),
        ),
        ProviderError::Unavailable(m) => ApiError::new(
            503,
            "unexpected_failure",
            format!("The provider could not be reached: {m}"),
        ),
    }
}

/// `/authorize` could not make the provider's URL: OAuth 1.0a's request token
/// failed, the provider down or refusing our credentials (a configuration fault).
fn authorize_failed(e: ProviderError) -> ApiError {
    match e {
        ProviderError::Refused(m) => ApiError::new(
            500,
            "unexpected_failure",
            format!("The provider refused a request token: {m}"),
        ),
        ProviderError::Unavailable(m) => ApiError::new(
            503,
            "unexpected_failure",
            format!("The provider could not be reached: {m}"),
        ),
    }
}

impl External {
    pub fn new(ctx: Arc<Ctx>, broker: ProviderBroker, sessions: Sessions, otp: OtpIssuer) -> Self {
        Self {
            ctx,
            broker,
            sessions,
            otp,
        }
    }

    pub fn broker(&self) -> &ProviderBroker {
        &self.broker
    }

    /// `GET /authorize`: the provider's URL, with a flow state as `state`.
    pub async fn authorize(&self, req: Authorize) -> ApiResult<String> {
        let name = req.provider.to_ascii_lowercase();
        let p = self
            .broker
            .get(&name)
            .ok_or_else(|| unsupported(&name, self.broker.unusable(&name)))?;
        if let Some(t) = &req.invite_token
            && self.ctx.store.token_owner(t).await?.is_none()
        {
            return Err(ApiError::not_found(
                "user_not_found",
                "User identified by token not found",
            ));
        }
        let id = Uuid::new_v4();
        let (url, kept) = self
            .broker
            .authorize_url(p, &id.to_string(), req.scopes.as_deref(), &req.params)
            .await
            .map_err(authorize_failed)?;
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        let client_state = match kept {
            Some(v) => {
                let cs = Uuid::new_v4();
                tx.insert_client_state(cs, &name, &v, now).await?;
                Some(cs)
            }
            None => None,
        };
        tx.insert_oauth_flow(&NewOAuthFlow {
            id,
            provider: &name,
            pkce: req
                .pkce
                .as_ref()
                .map(|p| (p.challenge.as_str(), p.method.as_str())),
            referrer: &req.redirect_to,
            linking_target: req.linking_target,
            invite_token: req.invite_token.as_deref(),
            email_optional: p.config.email_optional,
            client_state,
            now,
        })
        .await?;
        tx.commit().await?;
        metrics::counter!("castellan_oauth_authorize_total", "provider" => p.description.name)
            .increment(1);
        Ok(url)
    }

    /// Where a round trip ends: GoTrue's external redirect, else the flow
    /// state's referrer, else the site.
    fn landing(&self, flow: Option<&OAuthFlow>) -> String {
        let cfg = &self.ctx.config;
        cfg.external
            .redirect_url
            .clone()
            .or_else(|| {
                flow.and_then(|f| f.referrer.clone())
                    .filter(|r| !r.is_empty())
            })
            .unwrap_or_else(|| cfg.site_url.clone())
    }

    /// `GET|POST /callback`.
    pub async fn callback(&self, c: Callback, aud: &str) -> Result<(Landing, String), Refused> {
        let flow = match self.load_flow(c.state.as_deref()).await {
            Ok(f) => f,
            Err(e) => {
                return Err(Refused {
                    to: self.landing(None),
                    error: CallbackError::Api(e),
                    before_state: true,
                });
            }
        };
        let to = self.landing(Some(&flow));
        let provider = flow.provider_type.clone();
        let r = self.finish(flow, c, aud).await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(CallbackError::Api(e)) => e.code,
            Err(CallbackError::Provider { .. }) => "provider_error",
        };
        if let Some(p) = self.broker.get(&provider) {
            metrics::counter!("castellan_oauth_callbacks_total", "provider" => p.description.name, "outcome" => outcome)
                .increment(1);
        }
        match r {
            Ok(landing) => Ok((landing, to)),
            Err(error) => Err(Refused {
                to,
                error,
                before_state: false,
            }),
        }
    }

    /// The flow state a callback's `state` names, if it may still be used.
    async fn load_flow(&self, state: Option<&str>) -> ApiResult<OAuthFlow> {
        let state = state.filter(|s| !s.is_empty()).ok_or_else(|| {
            ApiError::bad_request("bad_oauth_callback", "OAuth state parameter missing")
        })?;
        let id = Uuid::parse_str(state).map_err(|_| {
            ApiError::bad_request("bad_oauth_state", "OAuth state parameter is invalid")
        })?;
        let mut tx = self.ctx.store.begin().await?;
        let flow = tx.oauth_flow(id).await?;
        tx.commit().await?;
        let flow = flow.ok_or_else(|| {
            ApiError::bad_request("bad_oauth_state", "OAuth state not found or expired")
        })?;
        let expiry =
            chrono::Duration::from_std(self.ctx.config.flow_state_expiry).unwrap_or_default();
        let now = self.ctx.config.clock.now();
        if flow.created_at.is_none_or(|t| now > t + expiry) {
            return Err(ApiError::bad_request(
                "bad_oauth_state",
                "OAuth state has expired",
            ));
        }
        if flow.pkce() && flow.user_id.is_some() {
            return Err(ApiError::bad_request(
                "flow_state_already_used",
                "State has already been used",
            ));
        }
        Ok(flow)
    }

    async fn finish(
        &self,
        flow: OAuthFlow,
        c: Callback,
        aud: &str,
    ) -> Result<Landing, CallbackError> {
        if let Some((error, description)) = c.error {
            return Err(CallbackError::Provider { error, description });
        }
        let code = c.code.filter(|s| !s.is_empty()).ok_or_else(|| {
            ApiError::bad_request("bad_oauth_callback", "Authorization code missing")
        })?;
        let p = self.broker.get(&flow.provider_type).ok_or_else(|| {
            let why = self.broker.unusable(&flow.provider_type);
            unsupported(&flow.provider_type, why)
        })?;
        let kept = match flow.oauth_client_state_id {
            Some(cs) => {
                let mut tx = self.ctx.store.begin().await.map_err(ApiError::from)?;
                let v = tx.take_client_state(cs).await.map_err(ApiError::from)?;
                tx.commit().await.map_err(ApiError::from)?;
                Some(v.ok_or_else(|| {
                    ApiError::bad_request("bad_oauth_state", "OAuth PKCE code verifier missing")
                })?)
            }
            None => None,
        };
        let signed = self
            .broker
            .sign_in(
                p,
                Returned {
                    code,
                    request_token: c.request_token,
                },
                kept,
            )
            .await
            .map_err(provider_failed)?;
        if signed.user.email().is_none() && !flow.email_optional {
            return Err(ApiError::new(
                500,
                "unexpected_failure",
                "Error getting user email from external provider",
            )
            .into());
        }
        Ok(self.sign_in(flow, signed, aud).await?)
    }

    /// The user the identity belongs to (found, linked or made), then the
    /// session or the PKCE code.
    async fn sign_in(&self, flow: OAuthFlow, signed: SignedIn, aud: &str) -> ApiResult<Landing> {
        let provider = flow.provider_type.as_str();
        let now = self.ctx.config.clock.now();
        let who = Whose {
            provider,
            aud,
            linking_target: flow.linking_target_id,
            invite: flow.invite_token.as_deref().filter(|t| !t.is_empty()),
            email_optional: flow.email_optional,
            new_id: Uuid::new_v4(),
        };
        let (mut tx, settled) = self.settle_once_more(&who, &signed.user, now).await?;
        let user = match settled {
            Ok(user) => user,
            Err(refused) => {
                // GoTrue keeps what was done and answers with the refusal.
                tx.commit().await?;
                return Err(refused.answer(self).await);
            }
        };
        if flow.pkce() {
            let tokens = (signed.access_token.as_str(), signed.refresh_token.as_str());
            let code = tx
                .finish_oauth_flow(flow.id, user.id, tokens, now)
                .await?
                .ok_or_else(|| {
                    ApiError::bad_request("flow_state_already_used", "State has already been used")
                })?;
            tx.commit().await?;
            self.after_created(&who, &user).await?;
            return Ok(Landing::Code(code));
        }
        if !tx.delete_flow_state(flow.id).await? {
            return Err(ApiError::bad_request(
                "flow_state_already_used",
                "State has already been used",
            ));
        }
        tx.commit().await?;
        self.after_created(&who, &user).await?;
        let traits = Some(json!({"provider": provider}));
        let grant = self
            .sessions
            .issue(user, "oauth", vec![(AuditAction::Login, traits)])
            .await?;
        Ok(Landing::Session {
            grant: Box::new(grant),
            provider_token: signed.access_token,
            provider_refresh_token: signed.refresh_token,
        })
    }

    /// `settle` in a transaction of its own, tried once more when it lost a
    /// race (two first sign-ins of one identity or one address at once):
    /// the second attempt sees the winner's user and signs in to it.
    pub(crate) async fn settle_once_more(
        &self,
        who: &Whose<'_>,
        ext: &ExternalUser,
        now: DateTime<Utc>,
    ) -> ApiResult<(Tx, Result<User, Unverified>)> {
        self.before_created(who, ext, now).await?;
        let mut tx = self.ctx.store.begin().await?;
        match self.settle(&mut tx, who, ext, now).await {
            Err(e)
                if matches!(e.code, "email_exists" | "identity_already_exists")
                    && who.linking_target.is_none() =>
            {
                drop(tx);
                metrics::counter!("castellan_oauth_settle_retries_total").increment(1);
                let mut tx = self.ctx.store.begin().await?;
                let settled = self.settle(&mut tx, who, ext, now).await?;
                Ok((tx, settled))
            }
            r => Ok((tx, r?)),
        }
    }

    /// The user an external identity signs in, in `tx`: found, linked or
    /// made, banned users refused, an unconfirmed account claimed. An
    /// unverified email is the inner refusal: what was done is kept.
    async fn settle(
        &self,
        tx: &mut Tx,
        who: &Whose<'_>,
        ext: &ExternalUser,
        now: DateTime<Utc>,
    ) -> ApiResult<Result<User, Unverified>> {
        let provider = who.provider;
        let (user, identity, candidate) = match (who.linking_target, who.invite) {
            (Some(target), _) => self.link_to(tx, target, provider, ext, now).await?,
            (None, Some(invite)) => self.accept_invite(tx, invite, provider, ext, now).await?,
            (None, None) => self.account(tx, who, ext, now).await?,
        };
        if user.is_banned(now) {
            return Err(ApiError::forbidden("user_banned", "User is banned"));
        }
        // A signed-in user linking an identity keeps what it has, and so
        // does a user who confirmed a phone and has no email (unlike GoTrue,
        // which would strip its phone identity and password here).
        let has_email = !(who.email_optional && candidate.is_none());
        let confirmed = user.email_confirmed_at.is_some()
            || (user.email_str().is_empty() && user.phone_confirmed_at.is_some());
        if who.linking_target.is_none() && has_email && !confirmed {
            let app = user.app_metadata();
            self.claim_unconfirmed(tx, &user, &identity, ext, &app, now)
                .await?;
            let verified =
                ext.email().is_some_and(|e| e.verified) || self.ctx.config.mailer_autoconfirm;
            if !verified {
                return Ok(Err(Unverified {
                    user,
                    provider: provider.to_string(),
                    email: candidate,
                }));
            }
            let traits = json!({"provider": provider});
            tx.insert_audit(
                &audit_payload(&user, AuditAction::UserSignedUp, Some(traits)),
                now,
            )
            .await?;
            tx.confirm(user.id, "email", now).await?;
        }
        let user = tx
            .user_by_id(user.id)
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
        Ok(Ok(user))
    }

    /// The linking decision, carried out: the user, the identity, and the
    /// candidate email it was decided on.
    async fn account(
        &self,
        tx: &mut Tx,
        who: &Whose<'_>,
        ext: &ExternalUser,
        now: DateTime<Utc>,
    ) -> ApiResult<(User, Identity, Option<String>)> {
        let provider = who.provider;
        let decision = decide(tx, provider, ext, who.aud).await?;
        let candidate = ext.email().map(|e| e.email.to_lowercase());
        let gone = || ApiError::not_found("user_not_found", "User not found");
        Ok(match decision {
            Decision::Exists { user, identity } => {
                let data = Value::Object(ext.data.clone());
                tx.refresh_identity(&identity, &data, now).await?;
                merge_user_metadata(tx, &user, ext, now).await?;
                tx.sync_app_providers(user.id).await?;
                let user = tx.user_by_id(user.id).await?.ok_or_else(gone)?;
                let email = user_email(&user);
                (user, identity, email)
            }
            Decision::Link(user) => {
                let identity = new_identity(tx, user.id, provider, ext, now).await?;
                merge_user_metadata(tx, &user, ext, now).await?;
                tx.sync_app_providers(user.id).await?;
                let traits = json!({"identity_id": identity.id, "provider": provider, "provider_id": ext.sub});
                tx.insert_audit(
                    &audit_payload(&user, AuditAction::IdentityLinked, Some(traits)),
                    now,
                )
                .await?;
                let user = tx.user_by_id(user.id).await?.ok_or_else(gone)?;
                (user, identity, candidate)
            }
            Decision::Create(email) => {
                signups_on(&self.ctx)?;
                let id = who.new_id;
                tx.insert_user(&self.new_user(who, ext, email.as_deref(), now))
                    .await?;
                let identity = new_identity(tx, id, provider, ext, now).await?;
                metrics::counter!("castellan_signups_total", "provider" => "oauth", "confirmed" => "false")
                    .increment(1);
                let user = tx.user_by_id(id).await?.ok_or_else(gone)?;
                (user, identity, email)
            }
        })
    }

    /// The user an external identity makes (`who.new_id`).
    fn new_user<'a>(
        &'a self,
        who: &Whose<'a>,
        ext: &ExternalUser,
        email: Option<&'a str>,
        now: DateTime<Utc>,
    ) -> NewUser<'a> {
        let provider = who.provider;
        NewUser {
            id: who.new_id,
            aud: who.aud,
            role: self.ctx.config.jwt.default_group_name.trim(),
            email,
            phone: None,
            encrypted_password: None,
            email_confirmed_at: None,
            phone_confirmed_at: None,
            app_metadata: json!({"provider": provider, "providers": [provider]}),
            user_metadata: Value::Object(ext.data.clone()),
            is_anonymous: false,
            now,
        }
    }

    /// The before-user-created hook, asked outside any transaction when
    /// this sign-in would make a user (decided now; a race that links
    /// instead leaves the hook asked and no user made, as in GoTrue).
    async fn before_created(
        &self,
        who: &Whose<'_>,
        ext: &ExternalUser,
        now: DateTime<Utc>,
    ) -> ApiResult<()> {
        if !hooks::on(&self.ctx, Hook::BeforeUserCreated)
            || who.linking_target.is_some()
            || who.invite.is_some()
        {
            return Ok(());
        }
        let mut tx = self.ctx.store.begin().await?;
        let decision = decide(&mut tx, who.provider, ext, who.aud).await?;
        tx.commit().await?;
        let Decision::Create(email) = decision else {
            return Ok(());
        };
        signups_on(&self.ctx)?;
        let user = self.new_user(who, ext, email.as_deref(), now);
        hooks::before_user_created(&self.ctx, &user).await
    }

    /// The after-user-created hook, when this sign-in (committed) made `user`.
    pub(crate) async fn after_created(&self, who: &Whose<'_>, user: &User) -> ApiResult<()> {
        match user.id == who.new_id {
            true => hooks::after_user_created(&self.ctx, user).await,
            false => Ok(()),
        }
    }

    /// Manual linking (`/user/identities/authorize`): the identity joins the
    /// signed-in user, unless another user has it.
    async fn link_to(
        &self,
        tx: &mut Tx,
        target: Uuid,
        provider: &str,
        ext: &ExternalUser,
        now: DateTime<Utc>,
    ) -> ApiResult<(User, Identity, Option<String>)> {
        let user = tx.lock_user(target).await?.ok_or_else(|| {
            ApiError::unprocessable("user_not_found", "Linking target user not found")
        })?;
        if let Some(existing) = tx.identity_of(provider, &ext.sub).await? {
            if existing.user_id != user.id {
                return Err(ApiError::unprocessable(
                    "identity_already_exists",
                    "Identity is already linked to another user",
                ));
            }
            return Err(ApiError::unprocessable(
                "identity_already_exists",
                "Identity is already linked",
            ));
        }
        let identity = new_identity(tx, user.id, provider, ext, now).await?;
        // A user without an email (an anonymous one, say) takes the
        // identity's when the provider verified it, and is anonymous no more.
        if user.email_str().is_empty()
            && let Some(e) = ext.email().filter(|e| e.verified)
        {
            let email = e.email.to_lowercase();
            if tx.holder_of_email(&email).await?.is_some() {
                return Err(ApiError::bad_request(
                    "email_exists",
                    "A user with this email address has already been registered",
                ));
            }
            tx.set_email_from_identity(user.id, Some(&email), true, now)
                .await?;
            tx.clear_anonymous(user.id).await?;
        }
        tx.sync_app_providers(user.id).await?;
        let traits =
            json!({"identity_id": identity.id, "provider": provider, "provider_id": ext.sub});
        tx.insert_audit(
            &audit_payload(&user, AuditAction::IdentityLinked, Some(traits)),
            now,
        )
        .await?;
        let user = tx
            .user_by_id(user.id)
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
        let email = user_email(&user);
        Ok((user, identity, email))
    }

    /// `invite_token` (GoTrue's `processInvite`): the invited user takes the
    /// identity when the provider names the invited address; the invitation
    /// is spent, the account confirmed, and like any unconfirmed account
    /// claimed by a provider it keeps only that identity.
    async fn accept_invite(
        &self,
        tx: &mut Tx,
        invite: &str,
        provider: &str,
        ext: &ExternalUser,
        now: DateTime<Utc>,
    ) -> ApiResult<(User, Identity, Option<String>)> {
        let not_found = || ApiError::not_found("invite_not_found", "Invite not found");
        let (user_id, _) = tx
            .take_token_hash(invite, &[TokenType::ConfirmationToken])
            .await?
            .ok_or_else(not_found)?;
        let user = tx.lock_user(user_id).await?.ok_or_else(not_found)?;
        let invited = user.email_str().to_lowercase();
        if !ext.emails.iter().any(|e| e.email.to_lowercase() == invited) {
            return Err(ApiError::validation(
                "Invited email does not match emails from external provider",
            ));
        }
        if tx.identity_of(provider, &ext.sub).await?.is_some() {
            return Err(ApiError::unprocessable(
                "identity_already_exists",
                "Identity is already linked to another user",
            ));
        }
        let identity = new_identity(tx, user.id, provider, ext, now).await?;
        let mut app = user.app_metadata();
        app["provider"] = json!(provider);
        self.claim_unconfirmed(tx, &user, &identity, ext, &app, now)
            .await?;
        let traits = json!({"provider": provider});
        tx.insert_audit(
            &audit_payload(&user, AuditAction::InviteAccepted, Some(traits)),
            now,
        )
        .await?;
        tx.confirm(user.id, "email", now).await?;
        let user = tx.user_by_id(user.id).await?.ok_or_else(not_found)?;
        Ok((user, identity, Some(invited)))
    }

    /// An unconfirmed account claimed by an external identity keeps only
    /// that identity (and, unless it is an email or phone one, no
    /// password), with that identity's profile as its metadata and `app`
    /// as its app metadata.
    async fn claim_unconfirmed(
        &self,
        tx: &mut Tx,
        user: &User,
        identity: &Identity,
        ext: &ExternalUser,
        app: &Value,
        now: DateTime<Utc>,
    ) -> ApiResult<()> {
        let keeps_password = matches!(identity.provider.as_str(), "email" | "phone");
        tx.drop_other_identities(user.id, identity.id, !keeps_password)
            .await?;
        let data = Value::Object(ext.data.clone());
        tx.update_metadata(user.id, &data, app, now).await?;
        tx.sync_app_providers(user.id).await?;
        Ok(())
    }

    /// GoTrue's answer to an unverified provider email: the confirmation
    /// mail goes out when there is an address to send it to.
    async fn needs_verification(
        &self,
        user: &User,
        provider: &str,
        email: Option<String>,
    ) -> ApiError {
        if email.is_some() {
            let send = SendRequest::new(user.id, EmailKind::Confirmation, String::new(), None);
            match self.otp.send(send).await {
                Ok(_) => {
                    return ApiError::unprocessable(
                        "provider_email_needs_verification",
                        format!(
                            "Unverified email with {provider}. A confirmation email has been sent to your {provider} email"
                        ),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "confirmation email for an external sign-in not sent");
                }
            }
        }
        ApiError::unprocessable(
            "provider_email_needs_verification",
            format!(
                "Unverified email with {provider}. Verify the email with {provider} in order to sign in"
            ),
        )
    }
}

impl From<ApiError> for CallbackError {
    fn from(e: ApiError) -> Self {
        CallbackError::Api(e)
    }
}

fn user_email(user: &User) -> Option<String> {
    Some(user.email_str().to_string()).filter(|e| !e.is_empty())
}

async fn new_identity(
    tx: &mut Tx,
    user_id: Uuid,
    provider: &str,
    ext: &ExternalUser,
    now: DateTime<Utc>,
) -> ApiResult<Identity> {
    let identity = Identity {
        id: Uuid::new_v4(),
        provider_id: ext.sub.clone(),
        user_id,
        identity_data: sqlx_json(Value::Object(ext.data.clone())),
        provider: provider.to_string(),
        last_sign_in_at: Some(now),
        created_at: Some(now),
        updated_at: Some(now),
    };
    tx.insert_identity(&identity).await?;
    Ok(identity)
}

fn sqlx_json(v: Value) -> castellan_core::store::sqlx_types::Json<Value> {
    castellan_core::store::sqlx_types::Json(v)
}

/// GoTrue's shallow merge of the identity's profile into `user_metadata`.
async fn merge_user_metadata(
    tx: &mut Tx,
    user: &User,
    ext: &ExternalUser,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let mut um = user.user_metadata();
    castellan_core::models::merge_metadata(&mut um, &ext.data);
    tx.update_metadata(user.id, &um, &user.app_metadata(), now)
        .await?;
    Ok(())
}

impl External {
    /// `POST /token?grant_type=id_token`: an OpenID Connect ID token from an
    /// enabled provider (by name or issuer), checked against the issuer's
    /// keys, audience and nonce, signs its identity in.
    pub async fn id_token(&self, g: IdTokenGrant, aud: &str) -> Result<TokenGrant, IdTokenRefusal> {
        if g.id_token.is_empty() {
            return Err(invalid("id_token required"));
        }
        if g.provider.is_empty() && (g.client_id.is_empty() || g.issuer.is_empty()) {
            return Err(invalid("provider or client_id and issuer required"));
        }
        // Unlike GoTrue, linking by ID token obeys the same switch as
        // linking through a provider's page.
        if g.linking_target.is_some() && !self.ctx.config.external.manual_linking_enabled {
            return Err(manual_linking_disabled().into());
        }
        let found = self
            .broker
            .id_token_provider(&g.provider, &g.issuer, &g.id_token);
        let Some((p, expected)) = found else {
            let known = castellan_core::oauth::provider(&g.provider)
                .is_some_and(|d| d.id_token_issuer.is_some());
            return Err(match known {
                true => ApiError::bad_request(
                    "provider_disabled",
                    format!("Provider (issuer {:?}) is not enabled", g.issuer),
                ),
                false => ApiError::validation(format!(
                    "Custom OIDC provider {:?} not allowed",
                    g.provider
                )),
            }
            .into());
        };
        let name = p.description.name;
        let ext = self.verified_id_token(&g, p, expected).await?;
        let now = self.ctx.config.clock.now();
        let who = Whose {
            provider: name,
            aud,
            linking_target: g.linking_target,
            invite: None,
            email_optional: p.config.email_optional,
            new_id: Uuid::new_v4(),
        };
        let (tx, settled) = self.settle_once_more(&who, &ext, now).await?;
        let user = match settled {
            Ok(user) => user,
            Err(refused) => {
                tx.commit().await.map_err(ApiError::from)?;
                return Err(refused.answer(self).await.into());
            }
        };
        tx.commit().await.map_err(ApiError::from)?;
        self.after_created(&who, &user).await?;
        metrics::counter!("castellan_oauth_id_tokens_total", "provider" => name, "outcome" => "ok")
            .increment(1);
        let traits = Some(json!({"provider": name}));
        Ok(self
            .sessions
            .issue(user, "oauth", vec![(AuditAction::Login, traits)])
            .await?)
    }

    /// The identity an ID token proves: signed by its issuer's keys (asked
    /// of the broker), of an allowed tenant, for one of our client ids,
    /// with the nonce the client was given.
    async fn verified_id_token(
        &self,
        g: &IdTokenGrant,
        p: &Configured,
        expected: Option<ExpectedIssuer>,
    ) -> Result<ExternalUser, IdTokenRefusal> {
        let name = p.description.name;
        let bad = |e: String| {
            tracing::info!(provider = name, error = %e, "id token refused");
            metrics::counter!("castellan_oauth_id_tokens_total", "provider" => name, "outcome" => "refused")
                .increment(1);
            invalid("Bad ID token")
        };
        let expected = expected.ok_or_else(|| bad("issued by none of its tenants".into()))?;
        let issuer = expected.issuer.as_str();
        let kid = castellan_core::crypto::id_token::kid(&g.id_token).map_err(&bad)?;
        let keys = match self.broker.issuer_keys(name, issuer, kid.as_deref()).await {
            Ok(k) => k,
            Err(ProviderError::Unavailable(e)) => {
                return Err(ApiError::unavailable("the issuer's keys", e).into());
            }
            Err(ProviderError::Refused(e)) => return Err(bad(e)),
        };
        let claims = castellan_core::crypto::id_token::verify(&g.id_token, &keys.keys, issuer)
            .map_err(&bad)?;
        if !expected.admits(&claims) {
            return Err(bad("of another tenant".into()));
        }
        let ext = castellan_core::oauth::from_id_token(&claims, issuer)
            .ok_or_else(|| invalid("Missing sub claim in id_token"))?;
        let audiences = castellan_core::crypto::id_token::audiences(&claims);
        if !audiences.iter().any(|a| p.config.client_ids.contains(a)) {
            return Err(invalid(format!(
                "Unacceptable audience in id_token: [{}]",
                audiences.join(" ")
            )));
        }
        if !p.config.skip_nonce_check {
            check_nonce(&claims, &g.nonce)?;
        }
        Ok(ext)
    }

    /// `DELETE /user/identities/{id}`: GoTrue's rules (the last identity
    /// stays; the phone goes with the phone identity; the email follows the
    /// identities that remain).
    pub async fn unlink(&self, user: &User, identity_id: Uuid) -> ApiResult<()> {
        if !self.ctx.config.external.manual_linking_enabled {
            return Err(manual_linking_disabled());
        }
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        // Two unlinks at once must not leave the user without any identity.
        tx.lock_user(user.id).await?;
        let ids = tx.identities_of_user(user.id).await?;
        if ids.len() <= 1 {
            return Err(ApiError::unprocessable(
                "single_identity_not_deletable",
                "User must have at least 1 identity after unlinking",
            ));
        }
        let Some(gone) = ids.iter().find(|i| i.id == identity_id).cloned() else {
            return Err(ApiError::unprocessable(
                "identity_not_found",
                "Identity doesn't exist",
            ));
        };
        tx.delete_identity(user.id, gone.id).await?;
        let rest: Vec<&Identity> = ids.iter().filter(|i| i.id != gone.id).collect();
        if gone.provider == "phone" {
            tx.clear_phone(user.id, now).await?;
        } else {
            self.email_after_unlink(&mut tx, user, &rest, now).await?;
        }
        tx.sync_app_providers(user.id).await?;
        let traits = json!({"identity_id": gone.id, "provider": gone.provider, "provider_id": gone.provider_id});
        tx.insert_audit(
            &audit_payload(user, AuditAction::IdentityUnlinked, Some(traits)),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// GoTrue's `UpdateUserEmailFromIdentities`: the email stays while an
    /// identity has it; else the best remaining one (verified first), or none.
    async fn email_after_unlink(
        &self,
        tx: &mut Tx,
        user: &User,
        rest: &[&Identity],
        now: DateTime<Utc>,
    ) -> ApiResult<()> {
        let email_of = |i: &Identity| {
            i.identity_data
                .0
                .get("email")
                .and_then(Value::as_str)
                .map(str::to_lowercase)
                .filter(|e| !e.is_empty())
        };
        let verified = |i: &Identity| i.identity_data.0.get("email_verified") == Some(&json!(true));
        let current = user.email_str().to_lowercase();
        if rest
            .iter()
            .any(|i| email_of(i).as_deref() == Some(current.as_str()))
        {
            return Ok(());
        }
        let mut ranked: Vec<&&Identity> = rest.iter().filter(|i| email_of(i).is_some()).collect();
        ranked.sort_by_key(|i| (!verified(i), i.created_at));
        let Some(best) = ranked.first() else {
            tx.set_email_from_identity(user.id, None, false, now)
                .await?;
            return Ok(());
        };
        let email = email_of(best).unwrap_or_default();
        if let Some(other) = tx.holder_of_email(&email).await?
            && other.id != user.id
        {
            return Err(ApiError::unprocessable(
                "email_conflict_identity_not_deletable",
                "Unable to unlink identity due to email conflict",
            ));
        }
        // Unlike GoTrue, an address no provider verified is not confirmed
        // by mailer autoconfirm here: it would become a verified one to link by.
        let confirmed = verified(best);
        tx.set_email_from_identity(user.id, Some(&email), confirmed, now)
            .await?;
        Ok(())
    }

    /// `GET /user/identities/authorize`: the provider's URL for linking an
    /// identity to the signed-in user.
    pub async fn link(&self, user: &User, mut req: Authorize) -> ApiResult<String> {
        if !self.ctx.config.external.manual_linking_enabled {
            return Err(manual_linking_disabled());
        }
        req.linking_target = Some(user.id);
        req.invite_token = None;
        self.authorize(req).await
    }
}

/// GoTrue's nonce rule: the token and the request both carry one, or
/// neither does; the token's is the SHA-256 (hex) of the request's.
fn check_nonce(claims: &serde_json::Map<String, Value>, given: &str) -> Result<(), IdTokenRefusal> {
    use sha2::Digest;
    let in_token = claims
        .get("nonce")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    match (in_token, given.is_empty()) {
        (None, true) => Ok(()),
        (Some(n), false) => {
            let hash: String = sha2::Sha256::digest(given.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if castellan_core::crypto::secure_eq(hash.as_bytes(), n.as_bytes()) {
                Ok(())
            } else {
                Err(IdTokenRefusal::OAuth {
                    error: "invalid nonce",
                    description: "Nonces mismatch".into(),
                })
            }
        }
        _ => Err(invalid(
            "Passed nonce and nonce in id_token should either both exist or not.",
        )),
    }
}

fn manual_linking_disabled() -> ApiError {
    ApiError::not_found("manual_linking_disabled", "Manual linking is disabled")
}

/// Refused when sign-ups are off.
fn signups_on(ctx: &Ctx) -> ApiResult<()> {
    match ctx.config.disable_signup {
        true => Err(ApiError::unprocessable(
            "signup_disabled",
            "Signups not allowed for this instance",
        )),
        false => Ok(()),
    }
}

/// GoTrue's `DetermineAccountLinking` (one linking domain).
async fn decide(tx: &mut Tx, provider: &str, ext: &ExternalUser, aud: &str) -> ApiResult<Decision> {
    if let Some(identity) = tx.identity_of(provider, &ext.sub).await? {
        let user = tx
            .user_by_id(identity.user_id)
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
        return Ok(Decision::Exists { user, identity });
    }
    let candidate = ext.email().map(|e| e.email.to_lowercase());
    // Unlike GoTrue, an unverified provider email never links, even with
    // mailer autoconfirm: a provider that does not check addresses would
    // otherwise hand out other people's accounts.
    let verified: Vec<String> = ext
        .emails
        .iter()
        .filter(|e| e.verified)
        .map(|e| e.email.to_lowercase())
        .collect();
    if verified.is_empty() {
        // An unverified email someone holds is not given to a new user.
        let taken = match &candidate {
            Some(e) => tx
                .holder_of_email(e)
                .await?
                .is_some_and(|u| u.aud.as_deref() == Some(aud)),
            None => false,
        };
        return Ok(Decision::Create(candidate.filter(|_| !taken)));
    }
    let mut identities = Vec::new();
    let mut users: Vec<User> = Vec::new();
    for email in &verified {
        let (ids, us) = tx.holders_of_email(email).await?;
        identities.extend(ids);
        for u in us {
            if !users.iter().any(|x| x.id == u.id) {
                users.push(u);
            }
        }
    }
    let multiple = || {
        ApiError::new(
            500,
            "unexpected_failure",
            "Multiple accounts with the same email address in the same linking domain detected: default",
        )
    };
    let Some(first) = identities.first() else {
        return match users.len() {
            0 => Ok(Decision::Create(candidate)),
            1 => Ok(Decision::Link(users.remove(0))),
            _ => Err(multiple()),
        };
    };
    let owner = first.user_id;
    if identities.iter().any(|i| i.user_id != owner) {
        return Err(multiple());
    }
    let user = tx
        .user_by_id(owner)
        .await?
        .ok_or_else(|| ApiError::not_found("user_not_found", "User not found"))?;
    Ok(Decision::Link(user))
}
