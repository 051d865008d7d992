//! Phone sign-in (issue 10): codes by SMS through a provider's real API (a
//! stand-in on loopback), on SQLite and PostgreSQL. Each test reads the
//! code from what the provider was sent and finishes the flow over HTTP,
//! then checks what the database holds.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, Backend, TestServer, claims};
use crate::sms_provider::{FakeProvider, Received};

const SENT: (u16, &str) = (201, r#"{"sid": "SM1", "status": "queued"}"#);

async fn phone_server(
    backend: Backend,
    tweak: impl FnOnce(&mut castellan_core::Config),
) -> (TestServer, FakeProvider) {
    let fake = FakeProvider::start(SENT.0, serde_json::from_str(SENT.1).unwrap()).await;
    let stand_in = fake.clone();
    let t = common::spawn(backend, move |c| {
        stand_in.configure_twilio(c);
        c.mailer.retry_min = Duration::from_millis(200);
        c.mailer.retry_max = Duration::from_millis(400);
        tweak(c);
    })
    .await;
    (t, fake)
}

macro_rules! both_phone {
    ($name:ident, $tweak:expr, |$t:ident, $fake:ident| $body:block) => {
        crate::both!($name, phone_server, $tweak, |$t, $fake| $body);
    };
}

/// The code in a message the provider received ("Your code is 123456").
fn code(r: &Received) -> String {
    let body = &r.form["Body"];
    assert!(body.starts_with("Your code is "), "{body}");
    body.rsplit(' ').next().unwrap().to_string()
}

/// SMS jobs still waiting in the queue (pending or to be retried).
async fn waiting_sms(t: &TestServer) -> i64 {
    let (sql_pg, sql_lite) = (
        "SELECT count(*) FROM apalis.jobs WHERE job_type = 'castellan_sms' AND status <> 'Done'",
        "SELECT count(*) FROM Jobs WHERE job_type = 'castellan_sms' AND status <> 'Done'",
    );
    match t.pool() {
        castellan_core::store::Pool::Pg(p) => sqlx::query_scalar(sql_pg).fetch_one(p).await,
        castellan_core::store::Pool::Lite(p) => sqlx::query_scalar(sql_lite).fetch_one(p).await,
    }
    .unwrap()
}

/// A users column of the user with this phone.
async fn column(t: &TestServer, phone: &str, col: &'static str) -> Option<String> {
    let sql = match col {
        "confirmation_token" => "SELECT confirmation_token FROM users WHERE phone = $1",
        "phone_change" => "SELECT phone_change FROM users WHERE phone = $1",
        "phone_change_token" => "SELECT phone_change_token FROM users WHERE phone = $1",
        "phone_confirmed_at" => {
            "SELECT CAST(phone_confirmed_at AS TEXT) FROM users WHERE phone = $1"
        }
        _ => unreachable!(),
    };
    match t.pool() {
        castellan_core::store::Pool::Pg(p) => {
            sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql))
                .bind(phone)
                .fetch_one(p)
                .await
        }
        castellan_core::store::Pool::Lite(p) => {
            sqlx::query_scalar::<_, Option<String>>(sqlx::AssertSqlSafe(sql))
                .bind(phone)
                .fetch_one(p)
                .await
        }
    }
    .unwrap()
}

async fn phone_login(t: &TestServer, phone: &str, password: &str) -> common::Reply {
    let body = json!({"phone": phone, "password": password});
    t.post("/token?grant_type=password", body).await
}

async fn verify(t: &TestServer, kind: &str, phone: &str, token: &str) -> common::Reply {
    t.post(
        "/verify",
        json!({"type": kind, "phone": phone, "token": token}),
    )
    .await
}

/// A phone user confirmed by the code of its sign-up; its session.
async fn confirmed(t: &TestServer, fake: &FakeProvider, phone: &str) -> Value {
    let before = fake.received().len();
    let r = t
        .post("/signup", json!({"phone": phone, "password": "secret123"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = fake.wait_for(before + 1).await;
    let r = verify(t, "sms", phone, &code(&sent[before])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

both_phone!(
    phone_signup_is_confirmed_by_the_sms_code,
    |_| {},
    |t, fake| {
        let r = t
            .post(
                "/signup",
                json!({"phone": "+1 555 123 4567", "password": "secret123"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.body.get("access_token").is_none(), "{}", r.text);
        assert_eq!(r.body["phone"], "15551234567");
        assert!(r.body["confirmation_sent_at"].is_string());
        assert!(r.body.get("phone_confirmed_at").is_none());

        // Twilio got GoTrue's form, and the request sent it itself: no job waits.
        let sent = fake.wait_for(1).await;
        assert_eq!(sent[0].path, "/2010-04-01/Accounts/AC1/Messages.json");
        assert_eq!(sent[0].form["To"], "+15551234567");
        assert_eq!(sent[0].form["From"], "MG1");
        assert_eq!(sent[0].form["Channel"], "sms");
        let code = code(&sent[0]);
        assert_eq!(code.len(), 6);
        assert_eq!(waiting_sms(&t).await, 0);
        let stored = column(&t, "15551234567", "confirmation_token").await;
        assert_eq!(
            stored.as_deref(),
            Some(t.token_hash("15551234567", &code).as_str()),
            "the code is stored hashed"
        );

        // Unconfirmed: no password sign-in yet.
        let r = phone_login(&t, "15551234567", "secret123").await;
        r.assert_error(400, "phone_not_confirmed");

        let wrong = if code == "000000" { "111111" } else { "000000" };
        let r = verify(&t, "sms", "15551234567", wrong).await;
        r.assert_error(403, "otp_expired");
        assert_eq!(r.body["msg"], "Token has expired or is invalid");

        let r = verify(&t, "sms", "+15551234567", &code).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.body["access_token"].is_string());
        assert_eq!(r.body["user"]["phone"], "15551234567");
        assert!(r.body["user"]["phone_confirmed_at"].is_string());
        let c = claims(r.body["access_token"].as_str().unwrap());
        assert_eq!(c["phone"], "15551234567");
        assert_eq!(c["amr"][0]["method"], "otp");
        assert!(
            column(&t, "15551234567", "phone_confirmed_at")
                .await
                .is_some()
        );
        assert_eq!(
            column(&t, "15551234567", "confirmation_token")
                .await
                .as_deref(),
            Some("")
        );
        // The sign-up's identity is left as the sign-up made it (GoTrue's
        // smsVerify confirms the user only); a phone change rewrites it.
        let ids = r.body["user"]["identities"].as_array().unwrap();
        assert_eq!(ids.len(), 1, "{}", r.text);
        assert_eq!(ids[0]["provider"], "phone");
        assert!(ids[0]["identity_data"].get("phone").is_none(), "{}", r.text);
        assert_eq!(ids[0]["identity_data"]["phone_verified"], false);
        let id = r.body["user"]["id"].as_str().unwrap().to_string();
        assert!(
            t.audit_actions(&id)
                .await
                .contains(&"user_signedup".to_string())
        );

        // A code works once.
        verify(&t, "sms", "15551234567", &code)
            .await
            .assert_error(403, "otp_expired");

        let r = phone_login(&t, "15551234567", "secret123").await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

both_phone!(otp_by_phone_signs_up_then_signs_in, |_| {}, |t, fake| {
    // An unknown number is signed up; its code confirms it. The answer is
    // a known number's: `{}`, as GoTrue's (the provider's id is not told).
    let r = t.post("/otp", json!({"phone": "447700900123"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({}), "the provider's id is not told");
    let sent = fake.wait_for(1).await;
    let r = verify(&t, "sms", "447700900123", &code(&sent[0])).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Inside the send window: refused, nothing sent.
    let r = t.post("/otp", json!({"phone": "447700900123"})).await;
    r.assert_error(429, "over_sms_send_rate_limit");
    assert!(
        r.body["msg"]
            .as_str()
            .unwrap()
            .starts_with("For security purposes, you can only request this after")
    );
    assert_eq!(fake.received().len(), 1);

    // After it, a confirmed number gets a sign-in code, and the same answer.
    t.clock().advance(Duration::from_secs(61));
    let r = t.post("/otp", json!({"phone": "447700900123"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({}), "the provider's id is not told");
    let sent = fake.wait_for(2).await;
    let r = verify(&t, "sms", "447700900123", &code(&sent[1])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user"]["phone"], "447700900123");

    // create_user false: an unknown number is not signed up.
    let r = t
        .post(
            "/otp",
            json!({"phone": "447700900999", "create_user": false}),
        )
        .await;
    r.assert_error(422, "otp_disabled");
    assert_eq!(fake.received().len(), 2);
});

both_phone!(a_code_expires, |_| {}, |t, fake| {
    let r = t.post("/otp", json!({"phone": "15550001111"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = fake.wait_for(1).await;
    // GOTRUE_SMS_OTP_EXP defaults to 60 s.
    t.clock().advance(Duration::from_secs(61));
    verify(&t, "sms", "15550001111", &code(&sent[0]))
        .await
        .assert_error(403, "otp_expired");
    assert!(
        column(&t, "15550001111", "phone_confirmed_at")
            .await
            .is_none()
    );
});

both_phone!(
    a_refusing_provider_is_sms_send_failed_and_takes_the_code_back,
    |_| {},
    |t, fake| {
        fake.answer(
            400,
            json!({"code": 21211, "message": "The 'To' number is not valid."}),
        );
        let r = t.post("/otp", json!({"phone": "15550002222"})).await;
        r.assert_error(422, "sms_send_failed");
        assert_eq!(
            r.body["msg"],
            "Error sending confirmation OTP to provider: The 'To' number is not valid."
        );
        assert_eq!(fake.received().len(), 1);
        // Nothing left to send, and (as GoTrue's sign-up rolls back, issue
        // 26) no user the refused code was made for: `/resend` has no one
        // to send to and answers as for any unknown number.
        assert_eq!(waiting_sms(&t).await, 0);
        assert_eq!(
            t.count_by_str("SELECT count(*) FROM users WHERE phone = $1", "15550002222")
                .await,
            0
        );
        let r = t
            .post("/resend", json!({"type": "sms", "phone": "15550002222"}))
            .await;
        assert_eq!(
            (r.status.as_u16(), &r.body),
            (200, &json!({})),
            "{}",
            r.text
        );
        assert_eq!(fake.received().len(), 1);
        fake.answer(SENT.0, serde_json::from_str(SENT.1).unwrap());
        let r = t.post("/otp", json!({"phone": "15550002222"})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let sent = fake.wait_for(2).await;
        let r = verify(&t, "sms", "15550002222", &code(&sent[1])).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

both_phone!(
    a_provider_down_then_up_gets_the_message_once_from_the_queue,
    |_| {},
    |t, fake| {
        fake.answer(503, json!({"message": "maintenance"}));
        let r = t.post("/otp", json!({"phone": "15550003333"})).await;
        // The request does not wait for the provider to come back.
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body, json!({}));
        let first = fake.wait_for(1).await;
        let queued = code(&first[0]);
        // The queue retries (with backoff) until the provider answers.
        fake.wait_for(2).await;
        fake.answer(SENT.0, serde_json::from_str(SENT.1).unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while waiting_sms(&t).await > 0 {
            assert!(std::time::Instant::now() < deadline, "never delivered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let delivered = fake.received();
        let tail = delivered.last().unwrap();
        assert_eq!(code(tail), queued, "every attempt carries the same code");
        // Delivered: nothing more is sent.
        let n = delivered.len();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(fake.received().len(), n);
        let r = verify(&t, "sms", "15550003333", &queued).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

both_phone!(
    test_numbers_get_their_fixed_code_and_nothing_is_sent,
    |c| {
        c.sms.test_otps = [("15550004444".to_string(), "424242".to_string())].into();
        // The budget does not apply to test numbers.
        c.rate_limits.sms_sent.events = 0;
    },
    |t, fake| {
        let r = t.post("/otp", json!({"phone": "+15550004444"})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body, json!({"message_id": "test-otp"}));
        let r = verify(&t, "sms", "15550004444", "424242").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(fake.received().is_empty());
        assert_eq!(waiting_sms(&t).await, 0);

        // Any other number is held to the (empty) budget.
        let r = t.post("/otp", json!({"phone": "15550005555"})).await;
        r.assert_error(429, "over_sms_send_rate_limit");
        assert_eq!(r.body["msg"], "SMS rate limit exceeded");
        assert!(fake.received().is_empty());
    }
);

both_phone!(
    expired_test_codes_are_ordinary_numbers,
    |c| {
        c.sms.test_otps = [("15550006666".to_string(), "424242".to_string())].into();
        c.sms.test_otp_valid_until = Some(chrono::Utc::now() - chrono::Duration::hours(1));
    },
    |t, fake| {
        let r = t.post("/otp", json!({"phone": "15550006666"})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body, json!({}), "the provider's id is not told");
        assert_eq!(fake.wait_for(1).await.len(), 1);
        verify(&t, "sms", "15550006666", "424242")
            .await
            .assert_error(403, "otp_expired");
    }
);

both_phone!(whatsapp_goes_through_twilio, |_| {}, |t, fake| {
    let r = t
        .post(
            "/otp",
            json!({"phone": "15550007777", "channel": "whatsapp"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = fake.wait_for(1).await;
    assert_eq!(sent[0].form["To"], "whatsapp:+15550007777");
    assert_eq!(sent[0].form["Channel"], "whatsapp");
    let r = verify(&t, "sms", "15550007777", &code(&sent[0])).await;
    assert_eq!(r.status, 200, "{}", r.text);
});

both_phone!(
    phone_change_is_confirmed_by_a_code_to_the_new_number,
    |_| {},
    |t, fake| {
        let s = confirmed(&t, &fake, "15550008888").await;
        let bearer = s["access_token"].as_str().unwrap();
        let r = common::read(
            t.http
                .put(t.url("/user"))
                .bearer_auth(bearer)
                .json(&json!({"phone": "+1 555 000 9999"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["phone"], "15550008888");
        assert_eq!(r.body["new_phone"], "15550009999");
        let sent = fake.wait_for(2).await;
        assert_eq!(sent[1].form["To"], "+15550009999");
        let code = code(&sent[1]);
        assert_eq!(
            column(&t, "15550008888", "phone_change").await.as_deref(),
            Some("15550009999")
        );

        // Only the new number's code, for `phone_change`, completes it.
        verify(&t, "sms", "15550009999", &code)
            .await
            .assert_error(403, "otp_expired");
        let r = verify(&t, "phone_change", "15550009999", &code).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["user"]["phone"], "15550009999");
        assert!(r.body["user"].get("new_phone").is_none(), "{}", r.text);
        let ids = r.body["user"]["identities"].as_array().unwrap();
        let phone_id = ids.iter().find(|i| i["provider"] == "phone").unwrap();
        assert_eq!(phone_id["identity_data"]["phone"], "15550009999");
        assert_eq!(phone_id["identity_data"]["phone_verified"], true);
        assert_eq!(
            column(&t, "15550009999", "phone_change_token")
                .await
                .as_deref(),
            Some("")
        );
        // The old number signs in no more; the new one does.
        let r = phone_login(&t, "15550008888", "secret123").await;
        r.assert_error(400, "invalid_credentials");
        let r = phone_login(&t, "15550009999", "secret123").await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

both_phone!(
    a_number_held_by_another_user_is_phone_exists,
    |_| {},
    |t, fake| {
        confirmed(&t, &fake, "15550010001").await;
        let s = confirmed(&t, &fake, "15550010002").await;
        let r = common::read(
            t.http
                .put(t.url("/user"))
                .bearer_auth(s["access_token"].as_str().unwrap())
                .json(&json!({"phone": "15550010001"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        r.assert_error(422, "phone_exists");
        assert_eq!(fake.received().len(), 2);
    }
);

both_phone!(resend_sends_the_sms_codes_again, |_| {}, |t, fake| {
    let r = t
        .post(
            "/signup",
            json!({"phone": "15550011111", "password": "secret123"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    fake.wait_for(1).await;
    t.clock().advance(Duration::from_secs(61));
    let r = t
        .post("/resend", json!({"type": "sms", "phone": "15550011111"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({}), "the provider's id is not told");
    let sent = fake.wait_for(2).await;
    // Only the newest code works.
    verify(&t, "sms", "15550011111", &code(&sent[0]))
        .await
        .assert_error(403, "otp_expired");
    let r = verify(&t, "sms", "15550011111", &code(&sent[1])).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // A pending phone change: its code again, to the new number.
    let bearer = r.body["access_token"].as_str().unwrap().to_string();
    let r = common::read(
        t.http
            .put(t.url("/user"))
            .bearer_auth(&bearer)
            .json(&json!({"phone": "15550011112"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    fake.wait_for(3).await;
    t.clock().advance(Duration::from_secs(61));
    let r = t
        .post(
            "/resend",
            json!({"type": "phone_change", "phone": "15550011111"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let sent = fake.wait_for(4).await;
    assert_eq!(sent[3].form["To"], "+15550011112");
    let r = verify(&t, "phone_change", "15550011112", &code(&sent[3])).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Nothing to resend: `{}`, nothing sent.
    let r = t
        .post("/resend", json!({"type": "sms", "phone": "15550011112"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({}));
    assert_eq!(fake.received().len(), 4);
});

both_phone!(
    reauthentication_by_sms_confirms_a_password_change,
    |c| c.update_password_require_reauthentication = true,
    |t, fake| {
        let s = confirmed(&t, &fake, "15550012222").await;
        let bearer = s["access_token"].as_str().unwrap();
        // Required of a session older than a day (GoTrue's rule).
        let sid: uuid::Uuid = common::claims(bearer)["session_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        castellan_core::on!(pool t.pool(), p => sqlx::query("UPDATE sessions SET created_at = $2 WHERE id = $1")
            .bind(sid).bind(chrono::Utc::now() - chrono::Duration::hours(25)).execute(p).await.unwrap().rows_affected());
        let r = common::read(
            t.http
                .get(t.url("/reauthenticate"))
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let sent = fake.wait_for(2).await;
        let nonce = code(&sent[1]);
        let put = |body: Value| {
            t.http
                .put(t.url("/user"))
                .bearer_auth(bearer)
                .json(&body)
                .send()
        };
        let r = common::read(
            put(json!({"password": "newsecret1", "nonce": "000000x"}))
                .await
                .unwrap(),
        )
        .await;
        r.assert_error(422, "reauthentication_not_valid");
        let r = common::read(
            put(json!({"password": "newsecret1", "nonce": nonce}))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let r = phone_login(&t, "15550012222", "newsecret1").await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
);

both_phone!(the_sms_budget_changes_while_running, |_| {}, |t, fake| {
    let r = t
        .admin(
            Method::PUT,
            "/admin/rate_limits",
            Some(json!({"sms_sent": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Limits apply within a second in every process.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = t.post("/otp", json!({"phone": "15550013331"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = t.post("/otp", json!({"phone": "15550013332"})).await;
    r.assert_error(429, "over_sms_send_rate_limit");
    assert_eq!(fake.received().len(), 1);
});

both_phone!(bad_phone_input_is_a_clear_4xx, |_| {}, |t, fake| {
    for phone in [
        "abc",
        "+0123456",
        "1",
        "1234567890123456",
        "1555\u{0}1234",
        "١٢٣٤٥٦٧٨",
    ] {
        let r = t.post("/otp", json!({"phone": phone})).await;
        r.assert_error(400, "validation_failed");
        if !phone.contains('\u{0}') {
            assert_eq!(
                r.body["msg"],
                "Invalid phone number format (E.164 required)"
            );
        }
        let r = t
            .post("/signup", json!({"phone": phone, "password": "secret123"}))
            .await;
        r.assert_error(400, "validation_failed");
        let r = verify(&t, "sms", phone, "123456").await;
        r.assert_error(400, "validation_failed");
    }
    let long = "9".repeat(100_000);
    let r = t.post("/otp", json!({"phone": long})).await;
    assert!(r.status.is_client_error(), "{}", r.status);
    // Email and phone together, a channel with email, WhatsApp elsewhere.
    t.post(
        "/verify",
        json!({"type": "sms", "phone": "15551234567", "email": "a@example.com", "token": "1"}),
    )
    .await
    .assert_error(400, "validation_failed");
    t.post(
        "/otp",
        json!({"phone": "15551234567", "channel": "carrier-pigeon"}),
    )
    .await
    .assert_error(400, "validation_failed");
    // Phone codes are typed, not linked.
    let r = t
        .post("/verify", json!({"type": "sms", "token_hash": "abc"}))
        .await;
    r.assert_error(400, "validation_failed");
    assert!(fake.received().is_empty());
});

/// With the phone provider off, every phone route says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_routes_answer_disabled_when_phone_is_off() {
    let (t, fake) = phone_server(Backend::Sqlite, |c| c.external_phone_enabled = false).await;
    t.post("/otp", json!({"phone": "15551234567"}))
        .await
        .assert_error(400, "phone_provider_disabled");
    t.post(
        "/signup",
        json!({"phone": "15551234567", "password": "secret123"}),
    )
    .await
    .assert_error(400, "phone_provider_disabled");
    t.post("/resend", json!({"type": "sms", "phone": "15551234567"}))
        .await
        .assert_error(400, "phone_provider_disabled");
    assert!(fake.received().is_empty());
    t.stop().await;
}

/// Two verifications racing with one code: exactly one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_code_raced_twice_signs_in_once() {
    let (t, fake) = phone_server(Backend::Postgres, |_| {}).await;
    let r = t.post("/otp", json!({"phone": "15550014444"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let code = code(&fake.wait_for(1).await[0]);
    let body = json!({"type": "sms", "phone": "15550014444", "token": code});
    let replies = common::at_once((0..2).map(|_| t.http.post(t.url("/verify")).json(&body))).await;
    assert_eq!(common::successes_else(&replies, 403, "otp_expired"), 1);
    t.stop().await;
}

both_phone!(
    twilio_verify_makes_and_checks_the_codes,
    |c| c.sms.provider = "twilio_verify".into(),
    |t, fake| {
        fake.answer(201, json!({"sid": "VE1", "status": "pending"}));
        let r = t.post("/otp", json!({"phone": "15550015555"})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body, json!({}), "the provider's id is not told");
        let sent = fake.wait_for(1).await;
        assert_eq!(sent[0].path, "/v2/Services/MG1/Verifications");
        let form: Vec<_> = sent[0].form.iter().collect();
        assert_eq!(form.len(), 2, "{form:?}");
        assert_eq!(sent[0].form["To"], "+15550015555");
        assert_eq!(sent[0].form["Channel"], "sms");

        // Twilio says no: a wrong code, counted as one.
        fake.answer(200, json!({"status": "pending", "valid": false}));
        verify(&t, "sms", "15550015555", "123456")
            .await
            .assert_error(403, "otp_expired");
        let checked = fake.wait_for(2).await;
        assert_eq!(checked[1].path, "/v2/Services/MG1/VerificationCheck");
        assert_eq!(checked[1].form["To"], "+15550015555");
        assert_eq!(checked[1].form["Code"], "123456");

        // Twilio down: the check cannot be made, and nothing is spent.
        fake.answer(503, json!({}));
        let r = verify(&t, "sms", "15550015555", "654321").await;
        assert_eq!(r.status, 503, "{}", r.text);

        fake.answer(200, json!({"status": "approved", "valid": true}));
        let r = verify(&t, "sms", "15550015555", "654321").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["user"]["phone"], "15550015555");
        // Approved again by Twilio, but the outstanding code was spent here.
        verify(&t, "sms", "15550015555", "654321")
            .await
            .assert_error(403, "otp_expired");
    }
);

/// Every provider's message carries a code that signs in: the flow ends
/// the same whichever API delivered it.
/// A provider: its name, settings, answer, and the form field of the message.
type ProviderCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    Value,
    &'static str,
);

async fn each_provider_signs_in(backend: Backend) {
    let cases: [ProviderCase; 3] = [
        (
            "messagebird",
            &[("ACCESS_KEY", "k"), ("ORIGINATOR", "Castellan")],
            json!({"id": "mb-1"}),
            "body",
        ),
        (
            "textlocal",
            &[("API_KEY", "k"), ("SENDER", "CSTLN")],
            json!({"status": "success", "messages": [{"id": "tl-1"}]}),
            "message",
        ),
        (
            "vonage",
            &[("API_KEY", "k"), ("API_SECRET", "s"), ("FROM", "Castellan")],
            json!({"messages": [{"status": "0", "message-id": "vn-1"}]}),
            "text",
        ),
    ];
    for (name, settings, answer, field) in cases {
        let settings: std::collections::HashMap<_, _> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (t, fake) = phone_server(backend, move |c| {
            c.sms.provider = name.into();
            c.sms.settings = settings;
        })
        .await;
        fake.answer(200, answer);
        let r = t.post("/otp", json!({"phone": "15550016666"})).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        assert_eq!(r.body, json!({}), "{name}: {}", r.text);
        let sent = fake.wait_for(1).await;
        let body = &sent[0].form[field];
        let code = body.rsplit(' ').next().unwrap();
        let r = verify(&t, "sms", "15550016666", code).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text);
        t.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_signs_in_on_sqlite() {
    each_provider_signs_in(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_signs_in_on_postgres() {
    each_provider_signs_in(Backend::Postgres).await
}

both_phone!(guessing_a_phone_code_voids_it, |_| {}, |t, fake| {
    let r = t.post("/otp", json!({"phone": "15550017777"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let right = code(&fake.wait_for(1).await[0]);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    // CASTELLAN_OTP_MAX_GUESSES (5) wrong codes void the outstanding one.
    for _ in 0..5 {
        verify(&t, "sms", "15550017777", wrong)
            .await
            .assert_error(403, "otp_expired");
    }
    verify(&t, "sms", "15550017777", &right)
        .await
        .assert_error(403, "otp_expired");
    assert_eq!(
        column(&t, "15550017777", "confirmation_token")
            .await
            .as_deref(),
        Some("")
    );
});

fn with_phone_factors(c: &mut castellan_core::Config) {
    c.mfa.phone_enroll_enabled = true;
    c.mfa.phone_verify_enabled = true;
}

/// A phone factor of the token's user for `phone`: its id.
async fn phone_factor(t: &TestServer, token: &str, phone: &str) -> String {
    let body = json!({"factor_type": "phone", "phone": phone});
    let r = authed(t, Method::POST, "/factors", token, body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["id"].as_str().unwrap().to_string()
}

async fn authed(
    t: &TestServer,
    method: Method,
    path: &str,
    token: &str,
    body: Value,
) -> common::Reply {
    t.request(method, path, Some(token), Some(body)).await
}

both_phone!(
    a_phone_factor_raises_the_session_to_aal2,
    with_phone_factors,
    |t, fake| {
        let s = confirmed(&t, &fake, "15550020000").await;
        let token = s["access_token"].as_str().unwrap().to_string();
        let r = authed(
            &t,
            Method::POST,
            "/factors",
            &token,
            json!({"factor_type": "phone", "phone": "+1 555 002 0001", "friendly_name": "mobile"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["type"], "phone");
        assert_eq!(r.body["friendly_name"], "mobile");
        assert_eq!(r.body["phone"], "+1 555 002 0001");
        assert!(r.body.get("totp").is_none());
        let factor = r.body["id"].as_str().unwrap().to_string();
        let challenge_path = format!("/factors/{factor}/challenge");
        let verify_path = format!("/factors/{factor}/verify");

        let r = authed(&t, Method::POST, &challenge_path, &token, json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["type"], "phone");
        assert!(r.body["expires_at"].is_i64());
        let first = r.body["id"].as_str().unwrap().to_string();
        let sent = fake.wait_for(2).await;
        assert_eq!(sent[1].form["To"], "+15550020001");
        let code1 = code(&sent[1]);
        assert_eq!(waiting_sms(&t).await, 0);

        // One challenge per factor a minute.
        let r = authed(&t, Method::POST, &challenge_path, &token, json!({})).await;
        r.assert_error(429, "over_sms_send_rate_limit");
        assert_eq!(fake.received().len(), 2);

        let wrong = if code1 == "000000" {
            "111111"
        } else {
            "000000"
        };
        let r = authed(
            &t,
            Method::POST,
            &verify_path,
            &token,
            json!({"challenge_id": first, "code": wrong}),
        )
        .await;
        r.assert_error(422, "mfa_verification_failed");
        assert_eq!(r.body["msg"], "Invalid MFA Phone code entered");

        let r = authed(
            &t,
            Method::POST,
            &verify_path,
            &token,
            json!({"challenge_id": first, "code": code1}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let c = claims(r.body["access_token"].as_str().unwrap());
        assert_eq!(c["aal"], "aal2");
        let methods: Vec<_> = c["amr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["method"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(methods[0], "mfa/phone", "{methods:?}");
        let factors = r.body["user"]["factors"].as_array().unwrap();
        assert_eq!(factors.len(), 1);
        assert_eq!(factors[0]["status"], "verified");
        assert_eq!(factors[0]["factor_type"], "phone");
        assert_eq!(factors[0]["phone"], "15550020001");
        let aal2 = r.body["access_token"].as_str().unwrap().to_string();
        // A spent challenge is spent.
        let r = authed(
            &t,
            Method::POST,
            &verify_path,
            &aal2,
            json!({"challenge_id": first, "code": code1}),
        )
        .await;
        r.assert_error(422, "mfa_ip_address_mismatch");

        // A verified factor for the number already exists.
        let r = authed(
            &t,
            Method::POST,
            "/factors",
            &aal2,
            json!({"factor_type": "phone", "phone": "15550020001", "friendly_name": "again"}),
        )
        .await;
        r.assert_error(422, "mfa_verified_factor_exists");
    }
);

both_phone!(
    a_refused_factor_code_takes_the_challenge_back,
    with_phone_factors,
    |t, fake| {
        let s = confirmed(&t, &fake, "15550021000").await;
        let token = s["access_token"].as_str().unwrap().to_string();
        let factor = phone_factor(&t, &token, "15550021001").await;
        let path = format!("/factors/{factor}/challenge");
        fake.answer(400, json!({"message": "The 'To' number is not valid."}));
        let r = authed(&t, Method::POST, &path, &token, json!({"channel": "sms"})).await;
        r.assert_error(422, "sms_send_failed");
        assert_eq!(
            r.body["msg"],
            "Error sending MFA OTP to provider: The 'To' number is not valid."
        );
        assert_eq!(
            t.count_by_str("SELECT count(*) FROM mfa_challenges WHERE $1 = $1", "")
                .await,
            0
        );
        assert_eq!(waiting_sms(&t).await, 0);
        // No window to wait out: it was never sent.
        fake.answer(SENT.0, serde_json::from_str(SENT.1).unwrap());
        let r = authed(&t, Method::POST, &path, &token, json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        // Bad input: an unknown channel, a number that is not one.
        t.clock().advance(Duration::from_secs(61));
        authed(&t, Method::POST, &path, &token, json!({"channel": "fax"}))
            .await
            .assert_error(400, "validation_failed");
        authed(
            &t,
            Method::POST,
            "/factors",
            &token,
            json!({"factor_type": "phone", "phone": "call me"}),
        )
        .await
        .assert_error(400, "validation_failed");
        authed(
            &t,
            Method::POST,
            "/factors",
            &token,
            json!({"factor_type": "phone"}),
        )
        .await
        .assert_error(400, "validation_failed");
    }
);

both_phone!(phone_factors_are_off_unless_enabled, |_| {}, |t, fake| {
    let s = confirmed(&t, &fake, "15550022000").await;
    let token = s["access_token"].as_str().unwrap().to_string();
    authed(
        &t,
        Method::POST,
        "/factors",
        &token,
        json!({"factor_type": "phone", "phone": "15550022001"}),
    )
    .await
    .assert_error(422, "mfa_phone_enroll_not_enabled");
});

both_phone!(
    twilio_verify_checks_phone_factor_codes,
    |c| {
        with_phone_factors(c);
        c.sms.provider = "twilio_verify".into();
    },
    |t, fake| {
        fake.answer(201, json!({"sid": "VE1", "status": "pending"}));
        let r = t.post("/otp", json!({"phone": "15550023000"})).await;
        assert_eq!(r.status, 200, "{}", r.text);
        fake.answer(200, json!({"status": "approved", "valid": true}));
        let r = verify(&t, "sms", "15550023000", "123456").await;
        assert_eq!(r.status, 200, "{}", r.text);
        let token = r.body["access_token"].as_str().unwrap().to_string();
        let factor = phone_factor(&t, &token, "15550023001").await;
        let r = authed(
            &t,
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            &token,
            json!({}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let challenge = r.body["id"].as_str().unwrap().to_string();
        let verify_path = format!("/factors/{factor}/verify");
        fake.answer(200, json!({"status": "pending", "valid": false}));
        authed(
            &t,
            Method::POST,
            &verify_path,
            &token,
            json!({"challenge_id": challenge, "code": "111111"}),
        )
        .await
        .assert_error(422, "mfa_verification_failed");
        fake.answer(200, json!({"status": "approved", "valid": true}));
        let r = authed(
            &t,
            Method::POST,
            &verify_path,
            &token,
            json!({"challenge_id": challenge, "code": "222222"}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let got = fake.received();
        let last = got.last().unwrap();
        assert_eq!(last.path, "/v2/Services/MG1/VerificationCheck");
        assert_eq!(last.form["To"], "+15550023001");
        assert_eq!(last.form["Code"], "222222");
    }
);

// A phone code's link hash is computable by anyone who knows the number:
// it is never accepted as a link, for any type.
both_phone!(a_phone_code_is_never_a_link, |_| {}, |t, fake| {
    let r = t.post("/otp", json!({"phone": "15550031000"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let code = code(&fake.wait_for(1).await[0]);
    // Neither GoTrue's computable hash nor the server's own is a link.
    let hashes = [
        common::bare_token_hash("15550031000", &code),
        t.token_hash("15550031000", &code),
    ];
    for kind in ["signup", "email", "magiclink", "sms"] {
        for hash in &hashes {
            let r = t
                .post("/verify", json!({"type": kind, "token_hash": hash}))
                .await;
            assert!(r.status.is_client_error(), "{kind}: {}", r.text);
        }
    }
    let r = verify(&t, "sms", "15550031000", &code).await;
    assert_eq!(r.status, 200, "the typed code still works: {}", r.text);
});

// Two users asked for the same new number: each code changes its own
// user's number, and the second to confirm is told the number is taken.
both_phone!(
    a_number_two_users_asked_for_goes_to_the_code_s_owner,
    |_| {},
    |t, fake| {
        let a = confirmed(&t, &fake, "15550032001").await;
        let b = confirmed(&t, &fake, "15550032002").await;
        for s in [&a, &b] {
            let r = common::read(
                t.http
                    .put(t.url("/user"))
                    .bearer_auth(s["access_token"].as_str().unwrap())
                    .json(&json!({"phone": "15550032999"}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        let sent = fake.wait_for(4).await;
        let (code_a, code_b) = (code(&sent[2]), code(&sent[3]));
        let r = verify(&t, "phone_change", "15550032999", &code_b).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["user"]["id"], b["user"]["id"]);
        let r = verify(&t, "phone_change", "15550032999", &code_a).await;
        r.assert_error(422, "phone_exists");
    }
);

// Issue 24, P3(c): a wrong `phone_change` code finds no user by its hash,
// and is still counted against the change outstanding to that number.
both_phone!(guessing_a_phone_change_code_voids_it, |_| {}, |t, fake| {
    let s = confirmed(&t, &fake, "15550041111").await;
    let bearer = s["access_token"].as_str().unwrap();
    let body = json!({"phone": "+15550042222"});
    let r = t
        .request(Method::PUT, "/user", Some(bearer), Some(body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let right = code(&fake.wait_for(2).await[1]);
    let wrong = |i: u32| format!("{:06}", (right.parse::<u32>().unwrap() + 1 + i) % 1_000_000);
    for i in 0..5 {
        verify(&t, "phone_change", "15550042222", &wrong(i))
            .await
            .assert_error(403, "otp_expired");
    }
    verify(&t, "phone_change", "15550042222", &right)
        .await
        .assert_error(403, "otp_expired");
    assert_eq!(
        column(&t, "15550041111", "phone_change_token")
            .await
            .as_deref(),
        Some(""),
        "the guessed-at code is void"
    );
    let holders = "SELECT count(*) FROM users WHERE phone = $1";
    assert_eq!(t.count_by_str(holders, "15550042222").await, 0);
});

/// A confirmed phone user made by the admin API, signed in: its access token.
async fn phone_user(t: &TestServer, phone: &str) -> String {
    let body = json!({"phone": phone, "password": "secret123", "phone_confirm": true});
    let r = t.admin(Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = phone_login(t, phone, "secret123").await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["access_token"].as_str().unwrap().to_string()
}

// Issue 24, P4: Twilio Verify approves a code per number. When two users
// asked to move to one number, the approval confirms neither (it used to
// confirm whichever row came first, so an attacker who also asked for the
// victim's number took the victim's approval); a sole asker is confirmed.
both_phone!(
    twilio_verify_confirms_only_a_sole_asker,
    |c| c.sms.provider = "twilio_verify".into(),
    |t, fake| {
        let victim = phone_user(&t, "15550051111").await;
        let attacker = phone_user(&t, "15550052222").await;
        fake.answer(201, json!({"sid": "VE1", "status": "pending"}));
        for bearer in [&victim, &attacker] {
            let body = json!({"phone": "+15550059999"});
            let r = t
                .request(Method::PUT, "/user", Some(bearer), Some(body))
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        let asked = fake.wait_for(2).await.len();
        fake.answer(200, json!({"status": "approved", "valid": true}));
        verify(&t, "phone_change", "15550059999", "123456")
            .await
            .assert_error(403, "otp_expired");
        assert_eq!(fake.received().len(), asked, "Twilio is not asked");
        let holders = "SELECT count(*) FROM users WHERE phone = $1";
        assert_eq!(t.count_by_str(holders, "15550059999").await, 0);
        assert_eq!(t.count_by_str(holders, "15550051111").await, 1);

        // A number only the victim asked for is confirmed to the victim.
        t.clock().advance(Duration::from_secs(61));
        fake.answer(201, json!({"sid": "VE2", "status": "pending"}));
        let body = json!({"phone": "+15550058888"});
        let r = t
            .request(Method::PUT, "/user", Some(&victim), Some(body))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        fake.wait_for(asked + 1).await;
        fake.answer(200, json!({"status": "approved", "valid": true}));
        let r = verify(&t, "phone_change", "15550058888", "123456").await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(t.count_by_str(holders, "15550058888").await, 1);
        assert_eq!(t.count_by_str(holders, "15550051111").await, 0);
    }
);

// Issue 26: with no SMS provider (and no `CASTELLAN_SMS_LOG`), or a provider
// enabled without its credentials (what the Supabase CLI hands over when a
// secret is unset), castellan starts as GoTrue does and answers each send as
// GoTrue does, 500 "Unable to get SMS provider", writing nothing: no user is
// left behind by a sign-up.
both_phone!(
    a_missing_sms_provider_starts_and_fails_each_send_as_gotrue,
    |c| {
        c.sms.log = false;
        c.sms.provider = String::new();
    },
    |t, fake| {
        refused_for_want_of_a_provider(&t).await;
        assert!(fake.received().is_empty());
    }
);

both_phone!(
    a_provider_without_its_credentials_starts_and_fails_each_send,
    |c| c.sms.settings.clear(),
    |t, fake| {
        refused_for_want_of_a_provider(&t).await;
        assert!(fake.received().is_empty());
    }
);

async fn refused_for_want_of_a_provider(t: &TestServer) {
    for (path, body) in [
        (
            "/signup",
            json!({"phone": "15550090001", "password": "secret123"}),
        ),
        ("/otp", json!({"phone": "15550090002"})),
    ] {
        let r = t.post(path, body).await;
        assert_eq!(r.status, 500, "{path}: {}", r.text);
        assert_eq!(r.body["msg"], "Unable to get SMS provider", "{path}");
    }
    assert_eq!(
        t.count_by_str("SELECT count(*) FROM users WHERE $1 = $1", "")
            .await,
        0
    );
}
