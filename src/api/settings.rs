use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::server::AppState;

/// The external providers GoTrue reports, in its order. OAuth providers
/// arrive with their own issue; until then they are reported disabled.
const OAUTH_PROVIDERS: [&str; 22] = [
    "apple",
    "azure",
    "bitbucket",
    "discord",
    "facebook",
    "snapchat",
    "figma",
    "fly",
    "github",
    "gitlab",
    "google",
    "keycloak",
    "kakao",
    "linkedin",
    "linkedin_oidc",
    "notion",
    "spotify",
    "slack",
    "slack_oidc",
    "workos",
    "twitch",
    "twitter",
];

pub async fn settings(State(st): State<AppState>) -> Json<Value> {
    let c = &st.config;
    let mut external = serde_json::Map::new();
    external.insert("anonymous_users".into(), json!(c.anonymous_users_enabled));
    for p in OAUTH_PROVIDERS {
        external.insert(p.into(), json!(false));
    }
    external.insert("email".into(), json!(c.external_email_enabled));
    external.insert("phone".into(), json!(c.external_phone_enabled));
    external.insert("zoom".into(), json!(false));
    Json(json!({
        "external": external,
        "disable_signup": c.disable_signup,
        "mailer_autoconfirm": c.mailer_autoconfirm,
        "phone_autoconfirm": c.sms_autoconfirm,
        "sms_provider": c.sms_provider,
        "saml_enabled": false,
        "saml_private_key_next_configured": false,
        "passkeys_enabled": false,
    }))
}
