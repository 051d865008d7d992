//! castellan as an OAuth 2.1 and OpenID Connect provider (issue 30): the
//! authorization code flow through the consent endpoints, the token,
//! revocation and userinfo endpoints, and the user's grants, with the
//! attacks on each (a replayed code, a stolen one, another user's consent,
//! a client that is not the session's, a deleted client).

use base64::Engine;
use castellan_core::crypto::jwk::{KeyKind, generate};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest;
use uuid::Uuid;

use crate::both;
use crate::common::{Reply, TestServer, claims, read};

const REDIRECT: &str = "https://app.example.com/cb";
const ISSUER: &str = "http://castellan.test/auth/v1";

fn on(c: &mut castellan_core::Config) {
    c.oauth_server = Some(castellan_core::config::OAuthServerConfig {
        authorization_path: "/oauth/consent".into(),
        ..Default::default()
    });
    c.site_url = "https://site.example.com".into();
    c.jwt.issuer = Some(ISSUER.into());
    c.jwt.keys = Some(json!([generate(KeyKind::Es256)]).to_string());
}

/// As `on`, with only the HS256 secret (no key to sign ID tokens with).
fn symmetric(c: &mut castellan_core::Config) {
    on(c);
    c.jwt.keys = None;
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A PKCE verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = b64(&rand::random::<[u8; 32]>());
    let challenge = b64(&sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// A registered client and what a flow needs of it.
struct Client {
    id: String,
    secret: Option<String>,
}

async fn client(t: &TestServer, body: Value) -> Client {
    let r = t
        .admin(Method::POST, "/admin/oauth/clients", Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    Client {
        id: r.body["client_id"].as_str().unwrap().into(),
        secret: r.body["client_secret"].as_str().map(str::to_string),
    }
}

async fn confidential(t: &TestServer) -> Client {
    client(
        t,
        json!({"redirect_uris": [REDIRECT], "client_name": "Example App", "client_uri": "https://app.example.com"}),
    )
    .await
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `GET /oauth/authorize` with these parameters (the query is built whole).
async fn authorize(t: &TestServer, params: &[(&str, &str)]) -> Reply {
    let mut url = reqwest::Url::parse(&t.url("/oauth/authorize")).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    read(no_redirects().get(url).send().await.unwrap()).await
}

/// The authorization id the consent page is sent with.
async fn open_request(t: &TestServer, c: &Client, scope: &str, challenge: &str) -> String {
    let r = authorize(
        t,
        &[
            ("client_id", &c.id),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", scope),
            ("state", "st-1"),
            ("nonce", "n-1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.text);
    let to = r.header("location").unwrap();
    assert!(
        to.starts_with("https://site.example.com/oauth/consent?authorization_id="),
        "{to}"
    );
    query_of(to)["authorization_id"].clone()
}

async fn approve(t: &TestServer, token: &str, id: &str) -> Reply {
    let path = format!("/oauth/authorizations/{id}/consent");
    t.request(
        Method::POST,
        &path,
        Some(token),
        Some(json!({"action": "approve"})),
    )
    .await
}

/// A user's code for `c` with `scope`, consented: (code, verifier, access token).
async fn code_for(
    t: &TestServer,
    c: &Client,
    email: &str,
    scope: &str,
) -> (String, String, String) {
    let (verifier, challenge) = pkce();
    let id = open_request(t, c, scope, &challenge).await;
    let token = user_token(t, email).await;
    let details = details(t, &token, &id).await;
    assert_eq!(details.status, 200, "{}", details.text);
    // An earlier consent covering the scopes answers at once.
    let back = match details.body["redirect_url"].as_str() {
        Some(to) => to.to_string(),
        None => {
            let r = approve(t, &token, &id).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.body["redirect_url"].as_str().unwrap().to_string()
        }
    };
    let q = query_of(&back);
    (q["code"].clone(), verifier, token)
}

/// `POST /oauth/token` as a form, authenticated by HTTP Basic.
async fn token(t: &TestServer, c: &Client, form: &[(&str, &str)]) -> Reply {
    let mut req = t.http.post(t.url("/oauth/token")).form(form);
    if let Some(secret) = &c.secret {
        req = req.basic_auth(&c.id, Some(secret));
    }
    read(req.send().await.unwrap()).await
}

async fn exchange(t: &TestServer, c: &Client, code: &str, verifier: &str) -> Reply {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    token(t, c, &form).await
}

/// `GET /oauth/authorizations/{id}` as the user.
async fn details(t: &TestServer, token: &str, id: &str) -> Reply {
    let path = format!("/oauth/authorizations/{id}");
    t.request(Method::GET, &path, Some(token), None).await
}

/// The access token of a fresh session of a signed-up user.
async fn user_token(t: &TestServer, email: &str) -> String {
    let s = session_of(t, email, "password-1").await;
    s["access_token"].as_str().unwrap().to_string()
}

/// A fresh session of a signed-up user (signed in by password).
async fn session_of(t: &TestServer, email: &str, password: &str) -> Value {
    let r = t.login(email, password).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

fn assert_oauth_error(r: &Reply, status: u16, error: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert_eq!(r.body["error"], error, "{}", r.text);
    assert!(r.body["error_description"].is_string(), "{}", r.text);
}

both!(
    the_code_flow_gives_tokens_an_id_token_and_userinfo,
    on,
    |t| {
        let c = confidential(&t).await;
        t.signup("oidc@example.com", "password-1").await;
        let (verifier, challenge) = pkce();
        let id = open_request(&t, &c, "openid email profile", &challenge).await;
        let user_token = user_token(&t, "oidc@example.com").await;
        let d = details(&t, &user_token, &id).await;
        assert_eq!(d.status, 200, "{}", d.text);
        assert_eq!(d.body["authorization_id"], id.as_str());
        assert_eq!(d.body["client"]["name"], "Example App");
        assert_eq!(d.body["client"]["id"], c.id.as_str());
        assert_eq!(d.body["user"]["email"], "oidc@example.com");
        assert_eq!(d.body["scope"], "openid email profile");
        assert_eq!(d.body["redirect_uri"], REDIRECT);

        let r = approve(&t, &user_token, &id).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let back = r.body["redirect_url"].as_str().unwrap();
        assert!(back.starts_with(REDIRECT), "{back}");
        let q = query_of(back);
        assert_eq!(q["state"], "st-1");
        assert_eq!(q["iss"], ISSUER, "RFC 9207");
        let code = q["code"].clone();
        // Kept as its hash, never as given.
        let by_code = "SELECT count(*) FROM oauth_authorizations WHERE authorization_code = $1";
        assert_eq!(t.count_by_str(by_code, &code).await, 0);
        let hash = castellan_service::oauth_clients::secret_hash(&code);
        assert_eq!(t.count_by_str(by_code, &hash).await, 1);

        let r = exchange(&t, &c, &code, &verifier).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert_eq!(r.body["token_type"], "bearer");
        assert_eq!(r.body["scope"], "openid email profile");
        assert!(r.body["expires_in"].as_i64().unwrap() > 0);
        let access = r.body["access_token"].as_str().unwrap().to_string();
        let at = claims(&access);
        assert_eq!(at["client_id"], c.id.as_str());
        assert_eq!(at["scope"], "openid email profile");
        assert_eq!(at["amr"][0]["method"], "oauth_provider/authorization_code");
        let id_token = r.body["id_token"].as_str().unwrap();
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(id_token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "ES256");
        assert!(header["kid"].is_string());
        let it = claims(id_token);
        assert_eq!(it["aud"], c.id.as_str());
        assert_eq!(it["iss"], ISSUER);
        assert_eq!(it["nonce"], "n-1");
        assert_eq!(it["email"], "oidc@example.com");
        assert_eq!(it["email_verified"], true);
        assert_eq!(it["sub"], at["sub"]);
        assert!(it["auth_time"].as_i64().unwrap() <= it["iat"].as_i64().unwrap());
        let half = &sha2::Sha256::digest(access.as_bytes())[..16];
        assert_eq!(it["at_hash"], b64(half).as_str());
        // The session names its client and scopes.
        let sid = Uuid::parse_str(at["session_id"].as_str().unwrap()).unwrap();
        let bound = "SELECT count(*) FROM sessions WHERE id = $1 AND oauth_client_id IS NOT NULL AND scopes = 'openid email profile'";
        assert_eq!(t.count_by_uuid(bound, sid).await, 1);

        let info = t
            .request(Method::GET, "/oauth/userinfo", Some(&access), None)
            .await;
        assert_eq!(info.status, 200, "{}", info.text);
        assert_eq!(info.body["sub"], at["sub"]);
        assert_eq!(info.body["email"], "oidc@example.com");
        assert_eq!(info.body["email_verified"], true);
        assert_eq!(info.body["name"], "oidc@example.com");
        assert!(info.body.get("phone").is_none(), "no phone scope");
        // A first-party session's userinfo is its subject alone.
        let mine = t
            .request(Method::GET, "/oauth/userinfo", Some(&user_token), None)
            .await;
        assert_eq!(mine.body, json!({"sub": at["sub"]}));

        // The ID token is for the client, never a key to the API.
        t.get_user(id_token).await.assert_error(403, "bad_jwt");
        // Another client replaying the spent code ends nothing.
        let stranger = confidential(&t).await;
        let stolen = exchange(&t, &stranger, &code, &verifier).await;
        assert_oauth_error(&stolen, 400, "invalid_grant");
        assert_eq!(t.get_user(&access).await.status, 200);

        // The code again: refused, and the session it bought ends.
        let again = exchange(&t, &c, &code, &verifier).await;
        assert_oauth_error(&again, 400, "invalid_grant");
        assert_eq!(
            t.count_by_uuid("SELECT count(*) FROM sessions WHERE id = $1", sid)
                .await,
            0
        );
        let refresh = r.body["refresh_token"].as_str().unwrap();
        let form = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
        assert_oauth_error(&token(&t, &c, &form).await, 400, "invalid_grant");
    }
);

both!(a_session_is_refreshed_by_its_client_only, on, |t| {
    let c = confidential(&t).await;
    let other = confidential(&t).await;
    t.signup("refresh@example.com", "password-1").await;
    let (code, verifier, _) = code_for(&t, &c, "refresh@example.com", "email").await;
    let r = exchange(&t, &c, &code, &verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.get("id_token").is_none(), "no openid scope");
    let refresh = r.body["refresh_token"].as_str().unwrap().to_string();

    // Not at the first-party endpoint, nor by another client.
    let first_party = t.refresh(&refresh).await;
    assert_oauth_error(&first_party, 400, "invalid_client");
    let form = [("grant_type", "refresh_token"), ("refresh_token", &refresh)];
    assert_oauth_error(&token(&t, &other, &form).await, 400, "invalid_client");

    let next = token(&t, &c, &form).await;
    assert_eq!(next.status, 200, "{}", next.text);
    assert_eq!(next.body["scope"], "email");
    let access = next.body["access_token"].as_str().unwrap();
    assert_eq!(claims(access)["client_id"], c.id.as_str());
    assert_ne!(next.body["refresh_token"], refresh.as_str());
});

both!(requests_are_checked_before_anything_is_stored, on, |t| {
    let c = confidential(&t).await;
    let (_, challenge) = pkce();
    let base = [
        ("client_id", c.id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", "email"),
        ("state", "s"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let with = |k: &'static str, v: &'static str| {
        let mut p: Vec<(&str, &str)> = base.iter().filter(|(n, _)| *n != k).cloned().collect();
        if !v.is_empty() {
            p.push((k, v));
        }
        p
    };
    // Before the redirect URI is trusted: JSON, never a redirect.
    let r = authorize(&t, &with("redirect_uri", "https://evil.example.com/cb")).await;
    r.assert_error(400, "validation_failed");
    let r = authorize(&t, &with("redirect_uri", "https://app.example.com/cb/")).await;
    r.assert_error(400, "validation_failed");
    let r = authorize(&t, &with("client_id", "not-a-uuid")).await;
    r.assert_error(400, "oauth_client_not_found");
    let unknown = Uuid::new_v4().to_string();
    let mut p = with("client_id", "");
    p.push(("client_id", &unknown));
    authorize(&t, &p)
        .await
        .assert_error(400, "oauth_client_not_found");
    // After: back to the client with the error and its state.
    for (params, error) in [
        (with("code_challenge", ""), "invalid_request"),
        (with("code_challenge_method", "md5"), "invalid_request"),
        (with("scope", "email admin"), "invalid_scope"),
        (with("response_type", "token"), "unsupported_response_type"),
        (
            with("resource", "https://api.example.com/#f"),
            "invalid_request",
        ),
    ] {
        let r = authorize(&t, &params).await;
        assert_eq!(r.status, 302, "{}", r.text);
        let to = r.header("location").unwrap();
        assert!(to.starts_with(REDIRECT), "{to}");
        let q = query_of(to);
        assert_eq!(q["error"], error, "{to}");
        assert_eq!(q["state"], "s");
        assert_eq!(q["iss"], ISSUER);
    }
    // A public client may not use a plain challenge.
    let public = client(
        &t,
        json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}),
    )
    .await;
    let verifier = "a".repeat(43);
    let p = [
        ("client_id", public.id.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_challenge", verifier.as_str()),
        ("code_challenge_method", "plain"),
    ];
    let r = authorize(&t, &p).await;
    assert_eq!(
        query_of(r.header("location").unwrap())["error"],
        "invalid_request"
    );
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM oauth_authorizations WHERE redirect_uri <> $1",
            "x"
        )
        .await,
        0,
        "nothing stored"
    );
});

both!(openid_needs_an_asymmetric_key, symmetric, |t| {
    let c = confidential(&t).await;
    let (_, challenge) = pkce();
    let p = [
        ("client_id", c.id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", "openid email"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let r = authorize(&t, &p).await;
    assert_eq!(
        query_of(r.header("location").unwrap())["error"],
        "invalid_scope"
    );
});

both!(
    the_code_is_bound_to_its_client_verifier_and_redirect,
    on,
    |t| {
        let c = confidential(&t).await;
        let thief = confidential(&t).await;
        t.signup("bound@example.com", "password-1").await;
        let (code, verifier, _) = code_for(&t, &c, "bound@example.com", "email").await;
        let r = exchange(&t, &thief, &code, &verifier).await;
        assert_oauth_error(&r, 400, "invalid_grant");
        let r = exchange(&t, &c, &code, &"b".repeat(43)).await;
        assert_oauth_error(&r, 400, "invalid_grant");
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "https://app.example.com/other"),
            ("code_verifier", verifier.as_str()),
        ];
        assert_oauth_error(&token(&t, &c, &form).await, 400, "invalid_grant");
        // None of those spent it.
        let r = exchange(&t, &c, &code, &verifier).await;
        assert_eq!(r.status, 200, "{}", r.text);
        // An expired code.
        let (code, verifier, _) = code_for(&t, &c, "bound@example.com", "email").await;
        t.clock().advance(std::time::Duration::from_secs(601));
        let r = exchange(&t, &c, &code, &verifier).await;
        assert_oauth_error(&r, 400, "invalid_grant");
        assert!(
            r.body["error_description"]
                .as_str()
                .unwrap()
                .contains("expired")
        );
    }
);

both!(clients_authenticate_as_they_registered, on, |t| {
    let c = confidential(&t).await;
    let form = [("grant_type", "authorization_code"), ("code", "x")];
    let wrong = Client {
        id: c.id.clone(),
        secret: Some("not-the-secret".into()),
    };
    let r = token(&t, &wrong, &form).await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    // Registered for Basic: the secret in the body is refused.
    let mut body = form.to_vec();
    let secret = c.secret.clone().unwrap();
    body.extend([
        ("client_id", c.id.as_str()),
        ("client_secret", secret.as_str()),
    ]);
    let r = read(
        t.http
            .post(t.url("/oauth/token"))
            .form(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_oauth_error(&r, 401, "invalid_client");
    let anonymous = Client {
        id: String::new(),
        secret: None,
    };
    assert_oauth_error(&token(&t, &anonymous, &form).await, 401, "invalid_client");
    // The right client, an unknown code; then an unsupported grant.
    assert_oauth_error(&token(&t, &c, &form).await, 400, "invalid_grant");
    let r = token(&t, &c, &[("grant_type", "password")]).await;
    assert_oauth_error(&r, 400, "unsupported_grant_type");
});

both!(only_the_user_who_opened_a_request_answers_it, on, |t| {
    let c = confidential(&t).await;
    t.signup("owner@example.com", "password-1").await;
    t.signup("other@example.com", "password-1").await;
    let (_, challenge) = pkce();
    let id = open_request(&t, &c, "email", &challenge).await;
    let owner = user_token(&t, "owner@example.com").await;
    let other = user_token(&t, "other@example.com").await;
    let (owner, other) = (owner.as_str(), other.as_str());
    let path = format!("/oauth/authorizations/{id}");
    let r = t.request(Method::GET, &path, Some(owner), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = t.request(Method::GET, &path, Some(other), None).await;
    r.assert_error(404, "oauth_authorization_not_found");
    approve(&t, other, &id)
        .await
        .assert_error(404, "oauth_authorization_not_found");
    // A page of another origin may not answer for the user.
    let r = read(
        t.http
            .post(t.url(&format!("{path}/consent")))
            .bearer_auth(owner)
            .header("origin", "https://evil.example.com")
            .json(&json!({"action": "approve"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(400, "validation_failed");
    let r = t
        .request(
            Method::POST,
            &format!("{path}/consent"),
            Some(owner),
            Some(json!({"action": "maybe"})),
        )
        .await;
    r.assert_error(400, "validation_failed");
    // Denied: back to the client, and the request is answered for good.
    let r = t
        .request(
            Method::POST,
            &format!("{path}/consent"),
            Some(owner),
            Some(json!({"action": "deny"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let q = query_of(r.body["redirect_url"].as_str().unwrap());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-1");
    approve(&t, owner, &id)
        .await
        .assert_error(400, "validation_failed");
    // Unauthenticated and unknown.
    t.request(Method::GET, &path, None, None)
        .await
        .assert_error(401, "no_authorization");
    let r = t
        .request(Method::GET, "/oauth/authorizations/nope", Some(owner), None)
        .await;
    r.assert_error(404, "oauth_authorization_not_found");
});

both!(an_earlier_consent_approves_without_asking, on, |t| {
    let c = confidential(&t).await;
    t.signup("again@example.com", "password-1").await;
    let (_, _, token) = code_for(&t, &c, "again@example.com", "email profile").await;
    let (_, challenge) = pkce();
    let id = open_request(&t, &c, "email", &challenge).await;
    let r = details(&t, &token, &id).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let q = query_of(r.body["redirect_url"].as_str().unwrap());
    assert!(q.contains_key("code"), "{}", r.text);
    // A wider request asks again.
    let id = open_request(&t, &c, "email phone", &challenge).await;
    let r = details(&t, &token, &id).await;
    assert_eq!(r.body["scope"], "email phone", "{}", r.text);
    // An expired request is gone.
    let id = open_request(&t, &c, "email", &challenge).await;
    t.clock().advance(std::time::Duration::from_secs(601));
    let fresh = user_token(&t, "again@example.com").await;
    let r = details(&t, &fresh, &id).await;
    r.assert_error(404, "oauth_authorization_not_found");
});

both!(grants_are_listed_and_revoked_with_their_sessions, on, |t| {
    let c = confidential(&t).await;
    t.signup("grants@example.com", "password-1").await;
    let (code, verifier, user_token) = code_for(&t, &c, "grants@example.com", "email").await;
    let r = exchange(&t, &c, &code, &verifier).await;
    let access = r.body["access_token"].as_str().unwrap().to_string();
    let g = t
        .request(Method::GET, "/user/oauth/grants", Some(&user_token), None)
        .await;
    assert_eq!(g.status, 200, "{}", g.text);
    assert_eq!(g.body[0]["client"]["id"], c.id.as_str());
    assert_eq!(g.body[0]["client"]["name"], "Example App");
    assert_eq!(g.body[0]["scopes"], json!(["email"]));
    assert!(g.body[0]["granted_at"].is_string());

    let path = format!("/user/oauth/grants?client_id={}", c.id);
    let r = t
        .request(Method::DELETE, &path, Some(&user_token), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    // The client's session is over; the user's own is not.
    t.get_user(&access)
        .await
        .assert_error(403, "session_not_found");
    assert_eq!(t.get_user(&user_token).await.status, 200);
    let uid = t.user_id_by_email("grants@example.com").await;
    assert!(
        t.audit_actions(&uid.to_string())
            .await
            .contains(&"token_revoked".to_string())
    );
    let r = t
        .request(Method::DELETE, &path, Some(&user_token), None)
        .await;
    r.assert_error(404, "oauth_consent_not_found");
    let r = t
        .request(
            Method::DELETE,
            "/user/oauth/grants",
            Some(&user_token),
            None,
        )
        .await;
    r.assert_error(400, "validation_failed");
    let g = t
        .request(Method::GET, "/user/oauth/grants", Some(&user_token), None)
        .await;
    assert_eq!(g.body, json!([]));
});

both!(revocation_ends_the_clients_session, on, |t| {
    let c = confidential(&t).await;
    let other = confidential(&t).await;
    t.signup("revoke@example.com", "password-1").await;
    let revoke = |c: &Client, token: &str| {
        let mut req = t
            .http
            .post(t.url("/oauth/revoke"))
            .form(&[("token", token)]);
        if let Some(s) = &c.secret {
            req = req.basic_auth(&c.id, Some(s));
        }
        req.send()
    };
    let (code, verifier, _) = code_for(&t, &c, "revoke@example.com", "email").await;
    let r = exchange(&t, &c, &code, &verifier).await;
    let access = r.body["access_token"].as_str().unwrap().to_string();
    let refresh = r.body["refresh_token"].as_str().unwrap().to_string();
    // Unknown tokens and another client's are answered alike, and kept.
    for (who, tok) in [(&c, "garbage"), (&other, refresh.as_str())] {
        let r = read(revoke(who, tok).await.unwrap()).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(t.get_user(&access).await.status, 200);
    let r = read(revoke(&c, &refresh).await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    t.get_user(&access)
        .await
        .assert_error(403, "session_not_found");
    // An access token revokes its session too.
    let (code, verifier, _) = code_for(&t, &c, "revoke@example.com", "email").await;
    let r = exchange(&t, &c, &code, &verifier).await;
    let access = r.body["access_token"].as_str().unwrap().to_string();
    let r = read(revoke(&c, &access).await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    t.get_user(&access)
        .await
        .assert_error(403, "session_not_found");
});

both!(a_deleted_clients_tokens_stop_working, on, |t| {
    let c = confidential(&t).await;
    t.signup("deleted@example.com", "password-1").await;
    let (code, verifier, user_token) = code_for(&t, &c, "deleted@example.com", "email").await;
    let r = exchange(&t, &c, &code, &verifier).await;
    let access = r.body["access_token"].as_str().unwrap().to_string();
    let r = t
        .admin(
            Method::DELETE,
            &format!("/admin/oauth/clients/{}", c.id),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    t.get_user(&access)
        .await
        .assert_error(403, "session_not_found");
    assert_eq!(t.get_user(&user_token).await.status, 200);
    let g = t
        .request(Method::GET, "/user/oauth/grants", Some(&user_token), None)
        .await;
    assert_eq!(g.body, json!([]));
});

both!(
    discovery_names_every_endpoint,
    |c: &mut castellan_core::Config| {
        on(c);
        c.oauth_server.as_mut().unwrap().allow_dynamic_registration = true;
    },
    |t| {
        for path in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            let r = t.request(Method::GET, path, None, None).await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.body["issuer"], ISSUER);
            assert_eq!(
                r.body["revocation_endpoint"],
                format!("{ISSUER}/oauth/revoke")
            );
            assert_eq!(
                r.body["registration_endpoint"],
                format!("{ISSUER}/oauth/clients/register")
            );
            assert_eq!(
                r.body["authorization_response_iss_parameter_supported"],
                true
            );
            assert_eq!(
                r.body["id_token_signing_alg_values_supported"],
                json!(["ES256"])
            );
        }
    }
);

both!(the_flow_is_404_when_the_server_is_off, |_| {}, |t| {
    for (method, path) in [
        (Method::GET, "/oauth/authorize"),
        (Method::POST, "/oauth/token"),
        (Method::POST, "/oauth/revoke"),
        (Method::GET, "/oauth/userinfo"),
        (Method::GET, "/user/oauth/grants"),
        (Method::GET, "/oauth/authorizations/x"),
        (Method::GET, "/.well-known/oauth-authorization-server"),
    ] {
        let r = t.request(method, path, None, None).await;
        r.assert_error(404, "feature_disabled");
    }
    let r = t
        .request(Method::GET, "/.well-known/openid-configuration", None, None)
        .await;
    assert!(r.body.get("registration_endpoint").is_none());
});

both!(
    two_exchanges_of_one_code_at_once_leave_no_session,
    on,
    |t| {
        let c = confidential(&t).await;
        t.signup("race@example.com", "password-1").await;
        let (code, verifier, _) = code_for(&t, &c, "race@example.com", "email").await;
        let exchange = || {
            let form = [
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier.as_str()),
            ];
            t.http
                .post(t.url("/oauth/token"))
                .basic_auth(&c.id, c.secret.as_ref())
                .form(&form)
        };
        let replies = crate::common::at_once([exchange(), exchange()]).await;
        let ok = replies.iter().filter(|r| r.status == 200).count();
        for r in replies.iter().filter(|r| r.status != 200) {
            assert_oauth_error(r, 400, "invalid_grant");
        }
        assert!(ok <= 1, "one code, one session at most");
        let client = Uuid::parse_str(&c.id).unwrap();
        let live = "SELECT count(*) FROM sessions WHERE oauth_client_id = $1";
        // Either the replay ended the winner's session, or one answer lost
        // the race before anything was issued; no code buys two.
        if replies.iter().any(|r| r.status == 400) {
            assert_eq!(t.count_by_uuid(live, client).await, 0);
        } else {
            assert_eq!(t.count_by_uuid(live, client).await, 1);
        }
    }
);

both!(only_the_users_own_sessions_answer_for_them, on, |t| {
    let c = confidential(&t).await;
    t.signup("scoped@example.com", "password-1").await;
    let (code, verifier, user_token) = code_for(&t, &c, "scoped@example.com", "email").await;
    let r = exchange(&t, &c, &code, &verifier).await;
    let access = r.body["access_token"].as_str().unwrap().to_string();
    // The client's token cannot widen its own grant, nor revoke grants.
    let (_, challenge) = pkce();
    let id = open_request(&t, &c, "email phone profile", &challenge).await;
    details(&t, &access, &id).await.assert_error(403, "bad_jwt");
    approve(&t, &access, &id).await.assert_error(403, "bad_jwt");
    let path = format!("/user/oauth/grants?client_id={}", c.id);
    let r = t.request(Method::DELETE, &path, Some(&access), None).await;
    r.assert_error(403, "bad_jwt");
    // Nor manage the account: its password, factors, reauthentication.
    let new_password = json!({"password": "taken-over-1"});
    let r = t
        .request(Method::PUT, "/user", Some(&access), Some(new_password))
        .await;
    r.assert_error(403, "bad_jwt");
    let enroll = json!({"factor_type": "totp"});
    let r = t
        .request(Method::POST, "/factors", Some(&access), Some(enroll))
        .await;
    r.assert_error(403, "bad_jwt");
    let r = t
        .request(Method::GET, "/reauthenticate", Some(&access), None)
        .await;
    r.assert_error(403, "bad_jwt");
    // Reading the user is what the token is for; the password held.
    assert_eq!(t.get_user(&access).await.status, 200);
    assert_eq!(
        t.login("scoped@example.com", "password-1").await.status,
        200
    );
    // A code approved but not exchanged dies with the grant.
    let (code, verifier, _) = code_for(&t, &c, "scoped@example.com", "email").await;
    let r = t
        .request(Method::DELETE, &path, Some(&user_token), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_oauth_error(
        &exchange(&t, &c, &code, &verifier).await,
        400,
        "invalid_grant",
    );
    // Ids that could never be castellan's are not looked up.
    let nul = t
        .request(
            Method::GET,
            "/oauth/authorizations/a%00b",
            Some(&user_token),
            None,
        )
        .await;
    nul.assert_error(404, "oauth_authorization_not_found");
    let bad = t
        .request(
            Method::GET,
            "/oauth/authorizations/%FF",
            Some(&user_token),
            None,
        )
        .await;
    bad.assert_error(400, "validation_failed");
});

both!(
    no_consent_page_is_a_server_error_for_the_client,
    |c: &mut castellan_core::Config| {
        on(c);
        c.oauth_server.as_mut().unwrap().authorization_path = String::new();
    },
    |t| {
        let c = confidential(&t).await;
        let (_, challenge) = pkce();
        let p = [
            ("client_id", c.id.as_str()),
            ("redirect_uri", REDIRECT),
            ("state", "s"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let r = authorize(&t, &p).await;
        let q = query_of(r.header("location").unwrap());
        assert_eq!(q["error"], "server_error");
        assert_eq!(q["state"], "s");
    }
);
