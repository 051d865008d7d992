//! Bulk users for the benchmark, written straight into the database: one
//! statement per chunk, all sharing one real argon2id hash of `PASSWORD`.

use chrono::Utc;
use sqlx::Connection;

pub const PASSWORD: &str = "bench-password-1";

pub fn email(i: u64) -> String {
    format!("bench{i}@example.com")
}

/// Inserts users `from..=to` (and their email identities).
pub async fn users(database_url: &str, hash: &str, from: u64, to: u64) -> anyhow::Result<()> {
    const CHUNK: u64 = 100_000;
    let mut start = from;
    if database_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database_url).await?;
        while start <= to {
            let end = (start + CHUNK - 1).min(to);
            sqlx::query(
                "WITH u AS (
                   INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                     raw_app_meta_data, raw_user_meta_data, created_at, updated_at, confirmation_token, recovery_token,
                     email_change_token_new, email_change_token_current, email_change, phone_change, phone_change_token,
                     reauthentication_token, is_sso_user, is_anonymous)
                   SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
                     'bench' || i || '@example.com', $3, now(), '{\"provider\":\"email\",\"providers\":[\"email\"]}', '{}',
                     now(), now(), '', '', '', '', '', '', '', '', false, false
                   FROM generate_series($1::bigint, $2::bigint) AS i
                   RETURNING id, email)
                 INSERT INTO auth.identities (id, provider_id, user_id, identity_data, provider, created_at, updated_at)
                 SELECT gen_random_uuid(), u.id::text, u.id,
                   jsonb_build_object('sub', u.id::text, 'email', u.email, 'email_verified', false, 'phone_verified', false),
                   'email', now(), now() FROM u",
            )
            .bind(start as i64)
            .bind(end as i64)
            .bind(hash)
            .execute(&mut c)
            .await?;
            start = end + 1;
        }
        sqlx::query("ANALYZE auth.users").execute(&mut c).await?;
        sqlx::query("ANALYZE auth.identities")
            .execute(&mut c)
            .await?;
    } else {
        let path = database_url.trim_start_matches("sqlite://");
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await?;
        let now = Utc::now();
        while start <= to {
            let end = (start + CHUNK - 1).min(to);
            let mut tx = c.begin().await?;
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM n WHERE i < $2)
                 INSERT INTO users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                   raw_app_meta_data, raw_user_meta_data, created_at, updated_at, confirmation_token, recovery_token,
                   email_change_token_new, email_change_token_current, email_change, phone_change, phone_change_token,
                   reauthentication_token, is_sso_user, is_anonymous)
                 SELECT zeroblob(16), randomblob(16), 'authenticated', 'authenticated', 'bench' || i || '@example.com', $3, $4,
                   '{\"provider\":\"email\",\"providers\":[\"email\"]}', '{}', $4, $4, '', '', '', '', '', '', '', '', 0, 0
                 FROM n",
            )
            .bind(start as i64)
            .bind(end as i64)
            .bind(hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO identities (id, provider_id, user_id, identity_data, provider, created_at, updated_at)
                 SELECT randomblob(16), lower(hex(u.id)), u.id,
                   json_object('sub', lower(hex(u.id)), 'email', u.email, 'email_verified', json('false'), 'phone_verified', json('false')),
                   'email', $1, $1
                 FROM users u WHERE u.email LIKE 'bench%' AND NOT EXISTS (SELECT 1 FROM identities i WHERE i.user_id = u.id)",
            )
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            start = end + 1;
        }
        sqlx::query("ANALYZE").execute(&mut c).await?;
    }
    Ok(())
}

/// The large table: users `first..=last`, timed.
pub async fn big(database_url: &str, hash: &str, first: u64, last: u64) -> anyhow::Result<()> {
    eprintln!("seeding up to {last} users…");
    let t = std::time::Instant::now();
    users(database_url, hash, first, last).await?;
    eprintln!("seeded in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// A session for each of up to `n` seeded users, written straight into the
/// database: live (`ended` none), or one whose `not_after` passed at `ended`.
/// Answers how many were written.
pub async fn sessions(
    database_url: &str,
    n: u64,
    ended: Option<chrono::DateTime<Utc>>,
) -> anyhow::Result<u64> {
    let t = std::time::Instant::now();
    let written = if database_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database_url).await?;
        let written = sqlx::query(
            "INSERT INTO auth.sessions (id, user_id, created_at, updated_at, not_after)
             SELECT gen_random_uuid(), id, now(), now(), $2 FROM auth.users
             WHERE email LIKE 'bench%' LIMIT $1",
        )
        .bind(n as i64)
        .bind(ended)
        .execute(&mut c)
        .await?
        .rows_affected();
        sqlx::query("ANALYZE auth.sessions").execute(&mut c).await?;
        written
    } else {
        let path = database_url.trim_start_matches("sqlite://");
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await?;
        let written = sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at, updated_at, not_after)
             SELECT randomblob(16), id, $2, $2, $3 FROM users
             WHERE email LIKE 'bench%' LIMIT $1",
        )
        .bind(n as i64)
        .bind(Utc::now())
        .bind(ended)
        .execute(&mut c)
        .await?
        .rows_affected();
        sqlx::query("ANALYZE").execute(&mut c).await?;
        written
    };
    eprintln!(
        "seeded {written} {} sessions in {:.1} s",
        if ended.is_some() { "ended" } else { "live" },
        t.elapsed().as_secs_f64()
    );
    Ok(written)
}

/// Sessions whose `not_after` has passed.
pub async fn ended_sessions(database_url: &str) -> anyhow::Result<i64> {
    Ok(if database_url.starts_with("postgres") {
        let mut c = sqlx::PgConnection::connect(database_url).await?;
        sqlx::query_scalar("SELECT count(*) FROM auth.sessions WHERE not_after < now()")
            .fetch_one(&mut c)
            .await?
    } else {
        let path = database_url.trim_start_matches("sqlite://");
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await?;
        sqlx::query_scalar("SELECT count(*) FROM sessions WHERE not_after < $1")
            .bind(Utc::now())
            .fetch_one(&mut c)
            .await?
    })
}
