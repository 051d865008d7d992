-- Per-client rate limits shared by every API process (issue 35): one row per
-- bucket and client key, holding the GCRA "theoretical arrival time" in
-- microseconds since the epoch. Processes lease a few requests' allowance at
-- a time from it and give back what they did not use; a row whose time has
-- passed is a full bucket, and the expiry sweep deletes it.
CREATE TABLE IF NOT EXISTS auth.castellan_rate_windows (
    -- `<bucket>:<client key>`.
    id TEXT NOT NULL PRIMARY KEY,
    tat BIGINT NOT NULL,
    -- How many requests the last lease granted (read back by the lease).
    granted BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS castellan_rate_windows_tat_idx ON auth.castellan_rate_windows (tat);
