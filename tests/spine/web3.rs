//! Web3 sign-in (issue 32): wallets made fresh in the test sign Sign-In
//! With Solana and With Ethereum messages; castellan checks the grammar,
//! the signature, the site, the time window and that a message is used once.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{self, TestServer};
use crate::security_apis::Wallets;

const SITE: &str = "https://app.example.com";

fn enable(c: &mut castellan_core::Config) {
    c.site_url = SITE.into();
    c.external.web3_solana = Some(std::time::Duration::from_secs(600));
    c.external.web3_ethereum = Some(std::time::Duration::from_secs(600));
}

/// A message as wallets write it, issued `ago` seconds before the server's now.
fn message(t: &TestServer, chain: &str, address: &str, domain: &str, ago: i64) -> String {
    let title = if chain == "solana" {
        "Solana"
    } else {
        "Ethereum"
    };
    let issued = (t.clock().now() - chrono::Duration::seconds(ago))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(
        "{domain} wants you to sign in with your {title} account:\n{address}\n\nSign in to the app\n\nURI: https://{domain}/\nVersion: 1\nIssued At: {issued}"
    )
}

async fn web3(t: &TestServer, chain: &str, message: &str, signature: &str) -> common::Reply {
    t.post(
        "/token?grant_type=web3",
        json!({"chain": chain, "message": message, "signature": signature}),
    )
    .await
}

fn assert_invalid_grant(r: &common::Reply, says: &str) {
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error"], "invalid_grant", "{}", r.text);
    assert_eq!(r.body["error_description"], says, "{}", r.text);
}

crate::both!(wallets_sign_in_once_per_message, enable, |t| {
    let w = Wallets::new();
    let domain = "app.example.com";
    for chain in ["solana", "ethereum"] {
        let address = w.address(chain);
        let sign = |m: &str| w.sign(chain, m);
        let m = message(&t, chain, &address, domain, 5);
        let r = web3(&t, chain, &m, &sign(&m)).await;
        assert_eq!(r.status, 200, "{chain}: {}", r.text);
        // Ethereum accounts are named in EIP-55's case, whatever was written.
        let named = match chain {
            "solana" => address.clone(),
            _ => castellan_core::crypto::web3::eip55(&address),
        };
        let sub = format!("web3:{chain}:{named}");
        let user = &r.body["user"];
        assert_eq!(user["app_metadata"]["provider"], "web3");
        assert_eq!(user["identities"][0]["provider"], "web3");
        assert_eq!(user["identities"][0]["identity_data"]["sub"], sub);
        assert_eq!(
            user["identities"][0]["identity_data"]["custom_claims"]["address"],
            address
        );
        let claims = common::claims(r.body["access_token"].as_str().unwrap());
        assert_eq!(claims["amr"][0]["method"], "web3", "{claims}");
        let ids = "SELECT count(*) FROM identities WHERE provider = 'web3' AND provider_id = $1";
        assert_eq!(t.count_by_str(ids, &sub).await, 1);

        // The same message again: refused, nothing new made.
        let again = web3(&t, chain, &m, &sign(&m)).await;
        let title = if chain == "solana" {
            "Solana"
        } else {
            "Ethereum"
        };
        assert_invalid_grant(&again, &format!("Signed {title} message was already used"));
        // A new message from the same wallet signs in the same user.
        let m2 = message(&t, chain, &address, domain, 1);
        let r2 = web3(&t, chain, &m2, &sign(&m2)).await;
        assert_eq!(r2.status, 200, "{}", r2.text);
        assert_eq!(r2.body["user"]["id"], user["id"]);
        assert_eq!(t.count_by_str(ids, &sub).await, 1);
        if chain == "ethereum" {
            // The same account spelt in capitals: the same user.
            let m3 = message(
                &t,
                chain,
                &named.to_uppercase().replace("0X", "0x"),
                domain,
                0,
            );
            let r3 = web3(&t, chain, &m3, &sign(&m3)).await;
            assert_eq!(r3.status, 200, "{}", r3.text);
            assert_eq!(r3.body["user"]["id"], user["id"]);
        }
    }
    let used = "SELECT count(*) FROM castellan_web3_messages WHERE id <> $1";
    assert_eq!(t.count_by_str(used, "").await, 5);
});

crate::both!(
    messages_for_another_site_time_or_wallet_are_refused,
    enable,
    |t| {
        let w = Wallets::new();
        let sol = w.solana_address();
        let eth = w.ethereum_address();
        // Written for another site.
        let m = message(&t, "solana", &sol, "evil.example.net", 5);
        assert_invalid_grant(
            &web3(&t, "solana", &m, &w.solana_sign(&m)).await,
            "Signed Solana message is using URI which is not allowed on this server, message was signed for another app",
        );
        // Issued eleven minutes ago, the window being ten.
        let m = message(&t, "ethereum", &eth, "app.example.com", 660);
        assert_invalid_grant(
            &web3(&t, "ethereum", &m, &w.ethereum_sign(&m)).await,
            "Ethereum message was issued too long ago",
        );
        // Naming one wallet, signed by another.
        let other = Wallets::new();
        let m = message(&t, "ethereum", &eth, "app.example.com", 5);
        assert_invalid_grant(
            &web3(&t, "ethereum", &m, &other.ethereum_sign(&m)).await,
            "Signature does not match address in message",
        );
        let m = message(&t, "solana", &sol, "app.example.com", 5);
        assert_invalid_grant(
            &web3(&t, "solana", &m, &other.solana_sign(&m)).await,
            "Signature does not match address in message",
        );
        // A chain castellan does not know, a chain id Solana does not have.
        let r = web3(&t, "bitcoin", &m, &w.solana_sign(&m)).await;
        r.assert_error(400, "web3_unsupported_chain");
        let wrong = m.replace("Version: 1", "Version: 1\nChain ID: solana:foonet");
        let r = web3(&t, "solana", &wrong, &w.solana_sign(&wrong)).await;
        r.assert_error(400, "validation_failed");
        assert_eq!(r.body["msg"], "siws: Chain ID is not valid");
        // Huge and malformed inputs: clear 400s.
        let huge = format!("{m}\n{}", "x: y\n".repeat(5000));
        let r = web3(&t, "solana", &huge, &w.solana_sign(&huge)).await;
        r.assert_error(400, "validation_failed");
        assert_eq!(r.body["msg"], "message must not exceed 20KB");
        let r = web3(&t, "ethereum", &m, "0x1234").await;
        r.assert_error(400, "validation_failed");
        let r = web3(&t, "solana", &m, &"\0".repeat(86)).await;
        assert_eq!(r.status, 400, "{}", r.text);
        // Nobody was made by any of it.
        let users = "SELECT count(*) FROM identities WHERE provider = $1";
        assert_eq!(t.count_by_str(users, "web3").await, 0);
    }
);

crate::both!(web3_is_off_unless_enabled, |_| {}, |t| {
    let r = web3(&t, "solana", "m", "s").await;
    r.assert_error(422, "web3_provider_disabled");
    assert_eq!(r.body["msg"], "Web3 provider is disabled");
    // Said before the body is read, as GoTrue does.
    let r = t
        .http
        .post(t.url("/token?grant_type=web3"))
        .body("not json")
        .send()
        .await
        .unwrap();
    common::read(r)
        .await
        .assert_error(422, "web3_provider_disabled");
});

crate::both!(
    one_chain_on_refuses_the_other,
    |c| c.external.web3_solana = Some(std::time::Duration::from_secs(600)),
    |t| {
        let r = web3(&t, "ethereum", "m", "s").await;
        r.assert_error(422, "web3_provider_disabled");
        assert_eq!(r.body["msg"], "Ethereum Web3 provider is disabled");
    }
);

crate::both!(
    web3_sign_ins_have_their_own_limit,
    |c| {
        enable(c);
        c.rate_limits.header = Some("x-test-client".into());
        c.rate_limits.web3 = castellan_core::config::RateLimit {
            events: 2,
            per: std::time::Duration::from_secs(300),
            burst: 2,
        };
    },
    |t| {
        let send = |grant: &'static str, body: Value| {
            t.http
                .post(t.url(&format!("/token?grant_type={grant}")))
                .header("x-test-client", "wallet-bot")
                .json(&body)
                .send()
        };
        for _ in 0..2 {
            let r = send("web3", json!({"chain": "solana"})).await.unwrap();
            assert_eq!(r.status(), 400);
        }
        let r = common::read(send("web3", json!({"chain": "solana"})).await.unwrap()).await;
        r.assert_error(429, "over_request_rate_limit");
        // Other grants draw on their own bucket.
        let r = send("refresh_token", json!({"refresh_token": "abcdefghijkl"}))
            .await
            .unwrap();
        assert_ne!(r.status(), 429);
        let _ = Method::GET;
    }
);
