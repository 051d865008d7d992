//! Where PostgreSQL and SQLite spell one statement differently, in one
//! place: a statement is written once, inside `on!(tx t, c, d => …)` (or
//! `pool`), and each difference is a `d!(…)` that `on!` expands with the
//! backend's spelling at compile time. Statements that differ in shape (a
//! data-modifying CTE against a SQLite batch) are still written per backend.
//!
//! The vocabulary, PostgreSQL's spelling first:
//! - `for_update`: ` FOR UPDATE` / nothing (SQLite's immediate transaction
//!   already holds the write lock);
//! - `ilike`: `ILIKE` / `LIKE` (SQLite's is case-blind for ASCII already);
//! - `greatest`, `least`: `GREATEST` / `MAX`, `LEAST` / `MIN` (of values);
//! - `now_micros`: the database's clock, µs since the epoch;
//! - `jobs`: the job queue's table; `now`: the database's clock in the
//!   queue's format (a timestamp / Unix seconds);
//! - `pg "…"`: text only PostgreSQL needs (`FOR UPDATE OF s`);
//! - `cast "type"`: `::type` / nothing (enums, `inet`, `bigint`, `text`);
//! - `json_text "col", "key"`: `col->>'key'` / `json_extract(col, '$.key')`;
//!   `json_is_true` tests that key for JSON true, `json_true` sets it;
//! - `in_list "col", "$n"`: `col` is one of the comma-separated names bound
//!   to `$n`;
//! - `epoch "col"`: a time column as Unix seconds (the queue's tables keep
//!   `timestamptz` on PostgreSQL, seconds on SQLite);
//! - `uuid_hex "col"`: a UUID column as 32 lowercase hex digits (SQLite
//!   keeps UUIDs as 16-byte blobs);
//! - `identities "owner"`, `factors "owner"`, `amr "session"`: a JSON
//!   array of the owner's rows, in GoTrue's order.

/// PostgreSQL's spelling of each `d!(…)`.
#[macro_export]
#[doc(hidden)]
macro_rules! pg_sql {
    (for_update) => {
        " FOR UPDATE"
    };
    (ilike) => {
        "ILIKE"
    };
    (greatest) => {
        "GREATEST"
    };
    (now_micros) => {
        "(extract(epoch from clock_timestamp()) * 1000000)::bigint"
    };
    (least) => {
        "LEAST"
    };
    (jobs) => {
        "apalis.jobs"
    };
    (now) => {
        "now()"
    };
    (epoch $col:literal) => {
        concat!("CAST(extract(epoch FROM ", $col, ") AS BIGINT)")
    };
    (uuid_hex $col:literal) => {
        concat!("replace(", $col, "::text, '-', '')")
    };
    (pg $text:literal) => {
        $text
    };
    (cast $ty:literal) => {
        concat!("::", $ty)
    };
    (json_text $col:literal, $key:literal) => {
        concat!($col, "->>'", $key, "'")
    };
    (json_is_true $col:literal, $key:literal) => {
        concat!($col, "->>'", $key, "' = 'true'")
    };
    (json_true $col:literal, $key:literal) => {
        concat!("jsonb_set(", $col, ", '{", $key, "}', 'true')")
    };
    (in_list $col:literal, $list:literal) => {
        concat!($col, "::text = ANY(string_to_array(", $list, ", ','))")
    };
    (identities $who:literal) => {
        concat!(
            "(SELECT coalesce(json_agg(json_build_object('id', i.id, 'provider_id', i.provider_id, \
              'user_id', i.user_id, 'identity_data', i.identity_data, 'provider', i.provider, \
              'last_sign_in_at', i.last_sign_in_at, 'created_at', i.created_at, 'updated_at', i.updated_at) \
              ORDER BY i.created_at, i.id), '[]'::json) FROM identities i WHERE i.user_id = ",
            $who,
            ".id)"
        )
    };
    (factors $who:literal) => {
        concat!(
            "(SELECT coalesce(json_agg(json_build_object('id', f.id, 'created_at', f.created_at, 'updated_at', f.updated_at, \
              'status', f.status, 'friendly_name', f.friendly_name, 'factor_type', f.factor_type, 'phone', f.phone, \
              'last_challenged_at', f.last_challenged_at) ORDER BY f.created_at, f.id), '[]'::json) \
              FROM mfa_factors f WHERE f.user_id = ",
            $who,
            ".id)"
        )
    };
    (amr $session:literal) => {
        concat!(
            "(SELECT coalesce(json_agg(json_build_object('method', a.authentication_method, 'at', a.updated_at) \
              ORDER BY a.updated_at DESC), '[]'::json) FROM mfa_amr_claims a WHERE a.session_id = ",
            $session,
            ".id)"
        )
    };
}

/// SQLite's spelling of each `d!(…)`.
#[macro_export]
#[doc(hidden)]
macro_rules! lite_sql {
    (for_update) => {
        ""
    };
    (ilike) => {
        "LIKE"
    };
    (greatest) => {
        "MAX"
    };
    (now_micros) => {
        "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)"
    };
    (least) => {
        "MIN"
    };
    (jobs) => {
        "Jobs"
    };
    (now) => {
        "strftime('%s', 'now')"
    };
    (epoch $col:literal) => {
        $col
    };
    (uuid_hex $col:literal) => {
        concat!("lower(hex(", $col, "))")
    };
    (pg $text:literal) => {
        ""
    };
    (cast $ty:literal) => {
        ""
    };
    (json_text $col:literal, $key:literal) => {
        concat!("json_extract(", $col, ", '$.", $key, "')")
    };
    (json_is_true $col:literal, $key:literal) => {
        concat!("json_extract(", $col, ", '$.", $key, "') IN (1, 'true')")
    };
    (json_true $col:literal, $key:literal) => {
        concat!("json_set(", $col, ", '$.", $key, "', json('true'))")
    };
    (in_list $col:literal, $list:literal) => {
        concat!("instr(',' || ", $list, " || ',', ',' || ", $col, " || ',') > 0")
    };
    (identities $who:literal) => {
        concat!(
            "(SELECT coalesce(json_group_array(json_object('id', lower(hex(i.id)), 'provider_id', i.provider_id, \
              'user_id', lower(hex(i.user_id)), 'identity_data', json(i.identity_data), 'provider', i.provider, \
              'last_sign_in_at', i.last_sign_in_at, 'created_at', i.created_at, 'updated_at', i.updated_at)), '[]') \
              FROM (SELECT * FROM identities WHERE user_id = ",
            $who,
            ".id ORDER BY created_at, id) i)"
        )
    };
    (factors $who:literal) => {
        concat!(
            "(SELECT coalesce(json_group_array(json_object('id', lower(hex(f.id)), 'created_at', f.created_at, \
              'updated_at', f.updated_at, 'status', f.status, 'friendly_name', f.friendly_name, 'factor_type', f.factor_type, \
              'phone', f.phone, 'last_challenged_at', f.last_challenged_at)), '[]') \
              FROM (SELECT * FROM mfa_factors WHERE user_id = ",
            $who,
            ".id ORDER BY created_at, id) f)"
        )
    };
    (amr $session:literal) => {
        concat!(
            "(SELECT coalesce(json_group_array(json_object('method', a.authentication_method, 'at', a.updated_at)), '[]') \
              FROM (SELECT * FROM mfa_amr_claims WHERE session_id = ",
            $session,
            ".id ORDER BY updated_at DESC) a)"
        )
    };
}
