-- castellan's global email budget (GOTRUE_RATE_LIMIT_EMAIL_SENT).
CREATE TABLE castellan_email_budget (
    id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    window_start TEXT NOT NULL,
    sent INTEGER NOT NULL
);
INSERT INTO castellan_email_budget (id, window_start, sent) VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 0);
