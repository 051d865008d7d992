-- The expiry sweep finds dead rows by these columns: without an index each
-- batch scanned its whole table while holding SQLite's writer (seconds at a
-- million sessions, every request's write waiting behind it).
CREATE INDEX IF NOT EXISTS sessions_not_after_idx ON sessions (not_after);
CREATE INDEX IF NOT EXISTS refresh_tokens_updated_at_idx ON refresh_tokens (updated_at);
CREATE INDEX IF NOT EXISTS one_time_tokens_created_at_idx ON one_time_tokens (created_at);
CREATE INDEX IF NOT EXISTS flow_state_created_at_idx ON flow_state (created_at);
CREATE INDEX IF NOT EXISTS oauth_client_states_created_at_idx ON oauth_client_states (created_at);
