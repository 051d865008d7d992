//! The OAuth clients castellan serves as an authorization server: GoTrue's
//! `oauth_clients` (lists kept as comma-separated text, as GoTrue keeps
//! them; a deleted client keeps its row with `deleted_at`).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::admin::Page;
use super::queries::count;
use super::{Store, Tx};
use crate::on;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OAuthClient {
    pub id: Uuid,
    /// SHA-256 of a confidential client's secret (base64url); none for a public one.
    pub client_secret_hash: Option<String>,
    pub registration_type: String,
    pub client_type: String,
    pub token_endpoint_auth_method: String,
    pub redirect_uris: String,
    pub grant_types: String,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub logo_uri: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OAuthClient {
    pub fn redirect_uris(&self) -> Vec<String> {
        split(&self.redirect_uris)
    }

    pub fn grant_types(&self) -> Vec<String> {
        split(&self.grant_types)
    }
}

fn split(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

macro_rules! cols {
    ($d:ident) => {
        concat!(
            "id, client_secret_hash, registration_type",
            $d!(cast "text"),
            " AS registration_type, client_type",
            $d!(cast "text"),
            " AS client_type, token_endpoint_auth_method, redirect_uris, grant_types, \
             client_name, client_uri, logo_uri, created_at, updated_at"
        )
    };
}

impl Store {
    /// A client that is not deleted.
    pub async fn oauth_client(&self, id: Uuid) -> Result<Option<OAuthClient>, sqlx::Error> {
        count();
        on!(pool &self.pool, p, d => sqlx::query_as(concat!("SELECT ", cols!(d),
            " FROM oauth_clients WHERE id = $1 AND deleted_at IS NULL"))
            .bind(id).fetch_optional(p).await)
    }

    /// A page of the clients that are not deleted, newest first, and how many there are.
    pub async fn oauth_clients(&self, page: Page) -> Result<(Vec<OAuthClient>, i64), sqlx::Error> {
        count();
        let rows = on!(pool &self.pool, p, d => sqlx::query_as(concat!("SELECT ", cols!(d),
            " FROM oauth_clients WHERE deleted_at IS NULL ORDER BY created_at DESC, id LIMIT $1 OFFSET $2"))
            .bind(page.limit).bind(page.offset).fetch_all(p).await)?;
        count();
        let total = on!(pool &self.pool, p => sqlx::query_scalar(
            "SELECT count(*) FROM oauth_clients WHERE deleted_at IS NULL").fetch_one(p).await)?;
        Ok((rows, total))
    }
}

impl Tx {
    /// How many dynamically registered clients exist (not deleted).
    pub async fn dynamic_oauth_clients(&mut self) -> Result<i64, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_scalar(
            "SELECT count(*) FROM oauth_clients WHERE registration_type = 'dynamic' AND deleted_at IS NULL")
            .fetch_one(&mut *c).await)
    }

    pub async fn insert_oauth_client(&mut self, c: &OAuthClient) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c_, d => sqlx::query(concat!(
            "INSERT INTO oauth_clients (id, client_secret_hash, registration_type, client_type, token_endpoint_auth_method, \
             redirect_uris, grant_types, client_name, client_uri, logo_uri, created_at, updated_at) \
             VALUES ($1, $2, $3", d!(cast "auth.oauth_registration_type"), ", $4", d!(cast "auth.oauth_client_type"),
            ", $5, $6, $7, $8, $9, $10, $11, $11)"))
            .bind(c.id).bind(&c.client_secret_hash).bind(&c.registration_type).bind(&c.client_type)
            .bind(&c.token_endpoint_auth_method).bind(&c.redirect_uris).bind(&c.grant_types)
            .bind(&c.client_name).bind(&c.client_uri).bind(&c.logo_uri).bind(c.created_at)
            .execute(&mut *c_).await.map(drop))
    }

    /// A client that is not deleted, locked for the rest of the transaction.
    pub async fn oauth_client_for_update(
        &mut self,
        id: Uuid,
    ) -> Result<Option<OAuthClient>, sqlx::Error> {
        count();
        on!(tx self, c, d => sqlx::query_as(concat!("SELECT ", cols!(d),
            " FROM oauth_clients WHERE id = $1 AND deleted_at IS NULL", d!(for_update)))
            .bind(id).fetch_optional(&mut *c).await)
    }

    /// Writes a client's changeable fields (and its secret's hash).
    pub async fn update_oauth_client(&mut self, c: &OAuthClient) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c_ => sqlx::query(
            "UPDATE oauth_clients SET client_secret_hash = $2, token_endpoint_auth_method = $3, redirect_uris = $4, \
             grant_types = $5, client_name = $6, client_uri = $7, logo_uri = $8, updated_at = $9 \
             WHERE id = $1 AND deleted_at IS NULL")
            .bind(c.id).bind(&c.client_secret_hash).bind(&c.token_endpoint_auth_method).bind(&c.redirect_uris)
            .bind(&c.grant_types).bind(&c.client_name).bind(&c.client_uri).bind(&c.logo_uri).bind(c.updated_at)
            .execute(&mut *c_).await.map(drop))
    }

    /// Soft-deletes a client (GoTrue's rule); false when there was none.
    pub async fn delete_oauth_client(
        &mut self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE oauth_clients SET deleted_at = $2, updated_at = $2 WHERE id = $1 AND deleted_at IS NULL")
            .bind(id).bind(now).execute(&mut *c).await.map(|r| r.rows_affected() == 1))
    }
}
