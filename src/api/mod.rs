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
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::server::AppState;
use castellan_actors::session_manager::TokenGrant;

pub fn routes() -> Router<AppState> {
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
}

/// GoTrue's token response.
pub fn token_response(g: &TokenGrant, weak_password: Option<Value>) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut body = json!({
        "access_token": g.access_token,
        "token_type": "bearer",
        "expires_in": g.expires_at - now,
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
    let cfg = &st.ctx.config;
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
    .find(|c| castellan_core::redirect::is_allowed(c, &cfg.site_url, &cfg.uri_allow_list))
    .unwrap_or_else(|| cfg.site_url.clone())
}
