-- v2 refresh tokens: the session's HMAC key (base64url) and the last
-- counter issued; no refresh_tokens rows are written for them.
ALTER TABLE sessions ADD COLUMN refresh_token_hmac_key TEXT NULL;
ALTER TABLE sessions ADD COLUMN refresh_token_counter INTEGER NULL;
