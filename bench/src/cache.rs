//! Filling the session cache: one live session per user, written straight
//! into the database and signed here with the server's secret, then each
//! presented once, so the server's cache holds its default size.

use castellan_core::crypto::jwt::{Claims, JwtKeys};
use sqlx::Connection;
use uuid::Uuid;

/// Creates a session for each of `n` seeded users; returns access tokens.
pub async fn sessions(database_url: &str, secret: &str, n: u64) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(Uuid, Uuid)> = if database_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database_url).await?;
        sqlx::query_as(
            "INSERT INTO auth.sessions (id, user_id, created_at, updated_at, aal)
             SELECT gen_random_uuid(), id, now(), now(), 'aal1' FROM auth.users
             WHERE email LIKE 'bench%' LIMIT $1 RETURNING id, user_id",
        )
        .bind(n as i64)
        .fetch_all(&mut c)
        .await?
    } else {
        let path = database_url.trim_start_matches("sqlite://");
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await?;
        sqlx::query_as(
            "INSERT INTO sessions (id, user_id, created_at, updated_at, aal)
             SELECT randomblob(16), id, $2, $2, 'aal1' FROM users
             WHERE email LIKE 'bench%' LIMIT $1 RETURNING id, user_id",
        )
        .bind(n as i64)
        .bind(chrono::Utc::now())
        .fetch_all(&mut c)
        .await?
    };
    let cfg = castellan_core::Config::for_tests(castellan_core::config::DatabaseUrl::Sqlite(
        "unused".into(),
    ));
    let keys = JwtKeys::new(&cfg.jwt, secret).expect("the key ring");
    let now = chrono::Utc::now().timestamp();
    rows.into_iter()
        .map(|(session, user)| {
            keys.sign(&Claims {
                aud: "authenticated".into(),
                exp: now + 3600,
                iat: now,
                iss: None,
                sub: user.to_string(),
                email: String::new(),
                phone: String::new(),
                app_metadata: serde_json::json!({}),
                user_metadata: serde_json::json!({}),
                role: "authenticated".into(),
                aal: "aal1".into(),
                amr: vec![],
                session_id: Some(session.to_string()),
                is_anonymous: false,
                client_id: None,
                scope: None,
            })
            .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect()
}
