-- castellan: wrong codes typed against a user's outstanding one-time token,
-- per token type. Past the limit the token is void; a new token starts the
-- count again. In the database so the limit holds across processes.
CREATE TABLE IF NOT EXISTS auth.castellan_otp_guesses (
    user_id uuid NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    token_type text NOT NULL,
    failures integer NOT NULL,
    PRIMARY KEY (user_id, token_type)
);
