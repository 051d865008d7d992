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
                json!(["ES256", "RS256", "HS256"])
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
