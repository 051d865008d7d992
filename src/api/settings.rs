use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

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

/// What this server offers: GoTrue's settings document.
#[derive(Serialize, ToSchema)]
pub struct Settings {
    /// Each sign-in method and whether it is enabled, in GoTrue's order.
    #[schema(value_type = HashMap<String, bool>)]
    external: Map<String, Value>,
    disable_signup: bool,
    mailer_autoconfirm: bool,
    phone_autoconfirm: bool,
    sms_provider: String,
    saml_enabled: bool,
    saml_private_key_next_configured: bool,
    passkeys_enabled: bool,
}

#[utoipa::path(get, path = "/settings", tag = "settings", responses((status = 200, body = Settings)))]
pub async fn settings(State(st): State<AppState>) -> Json<Settings> {
    let c = &st.config;
    let mut external = Map::new();
    external.insert("anonymous_users".into(), json!(c.anonymous_users_enabled));
    for p in OAUTH_PROVIDERS {
        external.insert(p.into(), json!(false));
    }
    external.insert("email".into(), json!(c.external_email_enabled));
    external.insert("phone".into(), json!(c.external_phone_enabled));
    external.insert("zoom".into(), json!(false));
    Json(Settings {
        external,
        disable_signup: c.disable_signup,
        mailer_autoconfirm: c.mailer_autoconfirm,
        phone_autoconfirm: c.sms_autoconfirm,
        sms_provider: c.sms.provider.clone(),
        saml_enabled: false,
        saml_private_key_next_configured: false,
        passkeys_enabled: false,
    })
}
