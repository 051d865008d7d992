//! The routes, one module per endpoint family. Every route is served at `/`
//! and under `/auth/v1` (where supabase-js and supabase-py call it).

mod admin;
mod health;
mod logout;
mod settings;
mod signup;
mod token;
mod user;

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
