-- castellan: rate limits changed while running (`PUT /admin/rate_limits`,
-- `castellan limits set`), one row per changed limit; every process sharing
-- the database applies them within a second. Unchanged limits keep their
-- GOTRUE_RATE_LIMIT_* value.
CREATE TABLE IF NOT EXISTS auth.castellan_rate_limits (
    name text NOT NULL PRIMARY KEY,
    events bigint NOT NULL CHECK (events >= 0),
    updated_at timestamptz NOT NULL
);
