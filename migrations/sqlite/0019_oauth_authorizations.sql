-- castellan as an OAuth 2.1 server: the authorization requests a browser
-- brings to the consent page, the consents users gave (GoTrue's tables), and
-- the client and scopes of a session an OAuth client's code started. An
-- approved request's code is kept as its SHA-256, never the code itself.
CREATE TABLE oauth_authorizations (
    id BLOB NOT NULL PRIMARY KEY,
    authorization_id TEXT NOT NULL UNIQUE,
    client_id BLOB NOT NULL REFERENCES oauth_clients(id) ON DELETE CASCADE,
    user_id BLOB NULL REFERENCES users(id) ON DELETE CASCADE,
    redirect_uri TEXT NOT NULL CHECK (length(redirect_uri) <= 2048),
    scope TEXT NOT NULL CHECK (length(scope) <= 4096),
    state TEXT NULL CHECK (length(state) <= 4096),
    resource TEXT NULL CHECK (length(resource) <= 2048),
    code_challenge TEXT NULL CHECK (length(code_challenge) <= 128),
    code_challenge_method TEXT NULL CHECK (code_challenge_method IN ('s256', 'plain')),
    response_type TEXT NOT NULL DEFAULT 'code' CHECK (response_type = 'code'),
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    authorization_code TEXT NULL UNIQUE CHECK (length(authorization_code) <= 255),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    approved_at TEXT NULL,
    nonce TEXT NULL CHECK (length(nonce) <= 255),
    castellan_auth_time TEXT NULL,
    castellan_session_id BLOB NULL
);
CREATE INDEX oauth_authorizations_expires_at_idx ON oauth_authorizations (expires_at);

CREATE TABLE oauth_consents (
    id BLOB NOT NULL PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    client_id BLOB NOT NULL REFERENCES oauth_clients(id) ON DELETE CASCADE,
    scopes TEXT NOT NULL CHECK (length(scopes) <= 2048 AND length(trim(scopes)) > 0),
    granted_at TEXT NOT NULL,
    revoked_at TEXT NULL,
    UNIQUE (user_id, client_id)
);
CREATE INDEX oauth_consents_user_order_idx ON oauth_consents (user_id, granted_at DESC);

ALTER TABLE sessions ADD COLUMN oauth_client_id BLOB NULL;
ALTER TABLE sessions ADD COLUMN scopes TEXT NULL CHECK (length(scopes) <= 4096);
CREATE INDEX sessions_oauth_client_id_idx ON sessions (oauth_client_id);
