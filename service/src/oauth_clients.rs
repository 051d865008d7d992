//! The clients of castellan's OAuth 2.1 server (GoTrue's "OAuth server"):
//! registered by an admin (`/admin/oauth/clients`) or, when allowed, by
//! anyone (RFC 7591 dynamic registration). GoTrue's validation and words;
//! a confidential client's secret is shown once and kept as its SHA-256.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use castellan_core::store::{OAuthClient, Page};
use castellan_core::{ApiError, ApiResult};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::context::Ctx;

const AUTH_METHODS: [&str; 3] = ["none", "client_secret_basic", "client_secret_post"];

/// A registration's fields, as the client or admin sent them.
#[derive(Debug, Default)]
pub struct Registration {
    pub redirect_uris: Vec<String>,
    pub client_type: String,
    pub token_endpoint_auth_method: String,
    pub grant_types: Vec<String>,
    pub client_name: String,
    pub client_uri: String,
    pub logo_uri: String,
}

/// An update's fields: each absent one is kept.
#[derive(Debug, Default)]
pub struct Changes {
    pub redirect_uris: Option<Vec<String>>,
    pub grant_types: Option<Vec<String>>,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub logo_uri: Option<String>,
    pub token_endpoint_auth_method: Option<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.redirect_uris.is_none()
            && self.grant_types.is_none()
            && self.client_name.is_none()
            && self.client_uri.is_none()
            && self.logo_uri.is_none()
            && self.token_endpoint_auth_method.is_none()
    }
}

#[derive(Clone)]
pub struct OAuthClients {
    ctx: Arc<Ctx>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::validation(message)
}

fn not_found() -> ApiError {
    ApiError::not_found("oauth_client_not_found", "OAuth client not found")
}

/// The secret's stored form: SHA-256, base64url (GoTrue's).
pub fn secret_hash(secret: &str) -> String {
    B64.encode(Sha256::digest(secret.as_bytes()))
}

fn new_secret() -> String {
    B64.encode(castellan_core::crypto::random_bytes::<32>())
}

/// RFC 6749 §3.1.2 and OAuth 2.1's rules, as GoTrue applies them: absolute,
/// no fragment, no scheme that runs code, plain HTTP only on loopback.
fn redirect_uri(uri: &str) -> Result<(), String> {
    if uri.is_empty() {
        return Err("redirect URI cannot be empty".into());
    }
    if uri.len() > 2048 {
        return Err("redirect URI cannot exceed 2048 characters".into());
    }
    // Checked as stored: the URL parser would quietly drop these, and a
    // redirect to the stored text could not be sent.
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("whitespace and control characters are not allowed".into());
    }
    let u = url::Url::parse(uri).map_err(|_| "invalid URL format".to_string())?;
    if u.host_str().is_none_or(str::is_empty) {
        return Err("must have scheme and host".into());
    }
    let scheme = u.scheme();
    if ["javascript", "data", "file", "vbscript", "about", "blob"].contains(&scheme) {
        return Err(format!(
            "scheme '{scheme}' is not allowed for security reasons"
        ));
    }
    let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if scheme == "http" && !loopback {
        return Err("HTTP scheme only allowed for localhost".into());
    }
    if u.fragment().is_some() {
        return Err("fragment not allowed in redirect URI".into());
    }
    if uri.contains(',') {
        // The list is kept comma-separated.
        return Err("a comma is not allowed in a redirect URI".into());
    }
    Ok(())
}

fn redirect_uris(uris: &[String]) -> ApiResult<()> {
    if uris.is_empty() {
        return Err(invalid("redirect_uris is required"));
    }
    if uris.len() > 10 {
        return Err(invalid("redirect_uris cannot exceed 10 items"));
    }
    for uri in uris {
        redirect_uri(uri).map_err(|e| invalid(format!("invalid redirect_uri '{uri}': {e}")))?;
    }
    Ok(())
}

fn grant_types(types: &[String]) -> ApiResult<()> {
    if types.is_empty() {
        return Err(invalid("grant_types cannot be empty"));
    }
    if types
        .iter()
        .any(|t| t != "authorization_code" && t != "refresh_token")
    {
        return Err(invalid(
            "grant_types must only contain 'authorization_code' and/or 'refresh_token'",
        ));
    }
    let mut distinct = types.to_vec();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != types.len() {
        return Err(invalid("grant_types must not repeat a grant type"));
    }
    Ok(())
}

/// A name and two URLs: GoTrue's lengths; URLs that parse and are web
/// pages (beyond GoTrue, which takes any scheme: a consent page shows them,
/// and `javascript:` there would be a stored script).
fn descriptive(name: &str, client_uri: &str, logo_uri: &str) -> ApiResult<()> {
    if name.len() > 1024 {
        return Err(invalid("client_name cannot exceed 1024 characters"));
    }
    for (field, value) in [("client_uri", client_uri), ("logo_uri", logo_uri)] {
        if value.is_empty() {
            continue;
        }
        if value.len() > 2048 {
            return Err(invalid(format!("{field} cannot exceed 2048 characters")));
        }
        let web = url::Url::parse(value)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some());
        if web.is_none() {
            return Err(invalid(format!("{field} must be a valid URL")));
        }
    }
    Ok(())
}

fn auth_method(method: &str) -> ApiResult<()> {
    if !AUTH_METHODS.contains(&method) {
        return Err(invalid(format!(
            "token_endpoint_auth_method must be one of: [{}]",
            AUTH_METHODS.join(" ")
        )));
    }
    Ok(())
}

/// The client type a method implies (`none`: public).
fn type_of(method: &str) -> &'static str {
    if method == "none" {
        "public"
    } else {
        "confidential"
    }
}

/// Text that is stored and shown back: no NUL (PostgreSQL refuses it).
fn no_nul(fields: &[&str]) -> ApiResult<()> {
    if fields.iter().any(|f| f.contains('\0')) {
        return Err(invalid("values must not contain NUL"));
    }
    Ok(())
}

fn optional(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

impl Registration {
    /// GoTrue's checks, in its order; the client type and method it leads to.
    fn settle(&self) -> ApiResult<(&'static str, String)> {
        redirect_uris(&self.redirect_uris)?;
        if !self.grant_types.is_empty() {
            grant_types(&self.grant_types)?;
        }
        descriptive(&self.client_name, &self.client_uri, &self.logo_uri)?;
        let mut text: Vec<&str> = vec![&self.client_name, &self.client_uri, &self.logo_uri];
        text.extend(self.redirect_uris.iter().map(String::as_str));
        no_nul(&text)?;
        let client_type = match self.client_type.as_str() {
            "" => None,
            "public" => Some("public"),
            "confidential" => Some("confidential"),
            _ => {
                return Err(invalid("client_type must be 'public' or 'confidential'"));
            }
        };
        let method = self.token_endpoint_auth_method.as_str();
        if !method.is_empty() {
            auth_method(method)?;
        }
        let client_type = match (client_type, method) {
            (Some(t), "") => t,
            (Some(t), m) if t == type_of(m) => t,
            (Some(t), m) => {
                return Err(invalid(format!(
                    "client_type '{t}' is inconsistent with token_endpoint_auth_method '{m}' (expected client_type '{}')",
                    type_of(m)
                )));
            }
            (None, "") => "confidential",
            (None, m) => type_of(m),
        };
        let method = match (method, client_type) {
            ("", "public") => "none".to_string(),
            ("", _) => "client_secret_basic".to_string(),
            (m, _) => m.to_string(),
        };
        Ok((client_type, method))
    }
}

impl OAuthClients {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    /// The server's settings, or GoTrue's 404 when it is off.
    pub fn on(&self) -> ApiResult<&castellan_core::config::OAuthServerConfig> {
        self.ctx
            .config
            .oauth_server
            .as_ref()
            .ok_or_else(|| ApiError::not_found("feature_disabled", "OAuth server is disabled"))
    }

    /// `POST /oauth/clients/register`: only when the operator allows it
    /// (checked before the body is read, as GoTrue does).
    pub fn dynamic_allowed(&self) -> ApiResult<()> {
        if !self.on()?.allow_dynamic_registration {
            return Err(ApiError::forbidden(
                "oauth_dynamic_client_registration_disabled",
                "Dynamic client registration is not enabled",
            ));
        }
        Ok(())
    }

    /// A new client and, for a confidential one, its secret (shown once).
    pub async fn register(
        &self,
        r: Registration,
        registration_type: &'static str,
    ) -> ApiResult<(OAuthClient, Option<String>)> {
        let (client_type, method) = r.settle()?;
        let secret = (client_type == "confidential").then(new_secret);
        let now = self.ctx.config.clock.now();
        let grants = match r.grant_types.is_empty() {
            true => vec!["authorization_code".into(), "refresh_token".into()],
            false => r.grant_types,
        };
        let client = OAuthClient {
            id: Uuid::new_v4(),
            client_secret_hash: secret.as_deref().map(secret_hash),
            registration_type: registration_type.into(),
            client_type: client_type.into(),
            token_endpoint_auth_method: method,
            redirect_uris: r.redirect_uris.join(","),
            grant_types: grants.join(","),
            client_name: optional(r.client_name),
            client_uri: optional(r.client_uri),
            logo_uri: optional(r.logo_uri),
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.ctx.store.begin().await?;
        if registration_type == "dynamic"
            && tx.dynamic_oauth_clients().await? >= self.on()?.max_dynamic_clients
        {
            return Err(ApiError::forbidden(
                "oauth_dynamic_client_registration_disabled",
                "Dynamic client registration is full: an admin must delete clients first",
            ));
        }
        tx.insert_oauth_client(&client).await?;
        tx.commit().await?;
        metrics::counter!("castellan_oauth_clients_total", "op" => "register", "type" => registration_type)
            .increment(1);
        Ok((client, secret))
    }

    pub async fn get(&self, id: Uuid) -> ApiResult<OAuthClient> {
        self.ctx.store.oauth_client(id).await?.ok_or_else(not_found)
    }

    pub async fn list(&self, page: Page) -> ApiResult<(Vec<OAuthClient>, i64)> {
        Ok(self.ctx.store.oauth_clients(page).await?)
    }

    pub async fn update(&self, id: Uuid, c: Changes) -> ApiResult<OAuthClient> {
        // GoTrue finds the client before it reads the changes.
        self.get(id).await?;
        if c.is_empty() {
            return Err(invalid("No fields provided for update"));
        }
        if let Some(uris) = &c.redirect_uris {
            if uris.is_empty() {
                return Err(invalid("redirect_uris cannot be empty"));
            }
            redirect_uris(uris)?;
        }
        if let Some(types) = &c.grant_types {
            grant_types(types)?;
        }
        let text = |o: &Option<String>| o.clone().unwrap_or_default();
        descriptive(
            &text(&c.client_name),
            &text(&c.client_uri),
            &text(&c.logo_uri),
        )?;
        no_nul(&[
            &text(&c.client_name),
            &text(&c.client_uri),
            &text(&c.logo_uri),
        ])?;
        if let Some(m) = &c.token_endpoint_auth_method {
            auth_method(m).map_err(|_| {
                invalid(format!(
                    "invalid token_endpoint_auth_method: must be one of [{}]",
                    AUTH_METHODS.join(" ")
                ))
            })?;
        }
        let mut tx = self.ctx.store.begin().await?;
        let mut client = tx
            .oauth_client_for_update(id)
            .await?
            .ok_or_else(not_found)?;
        if let Some(m) = c.token_endpoint_auth_method {
            if type_of(&m) != client.client_type {
                let valid = match client.client_type.as_str() {
                    "public" => "[none]",
                    _ => "[client_secret_basic client_secret_post]",
                };
                return Err(invalid(format!(
                    "token_endpoint_auth_method '{m}' is not valid for client_type '{}'; valid methods: {valid}",
                    client.client_type
                )));
            }
            client.token_endpoint_auth_method = m;
        }
        if let Some(uris) = c.redirect_uris {
            client.redirect_uris = uris.join(",");
        }
        if let Some(types) = c.grant_types {
            client.grant_types = types.join(",");
        }
        // GoTrue's: an empty value clears the field.
        if let Some(v) = c.client_name {
            client.client_name = optional(v);
        }
        if let Some(v) = c.client_uri {
            client.client_uri = optional(v);
        }
        if let Some(v) = c.logo_uri {
            client.logo_uri = optional(v);
        }
        client.updated_at = self.ctx.config.clock.now();
        tx.update_oauth_client(&client).await?;
        tx.commit().await?;
        Ok(client)
    }

    pub async fn delete(&self, id: Uuid) -> ApiResult<()> {
        let now = self.ctx.config.clock.now();
        let mut tx = self.ctx.store.begin().await?;
        if !tx.delete_oauth_client(id, now).await? {
            return Err(not_found());
        }
        // A deleted client's tokens stop working with it.
        let ended = tx.end_oauth_client_grants(id, now).await?;
        tx.commit().await?;
        tracing::info!(client_id = %id, sessions_ended = ended, "OAuth client deleted");
        metrics::counter!("castellan_oauth_clients_total", "op" => "delete", "type" => "any")
            .increment(1);
        Ok(())
    }

    /// A confidential client's new secret; the old one stops working.
    pub async fn regenerate_secret(&self, id: Uuid) -> ApiResult<(OAuthClient, String)> {
        let mut tx = self.ctx.store.begin().await?;
        let mut client = tx
            .oauth_client_for_update(id)
            .await?
            .ok_or_else(not_found)?;
        if client.client_type != "confidential" {
            return Err(invalid("Cannot regenerate secret for public client"));
        }
        let secret = new_secret();
        client.client_secret_hash = Some(secret_hash(&secret));
        client.updated_at = self.ctx.config.clock.now();
        tx.update_oauth_client(&client).await?;
        tx.commit().await?;
        Ok((client, secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_follow_oauth_2_1() {
        for ok in [
            "https://app.example.com/callback",
            "http://localhost:3000/cb",
            "http://127.0.0.1/cb",
            "myapp://callback",
        ] {
            assert!(redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/relative",
            "http://app.example.com/cb",
            "javascript://x/alert(1)",
            "https://app.example.com/cb#frag",
            "https://a.example.com/a,b",
        ] {
            assert!(redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_type_follows_the_method_unless_given() {
        let r = |t: &str, m: &str| Registration {
            redirect_uris: vec!["https://a.example.com/cb".into()],
            client_type: t.into(),
            token_endpoint_auth_method: m.into(),
            ..Default::default()
        };
        let settled = |t, m| r(t, m).settle().ok();
        assert_eq!(
            settled("", ""),
            Some(("confidential", "client_secret_basic".into()))
        );
        assert_eq!(settled("public", ""), Some(("public", "none".into())));
        assert_eq!(settled("", "none"), Some(("public", "none".into())));
        assert_eq!(
            settled("", "client_secret_post"),
            Some(("confidential", "client_secret_post".into()))
        );
        assert_eq!(settled("public", "client_secret_basic"), None);
        assert_eq!(settled("private", ""), None);
        assert_eq!(settled("", "tls_client_auth"), None);
    }

    #[test]
    fn a_secret_is_kept_as_its_sha256() {
        assert_eq!(
            secret_hash("abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }
}
