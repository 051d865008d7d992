-- Multi-factor authentication: GoTrue's challenges table (present already
-- in a database GoTrue made) and its rule that a user's named factors have
-- distinct names; castellan's own guard of each factor: the last time step
-- accepted (a code is used once) and wrong codes in a row (a lockout that
-- holds across processes).
CREATE TABLE IF NOT EXISTS auth.mfa_challenges (
    id uuid NOT NULL PRIMARY KEY,
    factor_id uuid NOT NULL REFERENCES auth.mfa_factors(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    verified_at timestamptz NULL,
    ip_address inet NOT NULL,
    otp_code text NULL,
    web_authn_session_data jsonb NULL
);
CREATE INDEX IF NOT EXISTS mfa_challenge_created_at_idx ON auth.mfa_challenges (created_at DESC);
CREATE UNIQUE INDEX IF NOT EXISTS mfa_factors_user_friendly_name_unique
    ON auth.mfa_factors (friendly_name, user_id) WHERE trim(friendly_name) <> '';

CREATE TABLE IF NOT EXISTS auth.castellan_factor_guard (
    factor_id uuid NOT NULL PRIMARY KEY REFERENCES auth.mfa_factors(id) ON DELETE CASCADE,
    last_step bigint NULL,
    failures integer NOT NULL DEFAULT 0,
    locked_until timestamptz NULL
);
