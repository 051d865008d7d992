//! Signing keys (issue 13): asymmetric access tokens, the published JWKS,
//! GoTrue's key selection, and a rotation with nobody signed out.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use castellan_core::crypto::jwk::{KeyKind, generate};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both;
use crate::common::{self, Backend, read};

fn header(jwt: &str) -> Value {
    serde_json::from_slice(&B64.decode(jwt.split('.').next().unwrap()).unwrap()).unwrap()
}

fn verify_only(mut k: Value) -> Value {
    k["key_ops"] = json!(["verify"]);
    k
}

/// An ES256 signing key, an RSA key known only by its public half, and the
/// secret as an `oct` key (so kid-less HS256 keys keep working).
fn three_keys(c: &mut castellan_core::Config) {
    let rsa = generate(KeyKind::Rs256);
    let rsa_public = json!({"kty": "RSA", "kid": rsa["kid"], "alg": "RS256", "n": rsa["n"], "e": rsa["e"], "key_ops": ["verify"]});
    let secret = c.jwt.secret.clone().unwrap();
    let oct =
        json!({"kty": "oct", "kid": "legacy", "k": B64.encode(secret), "key_ops": ["verify"]});
    let keys = json!([generate(KeyKind::Es256), rsa_public, oct]);
    c.jwt.keys = Some(keys.to_string());
}

both!(
    an_es256_key_signs_every_token_and_is_published,
    three_keys,
    |t| {
        let keys: Vec<Value> =
            serde_json::from_str(t.server.state.config.jwt.keys.as_deref().unwrap()).unwrap();
        for prefix in ["", "/auth/v1"] {
            let r = t
                .request(
                    Method::GET,
                    &format!("{prefix}/.well-known/jwks.json"),
                    None,
                    None,
                )
                .await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header("cache-control"), Some("public, max-age=600"));
            let published = r.body["keys"].as_array().unwrap();
            // The two asymmetric keys, public halves only; never the secret.
            assert_eq!(published.len(), 2, "{}", r.text);
            assert_eq!(published[0]["kid"], keys[0]["kid"]);
            assert_eq!(published[1]["kid"], keys[1]["kid"]);
            assert!(
                !r.text.contains("\"d\"") && !r.text.contains("legacy"),
                "{}",
                r.text
            );
            let oidc = t
                .request(
                    Method::GET,
                    &format!("{prefix}/.well-known/openid-configuration"),
                    None,
                    None,
                )
                .await;
            assert_eq!(oidc.status, 200);
            assert_eq!(oidc.header("cache-control"), Some("public, max-age=600"));
            assert_eq!(oidc.body["jwks_uri"], "/.well-known/jwks.json");
            assert_eq!(
                oidc.body["id_token_signing_alg_values_supported"],
                json!(["ES256", "RS256"]),
                "ID tokens are never signed with the secret"
            );
        }

        let s = t.new_session("keys@example.com", "secret123").await;
        let at = s["access_token"].as_str().unwrap();
        assert_eq!(header(at)["alg"], "ES256");
        assert_eq!(header(at)["kid"], keys[0]["kid"]);
        assert_eq!(t.get_user(at).await.status, 200);
        let refreshed = t.refresh(s["refresh_token"].as_str().unwrap()).await;
        assert_eq!(refreshed.status, 200, "{}", refreshed.text);
        assert_eq!(
            header(refreshed.body["access_token"].as_str().unwrap())["alg"],
            "ES256"
        );

        // An existing deployment's kid-less HS256 service_role key still works.
        let now = chrono::Utc::now().timestamp();
        let claims = castellan_core::crypto::jwt::role_claims(
            "service_role",
            "authenticated",
            now,
            60,
            None,
        );
        let secret = t.server.state.config.jwt.secret.clone().unwrap();
        let legacy = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            t.request(Method::GET, "/admin/users", Some(&legacy), None)
                .await
                .status,
            200
        );
        // HS256 keyed with the published RSA modulus, under the RSA key's kid.
        let h = jsonwebtoken::Header {
            kid: keys[1]["kid"].as_str().map(String::from),
            ..Default::default()
        };
        let n = B64.decode(keys[1]["n"].as_str().unwrap()).unwrap();
        let forged =
            jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(&n)).unwrap();
        t.request(Method::GET, "/admin/users", Some(&forged), None)
            .await
            .assert_error(403, "bad_jwt");
        // `alg: none`, a kid the server does not know, and an expired token.
        let payload = at.split('.').nth(1).unwrap();
        let none = format!("{}.{payload}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#));
        let mut stranger = t.server.state.config.jwt.clone();
        stranger.keys = Some(json!([generate(KeyKind::Es256)]).to_string());
        let stranger = castellan_core::crypto::jwt::JwtKeys::new(&stranger, "unused").unwrap();
        let unknown_kid = stranger.sign(&claims).unwrap();
        let mut old = claims.clone();
        (old.iat, old.exp) = (now - 120, now - 60);
        let expired = t.server.state.accounts.keys().sign(&old).unwrap();
        for (token, says) in [
            (none.as_str(), "token is malformed"),
            (unknown_kid.as_str(), "unrecognized JWT kid"),
            (expired.as_str(), "token is expired"),
        ] {
            let r = t.request(Method::GET, "/user", Some(token), None).await;
            r.assert_error(403, "bad_jwt");
            assert!(r.body["msg"].as_str().unwrap().contains(says), "{}", r.text);
        }
    }
);

/// One step of a rotation: a server on `db` with `keys`.
async fn serve(
    db: &castellan_core::config::DatabaseUrl,
    keys: &[&Value],
) -> castellan::server::Server {
    let mut cfg = common::test_config(db.clone());
    cfg.jwt.keys = Some(serde_json::to_string(keys).unwrap());
    castellan::start(cfg).await.expect("server starts")
}

async fn call(
    server: &castellan::server::Server,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> common::Reply {
    let mut req = reqwest::Client::new()
        .request(method, format!("http://{}{path}", server.addr))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    read(req.send().await.unwrap()).await
}

async fn refresh(server: &castellan::server::Server, token: &str) -> common::Reply {
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/token?grant_type=refresh_token",
            server.addr
        ))
        .json(&json!({ "refresh_token": token }))
        .send()
        .await
        .unwrap();
    read(r).await
}

/// GoTrue's rotation, in three restarts on one database: publish the next
/// key, sign with it, retire the old one. The session lives throughout.
async fn rotation_signs_nobody_out(backend: Backend) {
    let (db, _dir) = common::fresh_database(backend).await;
    let (k1, k2) = (generate(KeyKind::Es256), generate(KeyKind::EdDsa));

    let s1 = serve(&db, &[&k1, &verify_only(k2.clone())]).await;
    let jwks = call(&s1, Method::GET, "/.well-known/jwks.json", "", None).await;
    assert_eq!(
        jwks.body["keys"].as_array().unwrap().len(),
        2,
        "the next key is published first"
    );
    let signup = reqwest::Client::new()
        .post(format!("http://{}/signup", s1.addr))
        .json(&json!({"email": "rotate@example.com", "password": "secret123"}))
        .send()
        .await
        .unwrap();
    let session = read(signup).await.body;
    let a1 = session["access_token"].as_str().unwrap().to_string();
    assert_eq!(header(&a1)["kid"], k1["kid"]);
    s1.stop().await;

    let s2 = serve(&db, &[&verify_only(k1.clone()), &k2]).await;
    assert_eq!(
        call(&s2, Method::GET, "/user", &a1, None).await.status,
        200,
        "old tokens still verify"
    );
    let r = refresh(&s2, session["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let a2 = r.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        (header(&a2)["kid"].clone(), header(&a2)["alg"].clone()),
        (k2["kid"].clone(), json!("EdDSA"))
    );
    let r2 = r.body["refresh_token"].as_str().unwrap().to_string();
    s2.stop().await;

    let s3 = serve(&db, &[&k2]).await;
    let jwks = call(&s3, Method::GET, "/.well-known/jwks.json", "", None).await;
    assert_eq!(jwks.body["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks.body["keys"][0]["kid"], k2["kid"]);
    call(&s3, Method::GET, "/user", &a1, None)
        .await
        .assert_error(403, "bad_jwt");
    assert_eq!(call(&s3, Method::GET, "/user", &a2, None).await.status, 200);
    let r = refresh(&s3, &r2).await;
    assert_eq!(
        r.status, 200,
        "the session outlives the retired key: {}",
        r.text
    );
    let a3 = r.body["access_token"].as_str().unwrap();
    assert_eq!(call(&s3, Method::GET, "/user", a3, None).await.status, 200);
    s3.stop().await;
    common::drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_signs_nobody_out_on_sqlite() {
    rotation_signs_nobody_out(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_signs_nobody_out_on_postgres() {
    rotation_signs_nobody_out(Backend::Postgres).await
}

/// Runs `castellan keys …` against `db`; its stdout, or its stderr as the error.
fn keys_cli(
    db: &castellan_core::config::DatabaseUrl,
    secret: &str,
    args: &[&str],
) -> Result<String, String> {
    let url = match db {
        castellan_core::config::DatabaseUrl::Sqlite(path) => path.clone(),
        castellan_core::config::DatabaseUrl::Postgres(url) => url.clone(),
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castellan"))
        .arg("keys")
        .args(args)
        .env_clear()
        .env("DATABASE_URL", url)
        .env("GOTRUE_JWT_SECRET", secret)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    match out.status.success() {
        true => Ok(text(&out.stdout)),
        false => Err(text(&out.stderr)),
    }
}

/// Beyond GoTrue: keys kept in the database, changed with `castellan keys`
/// while a server runs, take effect there without a restart.
async fn stored_keys_rotate_without_restart(backend: Backend) {
    let (db, _dir) = common::fresh_database(backend).await;
    let mut cfg = common::test_config(db.clone());
    cfg.keys_poll_interval = std::time::Duration::from_millis(50);
    let secret = cfg.jwt.secret.clone().unwrap();
    let server = castellan::start(cfg).await.expect("server starts");
    let signup = reqwest::Client::new()
        .post(format!("http://{}/signup", server.addr))
        .json(&json!({"email": "stored@example.com", "password": "secret123"}))
        .send()
        .await
        .unwrap();
    let session = read(signup).await.body;
    let hs = session["access_token"].as_str().unwrap().to_string();
    assert_eq!(header(&hs)["alg"], "HS256");
    let login = || async {
        let r = reqwest::Client::new()
            .post(format!("http://{}/token?grant_type=password", server.addr))
            .json(&json!({"email": "stored@example.com", "password": "secret123"}))
            .send()
            .await
            .unwrap();
        read(r).await.body["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Waits (polling) until the server's answer satisfies `ok`.
    async fn eventually<F: std::future::Future<Output = bool>>(mut ok: impl FnMut() -> F) {
        for _ in 0..100 {
            if ok().await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the server never picked the change up");
    }
    let published = |kid: String| {
        let server = &server;
        async move {
            call(server, Method::GET, "/.well-known/jwks.json", "", None)
                .await
                .body["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == kid.as_str())
        }
    };

    let k1 = keys_cli(&db, &secret, &["add", "--alg", "ES256"]).unwrap();
    eventually(|| published(k1.clone())).await;
    keys_cli(&db, &secret, &["promote", &k1]).unwrap();
    eventually(|| async { header(&login().await)["kid"] == k1.as_str() }).await;
    assert_eq!(
        call(&server, Method::GET, "/user", &hs, None).await.status,
        200,
        "HS256 tokens still verify"
    );
    let es = login().await;
    // The signer cannot be retired; an unknown kid is named.
    let e = keys_cli(&db, &secret, &["retire", &k1]).unwrap_err();
    assert!(e.contains(&k1) && e.contains("verify"), "{e}");
    assert!(
        keys_cli(&db, &secret, &["promote", "nope"])
            .unwrap_err()
            .contains("\"nope\"")
    );

    let k2 = keys_cli(&db, &secret, &["add", "--alg", "EdDSA"]).unwrap();
    keys_cli(&db, &secret, &["promote", &k2]).unwrap();
    keys_cli(&db, &secret, &["retire", &k1]).unwrap();
    eventually(|| async { call(&server, Method::GET, "/user", &es, None).await.status == 403 })
        .await;
    assert!(
        !published(k1.clone()).await,
        "a retired key is not published"
    );
    assert_eq!(header(&login().await)["kid"], k2.as_str());
    let list = keys_cli(&db, &secret, &["list"]).unwrap();
    assert!(list.contains(&format!("{k1}\tES256\tretired")), "{list}");
    assert!(list.contains(&format!("{k2}\tEdDSA\tsign")), "{list}");
    let audit = call(
        &server,
        Method::GET,
        "/admin/audit?query=type:keys",
        &common::role_key_for(&server.state.config.jwt, "service_role"),
        None,
    )
    .await;
    assert_eq!(audit.body.as_array().unwrap().len(), 5, "{}", audit.text);
    server.stop().await;
    common::drop_database(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_keys_rotate_without_restart_on_sqlite() {
    stored_keys_rotate_without_restart(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_keys_rotate_without_restart_on_postgres() {
    stored_keys_rotate_without_restart(Backend::Postgres).await
}
