//! The schema-driven fuzzer (issue 9): the OpenAPI document castellan
//! builds from its handlers' types, and schemathesis run against a live
//! server on each database with `tests/fuzz/schemathesis.toml`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::both;

/// Every operation the API serves, as the document must list it.
const OPERATIONS: [(&str, &str); 80] = [
    ("/health", "get"),
    ("/ready", "get"),
    ("/settings", "get"),
    ("/signup", "post"),
    ("/token", "post"),
    ("/user", "get"),
    ("/user", "put"),
    ("/logout", "post"),
    ("/verify", "get"),
    ("/verify", "post"),
    ("/recover", "post"),
    ("/otp", "post"),
    ("/magiclink", "post"),
    ("/resend", "post"),
    ("/reauthenticate", "get"),
    ("/invite", "post"),
    ("/admin/users", "get"),
    ("/admin/users", "post"),
    ("/admin/users/{user_id}", "get"),
    ("/admin/users/{user_id}", "put"),
    ("/admin/users/{user_id}", "delete"),
    ("/admin/users/{user_id}/factors", "get"),
    ("/admin/users/{user_id}/sessions", "get"),
    ("/admin/users/{user_id}/sessions", "delete"),
    ("/admin/users/{user_id}/sessions/{session_id}", "delete"),
    ("/admin/queues", "get"),
    ("/admin/rate_limits/usage", "get"),
    ("/admin/queues/{queue}/jobs", "get"),
    ("/admin/queues/{queue}/jobs/{job_id}/retry", "post"),
    ("/admin/queues/{queue}/jobs/{job_id}", "delete"),
    ("/admin/keys", "get"),
    ("/admin/keys", "post"),
    ("/admin/keys/{kid}/promote", "post"),
    ("/admin/keys/{kid}/retire", "post"),
    ("/admin/users/{user_id}/factors/{factor_id}", "put"),
    ("/admin/users/{user_id}/factors/{factor_id}", "delete"),
    ("/factors", "post"),
    ("/factors/{factor_id}/challenge", "post"),
    ("/factors/{factor_id}/verify", "post"),
    ("/factors/{factor_id}", "delete"),
    ("/admin/audit", "get"),
    ("/admin/generate_link", "post"),
    ("/admin/rate_limits", "get"),
    ("/admin/rate_limits", "put"),
    ("/authorize", "get"),
    ("/callback", "get"),
    ("/callback", "post"),
    ("/user/identities/authorize", "get"),
    ("/user/identities/{identity_id}", "delete"),
    ("/sso", "post"),
    ("/sso/saml/metadata", "get"),
    ("/sso/saml/acs", "post"),
    ("/.well-known/jwks.json", "get"),
    ("/.well-known/openid-configuration", "get"),
    ("/passkeys/registration/options", "post"),
    ("/passkeys/registration/verify", "post"),
    ("/passkeys/authentication/options", "post"),
    ("/passkeys/authentication/verify", "post"),
    ("/passkeys", "get"),
    ("/passkeys/{passkey_id}", "patch"),
    ("/passkeys/{passkey_id}", "delete"),
    ("/admin/users/{user_id}/passkeys", "get"),
    ("/admin/users/{user_id}/passkeys/{passkey_id}", "delete"),
    ("/oauth/clients/register", "post"),
    ("/admin/oauth/clients", "get"),
    ("/admin/oauth/clients", "post"),
    ("/admin/oauth/clients/{client_id}", "get"),
    ("/admin/oauth/clients/{client_id}", "put"),
    ("/admin/oauth/clients/{client_id}", "delete"),
    ("/admin/oauth/clients/{client_id}/regenerate_secret", "post"),
    ("/oauth/authorize", "get"),
    ("/oauth/authorizations/{authorization_id}", "get"),
    ("/oauth/authorizations/{authorization_id}/consent", "post"),
    ("/oauth/token", "post"),
    ("/oauth/revoke", "post"),
    ("/oauth/userinfo", "get"),
    ("/oauth/userinfo", "post"),
    ("/user/oauth/grants", "get"),
    ("/user/oauth/grants", "delete"),
    ("/.well-known/oauth-authorization-server", "get"),
];

both!(the_openapi_document_lists_every_route, |_| {}, |t| {
    for prefix in ["", "/auth/v1"] {
        let r = t
            .request(Method::GET, &format!("{prefix}/openapi.json"), None, None)
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body["openapi"], "3.1.0");
        let paths = r.body["paths"].as_object().unwrap();
        let listed: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(listed, OPERATIONS.len(), "{:?}", paths.keys());
        for (path, method) in OPERATIONS {
            let op = &paths[path][method];
            assert!(op.is_object(), "{method} {path} is not described");
            // Every route that reads input or the database says how it
            // refuses; `/callback` answers every refusal with a redirect, and
            // the SAML routes only ever say SAML is off.
            let refuses = op["responses"]["400"].is_object() && op["responses"]["503"].is_object();
            assert_eq!(
                refuses,
                !(["/health", "/ready", "/settings", "/callback"].contains(&path)
                    || path.starts_with("/.well-known")
                    || path.starts_with("/sso")),
                "{method} {path}"
            );
            // Operation ids name the operation once across the document.
            let id = op["operationId"].as_str().unwrap();
            let same = paths
                .values()
                .flat_map(|p| p.as_object().unwrap().values())
                .filter(|o| o["operationId"] == id)
                .count();
            assert_eq!(same, 1, "{id} is not unique");
        }
        // Each rate-limited route says so, and every route needing a token says so.
        for l in castellan::api::RATE_LIMITS {
            // The console's sign-in belongs to its pages, not to the API.
            if l.path.starts_with("/console") {
                continue;
            }
            let method = l.method.as_str().to_ascii_lowercase();
            assert!(
                paths[l.path][&method].is_object(),
                "{} {}",
                l.method,
                l.path
            );
        }
        assert_eq!(paths["/user"]["get"]["security"], json!([{"bearer": []}]));
        let schemas = &r.body["components"]["schemas"];
        for name in [
            "User",
            "Identity",
            "TokenResponse",
            "ErrorBody",
            "SignupBody",
        ] {
            assert!(schemas[name].is_object(), "{name} missing");
        }
    }
});

/// Limits out of the fuzzer's way, so its requests reach the code behind them.
fn unlimited(c: &mut castellan_core::Config) {
    for l in [
        &mut c.rate_limits.token_refresh,
        &mut c.rate_limits.sign_ups,
        &mut c.rate_limits.otp,
        &mut c.rate_limits.anonymous_users,
        &mut c.rate_limits.verify,
        &mut c.rate_limits.mfa,
        &mut c.rate_limits.passkey,
        &mut c.rate_limits.oauth_client_register,
    ] {
        l.events = 1_000_000;
        l.burst = 1_000_000;
    }
    c.rate_limits.email_sent.events = 1_000_000;
    c.rate_limits.email_window = Duration::ZERO;
    // Fuzzed on, so their answers are more than the 404 of being off.
    crate::passkeys::enabled(c);
    c.mfa.webauthn_enroll_enabled = true;
    c.mfa.webauthn_verify_enabled = true;
    c.oauth_server = Some(castellan_core::config::OAuthServerConfig {
        allow_dynamic_registration: true,
        authorization_path: "/consent".into(),
        ..Default::default()
    });
}

/// Runs schemathesis with the committed settings and `filter` (its
/// operation-filter flags); returns how many operations and cases it ran.
async fn schemathesis(
    t: &crate::common::TestServer,
    user_token: &str,
    filter: [&str; 2],
) -> (usize, usize) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("tests/e2e/.venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "schemathesis is not installed: scripts/test.sh makes tests/e2e/.venv"
    );
    let out = tokio::process::Command::new(bin)
        .arg("--config-file")
        .arg(root.join("tests/fuzz/schemathesis.toml"))
        .arg("run")
        .args(filter)
        .arg(t.url("/openapi.json"))
        .env("CASTELLAN_FUZZ_USER_TOKEN", user_token)
        .env("CASTELLAN_FUZZ_ADMIN_TOKEN", t.service_key())
        .env("NO_COLOR", "1")
        // Its case caches land in target/, not in the repository.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number = |prefix: &str, suffix: &str| -> usize {
        stdout
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(prefix)?
                    .split(suffix)
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{stdout}"))
    };
    (number("Tested: ", "\n"), number("", " generated"))
}

both!(
    schemathesis_finds_no_server_error_and_no_schema_mismatch,
    unlimited,
    |t| {
        let session = t.new_session("fuzz@example.com", "fuzz-password-1").await;
        let token = session["access_token"].as_str().unwrap();
        // Everything but sign-out first, so the user's session lives
        // through the run; then sign-out on its own.
        let (ops, cases) = schemathesis(&t, token, ["--exclude-path", "/logout"]).await;
        let (last, more) = schemathesis(&t, token, ["--include-path", "/logout"]).await;
        assert_eq!(ops + last, OPERATIONS.len());
        // A bounded run that still tried many cases per operation.
        assert!(
            cases + more >= OPERATIONS.len() * 25,
            "{cases} + {more} cases"
        );

        // The fuzzer may have changed the rate limits (an admin route):
        // put them back, which must still work.
        let defaults = json!({"email_sent": 1_000_000, "token_refresh": 1_000_000, "verify": 1_000_000, "otp": 1_000_000, "anonymous_users": 1_000_000});
        let r = t
            .admin(Method::PUT, "/admin/rate_limits", Some(defaults))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        // The server is still healthy: it answers, signs up and signs in.
        let h = t.request(Method::GET, "/health", None, None).await;
        assert_eq!(h.status, 200);
        let s = t.signup("after-fuzz@example.com", "after-fuzz-1").await;
        assert_eq!(s.status, 200, "{}", s.text);
        let l = t.login("after-fuzz@example.com", "after-fuzz-1").await;
        assert_eq!(l.status, 200, "{}", l.text);
        assert!(l.body["access_token"].is_string());
    }
);

/// The schema a `$ref` names, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => r
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(doc, |v, k| &v[k]))
            .unwrap_or(schema),
        None => schema,
    }
}

/// Whether a schema takes strings (`"string"` or `["string", "null"]`).
fn is_string(schema: &Value) -> bool {
    match &schema["type"] {
        Value::String(t) => t == "string",
        Value::Array(ts) => ts.iter().any(|t| t == "string"),
        _ => false,
    }
}

/// A value of about `n` bytes for a property of this schema: a string, or
/// for an object (metadata) one long member. `None` for other types.
fn long_value(schema: &Value, n: usize) -> Option<Value> {
    if schema["enum"].is_array() {
        return None;
    }
    if is_string(schema) {
        return Some(json!("a".repeat(n)));
    }
    let object = schema["type"] == "object"
        || schema["type"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t == "object"));
    object.then(|| json!({ "k": "a".repeat(n) }))
}

/// Every request of the length phase for one operation: its query string,
/// headers and body, each with one input at one length.
/// One request of the length phase: query string, headers, body.
type LengthCase = (String, Vec<(String, String)>, Option<Value>);

/// A plausible value for a required property: its first enum value, or by
/// its type and name (so a request reaches the code behind validation).
fn plausible(doc: &Value, name: &str, schema: &Value) -> Value {
    let schema = resolve(doc, schema);
    if let Some(first) = schema["enum"].get(0) {
        return first.clone();
    }
    if is_string(schema) {
        return match name {
            n if n.contains("email") => json!("length-fill@example.com"),
            n if n.contains("phone") => json!("15550001234"),
            "password" => json!("length-password-9"),
            _ => json!("x"),
        };
    }
    match schema["type"].as_str() {
        Some("boolean") => json!(false),
        Some("integer" | "number") => json!(1),
        Some("array") => json!([]),
        _ => json!({}),
    }
}

/// A body with every required property given a plausible value.
fn base_body(doc: &Value, schema: &Value) -> Value {
    let required = schema["required"].as_array().cloned().unwrap_or_default();
    let filled: serde_json::Map<String, Value> = required
        .iter()
        .filter_map(|n| n.as_str())
        .map(|n| (n.to_string(), plausible(doc, n, &schema["properties"][n])))
        .collect();
    Value::Object(filled)
}

fn length_cases(doc: &Value, op: &Value) -> Vec<LengthCase> {
    let body = resolve(
        doc,
        &op["requestBody"]["content"]["application/json"]["schema"],
    );
    // Each case changes one input of an otherwise plausible request.
    let base = op["requestBody"].is_object().then(|| base_body(doc, body));
    let mut fixed_query = Vec::new();
    let mut cases = Vec::new();
    let params = op["parameters"].as_array().cloned().unwrap_or_default();
    for p in &params {
        let schema = resolve(doc, &p["schema"]);
        if p["in"] == "query" && p["required"] == true {
            let v = schema["enum"][0].as_str().unwrap_or("a").to_string();
            fixed_query.push((p["name"].as_str().unwrap().to_string(), v));
        }
    }
    let query = |extra: Option<(&str, String)>| {
        let mut pairs = fixed_query.clone();
        pairs.extend(extra.map(|(k, v)| (k.to_string(), v)));
        serde_urlencoded::to_string(pairs).unwrap()
    };
    for p in &params {
        let name = p["name"].as_str().unwrap();
        let limit = resolve(doc, &p["schema"])["maxLength"]
            .as_u64()
            .unwrap_or(255) as usize;
        for n in [limit, limit + 1, 4_096] {
            match p["in"].as_str() {
                Some("header") => cases.push((
                    query(None),
                    vec![(name.into(), "a".repeat(n))],
                    base.clone(),
                )),
                Some("query") if p["required"] != true => {
                    cases.push((query(Some((name, "a".repeat(n)))), vec![], base.clone()))
                }
                _ => {}
            }
        }
    }
    for (name, prop) in body["properties"].as_object().into_iter().flatten() {
        let prop = resolve(doc, prop);
        let limit = prop["maxLength"].as_u64().unwrap_or(255) as usize;
        for n in [limit, limit + 1, 20_000] {
            if let Some(v) = long_value(prop, n) {
                let mut b = base.clone().unwrap_or_else(|| json!({}));
                b[name] = v;
                cases.push((query(None), vec![], Some(b)));
            }
        }
    }
    cases
}

// Issue 24: the length phase. Every string input the document describes
// (body properties, metadata objects, headers, query parameters) at its
// limit (its `maxLength`, else 255, GoTrue's column size), one past it, and
// far past it: no answer is a 5xx. The schema fuzzer never sent strings
// this long, which is how over-long audiences, roles, issuers and claims
// reached the database as 500s.
both!(the_length_phase_finds_no_server_error, unlimited, |t| {
    let session = t
        .new_session("length@example.com", "length-password-1")
        .await;
    let user_token = session["access_token"].as_str().unwrap().to_string();
    let doc = t
        .request(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    // Path ids: the user's own (so admin updates reach the checks behind
    // the lookup), any other id made up.
    let user_id = crate::common::claims(&user_token)["sub"]
        .as_str()
        .unwrap()
        .to_string();
    let some_id = uuid::Uuid::new_v4().to_string();
    // Redirects (`/callback`, `/verify`) are answers, not to be followed.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut sent = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            // Signing out or deleting would end the session the others use.
            if path == "/logout" || method == "delete" {
                continue;
            }
            let admin = op["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "admin"));
            let token = if admin {
                t.service_key()
            } else {
                user_token.clone()
            };
            let url_path: String = path
                .split('/')
                .map(|seg| match seg {
                    "{user_id}" => user_id.as_str(),
                    s if s.starts_with('{') => some_id.as_str(),
                    s => s,
                })
                .collect::<Vec<_>>()
                .join("/");
            for (query, headers, body) in length_cases(&doc, op) {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let mut req = http
                    .request(method.clone(), t.url(&format!("{url_path}?{query}")))
                    .bearer_auth(&token);
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                if let Some(b) = &body {
                    req = req.json(b);
                }
                let r = crate::common::read(req.send().await.unwrap()).await;
                assert!(
                    r.status.as_u16() < 500,
                    "{method} {path}?{query} {headers:?} {}: {} {}",
                    body.as_ref()
                        .map(|b| b.to_string().chars().take(80).collect::<String>())
                        .unwrap_or_default(),
                    r.status,
                    r.text
                );
                sent += 1;
            }
        }
    }
    eprintln!("length phase: {sent} requests, none answered 5xx");
    assert!(sent > 300, "only {sent} requests");
    // Still serving.
    let l = t.login("length@example.com", "length-password-1").await;
    assert_eq!(l.status, 200, "{}", l.text);
});
