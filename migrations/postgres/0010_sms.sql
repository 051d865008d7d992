-- castellan's global SMS budget (GOTRUE_RATE_LIMIT_SMS_SENT), shared by every
-- process on this database as the email budget is.
CREATE TABLE IF NOT EXISTS auth.castellan_sms_budget (
    id smallint NOT NULL PRIMARY KEY CHECK (id = 1),
    window_start timestamptz NOT NULL,
    sent integer NOT NULL
);
INSERT INTO auth.castellan_sms_budget (id, window_start, sent) VALUES (1, now(), 0) ON CONFLICT (id) DO NOTHING;
CREATE INDEX IF NOT EXISTS castellan_users_phone_change_idx ON auth.users (phone_change) WHERE phone_change <> '';
