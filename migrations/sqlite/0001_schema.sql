-- The embedded default: GoTrue's core tables with SQLite types. UUIDs are
-- 16-byte blobs, timestamps RFC 3339 text, JSON text.

CREATE TABLE users (
    instance_id BLOB NULL,
    id BLOB NOT NULL PRIMARY KEY,
    aud TEXT NULL,
    "role" TEXT NULL,
    email TEXT NULL,
    encrypted_password TEXT NULL,
    email_confirmed_at TEXT NULL,
    invited_at TEXT NULL,
    confirmation_token TEXT NULL,
    confirmation_sent_at TEXT NULL,
    recovery_token TEXT NULL,
    recovery_sent_at TEXT NULL,
    email_change_token_new TEXT NULL,
    email_change TEXT NULL,
    email_change_sent_at TEXT NULL,
    last_sign_in_at TEXT NULL,
    raw_app_meta_data TEXT NULL,
    raw_user_meta_data TEXT NULL,
    is_super_admin INTEGER NULL,
    created_at TEXT NULL,
    updated_at TEXT NULL,
    phone TEXT NULL UNIQUE,
    phone_confirmed_at TEXT NULL,
    phone_change TEXT NULL DEFAULT '',
    phone_change_token TEXT NULL DEFAULT '',
    phone_change_sent_at TEXT NULL,
    email_change_token_current TEXT NULL DEFAULT '',
    email_change_confirm_status INTEGER NULL DEFAULT 0
        CHECK (email_change_confirm_status >= 0 AND email_change_confirm_status <= 2),
    banned_until TEXT NULL,
    reauthentication_token TEXT NULL DEFAULT '',
    reauthentication_sent_at TEXT NULL,
    is_sso_user INTEGER NOT NULL DEFAULT 0,
    deleted_at TEXT NULL,
    is_anonymous INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX users_email_partial_key ON users (email) WHERE is_sso_user = 0;
CREATE INDEX users_is_anonymous_idx ON users (is_anonymous);

CREATE TABLE identities (
    provider_id TEXT NOT NULL,
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    identity_data TEXT NOT NULL,
    provider TEXT NOT NULL,
    last_sign_in_at TEXT NULL,
    created_at TEXT NULL,
    updated_at TEXT NULL,
    email TEXT GENERATED ALWAYS AS (lower(json_extract(identity_data, '$.email'))) STORED,
    id BLOB NOT NULL PRIMARY KEY,
    UNIQUE (provider_id, provider)
);
CREATE INDEX identities_email_idx ON identities (email);
CREATE INDEX identities_user_id_idx ON identities (user_id);

CREATE TABLE sessions (
    id BLOB NOT NULL PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TEXT NULL,
    updated_at TEXT NULL,
    factor_id BLOB NULL,
    aal TEXT NULL CHECK (aal IN ('aal1', 'aal2', 'aal3')),
    not_after TEXT NULL,
    refreshed_at TEXT NULL,
    user_agent TEXT NULL,
    ip TEXT NULL,
    tag TEXT NULL
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);

CREATE TABLE refresh_tokens (
    instance_id BLOB NULL,
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    "token" TEXT NULL UNIQUE,
    user_id TEXT NULL,
    revoked INTEGER NULL,
    created_at TEXT NULL,
    updated_at TEXT NULL,
    parent TEXT NULL,
    session_id BLOB NULL REFERENCES sessions(id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_parent_idx ON refresh_tokens (parent);
CREATE INDEX refresh_tokens_session_id_revoked_idx ON refresh_tokens (session_id, revoked);

CREATE TABLE mfa_amr_claims (
    session_id BLOB NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    authentication_method TEXT NOT NULL,
    id BLOB NOT NULL PRIMARY KEY,
    UNIQUE (session_id, authentication_method)
);

CREATE TABLE mfa_factors (
    id BLOB NOT NULL PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    friendly_name TEXT NULL,
    factor_type TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    secret TEXT NULL,
    phone TEXT NULL,
    last_challenged_at TEXT NULL UNIQUE
);

CREATE TABLE one_time_tokens (
    id BLOB NOT NULL PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_type TEXT NOT NULL,
    token_hash TEXT NOT NULL CHECK (length(token_hash) > 0),
    relates_to TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (user_id, token_type)
);
CREATE INDEX one_time_tokens_token_hash_idx ON one_time_tokens (token_hash);

CREATE TABLE flow_state (
    id BLOB NOT NULL PRIMARY KEY,
    user_id BLOB NULL,
    auth_code TEXT NULL,
    code_challenge_method TEXT NULL,
    code_challenge TEXT NULL,
    provider_type TEXT NOT NULL,
    provider_access_token TEXT NULL,
    provider_refresh_token TEXT NULL,
    created_at TEXT NULL,
    updated_at TEXT NULL,
    authentication_method TEXT NOT NULL,
    auth_code_issued_at TEXT NULL
);
CREATE INDEX idx_auth_code ON flow_state (auth_code);

CREATE TABLE audit_log_entries (
    instance_id BLOB NULL,
    id BLOB NOT NULL PRIMARY KEY,
    payload TEXT NULL,
    created_at TEXT NULL,
    ip_address TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_entries_created_at_idx ON audit_log_entries (created_at);
