//! `POST /token?grant_type=id_token` (issue 11): OpenID Connect ID tokens
//! from an issuer on loopback (discovery and a JWKS with a key the test
//! holds, standing in for Keycloak), good and forged, on SQLite and
//! PostgreSQL.

use castellan_core::crypto::jwk::KeyKind;
use serde_json::{Value, json};

use crate::common::{self, Backend, TestServer, claims};
use crate::oidc_issuer::{Issuer, key};

async fn oidc_server(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, Issuer) {
    let issuer = Issuer::start().await;
    let url = issuer.url.clone();
    let t = common::spawn(backend, move |c| {
        let kc = c.external.providers.get_mut("keycloak").unwrap();
        kc.enabled = true;
        kc.client_ids = vec!["kc-client".into(), "kc-mobile".into()];
        kc.secret = "kc-secret".into();
        kc.url = Some(url);
        tweak(c);
    })
    .await;
    (t, issuer)
}

macro_rules! both_oidc {
    ($name:ident, $tweak:expr, |$t:ident, $iss:ident| $body:block) => {
        crate::both!($name, oidc_server, $tweak, |$t, $iss| $body);
    };
}

async fn grant(t: &TestServer, body: Value) -> common::Reply {
    t.post("/token?grant_type=id_token", body).await
}

fn assert_oauth_error(r: &common::Reply, error: &str, description: &str) {
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"error": error, "error_description": description})
    );
}

both_oidc!(a_good_id_token_signs_in, |_| {}, |t, iss| {
    let r = grant(
        &t,
        json!({"provider": "keycloak", "id_token": iss.token(json!({}))}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"]["email"], "kc@example.com");
    assert!(r.body["user"]["email_confirmed_at"].is_string());
    let ids = r.body["user"]["identities"].as_array().unwrap();
    assert_eq!(ids[0]["provider"], "keycloak");
    assert_eq!(ids[0]["id"], "kc-user-1");
    assert_eq!(ids[0]["identity_data"]["iss"], iss.url);
    let c = claims(r.body["access_token"].as_str().unwrap());
    assert_eq!(c["amr"][0]["method"], "oauth");
    let first = c["sub"].clone();

    // The same subject again, by issuer and client id instead of name, and
    // for the other client id: the same user; the keys were read once.
    let body = json!({"client_id": "kc-mobile", "issuer": iss.url, "id_token": iss.token(json!({"aud": ["kc-mobile"]}))});
    let r = grant(&t, body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        claims(r.body["access_token"].as_str().unwrap())["sub"],
        first
    );
    assert_eq!(iss.reads(), 1);
    assert_eq!(
        t.count_by_str("SELECT count(*) FROM users WHERE $1 = $1", "")
            .await,
        1
    );
});

both_oidc!(forged_and_foreign_tokens_are_refused, |_| {}, |t, iss| {
    let good = grant(
        &t,
        json!({"provider": "keycloak", "id_token": iss.token(json!({}))}),
    )
    .await;
    assert_eq!(good.status, 200, "{}", good.text);
    // Signed by a key the issuer never published (its kid unknown): one
    // look at the JWKS is all a forger gets (not again within the floor).
    let forger = key(KeyKind::Es256);
    let forged = iss.token_by(&forger, json!({}));
    for _ in 0..3 {
        let r = grant(&t, json!({"provider": "keycloak", "id_token": forged})).await;
        assert_oauth_error(&r, "invalid request", "Bad ID token");
    }
    assert_eq!(iss.reads(), 1);
    // The issuer's kid on a forger's signature.
    let mut header = jsonwebtoken::Header::new(forger.alg);
    header.kid = Some(iss.key.kid.clone());
    let body: Value = serde_json::from_slice(&base64_decode(
        iss.token(json!({})).split('.').nth(1).unwrap(),
    ))
    .unwrap();
    let spoofed = jsonwebtoken::encode(&header, &body, forger.encoding.as_ref().unwrap()).unwrap();
    let r = grant(&t, json!({"provider": "keycloak", "id_token": spoofed})).await;
    assert_oauth_error(&r, "invalid request", "Bad ID token");
    // Expired, another issuer, a shared secret, not a token at all.
    for token in [
        iss.token(json!({"exp": chrono::Utc::now().timestamp() - 3600})),
        iss.token(json!({"iss": "https://elsewhere.example.com"})),
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"iss": iss.url, "sub": "x", "aud": "kc-client", "exp": 9999999999u64}),
            &jsonwebtoken::EncodingKey::from_secret(b"guess"),
        )
        .unwrap(),
        "not.a.token".to_string(),
    ] {
        let r = grant(&t, json!({"provider": "keycloak", "id_token": token})).await;
        assert_oauth_error(&r, "invalid request", "Bad ID token");
    }
    let r = grant(
        &t,
        json!({"provider": "keycloak", "id_token": iss.token(json!({"aud": "someone-else"}))}),
    )
    .await;
    assert_oauth_error(
        &r,
        "invalid request",
        "Unacceptable audience in id_token: [someone-else]",
    );
    let r = grant(
        &t,
        json!({"provider": "keycloak", "id_token": iss.token(json!({"sub": null}))}),
    )
    .await;
    assert_oauth_error(&r, "invalid request", "Missing sub claim in id_token");
    // Only the good token made a user.
    assert_eq!(
        t.count_by_str("SELECT count(*) FROM users WHERE $1 = $1", "")
            .await,
        1
    );
});

both_oidc!(the_nonce_is_checked, |_| {}, |t, iss| {
    use sha2::Digest;
    let nonce = "n-0S6_WzA2Mj";
    let hashed: String = sha2::Sha256::digest(nonce.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let token = iss.token(json!({"nonce": hashed}));
    let r = grant(&t, json!({"provider": "keycloak", "id_token": token})).await;
    assert_oauth_error(
        &r,
        "invalid request",
        "Passed nonce and nonce in id_token should either both exist or not.",
    );
    let r = grant(
        &t,
        json!({"provider": "keycloak", "id_token": token, "nonce": "other"}),
    )
    .await;
    assert_oauth_error(&r, "invalid nonce", "Nonces mismatch");
    let r = grant(
        &t,
        json!({"provider": "keycloak", "id_token": iss.token(json!({})), "nonce": nonce}),
    )
    .await;
    assert_oauth_error(
        &r,
        "invalid request",
        "Passed nonce and nonce in id_token should either both exist or not.",
    );
    let r = grant(
        &t,
        json!({"provider": "keycloak", "id_token": token, "nonce": nonce}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
});

both_oidc!(
    skip_nonce_check_accepts_a_token_without_its_nonce,
    |c| c
        .external
        .providers
        .get_mut("keycloak")
        .unwrap()
        .skip_nonce_check = true,
    |t, iss| {
        let token = iss.token(json!({"nonce": "abc"}));
        let r = grant(&t, json!({"provider": "keycloak", "id_token": token})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

both_oidc!(
    unknown_and_disabled_issuers_are_refused,
    |_| {},
    |t, iss| {
        let token = iss.token(json!({}));
        let r = grant(&t, json!({"id_token": token})).await;
        assert_oauth_error(
            &r,
            "invalid request",
            "provider or client_id and issuer required",
        );
        let r = grant(&t, json!({"provider": "keycloak"})).await;
        assert_oauth_error(&r, "invalid request", "id_token required");
        let r = grant(&t, json!({"provider": "google", "id_token": token})).await;
        r.assert_error(400, "provider_disabled");
        let r = grant(&t, json!({"provider": "github", "id_token": token})).await;
        r.assert_error(400, "validation_failed");
        let r = grant(
            &t,
            json!({"client_id": "x", "issuer": "https://evil.example.com", "id_token": token}),
        )
        .await;
        r.assert_error(400, "validation_failed");
        assert_eq!(iss.reads(), 0, "no issuer was asked for keys");
    }
);

both_oidc!(
    an_id_token_links_its_identity_to_the_signed_in_user,
    |c| c.external.manual_linking_enabled = true,
    |t, iss| {
        let s = t.new_session("owner@example.com", "secret123").await;
        let token = s["access_token"].as_str().unwrap().to_string();
        let owner = s["user"]["id"].as_str().unwrap().to_string();
        let link = |bearer: Option<String>, id_token: String| {
            let t = &t;
            async move {
                let body =
                    json!({"provider": "keycloak", "id_token": id_token, "link_identity": true});
                let path = "/token?grant_type=id_token";
                t.request(reqwest::Method::POST, path, bearer.as_deref(), Some(body))
                    .await
            }
        };
        // Without Authorization: GoTrue's OAuth-shaped refusal; with a bad
        // token: as any authenticated route. Nothing read from the issuer.
        let r = link(None, iss.token(json!({}))).await;
        assert_oauth_error(
            &r,
            "invalid request",
            "Linking requires a valid user access token in Authorization",
        );
        link(Some("not-a-jwt".into()), iss.token(json!({})))
            .await
            .assert_error(403, "bad_jwt");
        assert_eq!(iss.reads(), 0);

        // The identity joins the signed-in user, whose email stays.
        let r = link(Some(token.clone()), iss.token(json!({}))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["user"]["id"], owner);
        assert_eq!(r.body["user"]["email"], "owner@example.com");
        let c = claims(r.body["access_token"].as_str().unwrap());
        assert_eq!(c["sub"], owner);
        assert_eq!(c["app_metadata"]["providers"], json!(["email", "keycloak"]));
        let id = uuid::Uuid::parse_str(&owner).unwrap();
        assert_eq!(
            t.count_by_uuid(
                "SELECT count(*) FROM identities WHERE user_id = $1 AND provider = 'keycloak'",
                id
            )
            .await,
            1
        );
        assert!(
            t.audit_actions(&owner)
                .await
                .contains(&"identity_linked".to_string())
        );
        // Signing in with the token now signs in the owner.
        let r = grant(
            &t,
            json!({"provider": "keycloak", "id_token": iss.token(json!({}))}),
        )
        .await;
        assert_eq!(r.body["user"]["id"], owner, "{}", r.text);

        // Linked already, to this user or to another.
        link(Some(token.clone()), iss.token(json!({})))
            .await
            .assert_error(422, "identity_already_exists");
        let other = t.new_session("other@example.com", "secret123").await;
        let other_token = other["access_token"].as_str().unwrap().to_string();
        let r = link(Some(other_token), iss.token(json!({}))).await;
        r.assert_error(422, "identity_already_exists");
        assert_eq!(r.body["msg"], "Identity is already linked to another user");
        assert_eq!(
            t.count_by_str(
                "SELECT count(*) FROM identities WHERE provider = $1",
                "keycloak"
            )
            .await,
            1
        );
    }
);

both_oidc!(
    linking_by_id_token_is_off_with_manual_linking,
    |_| {},
    |t, iss| {
        let s = t.new_session("owner@example.com", "secret123").await;
        let token = s["access_token"].as_str().unwrap();
        let body = json!({"provider": "keycloak", "id_token": iss.token(json!({})), "link_identity": true});
        let r = t
            .request(
                reqwest::Method::POST,
                "/token?grant_type=id_token",
                Some(token),
                Some(body),
            )
            .await;
        r.assert_error(404, "manual_linking_disabled");
        assert_eq!(
            t.count_by_str(
                "SELECT count(*) FROM identities WHERE provider = $1",
                "keycloak"
            )
            .await,
            0
        );
    }
);

/// A server with `provider` enabled against the issuer stand-in (at
/// `path` under it), as client `client`.
async fn issuer_server(
    backend: Backend,
    provider: &'static str,
    client: &'static str,
    path: &'static str,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, Issuer) {
    let issuer = Issuer::start().await;
    let url = format!("{}{path}", issuer.url);
    let t = common::spawn(backend, move |c| {
        let p = c.external.providers.get_mut(provider).unwrap();
        p.enabled = true;
        p.client_ids = vec![client.into()];
        p.secret = format!("{provider}-secret");
        p.url = Some(url);
        tweak(c);
    })
    .await;
    (t, issuer)
}

async fn apple_server(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, Issuer) {
    issuer_server(backend, "apple", "apple-client", "", tweak).await
}

// Apple: the browser is posted back (form_post), and the user is what the
// ID token in the token answer says, checked against Apple's keys.
crate::both!(
    apple_posts_back_and_its_id_token_signs_in,
    apple_server,
    |_| {},
    |t, iss| {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = common::read(
            http.get(t.url("/authorize?provider=apple"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 302, "{}", r.text);
        let to = r.header("location").unwrap().to_string();
        assert!(
            to.starts_with(&format!("{}/auth/authorize?", iss.url)),
            "{to}"
        );
        let q: std::collections::HashMap<String, String> =
            serde_urlencoded::from_str(to.split_once('?').unwrap().1).unwrap();
        assert_eq!(q["response_mode"], "form_post");
        assert_eq!(q["scope"], "email name");
        let form = format!("code=apple-user-7&state={}", q["state"]);
        let r = common::read(
            http.post(t.url("/callback"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 302, "{}", r.text);
        let landed = r.header("location").unwrap();
        let fragment: std::collections::HashMap<String, String> =
            serde_urlencoded::from_str(landed.split_once('#').unwrap().1).unwrap();
        assert_eq!(fragment["provider_token"], "apple-at");
        let c = claims(&fragment["access_token"]);
        assert_eq!(c["email"], "apple-user-7@privaterelay.appleid.com");
        assert_eq!(c["app_metadata"]["provider"], "apple");
        assert_eq!(c["user_metadata"]["email_verified"], true);
        assert_eq!(c["user_metadata"]["sub"], "apple-user-7");
        assert_eq!(iss.reads(), 1);
        // The same token's identity by the id_token grant (Apple's native apps).
        let token = iss.token(json!({"sub": "apple-user-7", "aud": "apple-client", "email": "apple-user-7@privaterelay.appleid.com", "email_verified": "true"}));
        let r = grant(&t, json!({"provider": "apple", "id_token": token})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            claims(r.body["access_token"].as_str().unwrap())["sub"],
            c["sub"]
        );
    }
);

async fn azure_common_server(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, Issuer) {
    issuer_server(backend, "azure", "azure-client", "/common", tweak).await
}

// Azure's `common` endpoint signs users of any tenant in: each ID token is
// checked against its own tenant's issuer (on the configured host) and must
// claim that tenant in `tid`.
crate::both!(
    azure_common_takes_each_tenant_at_its_own_issuer,
    azure_common_server,
    |_| {},
    |t, iss| {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let round_trip = |code: &'static str| {
            let (t, http) = (&t, &http);
            async move {
                let r = common::read(
                    http.get(t.url("/authorize?provider=azure"))
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                assert_eq!(r.status, 302, "{}", r.text);
                let to = r.header("location").unwrap().to_string();
                let q: std::collections::HashMap<String, String> =
                    serde_urlencoded::from_str(to.split_once('?').unwrap().1).unwrap();
                let back = format!("/callback?code={code}&state={}", q["state"]);
                let r = common::read(http.get(t.url(&back)).send().await.unwrap()).await;
                assert_eq!(r.status, 302, "{}", r.text);
                (to, r.header("location").unwrap().to_string())
            }
        };
        let (to, landed) = round_trip("alice@tenant-a").await;
        assert!(
            to.starts_with(&format!("{}/common/oauth2/v2.0/authorize?", iss.url)),
            "{to}"
        );
        let fragment: std::collections::HashMap<String, String> =
            serde_urlencoded::from_str(landed.split_once('#').expect(&landed).1).unwrap();
        let c = claims(&fragment["access_token"]);
        assert_eq!(c["email"], "alice@tenant-a.example.com");
        assert_eq!(
            c["user_metadata"]["iss"],
            format!("{}/tenant-a/v2.0", iss.url)
        );

        // A token of tenant b claiming to be of tenant a.
        let (_, landed) = round_trip("mallory@tenant-b@tenant-a").await;
        assert!(landed.contains("error="), "{landed}");
        assert!(!landed.contains("access_token"), "{landed}");
        assert_eq!(
            t.count_by_str(
                "SELECT count(*) FROM users WHERE email = $1",
                "mallory@tenant-b.example.com"
            )
            .await,
            0
        );

        // The id_token grant: another tenant's token signs in; one of a
        // host that is not Azure's, or lying about its tenant, does not.
        let token = iss.token(json!({"iss": format!("{}/tenant-c/v2.0", iss.url), "tid": "tenant-c", "aud": "azure-client", "sub": "carol"}));
        let r = grant(&t, json!({"provider": "azure", "id_token": token})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.body["user"]["identities"][0]["identity_data"]["iss"],
            format!("{}/tenant-c/v2.0", iss.url)
        );
        for token in [
            iss.token(json!({"iss": "http://127.0.0.2:1/tenant-c/v2.0", "tid": "tenant-c", "aud": "azure-client"})),
            iss.token(json!({"iss": format!("{}/tenant-c/v2.0", iss.url), "tid": "tenant-d", "aud": "azure-client"})),
            iss.token(json!({"iss": format!("{}/common/v2.0", iss.url), "tid": "common", "aud": "azure-client"})),
        ] {
            let r = grant(&t, json!({"provider": "azure", "id_token": token})).await;
            assert_oauth_error(&r, "invalid request", "Bad ID token");
        }
    }
);

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

// Tokens arriving together, before any key is kept, wait for one fetch of
// the issuer's keys instead of each making their own. Their identities
// share one verified address: the first sign-in makes the user, the
// others (racing it) join that user, none fails.
both_oidc!(
    tokens_arriving_together_fetch_the_keys_once,
    |_| {},
    |t, iss| {
        let requests = (0..8).map(|i| {
            let token = iss.token(json!({"sub": format!("together-{i}")}));
            t.http
                .post(t.url("/token?grant_type=id_token"))
                .json(&json!({"provider": "keycloak", "id_token": token}))
        });
        let replies = common::at_once(requests).await;
        for r in &replies {
            assert_eq!(r.status, 200, "{}", r.text);
        }
        assert_eq!(iss.reads(), 1);
        let users = "SELECT count(*) FROM users WHERE $1 = $1";
        assert_eq!(t.count_by_str(users, "").await, 1);
        let ids = "SELECT count(*) FROM identities WHERE provider = $1";
        assert_eq!(t.count_by_str(ids, "keycloak").await, 8);
    }
);

// Issue 24, P9: an ID token's claims are input like any other. A NUL in a
// profile claim, an address too long for its column or not an address at
// all used to be stored as given (a 500 on PostgreSQL; "not an email" as a
// user's address on SQLite).
both_oidc!(
    provider_claims_are_validated_like_input,
    |_| {},
    |t, iss| {
        let token = |claims: Value| json!({"provider": "keycloak", "id_token": iss.token(claims)});
        let r = grant(
            &t,
            token(json!({"sub": "nul-1", "email": "nul@example.com", "name": "a\u{0}b"})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["user"]["user_metadata"]["name"], "ab", "{}", r.text);

        let long = format!("{}@example.com", "a".repeat(300));
        for (i, email) in [long.as_str(), "not an email"].into_iter().enumerate() {
            let r = grant(
                &t,
                token(json!({"sub": format!("bad-{i}"), "email": email})),
            )
            .await;
            assert!(r.status.as_u16() < 500, "{email}: {}", r.text);
            let users = "SELECT count(*) FROM users WHERE email = $1";
            assert_eq!(t.count_by_str(users, email).await, 0, "{email}");
            if r.status == 200 {
                assert!(
                    r.body["user"]["email"]
                        .as_str()
                        .unwrap_or_default()
                        .is_empty(),
                    "{}",
                    r.text
                );
            }
        }
        for sub in ["a\u{0}b".to_string(), "s".repeat(256)] {
            let r = grant(&t, token(json!({"sub": sub, "email": "sub@example.com"}))).await;
            assert_eq!(r.status, 400, "{}", r.text);
        }
        let users = "SELECT count(*) FROM users WHERE email = $1";
        assert_eq!(t.count_by_str(users, "sub@example.com").await, 0);
    }
);

/// Every `want` the `ProviderBroker` answered, whatever the outcome.
const WANTS: &str = "castellan_actor_messages_total{actor=\"provider_broker\",message=\"want\"";

// Issue 25: the issuers' keys live in the `ProviderBroker` actor; each
// id_token grant asks it (`Want`) before checking the token.
both_oidc!(
    each_id_token_grant_asks_the_provider_broker,
    |_| {},
    |t, iss| {
        let metrics = || async {
            t.request(reqwest::Method::GET, "/metrics", None, None)
                .await
                .text
        };
        let before = common::series_sum(&metrics().await, WANTS);
        for _ in 0..5 {
            let body = json!({"provider": "keycloak", "id_token": iss.token(json!({}))});
            let r = grant(&t, body).await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        let after = t
            .metrics_until(|m| common::series_sum(m, WANTS) >= before + 5.0)
            .await;
        assert!(common::series_sum(&after, WANTS) >= before + 5.0);
        assert_eq!(
            iss.reads(),
            1,
            "the keys were fetched once and kept by the actor"
        );
    }
);
