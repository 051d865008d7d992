use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::server::AppState;

use castellan_core::config::OAUTH_PROVIDERS;

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
        external.insert(p.into(), json!(st.external.broker().switched_on(p)));
    }
    external.insert("email".into(), json!(c.external_email_enabled));
    external.insert("phone".into(), json!(c.external_phone_enabled));
    external.insert(
        "zoom".into(),
        json!(st.external.broker().switched_on("zoom")),
    );
    Json(Settings {
        external,
        disable_signup: c.disable_signup,
        mailer_autoconfirm: c.mailer_autoconfirm,
        phone_autoconfirm: c.sms_autoconfirm,
        sms_provider: c.sms.provider.clone(),
        saml_enabled: false,
        saml_private_key_next_configured: false,
        passkeys_enabled: st.passkeys.enabled(),
    })
}
