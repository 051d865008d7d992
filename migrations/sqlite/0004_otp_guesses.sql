-- castellan: wrong codes typed against a user's outstanding one-time token,
-- per token type. Past the limit the token is void; a new token starts the
-- count again.
CREATE TABLE castellan_otp_guesses (
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_type TEXT NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (user_id, token_type)
);
