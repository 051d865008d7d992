//! Extractors: JSON bodies with GoTrue's errors, bearer authentication, the
//! rate-limit key and the request audience.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use castellan_core::ApiError;
use castellan_core::config::TrustedProxies;
use castellan_core::models::{AuditActor, User};
use castellan_service::accounts::Principal;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::HttpError;
use crate::server::AppState;

/// The request body's bytes, at most 1 MiB.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        413,
                        "request_entity_too_large",
                        "Request body too large (max 1048576 bytes)",
                    )
                    .into()
                } else {
                    ApiError::bad_request("bad_json", format!("Could not read request body: {e}"))
                        .into()
                }
            })
    }
}

/// PostgreSQL cannot store NUL in text, so a NUL anywhere a client sends a
/// string is refused the same way on both databases.
fn nul_refused() -> ApiError {
    ApiError::validation("Strings may not contain NUL characters")
}

/// Whether JSON text escapes a NUL (`\u0000`; a raw NUL is not valid JSON).
/// An escaped backslash followed by `u0000` is text, not an escape.
fn escapes_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json[i + 1..].starts_with(b"u0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// Parses JSON, answering 400 `bad_json` for anything that is not the shape
/// expected and 400 `validation_failed` for a NUL in any string.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    let parsed = serde_json::from_slice(bytes).map_err(|e| {
        HttpError(ApiError::bad_request(
            "bad_json",
            format!(
                "Could not parse request body as JSON: {}",
                go_wording(&e, bytes)
            ),
        ))
    })?;
    if escapes_nul(bytes) {
        return Err(nul_refused().into());
    }
    Ok(parsed)
}

/// A JSON error in the words Go's `encoding/json` uses, where clients show
/// GoTrue's: a body cut short, or a character that starts no value. Other
/// errors (a value of the wrong type) keep serde's words.
fn go_wording(e: &serde_json::Error, bytes: &[u8]) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected end of JSON input".into(),
        Category::Syntax => {
            let offending = bytes
                .split(|b| *b == b'\n')
                .nth(e.line().saturating_sub(1))
                .and_then(|line| line.get(e.column().saturating_sub(1)))
                .filter(|b| b.is_ascii_graphic());
            match offending {
                Some(b) => format!(
                    "invalid character '{}' looking for beginning of value",
                    *b as char
                ),
                None => e.to_string(),
            }
        }
        _ => e.to_string(),
    }
}

/// Parses a query string; malformed is 400 `validation_failed`, and so is a NUL.
pub fn parse_query<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    if q.contains("%00") {
        return Err(nul_refused());
    }
    serde_urlencoded::from_str(q)
        .map_err(|e| ApiError::validation(format!("Invalid query parameters: {e}")))
}

/// A JSON body (see [`RawBody`] and [`parse_json`]).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, HttpError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Path parameters; one that does not decode (`%FF`, say) is 400
/// `validation_failed` in JSON, as every other bad input is.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(t)) => Ok(PathParams(t)),
            Err(e) => Err(ApiError::validation(format!("Invalid path parameter: {e}")).into()),
        }
    }
}

/// Query parameters; a malformed query string is 400 `validation_failed` (JSON).
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        parse_query(parts.uri.query().unwrap_or_default())
            .map(QueryParams)
            .map_err(HttpError)
    }
}

/// The bearer token of `Authorization`, matched as GoTrue does: `(?i)^bearer (\S+)$`.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, HttpError> {
    let missing = || {
        HttpError(ApiError::unauthorized(
            "no_authorization",
            "This endpoint requires a valid Bearer token",
        ))
    };
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let (scheme, token) = value.split_at_checked(7).ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer ")
        || token.is_empty()
        // `to_str` let only visible ASCII, space and tab through.
        || token.bytes().any(|b| b == b' ' || b == b'\t')
    {
        return Err(missing());
    }
    Ok(token)
}

/// An authenticated user (GoTrue's `requireAuthentication`).
pub struct AuthUser {
    pub user: User,
    pub session_id: Option<Uuid>,
    pub token_aud: Option<String>,
    pub oauth_client: Option<Uuid>,
}

/// The live entry behind a user token, shared with the session cache.
pub struct AuthLive {
    pub live: std::sync::Arc<castellan_core::store::LiveUser>,
    pub session_id: Option<Uuid>,
    pub token_aud: Option<String>,
}

impl FromRequestParts<AppState> for AuthLive {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        AuthLive::from_headers(&parts.headers, st).await
    }
}

impl AuthLive {
    /// The user behind `Authorization`, for a handler that needs one only
    /// for some requests (an `id_token` grant that links).
    pub async fn from_headers(
        headers: &axum::http::HeaderMap,
        st: &AppState,
    ) -> Result<Self, HttpError> {
        let token = bearer(headers)?;
        match st.accounts.authenticate(token).await? {
            Principal::User {
                live,
                session_id,
                aud,
            } => Ok(AuthLive {
                live,
                session_id,
                token_aud: aud,
            }),
            Principal::Admin { .. } => {
                Err(ApiError::forbidden("bad_jwt", "invalid claim: missing sub claim").into())
            }
        }
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        let a = AuthLive::from_request_parts(parts, st).await?;
        Ok(AuthUser {
            oauth_client: a.oauth_client(),
            user: a.live.user.clone(),
            session_id: a.session_id,
            token_aud: a.token_aud,
        })
    }
}

/// What an authenticated request knows of the session behind its token.
pub trait Authenticated {
    /// The OAuth client whose code started the session, if an app's.
    fn oauth_client(&self) -> Option<Uuid>;
}

impl Authenticated for AuthLive {
    fn oauth_client(&self) -> Option<Uuid> {
        self.live.session.as_ref().and_then(|s| s.oauth_client_id)
    }
}

impl Authenticated for AuthUser {
    fn oauth_client(&self) -> Option<Uuid> {
        self.oauth_client
    }
}

/// A user acting through a session of their own: what managing the account
/// (password, factors, passkeys, identities, consents and grants) needs. An
/// app's access token from castellan's OAuth server, whatever its scope, is
/// refused here (GoTrue lets it do all of that).
pub struct Own<A>(pub A);

impl<A> FromRequestParts<AppState> for Own<A>
where
    A: FromRequestParts<AppState, Rejection = HttpError> + Authenticated + Send,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        let a = A::from_request_parts(parts, st).await?;
        match a.oauth_client() {
            None => Ok(Own(a)),
            Some(_) => Err(ApiError::forbidden(
                "bad_jwt",
                "an OAuth client's access token cannot be used here",
            )
            .into()),
        }
    }
}

/// An admin: a token whose `role` is in `GOTRUE_JWT_ADMIN_ROLES` (GoTrue's
/// `requireAdminCredentials`). A token naming a session needs that session
/// alive. The token is the bearer's, or the admin console's session.
pub struct AdminAuth {
    pub actor: AuditActor,
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        // The console's cookie stands in for a bearer token (when it is on).
        let token = match bearer(&parts.headers) {
            Ok(t) => t.to_string(),
            Err(missing) => crate::api::console::session_token(parts, st)?.ok_or(missing)?,
        };
        let role = st.accounts.admin_role(&token).await?;
        Ok(AdminAuth {
            actor: AuditActor::admin(&role),
        })
    }
}

/// The audience of a request: `X-JWT-AUD`, else the configured one.
pub struct RequestAud(pub String);

impl FromRequestParts<AppState> for RequestAud {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        let aud = header_aud(&parts.headers).unwrap_or_else(|| st.config.jwt.aud.clone());
        // It is stored with the user (GoTrue's varchar(255)).
        castellan_core::validate::short_text("X-JWT-AUD", &aud, 255)?;
        Ok(RequestAud(aud))
    }
}

/// `X-JWT-AUD` as sent, without a default (see [`RequestAud`] for one);
/// read from the request's headers without copying them.
pub struct SentAud(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for SentAud {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(SentAud(header_aud(&parts.headers)))
    }
}

const X_JWT_AUD: axum::http::HeaderName = axum::http::HeaderName::from_static("x-jwt-aud");

fn header_aud(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(X_JWT_AUD)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

/// Who a rate limit counts: the configured header's first value; else, when
/// the peer is a trusted proxy (`CASTELLAN_TRUSTED_PROXIES`), the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy; else the peer
/// address. `source` names which (for metrics, never the value).
#[derive(Clone)]
pub struct ClientKey {
    pub key: String,
    pub source: &'static str,
}

/// The client behind `peer`: each trusted hop of `X-Forwarded-For`, read
/// from the right, names the one before it; the first untrusted address (or
/// the last readable one) is the client. A client cannot spoof past a proxy
/// that appends what it saw.
fn forwarded_client(peer: IpAddr, xff: &str, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer;
    for hop in xff.rsplit(',') {
        if !trusted.contains(client) {
            break;
        }
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => client = ip,
            Err(_) => break,
        }
    }
    client
}

impl FromRequestParts<AppState> for ClientKey {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        // Worked out once per request, by `client_of`.
        if let Some(known) = parts.extensions.get::<ClientKey>() {
            return Ok(known.clone());
        }
        // Set by the environment only: not one of the settings that change.
        if let Some(name) = &st.config.rate_limits.header
            && let Some(v) = parts
                .headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
            && let Some(first) = v.split(',').map(str::trim).find(|s| !s.is_empty())
        {
            return Ok(ClientKey {
                key: first.to_string(),
                source: "header",
            });
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        // Several header lines are one list, in order (a proxy may add its
        // own line after the client's): the right-most entry is the last hop.
        // Read only for a trusted peer: nobody else's header counts.
        if let Some(peer) = peer
            && st.config.trusted_proxies.contains(peer)
            && parts.headers.contains_key("x-forwarded-for")
            && let xff = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| v.to_str().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(",")
            && let client = forwarded_client(peer, &xff, &st.config.trusted_proxies)
            && client != peer
        {
            return Ok(ClientKey {
                key: client.to_string(),
                source: "forwarded",
            });
        }
        Ok(ClientKey {
            key: peer.map(|p| p.to_string()).unwrap_or_default(),
            source: "peer",
        })
    }
}

/// Where a browser flow returns to: the `redirect_to` header, the
/// `redirect_to` query parameter or `Referer`, the first that is allowed
/// (site URL origin, loopback, or `GOTRUE_URI_ALLOW_LIST`); else the site URL.
pub struct RedirectTo(pub String);

/// The `redirect_to` query parameter and header [`RedirectTo`] reads (for
/// the OpenAPI document).
#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct RedirectQuery {
    /// Where the link in the email (or the browser flow) returns to; the
    /// site URL unless allowed by `GOTRUE_URI_ALLOW_LIST`.
    #[param(required = false)]
    redirect_to: Option<String>,
}

impl FromRequestParts<AppState> for RedirectTo {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        // A malformed query string (or a repeated `redirect_to`) names no target.
        let query: Option<RedirectQuery> =
            serde_urlencoded::from_str(parts.uri.query().unwrap_or_default()).ok();
        let candidate = query.and_then(|q| q.redirect_to);
        Ok(RedirectTo(crate::api::redirect_target(
            st,
            &parts.headers,
            candidate.as_deref(),
        )))
    }
}

/// Serves the request as from its client (the address the rate limits
/// count, and the user agent), which the store records on audit entries
/// and sessions.
/// The request's client (address and agent), worked out once: the rate
/// limits find its key in the request, the audit log the client in the task.
pub async fn client_of(st: &AppState, req: Request) -> (Request, castellan_core::client::Client) {
    let (mut parts, body) = req.into_parts();
    let key = ClientKey::from_request_parts(&mut parts, st).await.ok();
    let address = key.as_ref().map(|k| k.key.clone()).unwrap_or_default();
    if let Some(key) = key {
        // The rate limits count the same client without working it out again.
        parts.extensions.insert(key);
    }
    let agent = parts
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let client = castellan_core::client::Client::new(&address, agent);
    (Request::from_parts(parts, body), client)
}

/// A feature a route needs switched on; off, the request is refused
/// before anything else is read (GoTrue's `require…Enabled` middlewares).
pub trait Feature {
    fn on(st: &AppState) -> Result<(), ApiError>;
}

/// Extracts only when the feature `F` is on.
pub struct On<F: Feature>(std::marker::PhantomData<F>);

impl<F: Feature> FromRequestParts<AppState> for On<F> {
    type Rejection = HttpError;

    async fn from_request_parts(_: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        F::on(st)
            .map(|_| On(std::marker::PhantomData))
            .map_err(HttpError)
    }
}

#[cfg(test)]
mod tests {
    use super::{escapes_nul, forwarded_client};

    fn proxies(list: &str) -> castellan_core::config::TrustedProxies {
        let vars = [("CASTELLAN_TRUSTED_PROXIES".to_string(), list.to_string())].into();
        castellan_core::Config::from_vars(&vars)
            .unwrap()
            .trusted_proxies
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let lo = proxies("127.0.0.0/8,::1");
        // A trusted proxy names the client.
        assert_eq!(
            forwarded_client(ip("127.0.0.1"), "203.0.113.9", &lo),
            ip("203.0.113.9")
        );
        // A private peer that is not configured is the client itself.
        assert_eq!(
            forwarded_client(ip("10.1.2.3"), "203.0.113.9", &lo),
            ip("10.1.2.3")
        );
        // Entries a client wrote left of what the proxy appended are ignored.
        assert_eq!(
            forwarded_client(ip("127.0.0.1"), "1.1.1.1, 203.0.113.9", &lo),
            ip("203.0.113.9")
        );
        // A chain of trusted proxies is walked to the first untrusted hop.
        let two = proxies("127.0.0.1,10.0.0.0/8");
        assert_eq!(
            forwarded_client(ip("127.0.0.1"), "1.1.1.1, 203.0.113.9, 10.0.0.5", &two),
            ip("203.0.113.9")
        );
        // Garbage stops the walk at the last address known.
        assert_eq!(
            forwarded_client(ip("127.0.0.1"), "x, nonsense", &lo),
            ip("127.0.0.1")
        );
        // `none` trusts nobody, loopback included.
        assert_eq!(
            forwarded_client(ip("127.0.0.1"), "203.0.113.9", &proxies("none")),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn finds_escaped_nuls_only() {
        assert!(escapes_nul(br#"{"email":"a\u0000@b.co"}"#));
        assert!(escapes_nul(br#"{"data":{"k\u0000":1}}"#));
        assert!(escapes_nul(br#"{"a":"\\\u0000"}"#));
        // An escaped backslash, then the text "u0000".
        assert!(!escapes_nul(br#"{"a":"\\u0000"}"#));
        assert!(!escapes_nul(br#"{"a":"\u0001 and \n"}"#));
        assert!(!escapes_nul(b"\\"));
    }
}
