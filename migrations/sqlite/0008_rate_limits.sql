-- castellan: rate limits changed while running (see the PostgreSQL migration).
CREATE TABLE castellan_rate_limits (
    name TEXT NOT NULL PRIMARY KEY,
    events INTEGER NOT NULL CHECK (events >= 0),
    updated_at TEXT NOT NULL
);
