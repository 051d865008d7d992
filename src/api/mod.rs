//! The routes, one module per endpoint family. Every route is served at `/`
//! and under `/auth/v1` (where supabase-js and supabase-py call it).

mod admin;
pub(crate) mod console;
mod external;
pub(crate) mod factors;
mod health;
mod invite;
mod logout;
mod mail;
pub(crate) mod oauth_server;
pub(crate) mod passkeys;
mod ready;
mod settings;
mod signup;
mod token;
mod user;
mod verify;
mod well_known;

use axum::Router;
use axum::http::Method;
use castellan_core::models::UserView;
use castellan_service::actors::rate_limiter::Bucket;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ErrorBody, WeakPassword};
use crate::limit::{Captcha, Pick, RouteLimit};
use crate::server::AppState;
use castellan_service::sessions::TokenGrant;

/// Every guarded route, in one place (GoTrue declares each guard beside
/// its route): its rate limit, and whether it asks for a CAPTCHA when
/// CAPTCHA protection is on. The `limit` layer looks each request up here
/// by its matched route and method; a test walks this table.
pub const RATE_LIMITS: &[RouteLimit] = &[
    // Anonymous sign-ins (neither email nor phone) have a bucket of their own.
    RouteLimit::with_captcha("/signup", Method::POST, Pick::SignUp, Captcha::Yes),
    RouteLimit::with_captcha("/token", Method::POST, Pick::Token, Captcha::Grants),
    RouteLimit::new("/verify", Method::GET, Pick::Fixed(Bucket::Verify)),
    RouteLimit::new("/verify", Method::POST, Pick::Fixed(Bucket::Verify)),
    RouteLimit::with_captcha("/otp", Method::POST, Pick::Fixed(Bucket::Otp), Captcha::Yes),
    RouteLimit::with_captcha(
        "/magiclink",
        Method::POST,
        Pick::Fixed(Bucket::MagicLink),
        Captcha::Yes,
    ),
    RouteLimit::with_captcha(
        "/recover",
        Method::POST,
        Pick::Fixed(Bucket::Recover),
        Captcha::Yes,
    ),
    RouteLimit::with_captcha(
        "/resend",
        Method::POST,
        Pick::Fixed(Bucket::Resend),
        Captcha::Yes,
    ),
    RouteLimit::new("/user", Method::PUT, Pick::Fixed(Bucket::UserUpdate)),
    // The console's sign-in is a password sign-in: /token's bucket, and a
    // CAPTCHA when protection is on (else it would be a way around it).
    RouteLimit::with_captcha(
        "/console/session",
        Method::POST,
        Pick::Fixed(Bucket::TokenRefresh),
        Captcha::Yes,
    ),
    RouteLimit::new(
        "/console/session/mfa",
        Method::POST,
        Pick::Fixed(Bucket::MfaVerify),
    ),
    RouteLimit::new("/authorize", Method::GET, Pick::Fixed(Bucket::Authorize)),
    RouteLimit::new("/callback", Method::GET, Pick::Fixed(Bucket::Authorize)),
    RouteLimit::new("/callback", Method::POST, Pick::Fixed(Bucket::Authorize)),
    RouteLimit::new(
        "/user/identities/authorize",
        Method::GET,
        Pick::Fixed(Bucket::Authorize),
    ),
    RouteLimit::new(
        "/oauth/clients/register",
        Method::POST,
        Pick::Fixed(Bucket::OAuthClientRegister),
    ),
    RouteLimit::new(
        "/oauth/authorize",
        Method::GET,
        Pick::Fixed(Bucket::Authorize),
    ),
    RouteLimit::new(
        "/oauth/token",
        Method::POST,
        Pick::Fixed(Bucket::TokenRefresh),
    ),
    RouteLimit::new(
        "/oauth/revoke",
        Method::POST,
        Pick::Fixed(Bucket::TokenRefresh),
    ),
    RouteLimit::with_captcha(
        "/passkeys/authentication/options",
        Method::POST,
        Pick::Fixed(Bucket::Passkey),
        Captcha::Yes,
    ),
    RouteLimit::new(
        "/factors/{factor_id}/challenge",
        Method::POST,
        Pick::Fixed(Bucket::MfaChallenge),
    ),
    RouteLimit::new(
        "/factors/{factor_id}/verify",
        Method::POST,
        Pick::Fixed(Bucket::MfaVerify),
    ),
];

/// The routes and the OpenAPI document describing them, built from the
/// same registrations so neither can drift from the other.
pub fn routes(state: AppState) -> (Router<AppState>, Document) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(ready::ready))
        .routes(routes!(settings::settings))
        .routes(routes!(signup::signup))
        .routes(routes!(token::token))
        .routes(routes!(user::get_user, user::update_user))
        .routes(routes!(logout::logout))
        .routes(routes!(factors::enroll))
        .routes(routes!(factors::challenge))
        .routes(routes!(factors::verify))
        .routes(routes!(factors::unenroll))
        .routes(routes!(oauth_server::register))
        .routes(routes!(oauth_server::authorize))
        .routes(routes!(oauth_server::details))
        .routes(routes!(oauth_server::consent))
        .routes(routes!(oauth_server::token))
        .routes(routes!(oauth_server::revoke))
        .routes(routes!(oauth_server::userinfo, oauth_server::userinfo_post))
        .routes(routes!(
            oauth_server::grants_list,
            oauth_server::grants_revoke
        ))
        .routes(routes!(passkeys::registration_options))
        .routes(routes!(passkeys::registration_verify))
        .routes(routes!(passkeys::authentication_options))
        .routes(routes!(passkeys::authentication_verify))
        .routes(routes!(passkeys::list))
        .routes(routes!(passkeys::rename, passkeys::delete))
        .routes(routes!(verify::verify_link, verify::verify_json))
        .routes(routes!(mail::recover))
        .routes(routes!(mail::otp))
        .routes(routes!(mail::magiclink))
        .routes(routes!(mail::resend))
        .routes(routes!(user::reauthenticate))
        .routes(routes!(invite::invite))
        .routes(routes!(external::authorize))
        .routes(routes!(external::callback_get, external::callback_post))
        .routes(routes!(external::link_identity))
        .routes(routes!(external::unlink_identity))
        .routes(routes!(external::sso))
        .routes(routes!(external::sso_metadata))
        .routes(routes!(external::sso_acs))
        .routes(routes!(well_known::jwks))
        .routes(routes!(well_known::openid_configuration))
        .routes(routes!(well_known::oauth_authorization_server))
        .merge(admin::routes())
        .merge(console::routes(&state))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::limit::limit,
        ))
        .split_for_parts()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "castellan",
        description = "The Supabase Auth (GoTrue) HTTP API, as castellan serves it. Every path is also served under /auth/v1."
    ),
    components(schemas(ErrorBody, WeakPassword)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// `Authorization: Bearer <JWT>`: a user's access token, or a `service_role`
/// token for the admin routes.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The `X-JWT-AUD` header: the audience a request acts for (GoTrue's
/// multi-audience setups); the configured one when absent.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct AudienceHeader {
    #[serde(rename = "X-JWT-AUD")]
    _aud: Option<String>,
}

/// An empty JSON object, GoTrue's answer when there is nothing to say
/// (and the same whether or not an address has an account).
#[derive(Serialize, ToSchema)]
pub struct Empty {}

/// GoTrue's token response.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    expires_at: i64,
    refresh_token: String,
    user: UserView,
    /// Why the password is weak (GoTrue's `GOTRUE_PASSWORD_REQUIRED_CHARACTERS`
    /// and minimum length): present, null when it is not, after a password
    /// sign-in; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    weak_password: Option<Option<Value>>,
    /// An external sign-in's provider tokens (the PKCE exchange of one).
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_refresh_token: Option<String>,
}

pub fn token_response(g: TokenGrant) -> TokenResponse {
    TokenResponse {
        user: g.user.view(Some(&g.identities)),
        access_token: g.access_token,
        token_type: "bearer",
        expires_in: g.expires_in,
        expires_at: g.expires_at,
        refresh_token: g.refresh_token,
        weak_password: None,
        provider_token: None,
        provider_refresh_token: None,
    }
}

/// A redirect as GoTrue's (Go's `http.Redirect`) is: the status, the
/// `Location`, and a small HTML body linking to it.
pub fn redirect(status: axum::http::StatusCode, location: String) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let escaped = location
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;");
    let text = status.canonical_reason().unwrap_or("Redirect");
    let body = format!("<a href=\"{escaped}\">{text}</a>.\n\n");
    let headers = [
        (header::LOCATION, location),
        (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
    ];
    (status, headers, body).into_response()
}

/// GoTrue's `redirect_to` resolution: the `redirect_to` header, else the
/// `redirect_to` query parameter (`candidate`), else `Referer`, each only
/// when allowed; else the site URL.
pub fn redirect_target(
    st: &AppState,
    headers: &axum::http::HeaderMap,
    candidate: Option<&str>,
) -> String {
    let cfg = &st.config;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
    };
    let query = candidate.map(str::to_string);
    [
        header("redirect_to").map(str::to_string),
        query,
        header("referer").map(str::to_string),
    ]
    .into_iter()
    .flatten()
    .find_map(|c| castellan_core::redirect::allowed(&c, &cfg.site_url, &cfg.uri_allow_list))
    .unwrap_or_else(|| cfg.site_url.clone())
}
