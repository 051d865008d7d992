-- castellan: a change log of users, identities and sessions, written by
-- triggers inside the writing transaction, so every process sharing this
-- file (the server, `castellan admin`, `castellan worker`) can drop what its
-- session cache holds for a changed user. Servers poll it; the expiry sweep
-- prunes it.
CREATE TABLE castellan_cache_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BLOB NOT NULL,
    changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX castellan_cache_changes_changed_at_idx ON castellan_cache_changes (changed_at);

CREATE TRIGGER castellan_cache_users_update AFTER UPDATE ON users
BEGIN INSERT INTO castellan_cache_changes (user_id) VALUES (NEW.id); END;
CREATE TRIGGER castellan_cache_users_delete AFTER DELETE ON users
BEGIN INSERT INTO castellan_cache_changes (user_id) VALUES (OLD.id); END;

CREATE TRIGGER castellan_cache_identities_insert AFTER INSERT ON identities
BEGIN INSERT INTO castellan_cache_changes (user_id) VALUES (NEW.user_id); END;
CREATE TRIGGER castellan_cache_identities_update AFTER UPDATE ON identities
BEGIN INSERT INTO castellan_cache_changes (user_id) VALUES (NEW.user_id); END;
CREATE TRIGGER castellan_cache_identities_delete AFTER DELETE ON identities
BEGIN INSERT INTO castellan_cache_changes (user_id) VALUES (OLD.user_id); END;

-- A refresh touches refreshed_at/updated_at only: no record for that.
CREATE TRIGGER castellan_cache_sessions_update AFTER UPDATE OF not_after, aal, user_id ON sessions
BEGIN INSERT INTO castellan_cache_changes (user_id) VALUES (NEW.user_id); END;
CREATE TRIGGER castellan_cache_sessions_delete AFTER DELETE ON sessions
BEGIN INSERT INTO castellan_cache_changes (user_id) VALUES (OLD.user_id); END;
