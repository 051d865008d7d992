//! An OpenID Connect issuer on loopback: discovery, a JWKS with a key the
//! test holds (and counts the reads of), Apple's token endpoint, and
//! tokens minted with that key or any other.
// Shared by test crates that each use a part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::get;
use castellan_core::crypto::jwk::{Jwk, Key, KeyKind, generate};
use serde_json::{Value, json};

/// An OIDC issuer: discovery, its JWKS, and how often the JWKS was read.
#[derive(Clone)]
pub struct Issuer {
    pub url: String,
    pub key: Arc<Key>,
    jwks_reads: Arc<AtomicUsize>,
}

pub fn key(kind: KeyKind) -> Key {
    serde_json::from_value::<Jwk>(generate(kind))
        .unwrap()
        .load()
        .unwrap()
}

impl Issuer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = Issuer {
            url: url.clone(),
            key: Arc::new(key(KeyKind::Es256)),
            jwks_reads: Arc::default(),
        };
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks")});
        let jwks = json!({"keys": [issuer.key.public.clone().unwrap()]});
        let reads = issuer.jwks_reads.clone();
        let minter = issuer.clone();
        let azure_minter = issuer.clone();
        let tenants = url.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/jwks",
                get(move || async move {
                    reads.fetch_add(1, Ordering::SeqCst);
                    axum::Json(jwks)
                }),
            )
            // Apple's token endpoint: the code names the user, who is
            // described only in the ID token (`email_verified` a string, as Apple sends it).
            .route(
                "/auth/token",
                axum::routing::post(move |body: String| async move {
                    let form: std::collections::HashMap<String, String> =
                        serde_urlencoded::from_str(&body).unwrap_or_default();
                    let code = form.get("code").cloned().unwrap_or_default();
                    let id_token = minter.token(json!({
                        "sub": code, "aud": "apple-client",
                        "email": format!("{code}@privaterelay.appleid.com"), "email_verified": "true"
                    }));
                    axum::Json(json!({"access_token": "apple-at", "token_type": "bearer", "id_token": id_token}))
                }),
            );
        // Azure's multi-tenant endpoint: each tenant is an issuer of its own
        // (sharing the one key), and the code `user@tenant[@tid]` names the
        // user, the tenant whose issuer signs, and the `tid` it claims.
        let app = app
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(move |axum::extract::Path(tenant): axum::extract::Path<String>| async move {
                    axum::Json(json!({"issuer": format!("{tenants}/{tenant}/v2.0"), "jwks_uri": format!("{tenants}/jwks")}))
                }),
            )
            .route(
                "/common/oauth2/v2.0/token",
                axum::routing::post(move |body: String| async move {
                    let form: std::collections::HashMap<String, String> =
                        serde_urlencoded::from_str(&body).unwrap_or_default();
                    let code = form.get("code").cloned().unwrap_or_default();
                    let parts: Vec<&str> = code.split('@').collect();
                    let (user, tenant) = (parts[0], parts.get(1).copied().unwrap_or("t"));
                    let tid = parts.get(2).copied().unwrap_or(tenant);
                    let id_token = azure_minter.token(json!({
                        "iss": format!("{}/{tenant}/v2.0", azure_minter.url), "tid": tid,
                        "sub": user, "aud": "azure-client", "email": format!("{user}@{tenant}.example.com"),
                    }));
                    axum::Json(json!({"access_token": "azure-at", "token_type": "bearer", "id_token": id_token}))
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        issuer
    }

    /// A token with these claims over the defaults, signed by `with`.
    pub fn token_by(&self, with: &Key, over: Value) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut c = json!({
            "iss": self.url, "sub": "kc-user-1", "aud": "kc-client",
            "iat": now, "exp": now + 300,
            "email": "kc@example.com", "email_verified": true, "name": "K. C."
        });
        for (k, v) in over.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let mut header = jsonwebtoken::Header::new(with.alg);
        header.kid = Some(with.kid.clone());
        jsonwebtoken::encode(&header, &c, with.encoding.as_ref().unwrap()).unwrap()
    }

    pub fn token(&self, over: Value) -> String {
        self.token_by(&self.key, over)
    }

    pub fn reads(&self) -> usize {
        self.jwks_reads.load(Ordering::SeqCst)
    }
}
