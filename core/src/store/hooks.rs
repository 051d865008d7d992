//! Auth hooks that are PostgreSQL functions (`pg-functions://`): called with
//! the hook's JSON, answering JSON, under GoTrue's 2-second statement limit.

use serde_json::Value;
use sqlx::types::Json;

use super::{Conn, Store, Tx};

impl Store {
    /// `"schema"."function"(payload)` in a transaction of its own.
    pub async fn call_hook_function(
        &self,
        schema: &str,
        function: &str,
        payload: &Value,
    ) -> Result<Option<Value>, sqlx::Error> {
        let mut tx = self.begin().await?;
        let out = tx.call_hook_function(schema, function, payload).await?;
        tx.commit().await?;
        Ok(out)
    }
}

impl Tx {
    /// `"schema"."function"(payload)` inside this transaction, so it sees
    /// what the request has written so far and a refusal rolls it back (as
    /// GoTrue calls it); the names were checked as identifiers when the
    /// configuration was read.
    pub async fn call_hook_function(
        &mut self,
        schema: &str,
        function: &str,
        payload: &Value,
    ) -> Result<Option<Value>, sqlx::Error> {
        let Conn::Pg(c) = &mut self.conn else {
            return Err(sqlx::Error::Configuration(
                "pg-functions hooks need PostgreSQL".into(),
            ));
        };
        sqlx::query("SET LOCAL statement_timeout TO '2000'")
            .execute(&mut **c)
            .await?;
        // Identifiers only (checked at start), quoted: nothing a client
        // wrote reaches this string.
        let sql = format!("SELECT \"{schema}\".\"{function}\"($1::jsonb)::jsonb");
        let v: Option<Json<Value>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(Json(payload))
            .fetch_one(&mut **c)
            .await?;
        // The rest of the request's transaction runs under the usual limit.
        sqlx::query("SET LOCAL statement_timeout TO DEFAULT")
            .execute(&mut **c)
            .await?;
        Ok(v.map(|j| j.0))
    }
}
