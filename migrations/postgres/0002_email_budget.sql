-- castellan's global email budget (GOTRUE_RATE_LIMIT_EMAIL_SENT), kept in the
-- database so that every castellan process sharing it draws on one budget.
CREATE TABLE IF NOT EXISTS auth.castellan_email_budget (
    id smallint NOT NULL PRIMARY KEY CHECK (id = 1),
    window_start timestamptz NOT NULL,
    sent integer NOT NULL
);
INSERT INTO auth.castellan_email_budget (id, window_start, sent) VALUES (1, now(), 0) ON CONFLICT (id) DO NOTHING;
