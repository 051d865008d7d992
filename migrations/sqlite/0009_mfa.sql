-- Multi-factor authentication: GoTrue's challenges table, distinct factor
-- names per user, and castellan's guard of each factor (the last time step
-- accepted, wrong codes in a row, a lockout).
CREATE TABLE mfa_challenges (
    id BLOB NOT NULL PRIMARY KEY,
    factor_id BLOB NOT NULL REFERENCES mfa_factors(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    verified_at TEXT NULL,
    ip_address TEXT NOT NULL,
    otp_code TEXT NULL,
    web_authn_session_data TEXT NULL
);
CREATE INDEX mfa_challenge_created_at_idx ON mfa_challenges (created_at);
CREATE INDEX mfa_factors_user_id_idx ON mfa_factors (user_id);
CREATE UNIQUE INDEX mfa_factors_user_friendly_name_unique
    ON mfa_factors (friendly_name, user_id) WHERE trim(friendly_name) <> '';

CREATE TABLE castellan_factor_guard (
    factor_id BLOB NOT NULL PRIMARY KEY REFERENCES mfa_factors(id) ON DELETE CASCADE,
    last_step INTEGER NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until TEXT NULL
);
