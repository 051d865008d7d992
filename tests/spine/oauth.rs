//! External sign-in (issue 11): the browser's round trip through
//! `/authorize`, a GitHub stand-in on loopback and `/callback`, driven by a
//! client that follows no redirect, on SQLite and PostgreSQL; then what the
//! database holds.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::common::{self, Backend, TestServer, claims};
use crate::oauth_provider::{FakeOAuth, Profile};

pub(crate) const APP: &str = "https://app.example.com/welcome";

async fn oauth_server(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, FakeOAuth) {
    let fake = FakeOAuth::start().await;
    let url = fake.base.clone();
    let t = common::spawn(backend, move |c| {
        let github = c.external.providers.get_mut("github").unwrap();
        github.enabled = true;
        github.client_ids = vec!["gh-client".into()];
        github.secret = "gh-secret".into();
        github.url = Some(url);
        github.redirect_uri = "http://127.0.0.1:1/callback".into();
        c.uri_allow_list = vec!["https://app.example.com/**".into()];
        c.site_url = "https://site.example.com".into();
        tweak(c);
    })
    .await;
    (t, fake)
}

macro_rules! both_oauth {
    ($name:ident, $tweak:expr, |$t:ident, $fake:ident| $body:block) => {
        crate::both!($name, oauth_server, $tweak, |$t, $fake| $body);
    };
}

pub(crate) fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) async fn get(t: &TestServer, path: &str) -> common::Reply {
    common::read(no_redirects().get(t.url(path)).send().await.unwrap()).await
}

pub(crate) fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let q = q.split('#').next().unwrap_or_default();
    serde_urlencoded::from_str(q).unwrap()
}

pub(crate) fn fragment(url: &str) -> HashMap<String, String> {
    let f = url.split_once('#').map(|(_, f)| f).unwrap_or_default();
    serde_urlencoded::from_str(f).unwrap()
}

/// `/authorize` for GitHub: the state it put in the provider's URL.
async fn authorize(t: &TestServer, extra: &str) -> (String, HashMap<String, String>) {
    let r = get(
        t,
        &format!("/authorize?provider=github&redirect_to={APP}{extra}"),
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.text);
    let to = r.header("location").unwrap().to_string();
    let q = query(&to);
    (q["state"].clone(), q)
}

/// A whole round trip for authorization `code`: where the browser lands.
async fn round_trip(t: &TestServer, code: &str, extra: &str) -> String {
    let (state, _) = authorize(t, extra).await;
    let r = get(t, &format!("/callback?code={code}&state={state}")).await;
    assert_eq!(r.status, 302, "{}", r.text);
    r.header("location").unwrap().to_string()
}

pub(crate) async fn count(t: &TestServer, sql: &'static str) -> i64 {
    t.count_by_str(sql, "").await
}

both_oauth!(a_new_github_user_signs_in, |_| {}, |t, fake| {
    let (state, q) = authorize(&t, "&scopes=repo").await;
    assert_eq!(q["client_id"], "gh-client");
    assert_eq!(q["redirect_uri"], "http://127.0.0.1:1/callback");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["scope"], "user:email repo");
    assert!(uuid::Uuid::parse_str(&state).is_ok());
    // GoTrue passes the request's other parameters on.
    assert_eq!(q["redirect_to"], APP);
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM flow_state WHERE authentication_method = 'oauth' AND $1 = $1"
        )
        .await,
        1
    );

    fake.profile("c1", Profile::github(101, "octo", "Octo@Example.com", true));
    let r = get(&t, &format!("/callback?code=c1&state={state}")).await;
    assert_eq!(r.status, 302, "{}", r.text);
    let to = r.header("location").unwrap();
    assert!(to.starts_with(&format!("{APP}#")), "{to}");
    let f = fragment(to);
    assert_eq!(f["provider_token"], "gho_c1");
    assert_eq!(f["provider_refresh_token"], "ghr_c1");
    assert_eq!(f["token_type"], "bearer");
    let c = claims(&f["access_token"]);
    assert_eq!(c["email"], "octo@example.com");
    assert_eq!(c["amr"][0]["method"], "oauth");
    assert_eq!(c["app_metadata"]["provider"], "github");
    assert_eq!(c["app_metadata"]["providers"], json!(["github"]));
    assert_eq!(c["user_metadata"]["user_name"], "octo");
    assert_eq!(c["user_metadata"]["iss"], format!("{}/api/v3", fake.base));

    // The code went back with our credentials (HTTP Basic) and redirect URI.
    let (form, auth) = fake.token_requests().pop().unwrap();
    assert_eq!(form["code"], "c1");
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["redirect_uri"], "http://127.0.0.1:1/callback");
    assert!(auth.unwrap().starts_with("Basic "));

    let u = t.get_user(&f["access_token"]).await;
    assert_eq!(u.status, 200, "{}", u.text);
    assert!(
        u.body["email_confirmed_at"].is_string(),
        "a verified email is confirmed"
    );
    let ids = u.body["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0]["provider"], "github");
    assert_eq!(ids[0]["id"], "101");
    assert_eq!(ids[0]["identity_data"]["email_verified"], true);
    // The flow state is spent with the round trip.
    assert_eq!(
        count(&t, "SELECT count(*) FROM flow_state WHERE $1 = $1").await,
        0
    );
    let r = get(&t, &format!("/callback?code=c1&state={state}")).await;
    let again = r.header("location").unwrap();
    assert_eq!(query(again)["error_code"], "bad_oauth_state", "{again}");

    let s = get(&t, "/settings").await;
    assert_eq!(s.body["external"]["github"], true);
    assert_eq!(s.body["external"]["google"], false);
});

both_oauth!(
    a_returning_identity_is_the_same_user_refreshed,
    |_| {},
    |t, fake| {
        fake.profile("c1", Profile::github(7, "first", "same@example.com", true));
        let to = round_trip(&t, "c1", "").await;
        let first = claims(&fragment(&to)["access_token"]);
        let mut renamed = Profile::github(7, "second", "same@example.com", true);
        renamed.user["name"] = json!("Renamed");
        fake.profile("c2", renamed);
        let to = round_trip(&t, "c2", "").await;
        let second = claims(&fragment(&to)["access_token"]);
        assert_eq!(first["sub"], second["sub"]);
        assert_eq!(second["user_metadata"]["name"], "Renamed");
        assert_eq!(
            count(&t, "SELECT count(*) FROM users WHERE $1 = $1").await,
            1
        );
        assert_eq!(
            count(&t, "SELECT count(*) FROM identities WHERE $1 = $1").await,
            1
        );
    }
);

both_oauth!(a_verified_email_links_to_its_user, |_| {}, |t, fake| {
    let s = t.new_session("linked@example.com", "secret123").await;
    let id = s["user"]["id"].as_str().unwrap().to_string();
    fake.profile(
        "c1",
        Profile::github(55, "linker", "linked@example.com", true),
    );
    let to = round_trip(&t, "c1", "").await;
    let c = claims(&fragment(&to)["access_token"]);
    assert_eq!(c["sub"], id, "the same user");
    assert_eq!(c["app_metadata"]["providers"], json!(["email", "github"]));
    assert_eq!(c["app_metadata"]["provider"], "email");
    assert!(
        t.audit_actions(&id)
            .await
            .contains(&"identity_linked".to_string())
    );
    // The password still signs in.
    let r = t.login("linked@example.com", "secret123").await;
    assert_eq!(r.status, 200, "{}", r.text);
});

/// A provider email it has not verified: the account holding that address
/// is left alone.
async fn unverified_claim(t: &TestServer, fake: &FakeOAuth) -> (String, String) {
    let r = t
        .admin(
            reqwest::Method::POST,
            "/admin/users",
            Some(json!({"email": "victim@example.com", "password": "secret123", "email_confirm": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    fake.profile(
        "c1",
        Profile::github(66, "mallory", "victim@example.com", false),
    );
    let to = round_trip(t, "c1", "").await;
    // The victim keeps its only identity and its password.
    let victim = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(
        t.count_by_uuid("SELECT count(*) FROM identities WHERE user_id = $1", victim)
            .await,
        1
    );
    let r = t.login("victim@example.com", "secret123").await;
    assert_eq!(r.status, 200, "{}", r.text);
    (id, to)
}

// With mailer autoconfirm on (the test default), where GoTrue would link
// the identity to the victim: a new user, without the taken address.
both_oauth!(an_unverified_email_links_to_no_one, |_| {}, |t, fake| {
    let (victim, to) = unverified_claim(&t, &fake).await;
    let c = claims(&fragment(&to)["access_token"]);
    assert_ne!(c["sub"], victim);
    assert_eq!(c["email"], "");
    assert_eq!(
        count(
            &t,
            "SELECT count(*) FROM users WHERE email IS NULL AND $1 = $1"
        )
        .await,
        1
    );
});

both_oauth!(
    an_unverified_email_must_be_confirmed_first,
    |c| c.mailer_autoconfirm = false,
    |t, fake| {
        let (_, to) = unverified_claim(&t, &fake).await;
        let q = query(&to);
        assert_eq!(q["error"], "access_denied", "{to}");
        assert_eq!(q["error_code"], "provider_email_needs_verification");
        assert_eq!(
            q["error_description"],
            "Unverified email with github. Verify the email with github in order to sign in"
        );
        assert_eq!(
            fragment(&to)["error_code"],
            "provider_email_needs_verification"
        );
    }
);

both_oauth!(pkce_gives_a_code_then_the_session, |_| {}, |t, fake| {
    use base64::Engine;
    use sha2::Digest;
    let verifier = "v".repeat(50);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    fake.profile("c1", Profile::github(9, "pk", "pk@example.com", true));
    let (state, _) = authorize(
        &t,
        &format!("&code_challenge={challenge}&code_challenge_method=s256"),
    )
    .await;
    let r = get(&t, &format!("/callback?code=c1&state={state}")).await;
    let to = r.header("location").unwrap().to_string();
    let code = query(&to)["code"].clone();
    assert!(!to.contains("access_token"), "{to}");
    // The state is used: a second callback is refused.
    let r = get(&t, &format!("/callback?code=c1&state={state}")).await;
    assert_eq!(
        query(r.header("location").unwrap())["error_code"],
        "flow_state_already_used"
    );
    let r = t
        .post(
            "/token?grant_type=pkce",
            json!({"auth_code": code, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["provider_token"], "gho_c1");
    assert_eq!(r.body["provider_refresh_token"], "ghr_c1");
    assert_eq!(r.body["user"]["email"], "pk@example.com");
    let c = claims(r.body["access_token"].as_str().unwrap());
    assert_eq!(c["amr"][0]["method"], "oauth");
    // Once.
    let r = t
        .post(
            "/token?grant_type=pkce",
            json!({"auth_code": code, "code_verifier": verifier}),
        )
        .await;
    r.assert_error(404, "flow_state_not_found");
});

/// Where a callback with this query lands, and its error parameters.
pub(crate) async fn landing(t: &TestServer, q: &str) -> (String, HashMap<String, String>) {
    let r = get(t, &format!("/callback{q}")).await;
    let to = r.header("location").unwrap().to_string();
    let e = query(&to);
    // A state that cannot be used is answered 303 See Other with the error
    // in the query alone, as GoTrue's state loading answers; the rest 302.
    let unusable_state = e
        .get("error_description")
        .is_some_and(|d| d.starts_with("OAuth state"));
    if unusable_state {
        assert_eq!(r.status, 303, "{to}");
        assert!(!to.contains('#'), "{to}");
        return (to, e);
    }
    assert_eq!(r.status, 302, "{to}");
    assert_eq!(fragment(&to).get("error_code"), e.get("error_code"), "{to}");
    (to, e)
}

both_oauth!(
    every_failure_is_a_redirect_with_the_error,
    |c| c.disable_signup = false,
    |t, fake| {
        let site = "https://site.example.com";
        let (to, e) = landing(&t, "").await;
        assert!(to.starts_with(site), "{to}");
        assert_eq!(
            (e["error"].as_str(), e["error_code"].as_str()),
            ("invalid_request", "bad_oauth_callback")
        );
        let (_, e) = landing(&t, "?state=not-a-uuid&code=x").await;
        assert_eq!(e["error_code"], "bad_oauth_state");
        let (_, e) = landing(&t, &format!("?state={}&code=x", uuid::Uuid::new_v4())).await;
        assert_eq!(e["error_code"], "bad_oauth_state");
        assert_eq!(e["error_description"], "OAuth state not found or expired");

        // The provider's own refusal is passed on, to the app.
        let (state, _) = authorize(&t, "").await;
        let (to, e) = landing(
            &t,
            &format!("?state={state}&error=access_denied&error_description=The+user+said+no"),
        )
        .await;
        assert!(to.starts_with(APP), "{to}");
        assert_eq!(e["error"], "access_denied");
        assert_eq!(e["error_description"], "The user said no");
        let (_, e) = landing(&t, &format!("?state={state}")).await;
        assert_eq!(e["error_code"], "bad_oauth_callback");
        assert_eq!(e["error_description"], "Authorization code missing");
        // A code the provider does not know.
        let (_, e) = landing(&t, &format!("?state={state}&code=unknown")).await;
        assert_eq!(
            (e["error"].as_str(), e["error_code"].as_str()),
            ("invalid_request", "bad_oauth_callback")
        );
        // The provider down.
        fake.failing(Some(503));
        let (_, e) = landing(&t, &format!("?state={state}&code=unknown")).await;
        assert_eq!(e["error"], "temporarily_unavailable");
        fake.failing(None);
        // An expired state.
        let (old, _) = authorize(&t, "").await;
        t.clock().advance(Duration::from_secs(301));
        fake.profile("late", Profile::github(1, "late", "late@example.com", true));
        let (_, e) = landing(&t, &format!("?state={old}&code=late")).await;
        assert_eq!(e["error_description"], "OAuth state has expired");
        // A banned user.
        fake.profile(
            "b1",
            Profile::github(77, "banned", "banned@example.com", true),
        );
        let to = round_trip(&t, "b1", "").await;
        let id = claims(&fragment(&to)["access_token"])["sub"]
            .as_str()
            .unwrap()
            .to_string();
        let r = t
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/users/{id}"),
                Some(json!({"ban_duration": "24h"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        fake.profile(
            "b2",
            Profile::github(77, "banned", "banned@example.com", true),
        );
        let to = round_trip(&t, "b2", "").await;
        let e = query(&to);
        assert_eq!(
            (e["error"].as_str(), e["error_code"].as_str()),
            ("access_denied", "user_banned")
        );
        // Nothing here made a user beyond the banned one.
        assert_eq!(
            count(&t, "SELECT count(*) FROM users WHERE $1 = $1").await,
            1
        );
    }
);

both_oauth!(
    signups_off_refuses_new_users_only,
    |c| c.disable_signup = true,
    |t, fake| {
        fake.profile("c1", Profile::github(3, "new", "new@example.com", true));
        let to = round_trip(&t, "c1", "").await;
        let e = query(&to);
        assert_eq!(
            (e["error"].as_str(), e["error_code"].as_str()),
            ("access_denied", "signup_disabled")
        );
        assert_eq!(
            count(&t, "SELECT count(*) FROM users WHERE $1 = $1").await,
            0
        );
    }
);

both_oauth!(bad_authorize_requests_are_json_4xx, |_| {}, |t, _fake| {
    // A provider GoTrue knows but this deployment left off, and one it does not know.
    let r = get(&t, "/authorize?provider=google").await;
    r.assert_error(400, "validation_failed");
    assert_eq!(
        r.body["msg"],
        "Unsupported provider: provider is not enabled"
    );
    let r = get(&t, "/authorize?provider=nope").await;
    r.assert_error(400, "validation_failed");
    assert_eq!(
        r.body["msg"],
        "Unsupported provider: Provider nope could not be found"
    );
    get(&t, "/authorize")
        .await
        .assert_error(400, "validation_failed");
    get(
        &t,
        "/authorize?provider=github&code_challenge=abc&code_challenge_method=md5",
    )
    .await
    .assert_error(400, "validation_failed");
    get(&t, "/authorize?provider=github%00")
        .await
        .assert_error(400, "validation_failed");
    // Features castellan does not offer answer as GoTrue's do when off.
    t.post("/sso", json!({}))
        .await
        .assert_error(404, "saml_provider_disabled");
    t.post("/token?grant_type=web3", json!({}))
        .await
        .assert_error(422, "web3_provider_disabled");
    // A redirect outside the allow list falls back to the site.
    let r = get(
        &t,
        "/authorize?provider=github&redirect_to=https://evil.example.net/",
    )
    .await;
    assert_eq!(r.status, 302);
    let state = query(r.header("location").unwrap())["state"].clone();
    let (to, _) = landing(&t, &format!("?state={state}&error=x")).await;
    assert!(to.starts_with("https://site.example.com"), "{to}");
});

/// A provider that stalls holds up its own sign-ins, not anyone else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_holds_up_no_other_sign_in() {
    let (t, fake) = oauth_server(Backend::Postgres, |_| {}).await;
    t.signup("fast@example.com", "secret123").await;
    fake.profile("slow", Profile::github(5, "slow", "slow@example.com", true));
    fake.delay(Duration::from_secs(3));
    let (state, _) = authorize(&t, "").await;
    let url = t.url(&format!("/callback?code=slow&state={state}"));
    let slow = tokio::spawn(async move { no_redirects().get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let r = t.login("fast@example.com", "secret123").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (other, _) = authorize(&t, "").await;
    assert!(!other.is_empty());
    assert!(
        !slow.is_finished(),
        "the slow sign-in is still waiting on its provider"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let r = slow.await.unwrap();
    assert_eq!(r.status(), 302);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("access_token=")
    );
    t.stop().await;
}

both_oauth!(manual_linking_is_off_unless_enabled, |_| {}, |t, _fake| {
    let s = t.new_session("nolink@example.com", "secret123").await;
    let token = s["access_token"].as_str().unwrap();
    let r = t
        .request(
            reqwest::Method::GET,
            "/user/identities/authorize?provider=github",
            Some(token),
            None,
        )
        .await;
    r.assert_error(404, "manual_linking_disabled");
    let id = s["user"]["identities"][0]["identity_id"].as_str().unwrap();
    let r = t
        .request(
            reqwest::Method::DELETE,
            &format!("/user/identities/{id}"),
            Some(token),
            None,
        )
        .await;
    r.assert_error(404, "manual_linking_disabled");
});

/// The state of a linking URL, and where its round trip lands.
async fn link(t: &TestServer, token: &str, code: &str) -> String {
    let r = t
        .request(
            reqwest::Method::GET,
            &format!("/user/identities/authorize?provider=github&skip_http_redirect=true&redirect_to={APP}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let state = query(r.body["url"].as_str().unwrap())["state"].clone();
    let r = get(t, &format!("/callback?code={code}&state={state}")).await;
    r.header("location").unwrap().to_string()
}

both_oauth!(
    identities_are_linked_and_unlinked_by_their_user,
    |c| c.external.manual_linking_enabled = true,
    |t, fake| {
        let s = t.new_session("owner@example.com", "secret123").await;
        let token = s["access_token"].as_str().unwrap().to_string();
        let owner = s["user"]["id"].as_str().unwrap().to_string();
        fake.profile(
            "l1",
            Profile::github(500, "owner-gh", "elsewhere@example.com", true),
        );
        let to = link(&t, &token, "l1").await;
        let c = claims(&fragment(&to)["access_token"]);
        assert_eq!(c["sub"], owner);
        assert_eq!(c["app_metadata"]["providers"], json!(["email", "github"]));
        assert_eq!(
            c["email"], "owner@example.com",
            "linking keeps the user's email"
        );

        // The same GitHub account cannot join a second user.
        let other = t.new_session("other@example.com", "secret123").await;
        fake.profile(
            "l2",
            Profile::github(500, "owner-gh", "elsewhere@example.com", true),
        );
        let to = link(&t, other["access_token"].as_str().unwrap(), "l2").await;
        assert_eq!(query(&to)["error_code"], "identity_already_exists", "{to}");

        let u = t.get_user(&token).await;
        let ids = u.body["identities"].as_array().unwrap().clone();
        assert_eq!(ids.len(), 2);
        let gh = ids.iter().find(|i| i["provider"] == "github").unwrap();
        let email_id = ids.iter().find(|i| i["provider"] == "email").unwrap();
        let del = |id: String| {
            let (t, token) = (&t, token.clone());
            async move {
                let path = format!("/user/identities/{id}");
                t.request(reqwest::Method::DELETE, &path, Some(&token), None)
                    .await
            }
        };
        let r = del(gh["identity_id"].as_str().unwrap().to_string()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body, json!({}));
        let u = t.get_user(&token).await;
        assert_eq!(u.body["identities"].as_array().unwrap().len(), 1);
        assert_eq!(u.body["app_metadata"]["providers"], json!(["email"]));
        assert_eq!(u.body["email"], "owner@example.com");
        assert!(
            t.audit_actions(&owner)
                .await
                .contains(&"identity_unlinked".to_string())
        );
        // The last identity stays; unknown and malformed ids are refused.
        del(email_id["identity_id"].as_str().unwrap().to_string())
            .await
            .assert_error(422, "single_identity_not_deletable");
        fake.profile(
            "l3",
            Profile::github(501, "again", "again@example.com", true),
        );
        link(&t, &token, "l3").await;
        del(uuid::Uuid::new_v4().to_string())
            .await
            .assert_error(422, "identity_not_found");
        del("not-a-uuid".into())
            .await
            .assert_error(404, "validation_failed");
    }
);

both_oauth!(
    an_anonymous_user_becomes_a_github_user,
    |c| {
        c.external.manual_linking_enabled = true;
        c.anonymous_users_enabled = true;
    },
    |t, fake| {
        let r = t.post("/signup", json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let token = r.body["access_token"].as_str().unwrap().to_string();
        let anon = r.body["user"]["id"].as_str().unwrap().to_string();
        fake.profile("a1", Profile::github(600, "anon", "anon@example.com", true));
        let to = link(&t, &token, "a1").await;
        let c = claims(&fragment(&to)["access_token"]);
        assert_eq!(c["sub"], anon);
        assert_eq!(c["is_anonymous"], false, "{c}");
        assert_eq!(c["email"], "anon@example.com");
    }
);

// An identity email its provider did not verify links nothing to its
// holder: here an attacker's linked identity carrying the victim's address.
both_oauth!(
    an_unverified_linked_email_attracts_no_one,
    |c| c.external.manual_linking_enabled = true,
    |t, fake| {
        let s = t.new_session("attacker@example.com", "secret123").await;
        let attacker = s["user"]["id"].as_str().unwrap().to_string();
        fake.profile(
            "bait",
            Profile::github(700, "bait", "victim@example.com", false),
        );
        let to = link(&t, s["access_token"].as_str().unwrap(), "bait").await;
        assert!(fragment(&to).contains_key("access_token"), "{to}");
        // The victim signs in with a verified address for the first time.
        fake.profile(
            "v1",
            Profile::github(701, "victim", "victim@example.com", true),
        );
        let to = round_trip(&t, "v1", "").await;
        let c = claims(&fragment(&to)["access_token"]);
        assert_ne!(c["sub"], attacker, "{to}");
        assert_eq!(c["email"], "victim@example.com");
    }
);

/// An invitation's token hash, as the invite link carries it.
async fn invite(t: &TestServer, email: &str) -> (String, uuid::Uuid) {
    let body = json!({"type": "invite", "email": email});
    let r = t
        .admin(reqwest::Method::POST, "/admin/generate_link", Some(body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().parse().unwrap();
    (r.body["hashed_token"].as_str().unwrap().to_string(), id)
}

// `invite_token` on `/authorize` (GoTrue's processInvite): the invited
// user signs in through the provider when it names the invited address;
// the invitation is spent and the account confirmed.
both_oauth!(
    an_invitation_is_accepted_through_the_provider,
    |_| {},
    |t, fake| {
        get(&t, "/authorize?provider=github&invite_token=nope")
            .await
            .assert_error(404, "user_not_found");

        let (token, invited) = invite(&t, "guest@example.com").await;
        // A provider account of another address: refused, the invitation kept.
        fake.profile(
            "i1",
            Profile::github(301, "other", "someone@else.com", true),
        );
        let to = round_trip(&t, "i1", &format!("&invite_token={token}")).await;
        assert_eq!(query(&to)["error_code"], "validation_failed", "{to}");
        assert_eq!(
            query(&to)["error_description"],
            "Invited email does not match emails from external provider"
        );
        assert_eq!(
            count(
                &t,
                "SELECT count(*) FROM identities WHERE provider = 'github' AND $1 = $1"
            )
            .await,
            0
        );

        fake.profile(
            "i2",
            Profile::github(302, "guest", "Guest@Example.com", true),
        );
        let (state, q) = authorize(&t, &format!("&invite_token={token}")).await;
        assert!(
            !q.contains_key("invite_token"),
            "not passed to the provider"
        );
        let r = get(&t, &format!("/callback?code=i2&state={state}")).await;
        let to = r.header("location").unwrap().to_string();
        let c = claims(&fragment(&to)["access_token"]);
        assert_eq!(c["sub"], invited.to_string(), "{to}");
        assert_eq!(c["app_metadata"]["provider"], "github");
        let user = t.user(&invited.to_string()).await;
        assert!(user.email_confirmed_at.is_some());
        assert_eq!(
            t.count_by_uuid(
                "SELECT count(*) FROM identities WHERE user_id = $1 AND provider = 'github'",
                invited
            )
            .await,
            1
        );
        assert!(
            t.audit_actions(&invited.to_string())
                .await
                .contains(&"invite_accepted".to_string())
        );
        // Spent: it opens nothing again.
        get(
            &t,
            &format!("/authorize?provider=github&invite_token={token}"),
        )
        .await
        .assert_error(404, "user_not_found");
    }
);

// Issue 25: the `ProviderBroker` keeps a circuit breaker per provider.
// Five callbacks in a row that find GitHub down open it: the next sign-in
// fails at once without calling GitHub; after the cool-off one call tries
// it again, and its success closes the breaker.
both_oauth!(
    a_provider_that_is_down_is_not_asked_until_its_cool_off,
    |_| {},
    |t, fake| {
        let (state, _) = authorize(&t, "").await;
        // A provider's unexplained 4xx (what a bogus, oversized code draws)
        // is a refusal: however many, it opens nothing.
        fake.failing(Some(413));
        for _ in 0..6 {
            let before = fake.token_requests().len();
            let (_, e) = landing(&t, &format!("?state={state}&code=x")).await;
            assert_eq!(e["error_code"], "bad_oauth_callback", "{e:?}");
            assert!(fake.token_requests().len() > before, "not asked");
        }
        fake.failing(Some(503));
        for _ in 0..5 {
            let (_, e) = landing(&t, &format!("?state={state}&code=x")).await;
            assert_eq!(e["error"], "temporarily_unavailable");
        }
        let asked = fake.token_requests().len();
        let open = "castellan_oauth_provider_calls_total{provider=\"github\",op=\"token\",outcome=\"circuit_open\"}";
        let metrics = || async {
            t.request(reqwest::Method::GET, "/metrics", None, None)
                .await
                .text
        };
        let before = common::series_sum(&metrics().await, open);
        let (_, e) = landing(&t, &format!("?state={state}&code=x")).await;
        assert_eq!(e["error"], "temporarily_unavailable");
        assert_eq!(fake.token_requests().len(), asked, "asked while open");
        assert!(common::series_sum(&metrics().await, open) > before);

        fake.failing(None);
        fake.profile("back", Profile::github(9, "back", "back@example.com", true));
        t.clock().advance(Duration::from_secs(31));
        let (state, _) = authorize(&t, "").await;
        let r = get(&t, &format!("/callback?code=back&state={state}")).await;
        let to = r.header("location").unwrap().to_string();
        assert!(fragment(&to).contains_key("access_token"), "{to}");
        assert_eq!(fake.token_requests().len(), asked + 1);
    }
);

// Issue 26: a provider enabled without its credentials (what the Supabase
// CLI hands over when a secret is unset) does not stop castellan starting,
// as it does not stop GoTrue; each sign-in with it is refused in GoTrue's
// words, and the other providers work.
crate::both!(
    a_provider_without_its_credentials_starts_and_refuses_its_sign_ins,
    |c| {
        let google = c.external.providers.get_mut("google").unwrap();
        google.enabled = true;
        google.client_ids = vec!["g-client".into()];
        google.secret = String::new();
        let gitlab = c.external.providers.get_mut("gitlab").unwrap();
        gitlab.enabled = true;
    },
    |t| {
        for (provider, why) in [
            ("google", "missing OAuth secret"),
            ("gitlab", "missing OAuth client ID"),
        ] {
            let r = get(&t, &format!("/authorize?provider={provider}")).await;
            r.assert_error(400, "validation_failed");
            assert_eq!(r.body["msg"], format!("Unsupported provider: {why}"));
        }
        // `/settings` says what the configuration enables, as GoTrue's does.
        let s = get(&t, "/settings").await;
        assert_eq!(s.body["external"]["google"], true);
        assert_eq!(s.body["external"]["gitlab"], true);
        assert_eq!(s.body["external"]["github"], false);
    }
);
