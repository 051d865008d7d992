//! The routes, one module per endpoint family. Every route is served at `/`
//! and under `/auth/v1` (where supabase-js and supabase-py call it).

mod admin;
mod health;
mod invite;
mod logout;
mod mail;
mod settings;
mod signup;
mod token;
mod user;
mod verify;

use axum::Router;
use axum::http::Method;
use axum::routing::{get, post};
use castellan_actors::rate_limiter::Bucket;
use serde_json::{Value, json};

use crate::limit::{Pick, RouteLimit};
use crate::server::AppState;
use castellan_actors::sessions::TokenGrant;

/// Every rate-limited route, in one place (GoTrue declares each limit beside
/// its route). The `limit` layer looks each request up here by its matched
/// route and method; a test walks this table.
pub const RATE_LIMITS: &[RouteLimit] = &[
    // Anonymous sign-ins (neither email nor phone) have a bucket of their own.
    RouteLimit::new("/signup", Method::POST, Pick::SignUp),
    RouteLimit::new("/token", Method::POST, Pick::Fixed(Bucket::TokenRefresh)),
    RouteLimit::new("/verify", Method::GET, Pick::Fixed(Bucket::Verify)),
    RouteLimit::new("/verify", Method::POST, Pick::Fixed(Bucket::Verify)),
    RouteLimit::new("/otp", Method::POST, Pick::Fixed(Bucket::Otp)),
    RouteLimit::new("/magiclink", Method::POST, Pick::Fixed(Bucket::MagicLink)),
    RouteLimit::new("/recover", Method::POST, Pick::Fixed(Bucket::Recover)),
    RouteLimit::new("/resend", Method::POST, Pick::Fixed(Bucket::Resend)),
    RouteLimit::new("/user", Method::PUT, Pick::Fixed(Bucket::UserUpdate)),
];

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/health", get(health::health))
        .route("/settings", get(settings::settings))
        .route("/signup", post(signup::signup))
        .route("/token", post(token::token))
        .route("/user", get(user::get_user).put(user::update_user))
        .route("/logout", post(logout::logout))
        .route(
            "/verify",
            get(verify::verify_link).post(verify::verify_json),
        )
        .route("/recover", post(mail::recover))
        .route("/otp", post(mail::otp))
        .route("/magiclink", post(mail::otp))
        .route("/resend", post(mail::resend))
        .route("/reauthenticate", get(user::reauthenticate))
        .route("/invite", post(invite::invite))
        .merge(admin::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::limit::limit,
        ))
}

/// GoTrue's token response.
pub fn token_response(g: &TokenGrant, weak_password: Option<Value>) -> Value {
    let mut body = json!({
        "access_token": g.access_token,
        "token_type": "bearer",
        "expires_in": g.expires_in,
        "expires_at": g.expires_at,
        "refresh_token": g.refresh_token,
        "user": g.user.to_json(&g.identities),
    });
    if let Some(w) = weak_password {
        body["weak_password"] = w;
    }
    body
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
