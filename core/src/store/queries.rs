//! The statements castellan runs. Each method is one round trip.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Conn, Pool, Store, Tx};
use crate::models::{INSTANCE_ID, Identity, RefreshToken, Session, User};
use crate::on;

/// A user's identities, oldest first.
const IDENTITIES_OF: &str = concat!(
    "SELECT ",
    identity_cols!(),
    " FROM identities WHERE user_id = $1 ORDER BY created_at, id"
);

/// Counts round trips, so benchmarks can report queries per operation.
pub(super) fn count() {
    metrics::counter!("castellan_db_queries_total").increment(1);
}

/// A new user row; token columns are written as `''` (GoTrue cannot read NULL there).
pub struct NewUser<'a> {
    pub id: Uuid,
    pub aud: &'a str,
    pub role: &'a str,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub encrypted_password: Option<&'a str>,
    pub email_confirmed_at: Option<DateTime<Utc>>,
    pub phone_confirmed_at: Option<DateTime<Utc>>,
    pub app_metadata: Value,
    pub user_metadata: Value,
    pub is_anonymous: bool,
    pub now: DateTime<Utc>,
}

impl NewUser<'_> {
    /// The user this will be once inserted (for a hook asked before).
    pub fn preview(&self) -> crate::models::User {
        let meta = |v: &Value| Some(sqlx::types::Json(v.clone()));
        crate::models::User {
            id: self.id,
            aud: Some(self.aud.to_string()),
            role: Some(self.role.to_string()),
            email: self.email.map(str::to_string),
            encrypted_password: None,
            email_confirmed_at: self.email_confirmed_at,
            invited_at: None,
            confirmation_sent_at: None,
            recovery_sent_at: None,
            email_change: None,
            email_change_sent_at: None,
            last_sign_in_at: None,
            raw_app_meta_data: meta(&self.app_metadata),
            raw_user_meta_data: meta(&self.user_metadata),
            created_at: Some(self.now),
            updated_at: Some(self.now),
            phone: self.phone.map(str::to_string),
            phone_confirmed_at: self.phone_confirmed_at,
            phone_change: None,
            phone_change_sent_at: None,
            reauthentication_sent_at: None,
            banned_until: None,
            deleted_at: None,
            is_sso_user: false,
            is_anonymous: self.is_anonymous,
            factors: Vec::new(),
        }
    }
}

/// Everything a refresh decides on, read in one statement under the
/// session's lock: the session, the presented token, the user, the
/// session's authentication methods and the user's identities.
#[derive(Debug, Clone)]
pub struct RefreshContext {
    pub session: Session,
    /// The presented legacy token (`None` when a v2 token was presented).
    pub token: Option<RefreshToken>,
    pub user: User,
    pub amr: Vec<(String, DateTime<Utc>)>,
    pub identities: Vec<Identity>,
}

impl RefreshContext {
    /// About what the context costs in memory.
    pub fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.user.weight()
            + self.amr.len() * 48
            + self.identities.iter().map(|i| i.weight()).sum::<usize>()
    }
}

#[derive(serde::Deserialize)]
struct AmrJson {
    method: String,
    at: DateTime<Utc>,
}

/// The writes of one rotation: revoke the presented token (unless it was
/// already revoked), add its child, audit both, mark the session refreshed.
pub struct Rotation<'a> {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub revoke: Option<i64>,
    pub child: &'a str,
    pub parent: Option<&'a str>,
    /// The `token_refreshed` and `token_revoked` audit payloads.
    pub audits: [&'a Value; 2],
    pub now: DateTime<Utc>,
}

/// The writes of one v2 refresh: move the session's counter from `from` to
/// `to` (the same value for an allowed reuse), audit it, mark the session
/// refreshed; all only if the counter is still `from`.
pub struct Advance<'a> {
    pub session_id: Uuid,
    pub from: i64,
    pub to: i64,
    /// The `token_refreshed` audit payload.
    pub audit: &'a Value,
    pub now: DateTime<Utc>,
}

const ADVANCE_PG: &str = "WITH advanced AS (UPDATE sessions SET refresh_token_counter = $3, refreshed_at = $4, updated_at = $5, \
                              ip = coalesce($6::inet, ip), user_agent = coalesce($7, user_agent) \
                              WHERE id = $1 AND refresh_token_counter = $2 RETURNING id), \
     audit AS (INSERT INTO audit_log_entries (instance_id, id, payload, created_at, ip_address) \
               SELECT $8, $9, $10::jsonb::json, $5, $11 FROM advanced) \
     SELECT count(*) FROM advanced";

/// As `ADVANCE_PG`, as SQLite statements a write batch runs (see
/// `ROTATE_LITE` for `changes()`, and `group` for the batch).
const ADVANCE_LITE: &str = "UPDATE sessions SET refresh_token_counter = $3, refreshed_at = $4, updated_at = $5, ip = coalesce($6, ip), \
         user_agent = coalesce($7, user_agent) WHERE id = $1 AND refresh_token_counter = $2; \
     INSERT INTO audit_log_entries (instance_id, id, payload, created_at, ip_address) \
         SELECT $8, $9, $10, $5, $11 WHERE changes() = 1; \
     SELECT changes()";

impl Advance<'_> {
    fn args(&self) -> AdvanceArgs {
        (
            self.session_id,
            self.from,
            self.to,
            self.now,
            Json(self.audit.clone()),
            crate::client::current(),
        )
    }
}

/// An advance's values, owned (a SQLite batch runs in a task of its own).
pub(super) type AdvanceArgs = (
    Uuid,
    i64,
    i64,
    DateTime<Utc>,
    Json<Value>,
    crate::client::Client,
);

macro_rules! bind_advance {
    ($q:expr, $a:expr) => {{
        let (session, from, to, now, audit, client): AdvanceArgs = $a;
        $q.bind(session)
            .bind(from)
            .bind(to)
            .bind(now.naive_utc())
            .bind(now)
            .bind(client.ip.map(|ip| ip.to_string()))
            .bind(client.user_agent)
            .bind(INSTANCE_ID)
            .bind(Uuid::now_v7())
            .bind(audit)
            .bind(client.address)
    }};
}

/// SQLite's advances, batched (see `group`).
pub(super) fn advance_group() -> super::group::WriteGroup<AdvanceArgs> {
    fn bind(q: super::group::Scalar<'_>, a: AdvanceArgs) -> super::group::Scalar<'_> {
        bind_advance!(q, a)
    }
    super::group::WriteGroup::new(ADVANCE_LITE, 11, bind)
}

/// Runs a guarded write in its two forms, one statement on PostgreSQL and
/// the same steps in a SQLite write batch (`group`), both bound by `$bind`
/// from the owned `$args`: true when the guarded step ran.
macro_rules! guarded_write {
    ($store:expr, $pg:expr, $group:expr, $bind:ident, $args:expr) => {{
        let won = match &$store.pool {
            Pool::Pg(p) => {
                $bind!(sqlx::query_scalar::<_, i64>($pg), $args)
                    .fetch_one(p)
                    .await?
            }
            Pool::Lite(_) => $store.lite_grouped($group, $args).await?,
        };
        Ok(won == 1)
    }};
}

/// A user as an access token sees them: identities, and the session the
/// token names (`None`: it names none, or that session is gone).
#[derive(Debug, Clone)]
pub struct LiveUser {
    pub user: User,
    pub identities: Vec<Identity>,
    pub session: Option<LiveSession>,
    /// The user as `GET /user` renders it, made once per cached entry and
    /// shared by every answer (no copy per request).
    rendered: std::sync::OnceLock<bytes::Bytes>,
}

impl LiveUser {
    /// About what the entry costs in memory, its rendering included.
    pub fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.user.weight()
            + self.identities.iter().map(|i| i.weight()).sum::<usize>()
    }

    /// The user and identities as GoTrue's JSON (rendered once, then reused).
    pub fn rendered(&self) -> bytes::Bytes {
        self.rendered
            .get_or_init(|| {
                serde_json::to_vec(&self.user.to_json(&self.identities))
                    .unwrap_or_default()
                    .into()
            })
            .clone()
    }
}

#[derive(Debug, Clone)]
pub struct LiveSession {
    pub not_after: Option<DateTime<Utc>>,
    pub aal: Option<String>,
    /// The OAuth client whose code started the session (none: the user's
    /// own), and the scopes the user granted it.
    pub oauth_client_id: Option<Uuid>,
    pub scopes: Option<String>,
}

/// A session to start: its row, first authentication method, first
/// refresh token, the user's last sign-in, and the audit entries.
pub struct NewSession<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub method: &'a str,
    /// A legacy first refresh token (a row), or for v2 tokens the
    /// session's HMAC key (its counter starts at 0, and no row is written).
    pub refresh: FirstToken<'a>,
    pub audits: &'a [Value],
    pub now: DateTime<Utc>,
    /// The OAuth client (and granted scopes) a session started by its
    /// authorization code belongs to.
    pub oauth: Option<(Uuid, &'a str)>,
}

#[derive(Debug, Clone, Copy)]
pub enum FirstToken<'a> {
    Legacy(&'a str),
    V2Key(&'a str),
}

/// Which sessions of a user to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionScope {
    /// Only this one.
    Only(Uuid),
    /// All but this one.
    AllBut(Uuid),
    All,
    /// Those an OAuth client's codes started (a revoked grant).
    OfClient(Uuid),
}

/// The guarded rotation on PostgreSQL: every write keys off `revoked`, the
/// row the guard updated, so a lost race writes nothing.
const ROTATE_PG: &str = "WITH revoked AS (UPDATE refresh_tokens SET revoked = true, updated_at = $1 \
                          WHERE id = $2::bigint AND coalesce(revoked, false) = false RETURNING id), \
     child AS (INSERT INTO refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id) \
               SELECT $3, $4, $5, false, $1, $1, $6, $7 FROM revoked), \
     audit AS (INSERT INTO audit_log_entries (instance_id, id, payload, created_at, ip_address) \
               SELECT $3, a.id, a.payload, $1, $13 FROM revoked, \
               (VALUES ($8::uuid, $9::jsonb::json), ($10::uuid, $11::jsonb::json)) AS a(id, payload)), \
     touched AS (UPDATE sessions SET refreshed_at = $12, updated_at = $1, ip = coalesce($14::inet, ip), \
                 user_agent = coalesce($15, user_agent) WHERE id = $7 AND EXISTS (SELECT 1 FROM revoked)) \
     SELECT count(*) FROM revoked";

/// The same on SQLite, which has no writes in CTEs: each statement runs
/// only if the one before changed what it should (`changes()`), so a lost
/// race changes no row at all; run in a write batch (`group`). It answers
/// whether the last step ran (`rows_affected` cannot tell: SQLite reports
/// a batch with the count of the connection's previous change).
const ROTATE_LITE: &str = "UPDATE refresh_tokens SET revoked = true, updated_at = $1 WHERE id = $2 AND coalesce(revoked, false) = false; \
     INSERT INTO refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id) \
         SELECT $3, $4, $5, false, $1, $1, $6, $7 WHERE changes() = 1; \
     INSERT INTO audit_log_entries (instance_id, id, payload, created_at, ip_address) \
         SELECT $3, $8, $9, $1, $13 WHERE changes() = 1 UNION ALL SELECT $3, $10, $11, $1, $13 WHERE changes() = 1; \
     UPDATE sessions SET refreshed_at = $12, updated_at = $1, ip = coalesce($14, ip), \
         user_agent = coalesce($15, user_agent) WHERE id = $7 AND changes() = 2; \
     SELECT changes()";

/// A rotation's values, owned (a SQLite batch runs in a task of its own).
pub(super) type RotateArgs = (
    DateTime<Utc>,
    i64,
    String,
    String,
    Option<String>,
    Uuid,
    [Json<Value>; 2],
    crate::client::Client,
);

macro_rules! bind_rotate {
    ($q:expr, $a:expr) => {{
        let (now, revoke, child, user, parent, session, [a0, a1], client): RotateArgs = $a;
        $q.bind(now)
            .bind(revoke)
            .bind(INSTANCE_ID)
            .bind(child)
            .bind(user)
            .bind(parent)
            .bind(session)
            .bind(Uuid::now_v7())
            .bind(a0)
            .bind(Uuid::now_v7())
            .bind(a1)
            .bind(now.naive_utc())
            .bind(client.address)
            .bind(client.ip.map(|ip| ip.to_string()))
            .bind(client.user_agent)
    }};
}

/// SQLite's rotations, batched (see `group`).
pub(super) fn rotate_group() -> super::group::WriteGroup<RotateArgs> {
    fn bind(q: super::group::Scalar<'_>, a: RotateArgs) -> super::group::Scalar<'_> {
        bind_rotate!(q, a)
    }
    super::group::WriteGroup::new(ROTATE_LITE, 15, bind)
}

/// A new session on PostgreSQL in one statement (a data-modifying CTE;
/// foreign keys are checked at its end), answering with the identities.
const START_SESSION_PG: &str = concat!(
    "WITH session AS (INSERT INTO sessions (id, user_id, created_at, updated_at, aal, ip, user_agent, \
                                  refresh_token_hmac_key, refresh_token_counter, oauth_client_id, scopes) \
                                  VALUES ($1, $2, $3, $3, 'aal1'::auth.aal_level, $11::inet, $12, $13::text, $14::bigint, \
                                          $15::uuid, $16::text)), \
                 amr AS (INSERT INTO mfa_amr_claims (id, session_id, authentication_method, created_at, updated_at) \
                         VALUES ($4, $1, $5, $3, $3)), \
                 refresh AS (INSERT INTO refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id) \
                             SELECT $6, $7, $8, false, $3, $3, NULL, $1 WHERE $7::text IS NOT NULL), \
                 signed_in AS (UPDATE users SET last_sign_in_at = $3, updated_at = $3 WHERE id = $2), \
                 audit AS (INSERT INTO audit_log_entries (instance_id, id, payload, created_at, ip_address) \
                           SELECT $6, gen_random_uuid(), a.payload, $3, $10 FROM jsonb_array_elements($9::jsonb) AS a(payload)) \
                 SELECT ",
    crate::pg_sql!(identities "u"),
    " AS identities_json, ",
    crate::pg_sql!(factors "u"),
    " AS factors_json FROM users u WHERE u.id = $2"
);

/// A new session on SQLite, in one call to SQLite's thread: the session,
/// its first method, its refresh token, the user's sign-in time, the audit
/// entries (one per element of the JSON array `$9`), then the identities
/// and factors the answer lists.
const START_SESSION_LITE: &str = concat!(
    "INSERT INTO sessions (id, user_id, created_at, updated_at, aal, ip, user_agent, \
         refresh_token_hmac_key, refresh_token_counter, oauth_client_id, scopes) \
         VALUES ($1, $2, $3, $3, 'aal1', $11, $12, $13, $14, $15, $16); \
     INSERT INTO mfa_amr_claims (id, session_id, authentication_method, created_at, updated_at) \
         VALUES ($4, $1, $5, $3, $3); \
     INSERT INTO refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id) \
         SELECT $6, $7, $8, false, $3, $3, NULL, $1 WHERE $7 IS NOT NULL; \
     UPDATE users SET last_sign_in_at = $3, updated_at = $3 WHERE id = $2; \
     INSERT INTO audit_log_entries (instance_id, id, payload, created_at, ip_address) \
         SELECT $6, randomblob(16), a.value, $3, $10 FROM json_each($9) AS a; \
     SELECT ",
    crate::lite_sql!(identities "u"),
    " AS identities_json, ",
    crate::lite_sql!(factors "u"),
    " AS factors_json FROM users u WHERE u.id = $2"
);

// The refresh context query and its decoding, shared by the locked read
// (`Tx::refresh_context`) and the unlocked one (`Store::peek_refresh`).
macro_rules! refresh_sql {
    ($d:ident, $from:expr) => {
        concat!(
            "SELECT u.*, s.id AS s_id, s.created_at AS s_created_at, s.updated_at AS s_updated_at, s.refreshed_at AS s_refreshed_at, \
             s.not_after AS s_not_after, s.refresh_token_hmac_key AS s_key, s.refresh_token_counter AS s_counter, \
             s.oauth_client_id AS s_client, s.scopes AS s_scopes, t.id AS t_id, t.token AS t_token, t.user_id AS t_user_id, t.revoked AS t_revoked, \
             t.created_at AS t_created_at, t.updated_at AS t_updated_at, t.parent AS t_parent, ",
            $d!(amr "s"), " AS amr_json, ", $d!(identities "u"), " AS identities_json, ",
            $d!(factors "u"), " AS factors_json ", $from
        )
    };
}
/// A legacy token's row, its session and user.
macro_rules! by_token {
    () => {
        "FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id WHERE t.token = $1"
    };
}
/// A v2 token's session (by id) and user; no token row.
macro_rules! by_session {
    () => {
        "FROM sessions s JOIN users u ON u.id = s.user_id LEFT JOIN refresh_tokens t ON false WHERE s.id = $1"
    };
}
macro_rules! decode_refresh {
    ($row:expr) => {{
        let Some(r) = $row else { return Ok(None) };
        let mut user = <User as sqlx::FromRow<_>>::from_row(&r)?;
        let factors: Json<Vec<super::FactorRow>> = r.try_get("factors_json")?;
        user.factors = factors.0;
        let amr: Json<Vec<AmrJson>> = r.try_get("amr_json")?;
        let identities: Json<Vec<Identity>> = r.try_get("identities_json")?;
        let session_id: Uuid = r.try_get("s_id")?;
        Ok(Some(RefreshContext {
            session: Session {
                id: session_id,
                user_id: user.id,
                created_at: r.try_get("s_created_at")?,
                updated_at: r.try_get("s_updated_at")?,
                refreshed_at: r.try_get("s_refreshed_at")?,
                not_after: r.try_get("s_not_after")?,
                refresh_token_hmac_key: r.try_get("s_key")?,
                refresh_token_counter: r.try_get("s_counter")?,
                oauth_client_id: r.try_get("s_client")?,
                scopes: r.try_get("s_scopes")?,
            },
            token: match r.try_get::<Option<i64>, _>("t_id")? {
                None => None,
                Some(id) => Some(RefreshToken {
                    id,
                    token: r.try_get("t_token")?,
                    user_id: r.try_get("t_user_id")?,
                    revoked: r.try_get("t_revoked")?,
                    created_at: r.try_get("t_created_at")?,
                    updated_at: r.try_get("t_updated_at")?,
                    parent: r.try_get("t_parent")?,
                    session_id: Some(session_id),
                }),
            },
            user,
            amr: amr.0.into_iter().map(|a| (a.method, a.at)).collect(),
            identities: identities.0,
        }))
    }};
}

impl Store {
    pub async fn user_by_id(&self, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"))
            .bind(id).fetch_optional(p).await)
    }

    /// What an access token needs checked, in one round trip: the user, their
    /// identities (as a JSON array) and, when the token names one, its session.
    pub async fn live_user(
        &self,
        id: Uuid,
        session: Option<Uuid>,
    ) -> Result<Option<LiveUser>, sqlx::Error> {
        count();
        macro_rules! q {
            ($d:ident) => {
                concat!(
                    "SELECT ", user_cols!(), ", ", $d!(factors "users"),
                    " AS factors_json, s.s_id, s.s_not_after, s.s_aal, s.s_client, s.s_scopes, ",
                    $d!(identities "users"), " AS identities_json FROM users \
                     LEFT JOIN (SELECT id AS s_id, not_after AS s_not_after, aal", $d!(cast "text"),
                    " AS s_aal, oauth_client_id AS s_client, scopes AS s_scopes FROM sessions \
                     WHERE id = $2 AND user_id = $1) s ON 1 = 1 WHERE id = $1"
                )
            };
        }
        macro_rules! decode {
            ($row:expr) => {
                match $row {
                    None => Ok(None),
                    Some(r) => {
                        let mut user = <User as sqlx::FromRow<_>>::from_row(&r)?;
                        let factors: Json<Vec<super::FactorRow>> = r.try_get("factors_json")?;
                        user.factors = factors.0;
                        let ids: Json<Vec<Identity>> = r.try_get("identities_json")?;
                        let found: Option<Uuid> = r.try_get("s_id")?;
                        let session = match found {
                            None => None,
                            Some(_) => Some(LiveSession {
                                not_after: r.try_get("s_not_after")?,
                                aal: r.try_get("s_aal")?,
                                oauth_client_id: r.try_get("s_client")?,
                                scopes: r.try_get("s_scopes")?,
                            }),
                        };
                        Ok(Some(LiveUser {
                            user,
                            identities: ids.0,
                            session,
                            rendered: Default::default(),
                        }))
                    }
                }
            };
        }
        on!(pool &self.pool, p, d => {
            let row = sqlx::query(q!(d)).bind(id).bind(session).fetch_optional(p).await?;
            decode!(row)
        })
    }

    /// Password sign-in lookup: by lower-cased email and audience, SSO users excluded.
    pub async fn user_by_email(&self, email: &str, aud: &str) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE lower(email) = $1 AND aud = $2 AND is_sso_user = false"))
            .bind(email).bind(aud).fetch_optional(p).await)
    }

    pub async fn user_by_phone(&self, phone: &str, aud: &str) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE phone = $1 AND aud = $2 AND is_sso_user = false"))
            .bind(phone).bind(aud).fetch_optional(p).await)
    }

    /// The users whose phone change to this number was asked for since
    /// `since` (two at most are read: more than one is refused anyway;
    /// stale requests are not read, so they cannot crowd out fresh ones).
    pub async fn users_by_phone_change(
        &self,
        phone: &str,
        aud: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<User>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE phone_change = $1 AND phone_change <> '' AND phone_change_token <> '' \
             AND aud = $2 AND is_sso_user = false AND phone_change_sent_at >= $3 LIMIT 2"))
            .bind(phone).bind(aud).bind(since).fetch_all(p).await)
    }

    pub async fn identities_of(&self, user_id: Uuid) -> Result<Vec<Identity>, sqlx::Error> {
        count();
        on!(pool &self.pool, p => sqlx::query_as(IDENTITIES_OF)
            .bind(user_id).fetch_all(p).await)
    }

    /// A refresh's context read without a lock: the common case decides on
    /// it and writes with `rotate_if_current`, whose guard catches a race.
    pub async fn peek_refresh(&self, token: &str) -> Result<Option<RefreshContext>, sqlx::Error> {
        count();
        on!(pool &self.pool, p, d => {
            let row = sqlx::query(refresh_sql!(d, by_token!())).bind(token).fetch_optional(p).await?;
            decode_refresh!(row)
        })
    }

    /// Whether this is a GoTrue database castellan adopted: GoTrue keeps its
    /// migrations in `auth.schema_migrations`, which castellan never makes.
    pub async fn adopted_gotrue(&self) -> Result<bool, sqlx::Error> {
        match &self.pool {
            Pool::Pg(p) => {
                sqlx::query_scalar("SELECT to_regclass('auth.schema_migrations') IS NOT NULL")
                    .fetch_one(p)
                    .await
            }
            Pool::Lite(_) => Ok(false),
        }
    }

    /// A v2 refresh's context, read without a lock: the session the token
    /// names, its key and counter, and its user.
    pub async fn peek_session_refresh(
        &self,
        session_id: Uuid,
    ) -> Result<Option<RefreshContext>, sqlx::Error> {
        count();
        on!(pool &self.pool, p, d => {
            let row = sqlx::query(refresh_sql!(d, by_session!())).bind(session_id).fetch_optional(p).await?;
            decode_refresh!(row)
        })
    }

    /// Moves a session's v2 counter (see [`Advance`]): false when another
    /// refresh moved it first (nothing written). One statement on
    /// PostgreSQL, one self-contained batch on SQLite.
    pub async fn advance_refresh_counter(&self, a: &Advance<'_>) -> Result<bool, sqlx::Error> {
        count();
        guarded_write!(self, ADVANCE_PG, &self.advances, bind_advance, a.args())
    }

    /// Revokes `r.revoke` and writes its child, the audit entries and the
    /// session's refresh time, all only if the token was still unrevoked:
    /// false when another refresh of it got there first (nothing written).
    /// One statement on PostgreSQL (its own transaction); on SQLite, in a
    /// write batch.
    pub async fn rotate_if_current(&self, r: &Rotation<'_>) -> Result<bool, sqlx::Error> {
        let Some(revoke) = r.revoke else {
            return Ok(false);
        };
        let client = crate::client::current();
        count();
        // Owned, so the SQLite write can run to its end on a task of its own.
        let args: RotateArgs = (
            r.now,
            revoke,
            r.child.to_string(),
            r.user_id.to_string(),
            r.parent.map(str::to_string),
            r.session_id,
            [Json(r.audits[0].clone()), Json(r.audits[1].clone())],
            client,
        );
        guarded_write!(self, ROTATE_PG, &self.rotations, bind_rotate, args)
    }

    /// Replaces a password hash only if it is still the one that was verified
    /// (a concurrent password change wins).
    pub async fn upgrade_password_hash(
        &self,
        user_id: Uuid,
        old: &str,
        new: &str,
    ) -> Result<bool, sqlx::Error> {
        count();
        on!(write self, p => sqlx::query("UPDATE users SET encrypted_password = $3 WHERE id = $1 AND encrypted_password = $2")
            .bind(user_id).bind(old).bind(new).execute(p).await.map(|r| r.rows_affected() == 1))
    }
}

impl Tx {
    /// As [`Store::advance_refresh_counter`], inside this transaction (where
    /// the custom access token hook then runs).
    pub async fn advance_refresh_counter(&mut self, a: &Advance<'_>) -> Result<bool, sqlx::Error> {
        count();
        let won = match &mut self.conn {
            Conn::Pg(c) => {
                bind_advance!(sqlx::query_scalar::<_, i64>(ADVANCE_PG), a.args())
                    .fetch_one(&mut **c)
                    .await?
            }
            Conn::Lite(c, _) => {
                let steps = bind_advance!(sqlx::query_scalar::<_, i64>(ADVANCE_LITE), a.args());
                steps
                    .fetch_all(&mut **c)
                    .await?
                    .last()
                    .copied()
                    .unwrap_or(0)
            }
        };
        Ok(won == 1)
    }

    pub async fn user_by_id(&mut self, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"))
            .bind(id).fetch_optional(&mut *c).await)
    }

    /// The user holding an address in any audience: the unique index's view,
    /// which a sign-up must respect whatever audience it asks for.
    pub async fn holder_of_email(&mut self, email: &str) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE lower(email) = $1 AND is_sso_user = false"))
            .bind(email).fetch_optional(&mut *c).await)
    }

    pub async fn holder_of_phone(&mut self, phone: &str) -> Result<Option<User>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", user_cols!(),
            " FROM users WHERE phone = $1"))
            .bind(phone).fetch_optional(&mut *c).await)
    }

    /// Inserts the user; values the columns cannot hold are refused first
    /// with a 400 (see [`crate::validate::new_user`]).
    pub async fn insert_user(&mut self, u: &NewUser<'_>) -> Result<(), crate::ApiError> {
        crate::validate::new_user(u)?;
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO users (instance_id, id, aud, role, email, phone, encrypted_password, \
             email_confirmed_at, phone_confirmed_at, raw_app_meta_data, raw_user_meta_data, \
             is_anonymous, created_at, updated_at, confirmation_token, recovery_token, \
             email_change_token_new, email_change_token_current, email_change, phone_change, \
             phone_change_token, reauthentication_token, is_super_admin, is_sso_user) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, '', '', '', '', '', '', '', '', false, false)")
            .bind(INSTANCE_ID).bind(u.id).bind(u.aud).bind(u.role).bind(u.email).bind(u.phone)
            .bind(u.encrypted_password).bind(u.email_confirmed_at).bind(u.phone_confirmed_at)
            .bind(Json(&u.app_metadata)).bind(Json(&u.user_metadata)).bind(u.is_anonymous).bind(u.now)
            .execute(&mut *c).await.map(drop))?;
        Ok(())
    }

    pub async fn insert_identity(&mut self, i: &Identity) -> Result<(), sqlx::Error> {
        self.touch(i.user_id);
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO identities (id, provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(i.id).bind(&i.provider_id).bind(i.user_id).bind(&i.identity_data).bind(&i.provider)
            .bind(i.last_sign_in_at).bind(i.created_at).bind(i.updated_at)
            .execute(&mut *c).await.map(drop))
    }

    /// An audit entry, with the current client's address.
    pub async fn insert_audit(
        &mut self,
        payload: &Value,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.insert_audits(std::slice::from_ref(payload), now).await
    }

    /// Starts a session and returns the user's identities: one statement on
    /// PostgreSQL, one batch on SQLite.
    /// Starts a session: the user's identities and factors, as its answer lists them.
    pub async fn start_session(
        &mut self,
        s: &NewSession<'_>,
    ) -> Result<(Vec<Identity>, Vec<super::FactorRow>), sqlx::Error> {
        self.touch(s.user_id);
        count();
        let client = crate::client::current();
        let (legacy, key, counter) = match s.refresh {
            FirstToken::Legacy(t) => (Some(t), None, None),
            FirstToken::V2Key(k) => (None, Some(k), Some(0i64)),
        };
        // Both statements take the same parameters, in the same order.
        macro_rules! bind_all {
            ($q:expr) => {
                $q.bind(s.id)
                    .bind(s.user_id)
                    .bind(s.now)
                    .bind(Uuid::now_v7())
                    .bind(s.method)
                    .bind(INSTANCE_ID)
                    .bind(legacy)
                    .bind(s.user_id.to_string())
                    .bind(Json(s.audits))
                    .bind(&client.address)
                    .bind(client.ip.map(|ip| ip.to_string()))
                    .bind(&client.user_agent)
                    .bind(key)
                    .bind(counter)
                    .bind(s.oauth.map(|(c, _)| c))
                    .bind(s.oauth.map(|(_, scopes)| scopes))
            };
        }
        macro_rules! decode {
            ($row:expr) => {{
                let row = $row;
                let ids: Json<Vec<Identity>> = row.try_get("identities_json")?;
                let factors: Json<Vec<super::FactorRow>> = row.try_get("factors_json")?;
                Ok((ids.0, factors.0))
            }};
        }
        match &mut self.conn {
            Conn::Pg(t) => decode!(
                bind_all!(sqlx::query(START_SESSION_PG))
                    .fetch_one(&mut **t)
                    .await?
            ),
            Conn::Lite(t, _) => {
                // Every statement of the batch runs; only the last answers.
                let rows = bind_all!(sqlx::query(START_SESSION_LITE))
                    .fetch_all(&mut **t)
                    .await?;
                decode!(rows.into_iter().next().ok_or(sqlx::Error::RowNotFound)?)
            }
        }
    }

    /// Records (or refreshes the time of) an authentication method of a session.
    pub async fn add_amr(
        &mut self,
        session_id: Uuid,
        method: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO mfa_amr_claims (id, session_id, authentication_method, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (session_id, authentication_method) DO UPDATE SET updated_at = excluded.updated_at")
            .bind(Uuid::now_v7()).bind(session_id).bind(method).bind(now)
            .execute(&mut *c).await.map(drop))
    }

    pub async fn insert_refresh_token(
        &mut self,
        token: &str,
        user_id: Uuid,
        parent: Option<&str>,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query(
            "INSERT INTO refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id) \
             VALUES ($1, $2, $3, false, $4, $4, $5, $6)")
            .bind(INSTANCE_ID).bind(token).bind(user_id.to_string()).bind(now).bind(parent).bind(session_id)
            .execute(&mut *c).await.map(drop))
    }

    /// Reads a refresh's whole context and locks the session and token rows
    /// (PostgreSQL; on SQLite the immediate transaction already holds the
    /// write lock). Locking the token row too matters: a second refresh that
    /// waited on the lock re-reads the locked rows as the first one left them
    /// (already revoked), where a joined row it did not lock would be stale.
    pub async fn refresh_context(
        &mut self,
        token: &str,
    ) -> Result<Option<RefreshContext>, sqlx::Error> {
        count();
        on!(tx self, c, d => {
            let row = sqlx::query(refresh_sql!(d, concat!(by_token!(), d!(pg " FOR UPDATE OF s, t"))))
                .bind(token).fetch_optional(&mut *c).await?;
            decode_refresh!(row)
        })
    }

    /// A session's refresh context by its id, the session row locked (an
    /// MFA verification re-issuing its tokens).
    pub async fn session_context(
        &mut self,
        session_id: Uuid,
    ) -> Result<Option<RefreshContext>, sqlx::Error> {
        count();
        on!(tx self, c, d => {
            let row = sqlx::query(refresh_sql!(d, concat!(by_session!(), d!(pg " FOR UPDATE OF s"))))
                .bind(session_id).fetch_optional(&mut *c).await?;
            decode_refresh!(row)
        })
    }

    /// Writes a rotation: one statement on PostgreSQL (a data-modifying CTE),
    /// four on SQLite (which has no writes in CTEs, and no network to cross).
    pub async fn record_rotation(&mut self, r: &Rotation<'_>) -> Result<(), sqlx::Error> {
        let client = crate::client::current();
        match &mut self.conn {
            Conn::Pg(t) => {
                count();
                sqlx::query(
                    "WITH revoked AS (UPDATE refresh_tokens SET revoked = true, updated_at = $1 WHERE id = $2::bigint), \
                     child AS (INSERT INTO refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, parent, session_id) \
                               VALUES ($3, $4, $5, false, $1, $1, $6, $7)), \
                     audit AS (INSERT INTO audit_log_entries (instance_id, id, payload, created_at, ip_address) \
                               VALUES ($3, $8, $9, $1, $13), ($3, $10, $11, $1, $13)), \
                     touched AS (UPDATE sessions SET refreshed_at = $12, updated_at = $1, \
                                 ip = coalesce($14::inet, ip), user_agent = coalesce($15, user_agent) WHERE id = $7) \
                     SELECT 1",
                )
                .bind(r.now)
                .bind(r.revoke)
                .bind(INSTANCE_ID)
                .bind(r.child)
                .bind(r.user_id.to_string())
                .bind(r.parent)
                .bind(r.session_id)
                .bind(Uuid::now_v7())
                .bind(Json(r.audits[0]))
                .bind(Uuid::now_v7())
                .bind(Json(r.audits[1]))
                .bind(r.now.naive_utc())
                .bind(&client.address)
                .bind(client.ip.map(|ip| ip.to_string()))
                .bind(&client.user_agent)
                .execute(&mut **t)
                .await
                .map(drop)
            }
            Conn::Lite(..) => {
                if let Some(id) = r.revoke {
                    self.revoke_refresh_token(id, r.now).await?;
                }
                self.insert_refresh_token(r.child, r.user_id, r.parent, r.session_id, r.now)
                    .await?;
                self.insert_audits(&[r.audits[0].clone(), r.audits[1].clone()], r.now)
                    .await?;
                self.touch_session(r.session_id, r.now).await
            }
        }
    }

    /// Several audit entries in one statement, with the current client's address.
    pub async fn insert_audits(
        &mut self,
        payloads: &[Value],
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let ip = crate::client::current().address;
        if payloads.is_empty() {
            return Ok(());
        }
        count();
        // Only placeholders are generated; every value is bound.
        let rows: Vec<String> = (0..payloads.len())
            .map(|i| format!("($1, $2, $3, ${}, ${})", 4 + 2 * i, 5 + 2 * i))
            .collect();
        let sql = format!(
            "INSERT INTO audit_log_entries (instance_id, created_at, ip_address, id, payload) VALUES {}",
            rows.join(", ")
        );
        on!(tx self, c => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(INSTANCE_ID).bind(now).bind(&ip);
            for p in payloads {
                q = q.bind(Uuid::now_v7()).bind(Json(p));
            }
            q.execute(&mut *c).await.map(drop)
        })
    }

    /// The newest non-revoked token of a session.
    pub async fn active_refresh_token(
        &mut self,
        session_id: Uuid,
    ) -> Result<Option<RefreshToken>, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query_as(concat!("SELECT ", token_cols!(),
            " FROM refresh_tokens WHERE session_id = $1 AND revoked = false ORDER BY id DESC LIMIT 1"))
            .bind(session_id).fetch_optional(&mut *c).await)
    }

    pub async fn revoke_refresh_token(
        &mut self,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE refresh_tokens SET revoked = true, updated_at = $2 WHERE id = $1")
            .bind(id).bind(now).execute(&mut *c).await.map(drop))
    }

    /// Moves a legacy session to v2 refresh tokens: its key (kept if it
    /// has one) and counter, and the refresh time.
    pub async fn set_refresh_v2(
        &mut self,
        session_id: Uuid,
        key: &str,
        counter: i64,
    ) -> Result<(), sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE sessions SET refresh_token_hmac_key = $2, refresh_token_counter = $3 WHERE id = $1")
            .bind(session_id).bind(key).bind(counter).execute(&mut *c).await.map(drop))
    }

    /// Family revocation: every live token of the session.
    pub async fn revoke_session_tokens(
        &mut self,
        session_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        count();
        on!(tx self, c => sqlx::query("UPDATE refresh_tokens SET revoked = true, updated_at = $2 WHERE session_id = $1 AND revoked = false")
            .bind(session_id).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))
    }

    /// A refresh: when, and from where (GoTrue keeps the latest client).
    pub async fn touch_session(&mut self, id: Uuid, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        count();
        let refreshed: NaiveDateTime = now.naive_utc();
        let client = crate::client::current();
        let ip = client.ip.map(|ip| ip.to_string());
        on!(tx self, c, d => sqlx::query(concat!(
            "UPDATE sessions SET refreshed_at = $2, updated_at = $3, ip = coalesce($4", d!(cast "inet"),
            ", ip), user_agent = coalesce($5, user_agent) WHERE id = $1"))
            .bind(id).bind(refreshed).bind(now).bind(&ip).bind(&client.user_agent).execute(&mut *c).await.map(drop))
    }

    pub async fn delete_sessions(
        &mut self,
        user_id: Uuid,
        scope: SessionScope,
    ) -> Result<u64, sqlx::Error> {
        self.touch(user_id);
        count();
        let r = match scope {
            SessionScope::Only(s) => {
                on!(tx self, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id = $2")
                .bind(user_id).bind(s).execute(&mut *c).await.map(|r| r.rows_affected())?)
            }
            SessionScope::AllBut(s) => {
                on!(tx self, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND id <> $2")
                .bind(user_id).bind(s).execute(&mut *c).await.map(|r| r.rows_affected())?)
            }
            SessionScope::All => {
                on!(tx self, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(user_id).execute(&mut *c).await.map(|r| r.rows_affected())?)
            }
            SessionScope::OfClient(client) => {
                on!(tx self, c => sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND oauth_client_id = $2")
                .bind(user_id).bind(client).execute(&mut *c).await.map(|r| r.rows_affected())?)
            }
        };
        Ok(r)
    }

    pub async fn update_metadata(
        &mut self,
        user_id: Uuid,
        user_metadata: &Value,
        app_metadata: &Value,
        now: DateTime<Utc>,
    ) -> Result<(), crate::ApiError> {
        // Merged metadata grows with each update: bounded as stored.
        crate::validate::metadata_pair(user_metadata, app_metadata)?;
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query("UPDATE users SET raw_user_meta_data = $2, raw_app_meta_data = $3, updated_at = $4 WHERE id = $1")
            .bind(user_id).bind(Json(user_metadata)).bind(Json(app_metadata)).bind(now)
            .execute(&mut *c).await.map(drop))?;
        Ok(())
    }

    /// Sets a new password and clears every pending one-time token, as a
    /// password change must.
    pub async fn set_password(
        &mut self,
        user_id: Uuid,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        on!(tx self, c => sqlx::query(
            "UPDATE users SET encrypted_password = $2, updated_at = $3, confirmation_token = '', recovery_token = '', \
             email_change_token_new = '', email_change_token_current = '', phone_change_token = '', \
             reauthentication_token = '', confirmation_sent_at = NULL, recovery_sent_at = NULL, \
             email_change_sent_at = NULL, phone_change_sent_at = NULL, reauthentication_sent_at = NULL WHERE id = $1")
            .bind(user_id).bind(hash).bind(now).execute(&mut *c).await.map(drop))?;
        count();
        on!(tx self, c => sqlx::query("DELETE FROM one_time_tokens WHERE user_id = $1")
            .bind(user_id).execute(&mut *c).await.map(drop))
    }

    /// Confirms an email (also marking `email_verified` in the metadata, as
    /// GoTrue does) or a phone.
    pub async fn confirm(
        &mut self,
        user_id: Uuid,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.touch(user_id);
        count();
        if provider == "email" {
            let user = self.user_by_id(user_id).await?;
            let mut meta = user
                .map(|u| u.user_metadata())
                .unwrap_or_else(|| serde_json::json!({}));
            meta["email_verified"] = Value::Bool(true);
            on!(tx self, c => sqlx::query("UPDATE users SET email_confirmed_at = $2, raw_user_meta_data = $3, updated_at = $2 WHERE id = $1")
                .bind(user_id).bind(now).bind(Json(&meta)).execute(&mut *c).await.map(drop))
        } else {
            on!(tx self, c => sqlx::query("UPDATE users SET phone_confirmed_at = $2, updated_at = $2 WHERE id = $1")
                .bind(user_id).bind(now).execute(&mut *c).await.map(drop))
        }
    }
}
