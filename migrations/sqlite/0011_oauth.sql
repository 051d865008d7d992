-- External sign-in: the flow state columns GoTrue's OAuth round trip uses,
-- and the code verifiers of providers that want PKCE.
ALTER TABLE flow_state ADD COLUMN invite_token TEXT NULL;
ALTER TABLE flow_state ADD COLUMN referrer TEXT NULL;
ALTER TABLE flow_state ADD COLUMN oauth_client_state_id BLOB NULL;
ALTER TABLE flow_state ADD COLUMN linking_target_id BLOB NULL;
ALTER TABLE flow_state ADD COLUMN email_optional INTEGER NOT NULL DEFAULT 0;
CREATE TABLE oauth_client_states (
    id BLOB NOT NULL PRIMARY KEY,
    provider_type TEXT NOT NULL,
    code_verifier TEXT NULL,
    created_at TEXT NOT NULL
);
