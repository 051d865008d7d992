//! Twitter's OAuth 1.0a sign-in (issue 11): `/authorize` fetches a signed
//! request token and sends the browser to Twitter with it; the callback's
//! verifier is exchanged for an access token, and the profile read with it.
//! A stand-in on loopback checks every signature; on SQLite and PostgreSQL.

use std::collections::HashMap;

use crate::common::{self, Backend, TestServer, claims};
use crate::oauth::{APP, count, fragment, get, landing, no_redirects, query};
use crate::twitter_provider::{CONSUMER_KEY, CONSUMER_SECRET, FakeTwitter};

async fn twitter_server(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, FakeTwitter) {
    let fake = FakeTwitter::start().await;
    let url = fake.base.clone();
    let t = common::spawn(backend, move |c| {
        let twitter = c.external.providers.entry("twitter".into()).or_default();
        twitter.enabled = true;
        twitter.client_ids = vec![CONSUMER_KEY.into()];
        twitter.secret = CONSUMER_SECRET.into();
        twitter.url = Some(url);
        twitter.redirect_uri = "http://127.0.0.1:1/callback".into();
        c.uri_allow_list = vec!["https://app.example.com/**".into()];
        c.site_url = "https://site.example.com".into();
        tweak(c);
    })
    .await;
    (t, fake)
}

macro_rules! both_twitter {
    ($name:ident, |$t:ident, $fake:ident| $body:block) => {
        crate::both!($name, twitter_server, |_| {}, |$t, $fake| $body);
    };
}

/// `/authorize`, then Twitter's page approving as `screen_name`: the
/// query the browser brings back to `/callback`.
async fn approve(t: &TestServer, fake: &FakeTwitter, screen_name: &str) -> String {
    let r = get(
        t,
        &format!("/authorize?provider=twitter&redirect_to={APP}&screen_name={screen_name}"),
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.text);
    let to = r.header("location").unwrap().to_string();
    assert!(
        to.starts_with(&format!("{}/oauth/authenticate?", fake.base)),
        "{to}"
    );
    let q = query(&to);
    // The request's other parameters are passed on (Twitter's own).
    assert_eq!(q["screen_name"], screen_name);
    let page = no_redirects().get(&to).send().await.unwrap();
    assert_eq!(page.status(), 302);
    let back = page.headers()["location"].to_str().unwrap().to_string();
    let (callback, q) = back.split_once('?').unwrap();
    assert_eq!(callback, "http://127.0.0.1:1/callback");
    format!("?{q}")
}

/// The error a callback with these OAuth 1.0a parts lands with.
async fn answer(
    t: &TestServer,
    state: &str,
    token: &str,
    verifier: &str,
) -> HashMap<String, String> {
    let q = format!("?state={state}&oauth_token={token}&oauth_verifier={verifier}");
    landing(t, &q).await.1
}

async fn client_states(t: &TestServer) -> i64 {
    count(
        t,
        "SELECT count(*) FROM oauth_client_states WHERE provider_type = 'twitter' AND $1 = $1",
    )
    .await
}

both_twitter!(a_twitter_user_signs_in_and_returns, |t, fake| {
    let settings = get(&t, "/settings").await;
    assert_eq!(settings.body["external"]["twitter"], true);

    fake.profile("jack", 12, "Jack@Example.com");
    let back = approve(&t, &fake, "jack").await;
    let q = query(&back);
    assert!(uuid::Uuid::parse_str(&q["state"]).is_ok(), "{back}");
    // The request token's secret is kept for the exchange, in the flow.
    assert_eq!(client_states(&t).await, 1);

    let r = get(&t, &format!("/callback{back}")).await;
    assert_eq!(r.status, 302, "{}", r.text);
    let to = r.header("location").unwrap();
    assert!(to.starts_with(&format!("{APP}#")), "{to}");
    let f = fragment(to);
    assert!(f["provider_token"].starts_with("at"), "{to}");
    // OAuth 1.0a has no refresh token.
    assert!(!f.contains_key("provider_refresh_token"), "{to}");
    let c = claims(&f["access_token"]);
    assert_eq!(c["email"], "jack@example.com");
    assert_eq!(c["app_metadata"]["provider"], "twitter");
    assert_eq!(c["user_metadata"]["user_name"], "jack");
    assert_eq!(c["user_metadata"]["full_name"], "jack name");
    assert_eq!(c["user_metadata"]["email_verified"], true);
    assert_eq!(
        c["user_metadata"]["iss"],
        format!("{}/1.1/account/verify_credentials.json", fake.base)
    );
    assert_eq!(
        t.count_by_str(
            "SELECT count(*) FROM identities WHERE provider = 'twitter' AND provider_id = $1",
            "12"
        )
        .await,
        1
    );
    assert_eq!(client_states(&t).await, 0);
    assert_eq!(
        fake.calls(),
        [
            "request_token",
            "authenticate",
            "access_token",
            "verify_credentials"
        ]
    );
    assert_eq!(fake.bad_signatures(), 0);

    // The same Twitter user again: the same user, no second identity.
    let back = approve(&t, &fake, "jack").await;
    let r = get(&t, &format!("/callback{back}")).await;
    let again = claims(&fragment(r.header("location").unwrap())["access_token"]);
    assert_eq!(again["sub"], c["sub"]);
    assert_eq!(
        count(&t, "SELECT count(*) FROM identities WHERE $1 = $1").await,
        1
    );
    assert_eq!(fake.bad_signatures(), 0);
});

both_twitter!(
    a_callback_must_bring_its_own_request_token_once,
    |t, fake| {
        fake.profile("jack", 12, "jack@example.com");
        let a = query(&approve(&t, &fake, "jack").await);
        let b = query(&approve(&t, &fake, "jack").await);
        let err = |e: &HashMap<String, String>| {
            (
                e.get("error").cloned().unwrap_or_default(),
                e.get("error_code").cloned().unwrap_or_default(),
            )
        };

        // B's token and verifier under A's state: refused before Twitter is asked.
        let e = answer(&t, &a["state"], &b["oauth_token"], &b["oauth_verifier"]).await;
        assert_eq!(
            err(&e),
            ("invalid_request".into(), "bad_oauth_callback".into())
        );
        assert!(!fake.calls().contains(&"access_token".to_string()));
        // A's kept token was taken by that attempt: its own answer is refused now.
        let e = answer(&t, &a["state"], &a["oauth_token"], &a["oauth_verifier"]).await;
        assert_eq!(e["error_code"], "bad_oauth_state");

        // A forged verifier reaches Twitter, which refuses it.
        let e = answer(&t, &b["state"], &b["oauth_token"], "forged").await;
        assert_eq!(e["error_code"], "bad_oauth_callback");
        assert_eq!(
            count(&t, "SELECT count(*) FROM users WHERE $1 = $1").await,
            0
        );

        // The user declines on Twitter's page.
        let c = query(&approve(&t, &fake, "jack").await);
        let (to, e) = landing(
            &t,
            &format!("?state={}&denied={}", c["state"], c["oauth_token"]),
        )
        .await;
        assert!(to.starts_with(APP), "{to}");
        assert_eq!(e["error"], "access_denied");
        assert_eq!(fake.bad_signatures(), 0);
    }
);

both_twitter!(twitter_down_is_answered_and_writes_nothing, |t, fake| {
    let authorize = format!("/authorize?provider=twitter&redirect_to={APP}");
    fake.failing(Some(503));
    let r = get(&t, &authorize).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["error_code"], "unexpected_failure");
    // Our credentials refused: a configuration fault, ours to fix.
    fake.failing(Some(401));
    let r = get(&t, &authorize).await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(r.body["error_code"], "unexpected_failure");
    assert_eq!(
        count(&t, "SELECT count(*) FROM flow_state WHERE $1 = $1").await,
        0
    );

    // Down between the page and the callback: the browser lands with the error.
    fake.failing(None);
    fake.profile("jack", 12, "jack@example.com");
    let back = approve(&t, &fake, "jack").await;
    fake.failing(Some(503));
    let (_, e) = landing(&t, &back).await;
    assert_eq!(e["error"], "temporarily_unavailable");
    assert_eq!(
        count(&t, "SELECT count(*) FROM users WHERE $1 = $1").await,
        0
    );
    assert_eq!(fake.bad_signatures(), 0);
});
