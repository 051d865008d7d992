-- Web3 sign-in: each signed message is accepted once (GoTrue keeps none and
-- accepts a message again until its validity window ends). A row lives
-- until that window has passed; the expiry sweep deletes it then.
CREATE TABLE IF NOT EXISTS auth.castellan_web3_messages (
    -- The SHA-256 of the message, hex.
    id TEXT NOT NULL PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS castellan_web3_messages_expires_at_idx ON auth.castellan_web3_messages (expires_at);
