-- Web3 sign-in: each signed message is accepted once (GoTrue keeps none and
-- accepts a message again until its validity window ends). A row lives
-- until that window has passed; the expiry sweep deletes it then.
CREATE TABLE castellan_web3_messages (
    -- The SHA-256 of the message, hex.
    id TEXT NOT NULL PRIMARY KEY,
    expires_at TEXT NOT NULL
);
CREATE INDEX castellan_web3_messages_expires_at_idx ON castellan_web3_messages (expires_at);
