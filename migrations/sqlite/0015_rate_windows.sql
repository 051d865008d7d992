-- Per-client rate limits shared by every process on this database (issue
-- 35; with SQLite only one serves, and its limits are kept in memory): one
-- row per bucket and client key, holding the GCRA "theoretical arrival
-- time" in microseconds since the epoch.
CREATE TABLE castellan_rate_windows (
    id TEXT NOT NULL PRIMARY KEY,
    tat INTEGER NOT NULL,
    granted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX castellan_rate_windows_tat_idx ON castellan_rate_windows (tat);
