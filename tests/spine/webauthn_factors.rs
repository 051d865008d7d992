//! WebAuthn second factors (issue 29): a factor's first challenge registers
//! an authenticator, later ones ask it to sign and raise the session to
//! aal2; GoTrue's errors, and the attacks: an answer replayed, a clone's
//! counter, a challenge answered twice, the other ceremony's answer.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::authenticator::SoftAuthenticator;
use crate::both;
use crate::common::{Reply, TestServer, claims};
use crate::passkeys::ORIGIN;

fn on(c: &mut castellan_core::Config) {
    crate::passkeys::enabled(c);
    c.mfa.webauthn_enroll_enabled = true;
    c.mfa.webauthn_verify_enabled = true;
}

async fn call(t: &TestServer, access: &str, path: &str, body: Value) -> Reply {
    t.request(Method::POST, path, Some(access), Some(body))
        .await
}

/// A challenge of the factor: its id, ceremony and `publicKey` options.
async fn challenge(t: &TestServer, access: &str, factor: &str) -> (String, String, Value) {
    let r = call(
        t,
        access,
        &format!("/factors/{factor}/challenge"),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "webauthn");
    let w = &r.body["webauthn"];
    (
        r.body["id"].as_str().unwrap().to_string(),
        w["type"].as_str().unwrap().to_string(),
        w["credential_options"]["publicKey"].clone(),
    )
}

async fn answer(
    t: &TestServer,
    access: &str,
    factor: &str,
    id: &str,
    kind: &str,
    cred: Value,
) -> Reply {
    let body = json!({"challenge_id": id, "webauthn": {"type": kind, "credential_response": cred}});
    call(t, access, &format!("/factors/{factor}/verify"), body).await
}

/// A user with a verified WebAuthn factor: a fresh aal1 access token, the
/// factor and its authenticator.
async fn registered(t: &TestServer, email: &str) -> (String, String, SoftAuthenticator) {
    let s = t.new_session(email, "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    let r = call(
        t,
        access,
        "/factors",
        json!({"factor_type": "webauthn", "friendly_name": "key"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let factor = r.body["id"].as_str().unwrap().to_string();
    let mut auth = SoftAuthenticator::new(ORIGIN, "example.com");
    let (id, kind, options) = challenge(t, access, &factor).await;
    let r = answer(t, access, &factor, &id, &kind, auth.create(&options)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let low = t.login(email, "secret123").await.body;
    (
        low["access_token"].as_str().unwrap().to_string(),
        factor,
        auth,
    )
}

both!(a_webauthn_factor_registers_then_raises_sessions, on, |t| {
    let s = t.new_session("key@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    let r = call(
        &t,
        access,
        "/factors",
        json!({"factor_type": "webauthn", "friendly_name": "key"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "webauthn");
    assert_eq!(r.body["friendly_name"], "key");
    assert!(r.body.get("totp").is_none());
    let factor = r.body["id"].as_str().unwrap().to_string();

    // The first challenge registers.
    let (id, kind, options) = challenge(&t, access, &factor).await;
    assert_eq!(kind, "create");
    assert_eq!(options["rp"]["id"], "example.com");
    assert_eq!(options["user"]["name"], "key@example.com");
    let mut auth = SoftAuthenticator::new(ORIGIN, "example.com");
    let r = answer(&t, access, &factor, &id, "create", auth.create(&options)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let raised = r.body["access_token"].as_str().unwrap();
    assert_eq!(claims(raised)["aal"], "aal2");
    let methods: Vec<_> = claims(raised)["amr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["method"].clone())
        .collect();
    assert!(methods.contains(&json!("mfa/webauthn")), "{methods:?}");
    let fid = Uuid::parse_str(&factor).unwrap();
    let stored = "SELECT count(*) FROM mfa_factors WHERE id = $1 AND status = 'verified' \
                  AND factor_type = 'webauthn' AND web_authn_credential IS NOT NULL";
    assert_eq!(t.count_by_uuid(stored, fid).await, 1);
    // That challenge is spent.
    answer(&t, access, &factor, &id, "create", auth.create(&options))
        .await
        .assert_error(422, "mfa_ip_address_mismatch");

    // A new session: the next challenge asks the authenticator to sign.
    let low = t.login("key@example.com", "secret123").await.body;
    let low = low["access_token"].as_str().unwrap();
    assert_eq!(claims(low)["aal"], "aal1");
    let (id, kind, options) = challenge(&t, low, &factor).await;
    assert_eq!(kind, "request");
    let allowed = options["allowCredentials"].as_array().unwrap();
    assert_eq!(allowed.len(), 1);
    let r = answer(&t, low, &factor, &id, "request", auth.get(&options)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        claims(r.body["access_token"].as_str().unwrap())["aal"],
        "aal2"
    );
    let u = t.get_user(r.body["access_token"].as_str().unwrap()).await;
    assert_eq!(u.body["factors"][0]["factor_type"], "webauthn");
    assert!(u.body["factors"][0].get("web_authn_credential").is_none());
});

both!(replays_clones_and_the_wrong_ceremony_are_refused, on, |t| {
    let (low, factor, mut auth) = registered(&t, "wary-key@example.com").await;
    let (id, _, options) = challenge(&t, &low, &factor).await;
    let good = auth.get(&options);
    let r = answer(&t, &low, &factor, &id, "request", good.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The same answer to a new challenge: signed for the old one.
    let low = t.login("wary-key@example.com", "secret123").await.body;
    let low = low["access_token"].as_str().unwrap().to_string();
    let (id, _, options) = challenge(&t, &low, &factor).await;
    answer(&t, &low, &factor, &id, "request", good)
        .await
        .assert_error(422, "mfa_verification_failed");
    // Refused answers spend their challenge too.
    answer(&t, &low, &factor, &id, "request", auth.get(&options))
        .await
        .assert_error(422, "mfa_factor_not_found");
    // A clone: the right key, its counter not past the one last accepted.
    let (id, _, options) = challenge(&t, &low, &factor).await;
    auth.counter = 0;
    answer(&t, &low, &factor, &id, "request", auth.get(&options))
        .await
        .assert_error(422, "mfa_verification_failed");
    // An answer of the other ceremony than the challenge's.
    let (id, _, options) = challenge(&t, &low, &factor).await;
    let mut other = SoftAuthenticator::new(ORIGIN, "example.com");
    let created = other.create(&json!({"challenge": options["challenge"], "user": {"id": "AAAA"}}));
    answer(&t, &low, &factor, &id, "create", created)
        .await
        .assert_error(400, "validation_failed");
    // Another origin's page, signed properly.
    let (id, _, options) = challenge(&t, &low, &factor).await;
    auth.counter = 50;
    auth.origin = "https://app.example.org".into();
    answer(&t, &low, &factor, &id, "request", auth.get(&options))
        .await
        .assert_error(422, "mfa_verification_failed");
    auth.origin = ORIGIN.into();
    let (id, _, options) = challenge(&t, &low, &factor).await;
    let r = answer(&t, &low, &factor, &id, "request", auth.get(&options)).await;
    assert_eq!(r.status, 200, "{}", r.text);
});

both!(webauthn_verify_bodies_get_gotrues_errors, on, |t| {
    let (low, factor, _) = registered(&t, "bodies@example.com").await;
    let (id, _, _) = challenge(&t, &low, &factor).await;
    let path = format!("/factors/{factor}/verify");
    for (body, says) in [
        (json!({"challenge_id": id}), "WebAuthn config required"),
        (
            json!({"challenge_id": id, "webauthn": {"type": "sign"}}),
            "WebAuthn type must be create or request",
        ),
        (
            json!({"challenge_id": id, "webauthn": {"type": "request"}}),
            "credential_response required",
        ),
    ] {
        let r = call(&t, &low, &path, body).await;
        r.assert_error(400, "validation_failed");
        assert_eq!(r.body["msg"], says);
    }
    for garbage in [
        json!({}),
        json!({"id": "x", "rawId": "!!", "response": {}}),
        json!("A".repeat(500_000)),
    ] {
        let (id, _, _) = challenge(&t, &low, &factor).await;
        let r = answer(&t, &low, &factor, &id, "request", garbage).await;
        r.assert_error(400, "validation_failed");
    }
    // A TOTP factor still needs its code.
    let other = t.new_session("totp-only@example.com", "secret123").await;
    let other = other["access_token"].as_str().unwrap();
    let f = crate::mfa::enroll(&t, other, "app").await;
    let c = crate::mfa::challenge(&t, other, &f.id).await;
    let body =
        json!({"challenge_id": c, "webauthn": {"type": "request", "credential_response": {}}});
    call(&t, other, &format!("/factors/{}/verify", f.id), body)
        .await
        .assert_error(400, "validation_failed");
});

both!(
    webauthn_factors_off_are_gotrues_422,
    crate::passkeys::enabled,
    |t| {
        let s = t.new_session("nokey@example.com", "secret123").await;
        let access = s["access_token"].as_str().unwrap();
        call(&t, access, "/factors", json!({"factor_type": "webauthn"}))
            .await
            .assert_error(422, "mfa_webauthn_enroll_not_enabled");
    }
);
