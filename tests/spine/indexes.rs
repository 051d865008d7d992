//! Every lookup a client can trigger by address is served by an index, on
//! both databases (issue 9, defect 4: a table scan per sign-in).

use castellan_core::store::Pool;

use castellan_core::on;

use crate::both;

/// The filters the store uses to find a user by address.
const LOOKUPS: [&str; 4] = [
    "SELECT id FROM users WHERE lower(email) = $1 AND aud = $2 AND is_sso_user = false",
    "SELECT id FROM users WHERE phone = $1 AND aud = $2 AND is_sso_user = false",
    "SELECT count(*) FROM users WHERE lower(email) = $1 AND is_sso_user = false AND id <> $2",
    "SELECT count(*) FROM users WHERE phone = $1 AND id <> $2",
];

/// Five thousand users with statistics, so a planner picks a scan of the
/// table only when no index serves the filter.
async fn populate(pool: &Pool) {
    let statements: [&str; 2] = match pool {
        Pool::Pg(_) => [
            "INSERT INTO users (id, aud, email, phone) SELECT gen_random_uuid(), 'authenticated', \
             'u' || g || '@example.com', '1555' || g FROM generate_series(1, 5000) g",
            "ANALYZE users",
        ],
        Pool::Lite(_) => [
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 5000) \
             INSERT INTO users (id, aud, email, phone) SELECT randomblob(16), 'authenticated', \
             'u' || n || '@example.com', '1555' || n FROM g",
            "ANALYZE",
        ],
    };
    for sql in statements {
        on!(pool pool, p => sqlx::query(sql).execute(p).await.map(drop).unwrap());
    }
}

/// The plan of `sql` as one line of text.
async fn plan(pool: &Pool, sql: &str) -> String {
    let rows: Vec<String> = match pool {
        Pool::Pg(p) => {
            let mut c = p.acquire().await.unwrap();
            // Literals in place of the parameters: a zero UUID reads as text too.
            let literal = sql
                .replace("$1", "'a@example.com'")
                .replace("$2", "'00000000-0000-0000-0000-000000000000'");
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {literal}")))
                .fetch_all(&mut *c)
                .await
                .unwrap()
        }
        Pool::Lite(p) => {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(explain))
                .bind("a@example.com")
                .bind("x")
                .fetch_all(p)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.3)
                .collect()
        }
    };
    rows.join(" | ")
}

both!(address_lookups_use_an_index, |_| {}, |t| {
    populate(t.pool()).await;
    for sql in LOOKUPS {
        let plan = plan(t.pool(), sql).await;
        let indexed = plan.contains("Index") || plan.contains("USING INDEX");
        assert!(indexed, "{sql}\n{plan}");
        assert!(
            !plan.contains("Seq Scan") && !plan.starts_with("SCAN"),
            "{sql}\n{plan}"
        );
    }
});
