-- GoTrue's v2 refresh tokens keep a per-session HMAC key and the last
-- counter issued on the session (GoTrue migration 20251007112900); an
-- adopted GoTrue database older than that gets them here.
ALTER TABLE auth.sessions ADD COLUMN IF NOT EXISTS refresh_token_hmac_key text NULL;
ALTER TABLE auth.sessions ADD COLUMN IF NOT EXISTS refresh_token_counter bigint NULL;
