-- castellan's global SMS budget (GOTRUE_RATE_LIMIT_SMS_SENT).
CREATE TABLE castellan_sms_budget (
    id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    window_start TEXT NOT NULL,
    sent INTEGER NOT NULL
);
INSERT INTO castellan_sms_budget (id, window_start, sent) VALUES (1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 0);
CREATE INDEX castellan_users_phone_change_idx ON users (phone_change) WHERE phone_change <> '';
