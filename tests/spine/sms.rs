//! The SMS providers (issue 10), each against a stand-in for its API on
//! loopback that records what it was sent: the path, the authentication
//! and the form GoTrue sends, and each kind of answer told apart (sent,
//! refused, unavailable).

use std::collections::HashMap;
use std::time::Duration;

use castellan_jobs::sms::{Message, SendError, Sender, provider};
use serde_json::json;

use crate::sms_provider::FakeProvider;

fn settings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sender(name: &str, pairs: &[(&str, &str)], base: &str) -> Sender {
    Sender::new(
        provider(name).unwrap(),
        settings(pairs),
        Some(base.to_string()),
        Duration::from_secs(2),
    )
    .unwrap()
}

const TWILIO: [(&str, &str); 3] = [
    ("ACCOUNT_SID", "AC123"),
    ("AUTH_TOKEN", "tok"),
    ("MESSAGE_SERVICE_SID", "MG456"),
];

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

fn sms<'a>(phone: &'a str, body: &'a str) -> Message<'a> {
    Message {
        phone,
        body,
        channel: "sms",
    }
}

#[tokio::test]
async fn twilio_gets_gotrues_form_and_its_answers_are_told_apart() {
    let fake = FakeProvider::start(201, json!({"sid": "SM1", "status": "queued"})).await;
    let s = sender("twilio", &TWILIO, &fake.base);
    let id = s.send(&sms("15551234567", "Your code is 123456")).await;
    assert_eq!(id, Ok(Some("SM1".into())));
    let r = &fake.received()[0];
    assert_eq!(r.path, "/2010-04-01/Accounts/AC123/Messages.json");
    assert_eq!(
        r.authorization.as_deref(),
        Some(basic("AC123", "tok").as_str())
    );
    assert_eq!(
        r.form,
        settings(&[
            ("To", "+15551234567"),
            ("Channel", "sms"),
            ("From", "MG456"),
            ("Body", "Your code is 123456")
        ])
    );

    // WhatsApp: both ends prefixed when the sender is a number.
    let numeric = [
        TWILIO[0],
        TWILIO[1],
        ("MESSAGE_SERVICE_SID", "+14155550000"),
    ];
    let s = sender("twilio", &numeric, &fake.base);
    let wa = Message {
        phone: "15551234567",
        body: "Your code is 654321",
        channel: "whatsapp",
    };
    assert!(s.send(&wa).await.is_ok());
    let r = &fake.received()[1];
    assert_eq!(r.form["To"], "whatsapp:+15551234567");
    assert_eq!(r.form["From"], "whatsapp:+14155550000");

    let s = sender("twilio", &TWILIO, &fake.base);
    fake.answer(
        201,
        json!({"sid": "SM2", "status": "failed", "message": "unreachable"}),
    );
    assert!(matches!(
        s.send(&sms("15551234567", "x")).await,
        Err(SendError::Refused(_))
    ));
    fake.answer(
        400,
        json!({"code": 21211, "message": "The 'To' number is not valid."}),
    );
    assert_eq!(
        s.send(&sms("15551234567", "x")).await,
        Err(SendError::Refused("The 'To' number is not valid.".into()))
    );
    fake.answer(503, json!({}));
    assert!(matches!(
        s.send(&sms("15551234567", "x")).await,
        Err(SendError::Unavailable(_))
    ));
}

#[tokio::test]
async fn messagebird_textlocal_and_vonage_get_their_own_forms() {
    let fake = FakeProvider::start(201, json!({"id": "mb-1"})).await;
    let mb = sender(
        "messagebird",
        &[("ACCESS_KEY", "live_k"), ("ORIGINATOR", "Castellan")],
        &fake.base,
    );
    assert_eq!(
        mb.send(&sms("447700900123", "Your code is 1")).await,
        Ok(Some("mb-1".into()))
    );
    let r = &fake.received()[0];
    assert_eq!(r.path, "/messages");
    assert_eq!(r.authorization.as_deref(), Some("AccessKey live_k"));
    assert_eq!(
        r.form,
        settings(&[
            ("originator", "Castellan"),
            ("body", "Your code is 1"),
            ("recipients", "447700900123"),
            ("type", "sms"),
            ("datacoding", "unicode")
        ])
    );

    fake.answer(
        200,
        json!({"status": "success", "messages": [{"id": "tl-9"}]}),
    );
    let tl = sender(
        "textlocal",
        &[("API_KEY", "key"), ("SENDER", "CSTLN")],
        &fake.base,
    );
    assert_eq!(
        tl.send(&sms("919876543210", "code 2")).await,
        Ok(Some("tl-9".into()))
    );
    let r = &fake.received()[1];
    assert_eq!(r.path, "/send");
    assert_eq!(r.authorization, None);
    assert_eq!(
        r.form,
        settings(&[
            ("sender", "CSTLN"),
            ("apikey", "key"),
            ("message", "code 2"),
            ("numbers", "919876543210")
        ])
    );
    fake.answer(
        200,
        json!({"status": "failure", "errors": [{"code": 80, "message": "Invalid template"}]}),
    );
    assert_eq!(
        tl.send(&sms("919876543210", "code 2")).await,
        Err(SendError::Refused("Invalid template".into()))
    );

    fake.answer(
        200,
        json!({"messages": [{"message-id": "vg-3", "status": "0"}]}),
    );
    let vg = sender(
        "vonage",
        &[("API_KEY", "k"), ("API_SECRET", "s"), ("FROM", "Castellan")],
        &fake.base,
    );
    assert_eq!(
        vg.send(&sms("4915112345678", "Dein Code: 3 ✓")).await,
        Ok(Some("vg-3".into()))
    );
    let r = &fake.received()[3];
    assert_eq!(r.path, "/sms/json");
    assert_eq!(
        r.form["type"], "unicode",
        "a non-ASCII message is sent as unicode"
    );
    assert_eq!(r.form["api_secret"], "s");
    assert!(vg.send(&sms("4915112345678", "ascii")).await.is_ok());
    assert!(!fake.received()[4].form.contains_key("type"));
    fake.answer(
        200,
        json!({"messages": [{"status": "4", "error-text": "Bad credentials"}]}),
    );
    assert_eq!(
        vg.send(&sms("4915112345678", "x")).await,
        Err(SendError::Refused("Bad credentials".into()))
    );
    // WhatsApp is Twilio's alone.
    let wa = Message {
        phone: "4915112345678",
        body: "x",
        channel: "whatsapp",
    };
    assert!(matches!(vg.send(&wa).await, Err(SendError::Refused(_))));
    assert_eq!(
        fake.received().len(),
        6,
        "an unsupported channel sends nothing"
    );
}

#[tokio::test]
async fn a_provider_that_is_down_or_unconfigured_says_so() {
    // Nothing listens here: unavailable, worth retrying.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let s = sender("twilio", &TWILIO, &closed);
    assert!(matches!(
        s.send(&sms("15551234567", "x")).await,
        Err(SendError::Unavailable(_))
    ));
    let e = Sender::new(
        provider("vonage").unwrap(),
        settings(&[("API_KEY", "k")]),
        None,
        Duration::from_secs(1),
    )
    .err()
    .unwrap();
    assert_eq!(
        e,
        "vonage needs GOTRUE_SMS_VONAGE_API_SECRET, GOTRUE_SMS_VONAGE_FROM"
    );
    assert!(provider("carrier-pigeon").is_none());
}
