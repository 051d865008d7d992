//! Passkeys (issue 29): registration while signed in, sign-in with the
//! passkey alone, listing, renaming and deleting (the user's and the
//! admin's), and the attacks: a challenge used twice or raced, a wrong
//! origin, a cloned authenticator, a deleted passkey, a passkey past the
//! per-user maximum, malformed and huge credentials. A software
//! authenticator answers here; the browser test uses Chromium's.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::both;
use crate::common::{Reply, TestServer, claims};

use crate::authenticator::SoftAuthenticator;

pub const ORIGIN: &str = "https://app.example.com";

/// Passkeys on, for the relying party `example.com` at [`ORIGIN`].
pub fn enabled(c: &mut castellan_core::Config) {
    crate::common::passkeys_on(c, "example.com", ORIGIN, 2);
}

async fn post(t: &TestServer, path: &str, token: Option<&str>, body: Value) -> Reply {
    t.request(Method::POST, path, token, Some(body)).await
}

/// Registers `auth`'s credential for the user of `access`: the new passkey.
async fn register(t: &TestServer, access: &str, auth: &mut SoftAuthenticator) -> Reply {
    let o = post(t, "/passkeys/registration/options", Some(access), json!({})).await;
    assert_eq!(o.status, 200, "{}", o.text);
    let credential = auth.create(&o.body["options"]);
    let body = json!({"challenge_id": o.body["challenge_id"], "credential": credential});
    post(t, "/passkeys/registration/verify", Some(access), body).await
}

/// A sign-in's options: the challenge id and the request options.
async fn sign_in_options(t: &TestServer) -> (Value, Value) {
    let o = post(t, "/passkeys/authentication/options", None, json!({})).await;
    assert_eq!(o.status, 200, "{}", o.text);
    (o.body["challenge_id"].clone(), o.body["options"].clone())
}

async fn sign_in_with(t: &TestServer, challenge: &Value, credential: Value) -> Reply {
    let body = json!({"challenge_id": challenge, "credential": credential});
    post(t, "/passkeys/authentication/verify", None, body).await
}

/// A user with a registered passkey: their access token, user id and authenticator.
async fn with_passkey(t: &TestServer, email: &str) -> (String, String, SoftAuthenticator) {
    let s = t.new_session(email, "secret123").await;
    let access = s["access_token"].as_str().unwrap().to_string();
    let mut auth = SoftAuthenticator::new(ORIGIN, "example.com");
    let r = register(t, &access, &mut auth).await;
    assert_eq!(r.status, 200, "{}", r.text);
    (access, s["user"]["id"].as_str().unwrap().to_string(), auth)
}

both!(a_passkey_registered_signs_its_user_in_alone, enabled, |t| {
    let s = t.new_session("pk@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    let user = s["user"]["id"].as_str().unwrap();
    let o = post(
        &t,
        "/passkeys/registration/options",
        Some(access),
        json!({}),
    )
    .await;
    assert_eq!(o.status, 200, "{}", o.text);
    let options = &o.body["options"];
    assert_eq!(options["rp"]["id"], "example.com");
    assert_eq!(options["rp"]["name"], "Castellan Test");
    assert_eq!(options["user"]["name"], "pk@example.com");
    assert_eq!(options["authenticatorSelection"]["residentKey"], "required");
    assert_eq!(
        options["authenticatorSelection"]["userVerification"],
        "required"
    );
    assert!(o.body["expires_at"].as_i64().unwrap() > t.clock().now().timestamp());
    let mut auth = SoftAuthenticator::new(ORIGIN, "example.com");
    let credential = auth.create(options);
    let body = json!({"challenge_id": o.body["challenge_id"], "credential": credential});
    let r = post(&t, "/passkeys/registration/verify", Some(access), body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["friendly_name"], "Passkey");
    let id = Uuid::parse_str(r.body["id"].as_str().unwrap()).unwrap();
    let stored = "SELECT count(*) FROM webauthn_credentials WHERE id = $1 \
                  AND sign_count = 0 AND castellan_passkey IS NOT NULL AND length(public_key) > 60";
    assert_eq!(t.count_by_uuid(stored, id).await, 1);
    let spent = "SELECT count(*) FROM webauthn_challenges WHERE user_id = $1";
    assert_eq!(
        t.count_by_uuid(spent, Uuid::parse_str(user).unwrap()).await,
        0
    );

    let (challenge, options) = sign_in_options(&t).await;
    assert_eq!(options["userVerification"], "required");
    assert!(
        options
            .get("allowCredentials")
            .is_none_or(|a| a.as_array().unwrap().is_empty())
    );
    let r = sign_in_with(&t, &challenge, auth.get(&options)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"]["id"], user);
    let access = r.body["access_token"].as_str().unwrap();
    assert_eq!(claims(access)["amr"][0]["method"], "passkey");
    assert_eq!(t.get_user(access).await.status, 200);
    let used = "SELECT count(*) FROM webauthn_credentials WHERE id = $1 \
                AND sign_count = 1 AND last_used_at IS NOT NULL";
    assert_eq!(t.count_by_uuid(used, id).await, 1);
    let actions = t.audit_actions(user).await;
    assert!(
        actions.contains(&"passkey_created".to_string()),
        "{actions:?}"
    );
    assert_eq!(actions.last().unwrap(), "login");

    let r = t
        .request(Method::GET, "/passkeys", Some(access), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    assert_eq!(r.body[0]["id"], id.to_string());
    assert!(r.body[0]["last_used_at"].is_string());
    assert!(r.body[0].get("public_key").is_none());
    let settings = t.request(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["passkeys_enabled"], true);
});

both!(a_challenge_answers_once, enabled, |t| {
    let (_, _, mut auth) = with_passkey(&t, "once@example.com").await;
    let (challenge, options) = sign_in_options(&t).await;
    let assertion = auth.get(&options);
    // Two verifications of one challenge at once: one session.
    let (a, b) = tokio::join!(
        sign_in_with(&t, &challenge, assertion.clone()),
        sign_in_with(&t, &challenge, assertion.clone())
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "{} / {}", a.text, b.text);
    let refused = if a.status == 400 { a } else { b };
    refused.assert_error(400, "webauthn_challenge_not_found");
    sign_in_with(&t, &challenge, assertion)
        .await
        .assert_error(400, "webauthn_challenge_not_found");
    // A registration's challenge is not a sign-in's.
    let s = t.login("once@example.com", "secret123").await.body;
    let access = s["access_token"].as_str().unwrap();
    let o = post(
        &t,
        "/passkeys/registration/options",
        Some(access),
        json!({}),
    )
    .await;
    let (_, options) = sign_in_options(&t).await;
    sign_in_with(&t, &o.body["challenge_id"], auth.get(&options))
        .await
        .assert_error(400, "webauthn_challenge_not_found");
});

both!(an_expired_challenge_is_refused, enabled, |t| {
    let (_, _, mut auth) = with_passkey(&t, "late@example.com").await;
    let (challenge, options) = sign_in_options(&t).await;
    t.clock().advance(Duration::from_secs(301));
    sign_in_with(&t, &challenge, auth.get(&options))
        .await
        .assert_error(400, "webauthn_challenge_expired");
});

both!(
    wrong_origins_clones_and_deleted_passkeys_are_refused,
    enabled,
    |t| {
        let (access, user, mut auth) = with_passkey(&t, "wary@example.com").await;
        // Another site's page, signed properly: the origin is not ours.
        let (challenge, options) = sign_in_options(&t).await;
        auth.origin = "https://app.example.org".into();
        let phished = auth.get(&options);
        auth.origin = ORIGIN.into();
        sign_in_with(&t, &challenge, phished)
            .await
            .assert_error(400, "webauthn_verification_failed");

        // A clone: the same key, its counter behind the one last seen.
        let (challenge, options) = sign_in_options(&t).await;
        let r = sign_in_with(&t, &challenge, auth.get(&options)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let (challenge, options) = sign_in_options(&t).await;
        sign_in_with(&t, &challenge, auth.assert(&options))
            .await
            .assert_error(400, "webauthn_verification_failed");

        // Another user's handle on this credential: refused.
        let (_, _, other) = with_passkey(&t, "other@example.com").await;
        let (challenge, options) = sign_in_options(&t).await;
        let mut swapped = auth.get(&options);
        swapped["response"]["userHandle"] = json!(other.handle());
        sign_in_with(&t, &challenge, swapped)
            .await
            .assert_error(400, "webauthn_verification_failed");

        // Deleted: it signs no one in.
        let list = t
            .request(Method::GET, "/passkeys", Some(&access), None)
            .await;
        let id = list.body[0]["id"].as_str().unwrap().to_string();
        let r = t
            .request(
                Method::DELETE,
                &format!("/passkeys/{id}"),
                Some(&access),
                None,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
        let (challenge, options) = sign_in_options(&t).await;
        sign_in_with(&t, &challenge, auth.get(&options))
            .await
            .assert_error(400, "webauthn_verification_failed");
        let actions = t.audit_actions(&user).await;
        assert!(
            actions.contains(&"passkey_deleted".to_string()),
            "{actions:?}"
        );
    }
);

both!(a_user_holds_at_most_the_maximum, enabled, |t| {
    let (access, _, first) = with_passkey(&t, "max@example.com").await;
    let mut second = SoftAuthenticator::new(ORIGIN, "example.com");
    let r = register(&t, &access, &mut second).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The options of a third are refused, and so is a third registered on
    // options asked for before the second landed.
    post(
        &t,
        "/passkeys/registration/options",
        Some(&access),
        json!({}),
    )
    .await
    .assert_error(422, "too_many_passkeys");
    let list = t
        .request(Method::GET, "/passkeys", Some(&access), None)
        .await;
    let first_id = list.body[0]["id"].as_str().unwrap().to_string();
    let o = {
        let del = t
            .request(
                Method::DELETE,
                &format!("/passkeys/{first_id}"),
                Some(&access),
                None,
            )
            .await;
        assert_eq!(del.status, 204);
        post(
            &t,
            "/passkeys/registration/options",
            Some(&access),
            json!({}),
        )
        .await
    };
    assert_eq!(o.status, 200, "{}", o.text);
    // The same credential again, its exclusion ignored: refused.
    let mut again = SoftAuthenticator::new(ORIGIN, "example.com");
    again.credential_id = second.credential_id.clone();
    let body = json!({"challenge_id": o.body["challenge_id"], "credential": again.create(&o.body["options"])});
    post(&t, "/passkeys/registration/verify", Some(&access), body)
        .await
        .assert_error(400, "webauthn_verification_failed");
    // And for another user, whose options do not exclude it.
    let other = t.new_session("copycat@example.com", "secret123").await;
    let other = other["access_token"].as_str().unwrap();
    let mut copy = SoftAuthenticator::new(ORIGIN, "example.com");
    copy.credential_id = second.credential_id.clone();
    register(&t, other, &mut copy)
        .await
        .assert_error(422, "webauthn_credential_exists");
    drop(first);
    let user = claims(&access)["sub"].as_str().unwrap().to_string();
    let uid = Uuid::parse_str(&user).unwrap();
    let n = "SELECT count(*) FROM webauthn_credentials WHERE user_id = $1";
    assert_eq!(t.count_by_uuid(n, uid).await, 1);
});

both!(
    passkeys_are_renamed_and_listed_by_their_owner_and_the_admin,
    enabled,
    |t| {
        let (access, user, _) = with_passkey(&t, "names@example.com").await;
        let list = t
            .request(Method::GET, "/passkeys", Some(&access), None)
            .await;
        let id = list.body[0]["id"].as_str().unwrap().to_string();
        let rename = |name: Value| {
            let path = format!("/passkeys/{id}");
            let access = access.clone();
            let t = &t;
            async move {
                t.request(
                    Method::PATCH,
                    &path,
                    Some(&access),
                    Some(json!({"friendly_name": name})),
                )
                .await
            }
        };
        let r = rename(json!("Work laptop")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["friendly_name"], "Work laptop");
        rename(json!(""))
            .await
            .assert_error(400, "validation_failed");
        rename(json!("x".repeat(121)))
            .await
            .assert_error(400, "validation_failed");
        // At the limit (120 bytes): kept whole.
        let r = rename(json!("é".repeat(60))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["friendly_name"], "é".repeat(60));
        let r = rename(json!("Work laptop")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        rename(json!("a\u{0}b"))
            .await
            .assert_error(400, "validation_failed");
        // Another user's passkey is not found, as a made-up one.
        let other = t.new_session("stranger@example.com", "secret123").await;
        let stranger = other["access_token"].as_str().unwrap();
        for path in [
            format!("/passkeys/{id}"),
            format!("/passkeys/{}", Uuid::new_v4()),
            "/passkeys/nope".into(),
        ] {
            let r = t
                .request(
                    Method::PATCH,
                    &path,
                    Some(stranger),
                    Some(json!({"friendly_name": "mine"})),
                )
                .await;
            r.assert_error(404, "validation_failed");
            t.request(Method::DELETE, &path, Some(stranger), None)
                .await
                .assert_error(404, "validation_failed");
        }

        let r = t
            .admin(Method::GET, &format!("/admin/users/{user}/passkeys"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body[0]["friendly_name"], "Work laptop");
        t.admin(
            Method::GET,
            &format!("/admin/users/{}/passkeys", Uuid::new_v4()),
            None,
        )
        .await
        .assert_error(404, "user_not_found");
        let r = t
            .admin(
                Method::DELETE,
                &format!("/admin/users/{user}/passkeys/{id}"),
                None,
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text);
        let list = t
            .request(Method::GET, "/passkeys", Some(&access), None)
            .await;
        assert_eq!(list.body, json!([]));
        t.request(Method::GET, "/passkeys", Some(stranger), None)
            .await;
        t.admin(
            Method::DELETE,
            &format!("/admin/users/{user}/passkeys/{id}"),
            None,
        )
        .await
        .assert_error(404, "validation_failed");
    }
);

both!(bad_verifications_are_four_hundreds, enabled, |t| {
    let s = t.new_session("bad@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    for path in [
        "/passkeys/registration/verify",
        "/passkeys/authentication/verify",
    ] {
        let token = path.contains("registration").then_some(access);
        post(&t, path, token, json!({"credential": {}}))
            .await
            .assert_error(400, "validation_failed");
        post(&t, path, token, json!({"challenge_id": Uuid::new_v4()}))
            .await
            .assert_error(400, "validation_failed");
        post(
            &t,
            path,
            token,
            json!({"challenge_id": "x", "credential": {}}),
        )
        .await
        .assert_error(400, "validation_failed");
        post(
            &t,
            path,
            token,
            json!({"challenge_id": Uuid::new_v4(), "credential": {}}),
        )
        .await
        .assert_error(400, "webauthn_challenge_not_found");
        let r = t
            .http
            .post(t.url(path))
            .bearer_auth(access)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    // Garbage and huge credentials on live challenges: 400, never 500.
    let huge = "A".repeat(900_000);
    for credential in [
        json!({}),
        json!({"id": "x", "rawId": "!!", "type": "public-key", "response": {}}),
        json!({"id": "x", "rawId": "AA", "type": "public-key",
                              "response": {"clientDataJSON": huge, "attestationObject": "AA"}}),
    ] {
        let o = post(
            &t,
            "/passkeys/registration/options",
            Some(access),
            json!({}),
        )
        .await;
        let body =
            json!({"challenge_id": o.body["challenge_id"], "credential": credential.clone()});
        post(&t, "/passkeys/registration/verify", Some(access), body)
            .await
            .assert_error(400, "webauthn_verification_failed");
        let (challenge, _) = sign_in_options(&t).await;
        sign_in_with(&t, &challenge, credential)
            .await
            .assert_error(400, "webauthn_verification_failed");
    }
    // Anonymous users do not register; no token is a 401.
    post(&t, "/passkeys/registration/options", None, json!({}))
        .await
        .assert_error(401, "no_authorization");
});

both!(
    with_a_second_factor_only_aal2_manages_passkeys,
    enabled,
    |t| {
        let (access, _, _) = with_passkey(&t, "aal@example.com").await;
        let f = crate::mfa::enroll(&t, &access, "app").await;
        let c = crate::mfa::challenge(&t, &access, &f.id).await;
        let code = crate::mfa::code(&t, &f.secret, 0);
        let raised = crate::mfa::verify(&t, &access, &f.id, &c, &code).await;
        assert_eq!(raised.status, 200, "{}", raised.text);
        let low = t.login("aal@example.com", "secret123").await.body;
        let low = low["access_token"].as_str().unwrap();
        post(&t, "/passkeys/registration/options", Some(low), json!({}))
            .await
            .assert_error(403, "insufficient_aal");
        let list = t.request(Method::GET, "/passkeys", Some(low), None).await;
        let id = list.body[0]["id"].as_str().unwrap().to_string();
        t.request(Method::DELETE, &format!("/passkeys/{id}"), Some(low), None)
            .await
            .assert_error(403, "insufficient_aal");
        let high = raised.body["access_token"].as_str().unwrap();
        let r = post(&t, "/passkeys/registration/options", Some(high), json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

both!(
    an_unconfirmed_or_banned_user_does_not_sign_in,
    enabled,
    |t| {
        let (_, user, mut auth) = with_passkey(&t, "ban@example.com").await;
        let r = t
            .admin(
                Method::PUT,
                &format!("/admin/users/{user}"),
                Some(json!({"ban_duration": "24h"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let (challenge, options) = sign_in_options(&t).await;
        sign_in_with(&t, &challenge, auth.get(&options))
            .await
            .assert_error(403, "user_banned");
    }
);

both!(passkeys_off_are_404_passkey_disabled, |_| {}, |t| {
    let s = t.new_session("off@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    for (method, path, token) in [
        (Method::POST, "/passkeys/authentication/options", None),
        (Method::POST, "/passkeys/registration/options", None),
        (Method::GET, "/passkeys", Some(access)),
        (Method::DELETE, "/passkeys/x", None),
    ] {
        t.request(method, path, token, Some(json!({})))
            .await
            .assert_error(404, "passkey_disabled");
    }
    let settings = t.request(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["passkeys_enabled"], false);
});

both!(
    sign_in_options_are_rate_limited,
    |c| {
        enabled(c);
        c.rate_limits.passkey.events = 3;
        c.rate_limits.passkey.burst = 3;
    },
    |t| {
        for _ in 0..3 {
            sign_in_options(&t).await;
        }
        let r = post(&t, "/passkeys/authentication/options", None, json!({})).await;
        r.assert_error(429, "over_request_rate_limit");
        assert!(r.header("retry-after").is_some());
    }
);

both!(a_soft_deleted_user_has_no_passkeys_left, enabled, |t| {
    let (_, user, mut auth) = with_passkey(&t, "gone@example.com").await;
    let (challenge, options) = sign_in_options(&t).await;
    let path = format!("/admin/users/{user}");
    let r = t
        .admin(
            Method::DELETE,
            &path,
            Some(json!({"should_soft_delete": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let uid = Uuid::parse_str(&user).unwrap();
    let n = "SELECT count(*) FROM webauthn_credentials WHERE user_id = $1";
    assert_eq!(t.count_by_uuid(n, uid).await, 0);
    sign_in_with(&t, &challenge, auth.get(&options))
        .await
        .assert_error(400, "webauthn_verification_failed");
});

both!(an_overlong_credential_id_is_refused, enabled, |t| {
    let s = t.new_session("long@example.com", "secret123").await;
    let access = s["access_token"].as_str().unwrap();
    let mut auth = SoftAuthenticator::new(ORIGIN, "example.com");
    auth.credential_id = vec![7; 2800];
    register(&t, access, &mut auth)
        .await
        .assert_error(400, "webauthn_verification_failed");
    // Asking again replaces the user's earlier registration challenge.
    for _ in 0..3 {
        post(
            &t,
            "/passkeys/registration/options",
            Some(access),
            json!({}),
        )
        .await;
    }
    let uid = Uuid::parse_str(s["user"]["id"].as_str().unwrap()).unwrap();
    let n = "SELECT count(*) FROM webauthn_challenges WHERE user_id = $1";
    assert_eq!(t.count_by_uuid(n, uid).await, 1);
});
