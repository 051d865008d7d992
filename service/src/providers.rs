//! The `ProviderBroker`: the external sign-in providers this server is
//! configured for, and the calls made to them: the authorize URL, the code
//! exchange (the `oauth2` crate), the profile requests and the issuers'
//! signing keys. Every call runs in the caller's task with a timeout, and
//! at most `IN_FLIGHT` at once per provider, so a slow or failing provider
//! holds up neither the others nor any other sign-in; each call is counted
//! and timed per provider. What must be shared between requests (issuers'
//! keys, fetches under way, each provider's circuit breaker) is the
//! [`crate::actors::provider_broker`] actor's, asked by message.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use castellan_core::clock::Clock;
use castellan_core::config::{ExternalConfig, OAuthProviderConfig};
use castellan_core::crypto::id_token;
use castellan_core::crypto::jwk::Key;
use castellan_core::oauth::{
    Credentials, ExpectedIssuer, ExternalUser, Protocol, Provider, provider,
};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::actors::mailbox::{Mail, ask};
use crate::actors::provider_broker::{
    BrokerMsg, CallReport, Gate, IssuerKeys, KEYS_TTL, Report, Wanted,
};
use crate::oauth1::{self, TokenPair};

/// Calls to one provider at once; more wait, up to the timeout.
const IN_FLIGHT: usize = 32;

/// The whole token answer, kept (an id token, WorkOS's profile).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Extra {
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl ExtraTokenFields for Extra {}

type Tokens = StandardTokenResponse<Extra, BasicTokenType>;

type Client = oauth2::Client<
    BasicErrorResponse,
    Tokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered no (a bad or used code, bad credentials).
    #[error("{0}")]
    Refused(String),
    /// The provider is down, slow, busy or answered what cannot be read.
    #[error("{0}")]
    Unavailable(String),
}

/// An enabled provider: its description and settings.
pub struct Configured {
    pub description: &'static Provider,
    pub config: OAuthProviderConfig,
    gate: Semaphore,
}

impl Configured {
    fn url(&self, template: &str) -> String {
        self.description.url(template, self.config.url.as_deref())
    }

    fn expected_issuer(&self, claimed: Option<&str>) -> Option<ExpectedIssuer> {
        self.description
            .expected_issuer(self.config.url.as_deref(), claimed)
    }

    fn client(&self) -> Result<Client, ProviderError> {
        let bad = |e: oauth2::url::ParseError| ProviderError::Unavailable(e.to_string());
        let d = self.description;
        let client_id = self.config.client_ids.first().cloned().unwrap_or_default();
        Ok(oauth2::Client::new(ClientId::new(client_id))
            .set_client_secret(ClientSecret::new(self.config.secret.clone()))
            .set_auth_uri(AuthUrl::new(self.url(d.authorize)).map_err(bad)?)
            .set_token_uri(TokenUrl::new(self.url(d.token)).map_err(bad)?)
            .set_redirect_uri(RedirectUrl::new(self.config.redirect_uri.clone()).map_err(bad)?))
    }
}

/// What the browser brought back to `/callback`.
pub struct Returned {
    /// OAuth 2.0's code, OAuth 1.0a's `oauth_verifier`.
    pub code: String,
    /// OAuth 1.0a's `oauth_token`: the request token it answers.
    pub request_token: Option<String>,
}

/// What a provider granted: OAuth 2.0's token answer, or OAuth 1.0a's
/// access token (its requests are signed with it).
enum Access {
    Bearer(Box<Tokens>),
    Signed(TokenPair),
}

/// What a code exchange gives: the provider's tokens and its user.
pub struct SignedIn {
    pub access_token: String,
    pub refresh_token: String,
    pub user: ExternalUser,
}

#[derive(Clone)]
pub struct ProviderBroker {
    providers: Arc<HashMap<&'static str, Configured>>,
    /// Enabled providers that cannot be used, and why.
    unusable: Arc<HashMap<String, String>>,
    http: oauth2::reqwest::Client,
    timeout: Duration,
    actor: Arc<ArcSwapOption<ActorRef<Mail<BrokerMsg>>>>,
    /// OAuth 1.0a's timestamps.
    clock: Clock,
}

/// An enabled provider as castellan will call it; or the variable to look
/// at and why it cannot be used, in GoTrue's words where GoTrue has them.
fn configured(name: &str, config: &OAuthProviderConfig) -> Result<Configured, (String, String)> {
    let var = |k: &str| format!("GOTRUE_EXTERNAL_{}_{k}", name.to_ascii_uppercase());
    let description = provider(name).ok_or_else(|| {
        (
            var("ENABLED"),
            format!("castellan cannot sign in with {name} yet"),
        )
    })?;
    if config.client_ids.is_empty() {
        return Err((var("CLIENT_ID"), "missing OAuth client ID".into()));
    }
    if config.secret.is_empty() {
        return Err((var("SECRET"), "missing OAuth secret".into()));
    }
    if description.needs_url && config.url.is_none() {
        let why = format!("unable to find URL for the {name} provider");
        return Err((var("URL"), why));
    }
    let configured = Configured {
        description,
        config: config.clone(),
        gate: Semaphore::new(IN_FLIGHT),
    };
    configured
        .client()
        .map_err(|e| (var("URL"), e.to_string()))?;
    Ok(configured)
}

/// The keys to keep after a fetch, and the answer: the fetched keys; or
/// on failure the old ones, still in use, with the failure remembered (so
/// an issuer that is down is not asked again for every token).
fn fetched_keys(
    fetched: Result<Vec<Key>, ProviderError>,
    cached: Option<Arc<IssuerKeys>>,
) -> (Arc<IssuerKeys>, Result<Arc<IssuerKeys>, ProviderError>) {
    let now = Instant::now();
    match fetched {
        Ok(keys) => {
            let keys = Arc::new(IssuerKeys {
                keys,
                fetched: now,
                tried: now,
            });
            (keys.clone(), Ok(keys))
        }
        Err(e) => {
            let (keys, fetched) = match &cached {
                Some(c) => (c.keys.clone(), c.fetched),
                None => (Vec::new(), now.checked_sub(KEYS_TTL).unwrap_or(now)),
            };
            let keys = Arc::new(IssuerKeys {
                keys,
                fetched,
                tried: now,
            });
            (keys, cached.ok_or(e))
        }
    }
}

fn record(provider: &'static str, op: &'static str, start: Instant, r: Result<(), &ProviderError>) {
    let outcome = match r {
        Ok(()) => "ok",
        Err(ProviderError::Refused(_)) => "refused",
        Err(ProviderError::Unavailable(_)) => "unavailable",
    };
    metrics::counter!("castellan_oauth_provider_calls_total", "provider" => provider, "op" => op, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("castellan_oauth_provider_seconds", "provider" => provider, "op" => op)
        .record(start.elapsed().as_secs_f64());
}

/// The enabled providers castellan will refuse sign-ins with, each with the
/// variable to set and why: said at start and by `castellan config check`.
pub fn unusable(cfg: &ExternalConfig) -> Vec<String> {
    let mut enabled: Vec<_> = cfg.providers.iter().filter(|(_, p)| p.enabled).collect();
    enabled.sort_by_key(|(n, _)| n.as_str());
    enabled
        .into_iter()
        .filter_map(|(name, config)| {
            let (var, why) = configured(name, config).err()?;
            Some(format!(
                "{var}: {why}: sign-ins with {name} will be refused"
            ))
        })
        .collect()
}

impl ProviderBroker {
    /// The enabled providers; one castellan has no description for, or one
    /// without what it needs, is refused at start with the variable to set.
    pub fn new(
        cfg: &ExternalConfig,
        timeout: Duration,
        actor: Arc<ArcSwapOption<ActorRef<Mail<BrokerMsg>>>>,
        clock: Clock,
    ) -> Result<Self, String> {
        let mut providers = HashMap::new();
        let mut unusable = HashMap::new();
        let mut names: Vec<_> = cfg.providers.iter().filter(|(_, p)| p.enabled).collect();
        names.sort_by_key(|(n, _)| n.as_str());
        for (name, config) in names {
            match configured(name, config) {
                Ok(p) => {
                    providers.insert(p.description.name, p);
                }
                // GoTrue starts with such a provider and refuses each
                // sign-in with it; so does castellan (the start-up
                // warning is `unusable`'s).
                Err((_, why)) => {
                    unusable.insert(name.clone(), why);
                }
            }
        }
        let http = oauth2::reqwest::ClientBuilder::new()
            // A provider's redirect is never followed (SSRF).
            .redirect(oauth2::reqwest::redirect::Policy::none())
            .user_agent("castellan")
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            providers: Arc::new(providers),
            unusable: Arc::new(unusable),
            http,
            timeout,
            actor,
            clock,
        })
    }

    /// The verification keys of `issuer` that may have signed a token with
    /// `kid`: the actor's, fetched again when they are old or lack the kid
    /// (at most once per `KEYS_FLOOR`, one fetch for callers arriving
    /// together); the old ones if a fetch fails.
    pub async fn issuer_keys(
        &self,
        provider: &'static str,
        issuer: &str,
        kid: Option<&str>,
    ) -> Result<Arc<IssuerKeys>, ProviderError> {
        let actor = self.actor.load_full().map(|a| (*a).clone());
        let want = |reply| BrokerMsg::Want {
            issuer: issuer.to_string(),
            kid: kid.map(str::to_string),
            reply,
        };
        let wanted = match &actor {
            Some(a) => ask(a, "provider_broker", want).await,
            None => None,
        };
        let cached = match wanted {
            Some(Wanted::Have(keys)) => return Ok(keys),
            Some(Wanted::Wait(rx)) => {
                return match tokio::time::timeout(self.timeout, rx).await {
                    Ok(Ok(Some(keys))) => Ok(keys),
                    _ => Err(ProviderError::Unavailable(format!(
                        "{issuer}: its keys could not be fetched"
                    ))),
                };
            }
            Some(Wanted::Fetch(cached)) => cached,
            // No actor (restarting): fetch, keeping nothing.
            None => None,
        };
        let mut report = Report {
            actor,
            issuer: issuer.to_string(),
            keys: None,
        };
        let start = Instant::now();
        let fetched = self.fetch_keys(issuer).await;
        record(provider, "keys", start, fetched.as_ref().map(drop));
        let (keys, answer) = fetched_keys(fetched, cached);
        report.keys = Some(keys);
        answer
    }

    /// The ID token of a token answer, checked against the issuer's keys
    /// and our client id: the profile of providers that give no other.
    async fn id_token_profile(
        &self,
        p: &Configured,
        tokens: &Tokens,
    ) -> Result<ExternalUser, ProviderError> {
        let d = p.description;
        let token = tokens
            .extra_fields()
            .fields
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderError::Refused(format!("{} sent no ID token", d.name)))?;
        let refused = |e: String| ProviderError::Refused(format!("{}'s ID token: {e}", d.name));
        let claimed = id_token::claimed_issuer(token);
        let expected = p
            .expected_issuer(claimed.as_deref())
            .ok_or_else(|| refused(format!("issued by {claimed:?}")))?;
        let kid = id_token::kid(token).map_err(refused)?;
        let keys = self
            .issuer_keys(d.name, &expected.issuer, kid.as_deref())
            .await?;
        let claims = id_token::verify(token, &keys.keys, &expected.issuer).map_err(refused)?;
        if !expected.admits(&claims) {
            return Err(refused("of another tenant".into()));
        }
        let ours = p.config.client_ids.first().cloned().unwrap_or_default();
        if !id_token::audiences(&claims).contains(&ours) {
            return Err(refused("not issued to this client".into()));
        }
        castellan_core::oauth::from_id_token(&claims, &expected.issuer)
            .ok_or_else(|| refused("no subject".into()))
    }

    /// OIDC discovery, then the JWKS it names.
    async fn fetch_keys(&self, issuer: &str) -> Result<Vec<Key>, ProviderError> {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc = self.get_json(&discovery).await?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(ProviderError::Refused(format!(
                "the discovery document of {issuer} names another issuer"
            )));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderError::Refused(format!("{issuer} names no jwks_uri")))?;
        let jwks = self.get_json(jwks_uri).await?;
        Ok(id_token::keys(&jwks))
    }

    async fn get_json(&self, url: &str) -> Result<Value, ProviderError> {
        json_answer(self.http.get(url), url).await
    }

    /// An enabled provider that issues ID tokens, by name or by issuer:
    /// its settings, and the issuer to check `token` against (`None`: the
    /// token claims an issuer that is none of the provider's tenants).
    pub fn id_token_provider(
        &self,
        name: &str,
        issuer: &str,
        token: &str,
    ) -> Option<(&Configured, Option<ExpectedIssuer>)> {
        let claimed = id_token::claimed_issuer(token);
        self.providers.values().find_map(|p| {
            p.description.id_token_issuer?;
            let expected = p.expected_issuer(claimed.as_deref());
            let by_issuer =
                !issuer.is_empty() && expected.as_ref().is_some_and(|e| e.issuer == issuer);
            (p.description.name == name || by_issuer).then_some((p, expected))
        })
    }

    /// An enabled provider.
    pub fn get(&self, name: &str) -> Option<&Configured> {
        self.providers.get(name)
    }

    /// Why an enabled provider cannot be used (GoTrue's words), if so.
    pub fn unusable(&self, name: &str) -> Option<&str> {
        self.unusable.get(name).map(String::as_str)
    }

    pub fn enabled(&self, name: &str) -> bool {
        self.providers.contains_key(name)
    }

    /// Whether the configuration enables it, usable or not (what GoTrue's
    /// `/settings` reports).
    pub fn switched_on(&self, name: &str) -> bool {
        self.enabled(name) || self.unusable.contains_key(name)
    }

    /// The provider's authorize URL for `state`, with the scopes, the
    /// request's other parameters, and what the callback needs kept: our
    /// PKCE verifier when the provider wants one, or OAuth 1.0a's request
    /// token (fetched first).
    pub async fn authorize_url(
        &self,
        p: &Configured,
        state: &str,
        scopes: Option<&str>,
        params: &[(String, String)],
    ) -> Result<(String, Option<String>), ProviderError> {
        match p.description.protocol {
            Protocol::OAuth2 => self.oauth2_authorize_url(p, state, scopes, params),
            Protocol::OAuth1 { request_token } => {
                self.oauth1_authorize_url(p, request_token, state, params)
                    .await
            }
        }
    }

    /// OAuth 1.0a: a request token first; the browser goes to `authorize`
    /// with it, and the flow keeps it (with its secret) for the callback.
    async fn oauth1_authorize_url(
        &self,
        p: &Configured,
        request_token: &str,
        state: &str,
        params: &[(String, String)],
    ) -> Result<(String, Option<String>), ProviderError> {
        let _permit = self.permit(p).await?;
        let start = Instant::now();
        let pair = self.request_token(p, request_token, state).await;
        record(
            p.description.name,
            "request_token",
            start,
            pair.as_ref().map(drop),
        );
        let pair = pair?;
        let mut url = oauth2::url::Url::parse(&p.url(p.description.authorize))
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("oauth_token", &pair.token)
            .extend_pairs(params);
        Ok((url.to_string(), Some(pair.keep())))
    }

    fn oauth2_authorize_url(
        &self,
        p: &Configured,
        state: &str,
        scopes: Option<&str>,
        params: &[(String, String)],
    ) -> Result<(String, Option<String>), ProviderError> {
        let client = p.client()?;
        let state = state.to_string();
        let mut req = client.authorize_url(move || CsrfToken::new(state));
        let scope = p.description.scope(scopes);
        if !scope.is_empty() {
            req = req.add_scope(Scope::new(scope));
        }
        for (k, v) in p.description.authorize_params {
            req = req.add_extra_param(*k, *v);
        }
        for (k, v) in params {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let verifier = if p.description.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            req = req.set_pkce_challenge(challenge);
            Some(verifier.secret().clone())
        } else {
            None
        };
        let (url, _) = req.url();
        Ok((url.to_string(), verifier))
    }

    /// Who signs OAuth 1.0a requests: our client, now.
    fn signer<'a>(&self, p: &'a Configured) -> oauth1::Signer<'a> {
        oauth1::Signer {
            key: p.config.client_ids.first().map_or("", String::as_str),
            secret: &p.config.secret,
            unix_time: self.clock.now().timestamp(),
        }
    }

    /// OAuth 1.0a's first step: a request token whose callback carries `state`.
    async fn request_token(
        &self,
        p: &Configured,
        template: &str,
        state: &str,
    ) -> Result<TokenPair, ProviderError> {
        let mut callback = oauth2::url::Url::parse(&p.config.redirect_uri)
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        callback.query_pairs_mut().append_pair("state", state);
        let url = p.url(template);
        let extra = oauth1::Extra {
            callback: Some(callback.as_str()),
            ..Default::default()
        };
        oauth1::post_for_token(&self.http, &self.signer(p), &url, &extra).await
    }

    /// OAuth 1.0a's exchange: the verifier, for the request token the
    /// flow kept, which must be the one the browser brought back.
    async fn access_token(
        &self,
        p: &Configured,
        returned: &Returned,
        kept: Option<String>,
    ) -> Result<TokenPair, ProviderError> {
        let kept = kept.as_deref().and_then(TokenPair::kept);
        let request = kept
            .filter(|k| {
                returned
                    .request_token
                    .as_deref()
                    .is_some_and(|r| oauth1::same_token(k, r))
            })
            .ok_or_else(|| ProviderError::Refused("not the request token of this flow".into()))?;
        let url = p.url(p.description.token);
        let extra = oauth1::Extra {
            token: Some(&request),
            verifier: Some(&returned.code),
            ..Default::default()
        };
        oauth1::post_for_token(&self.http, &self.signer(p), &url, &extra).await
    }

    /// A call slot of the provider's own, waited for at most the timeout.
    async fn permit<'a>(
        &self,
        p: &'a Configured,
    ) -> Result<tokio::sync::SemaphorePermit<'a>, ProviderError> {
        let name = p.description.name;
        tokio::time::timeout(self.timeout, p.gate.acquire())
            .await
            .map_err(|_| ProviderError::Unavailable(format!("{name} is busy")))?
            .map_err(|_| ProviderError::Unavailable(format!("{name} is closed")))
    }

    /// Exchanges what a callback brought (with what its flow kept) and
    /// reads the user's profile.
    pub async fn sign_in(
        &self,
        p: &Configured,
        returned: Returned,
        kept: Option<String>,
    ) -> Result<SignedIn, ProviderError> {
        let name = p.description.name;
        let mut report = self.breaker(name).await?;
        // Bounded per provider: a provider that hangs fills only its own gate.
        let _permit = self.permit(p).await?;
        let r = self.exchange_and_profile(p, returned, kept).await;
        report.answered = Some(!matches!(r, Err(ProviderError::Unavailable(_))));
        r
    }

    /// What the provider's breaker says: a report to fill in with the
    /// call's outcome, or the refusal while it is open. With no actor
    /// (restarting) every call goes, unreported.
    async fn breaker(&self, provider: &'static str) -> Result<CallReport, ProviderError> {
        let actor = self.actor.load_full().map(|a| (*a).clone());
        let now = self.clock.now();
        let gate = match &actor {
            Some(a) => {
                let msg = |reply| BrokerMsg::Gate {
                    provider,
                    now,
                    reply,
                };
                ask(a, "provider_broker", msg).await
            }
            None => None,
        };
        if let Some(Gate::Open(wait)) = gate {
            metrics::counter!("castellan_oauth_provider_calls_total", "provider" => provider, "op" => "token", "outcome" => "circuit_open")
                .increment(1);
            return Err(ProviderError::Unavailable(format!(
                "{provider} is unavailable; not asked again for {}s",
                wait.num_seconds().max(1)
            )));
        }
        Ok(CallReport {
            probe: gate == Some(Gate::Probe),
            actor: gate.and(actor),
            provider,
            answered: None,
            clock: self.clock.clone(),
        })
    }

    async fn exchange_and_profile(
        &self,
        p: &Configured,
        returned: Returned,
        kept: Option<String>,
    ) -> Result<SignedIn, ProviderError> {
        let name = p.description.name;
        let start = Instant::now();
        let access = match p.description.protocol {
            Protocol::OAuth2 => self
                .exchange(p, &returned.code, kept)
                .await
                .map(|t| Access::Bearer(Box::new(t))),
            Protocol::OAuth1 { .. } => self
                .access_token(p, &returned, kept)
                .await
                .map(Access::Signed),
        };
        record(name, "token", start, access.as_ref().map(drop));
        let access = access?;
        let start = Instant::now();
        let user = self.profile(p, &access).await;
        record(name, "profile", start, user.as_ref().map(drop));
        let (access_token, refresh_token) = match access {
            Access::Bearer(t) => (
                t.access_token().secret().clone(),
                t.refresh_token()
                    .map(|r| r.secret().clone())
                    .unwrap_or_default(),
            ),
            Access::Signed(pair) => (pair.token, String::new()),
        };
        Ok(SignedIn {
            access_token,
            refresh_token,
            user: user?,
        })
    }

    async fn exchange(
        &self,
        p: &Configured,
        code: &str,
        verifier: Option<String>,
    ) -> Result<Tokens, ProviderError> {
        let styles: &[AuthType] = match p.description.credentials {
            Credentials::Either => &[AuthType::BasicAuth, AuthType::RequestBody],
            Credentials::Body => &[AuthType::RequestBody],
        };
        let mut last = ProviderError::Unavailable("no attempt".into());
        for style in styles {
            let client = p.client()?.set_auth_type(style.clone());
            let mut req = client.exchange_code(AuthorizationCode::new(code.to_string()));
            if let Some(v) = &verifier {
                req = req.set_pkce_verifier(PkceCodeVerifier::new(v.clone()));
            }
            let status = Arc::new(AtomicU16::new(0));
            let (client, kept) = (self.http.clone(), status.clone());
            let http = move |r| token_call(client.clone(), r, kept.clone());
            let answered = req.request_async(&http).await;
            // A 4xx the provider did not explain is still the provider
            // saying no (a bad or oversized code), not the provider down.
            let refusal = |e: String| match status.load(Ordering::Relaxed) {
                s if (400..500).contains(&s) && s != 408 && s != 429 => ProviderError::Refused(e),
                _ => ProviderError::Unavailable(e),
            };
            match answered {
                Ok(t) => return Ok(t),
                // Refused: perhaps the credentials belong in the body.
                Err(RequestTokenError::ServerResponse(e)) => {
                    last = ProviderError::Refused(match e.error_description() {
                        Some(d) => format!("{}: {d}", e.error()),
                        None => e.error().to_string(),
                    });
                }
                Err(RequestTokenError::Request(e)) => {
                    return Err(ProviderError::Unavailable(e.to_string()));
                }
                // GitHub answers a bad code with 200 and an `error` field.
                Err(RequestTokenError::Parse(e, body)) => {
                    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    return Err(match answer.get("error").and_then(Value::as_str) {
                        Some(error) => ProviderError::Refused(error.to_string()),
                        None => refusal(e.to_string()),
                    });
                }
                Err(e) => return Err(refusal(e.to_string())),
            }
        }
        Err(last)
    }

    /// The profile document (each request's answer under its key, the token
    /// answer under `token`) mapped to an identity.
    async fn profile(
        &self,
        p: &Configured,
        access: &Access,
    ) -> Result<ExternalUser, ProviderError> {
        let d = p.description;
        let mut doc = Map::new();
        if let Access::Bearer(tokens) = access {
            if d.profile_from_id_token {
                return self.id_token_profile(p, tokens).await;
            }
            doc.insert(
                "token".into(),
                Value::Object(tokens.extra_fields().fields.clone()),
            );
        }
        let client_id = p.config.client_ids.first().cloned().unwrap_or_default();
        for f in d.fetch {
            let mut req = match access {
                Access::Bearer(tokens) => self.bearer_request(p, p.url(f.url), tokens),
                Access::Signed(pair) => {
                    oauth1::profile_request(&self.http, &self.signer(p), pair, &p.url(f.url))
                }
            };
            for (k, v) in f.headers {
                req = req.header(*k, v.replace("{client_id}", &client_id));
            }
            let v = json_answer(req, d.name).await?;
            doc.insert(f.key.into(), v);
        }
        d.map(&Value::Object(doc), p.config.url.as_deref())
            .ok_or_else(|| ProviderError::Refused(format!("{} named no user", d.name)))
    }

    /// A profile request with an OAuth 2.0 access token (and Facebook's proof).
    fn bearer_request(
        &self,
        p: &Configured,
        mut url: String,
        tokens: &Tokens,
    ) -> oauth2::reqwest::RequestBuilder {
        let access = tokens.access_token().secret();
        if p.description.appsecret_proof {
            let proof = castellan_core::crypto::hmac_sha256_hex(
                p.config.secret.as_bytes(),
                access.as_bytes(),
            );
            url.push_str(&format!("&appsecret_proof={proof}"));
        }
        self.http.get(&url).bearer_auth(access)
    }
}

/// One token request over our HTTP client, its status kept for the
/// caller (oauth2 does not say it when the body is no JSON).
async fn token_call(
    http: oauth2::reqwest::Client,
    req: oauth2::HttpRequest,
    status: Arc<AtomicU16>,
) -> Result<oauth2::HttpResponse, std::io::Error> {
    let req = oauth2::reqwest::Request::try_from(req).map_err(std::io::Error::other)?;
    let resp = http.execute(req).await.map_err(std::io::Error::other)?;
    status.store(resp.status().as_u16(), Ordering::Relaxed);
    let mut answer = oauth2::http::Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        answer = answer.header(k, v);
    }
    let body = resp.bytes().await.map_err(std::io::Error::other)?;
    answer.body(body.to_vec()).map_err(std::io::Error::other)
}

/// A provider's answer: a 5xx or no answer is the provider unavailable;
/// another non-2xx is a refusal. `what` names it.
pub(crate) async fn answer(
    req: oauth2::reqwest::RequestBuilder,
    what: &str,
) -> Result<Vec<u8>, ProviderError> {
    let resp = req
        .send()
        .await
        .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
    if status.is_server_error() {
        return Err(ProviderError::Unavailable(format!(
            "{what} answered {status}"
        )));
    }
    if !status.is_success() {
        return Err(ProviderError::Refused(format!("{what} answered {status}")));
    }
    Ok(bytes.to_vec())
}

/// A GET's JSON answer; one that cannot be read is the provider unavailable.
async fn json_answer(
    req: oauth2::reqwest::RequestBuilder,
    what: &str,
) -> Result<Value, ProviderError> {
    let bytes = answer(req.header("accept", "application/json"), what).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ProviderError::Unavailable(format!("{what}'s answer is not JSON: {e}")))
}
