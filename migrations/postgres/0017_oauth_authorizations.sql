-- castellan as an OAuth 2.1 server: the authorization requests a browser
-- brings to the consent page, and the consents users gave (GoTrue's tables,
-- present already in a database a recent GoTrue made). castellan keeps an
-- approved request's code as its SHA-256, never the code itself, and
-- remembers the session its exchange started, so a replayed code ends it.
DO $$ BEGIN
    CREATE TYPE auth.oauth_authorization_status AS ENUM ('pending', 'approved', 'denied', 'expired');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
    CREATE TYPE auth.oauth_response_type AS ENUM ('code');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE IF NOT EXISTS auth.oauth_authorizations (
    id uuid NOT NULL PRIMARY KEY,
    authorization_id text NOT NULL UNIQUE,
    client_id uuid NOT NULL REFERENCES auth.oauth_clients(id) ON DELETE CASCADE,
    user_id uuid NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    redirect_uri text NOT NULL CHECK (char_length(redirect_uri) <= 2048),
    scope text NOT NULL CHECK (char_length(scope) <= 4096),
    state text NULL CHECK (char_length(state) <= 4096),
    resource text NULL CHECK (char_length(resource) <= 2048),
    code_challenge text NULL CHECK (char_length(code_challenge) <= 128),
    code_challenge_method auth.code_challenge_method NULL,
    response_type auth.oauth_response_type NOT NULL DEFAULT 'code',
    status auth.oauth_authorization_status NOT NULL DEFAULT 'pending',
    authorization_code text NULL UNIQUE CHECK (char_length(authorization_code) <= 255),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL DEFAULT (now() + interval '3 minutes'),
    approved_at timestamptz NULL,
    nonce text NULL CHECK (char_length(nonce) <= 255),
    CONSTRAINT oauth_authorizations_expires_at_future CHECK (expires_at > created_at)
);
ALTER TABLE auth.oauth_authorizations ADD COLUMN IF NOT EXISTS nonce text NULL CHECK (char_length(nonce) <= 255);
ALTER TABLE auth.oauth_authorizations ADD COLUMN IF NOT EXISTS castellan_auth_time timestamptz NULL;
ALTER TABLE auth.oauth_authorizations ADD COLUMN IF NOT EXISTS castellan_session_id uuid NULL;
CREATE INDEX IF NOT EXISTS oauth_auth_pending_exp_idx ON auth.oauth_authorizations (expires_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS oauth_authorizations_expires_at_idx ON auth.oauth_authorizations (expires_at);

CREATE TABLE IF NOT EXISTS auth.oauth_consents (
    id uuid NOT NULL PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    client_id uuid NOT NULL REFERENCES auth.oauth_clients(id) ON DELETE CASCADE,
    scopes text NOT NULL CHECK (char_length(scopes) <= 2048) CHECK (char_length(trim(scopes)) > 0),
    granted_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz NULL CHECK (revoked_at IS NULL OR revoked_at >= granted_at),
    CONSTRAINT oauth_consents_user_client_unique UNIQUE (user_id, client_id)
);
CREATE INDEX IF NOT EXISTS oauth_consents_active_user_client_idx ON auth.oauth_consents (user_id, client_id) WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS oauth_consents_user_order_idx ON auth.oauth_consents (user_id, granted_at DESC);
CREATE INDEX IF NOT EXISTS oauth_consents_active_client_idx ON auth.oauth_consents (client_id) WHERE revoked_at IS NULL;

-- A session an OAuth client's code started names the client and its scopes.
CREATE INDEX IF NOT EXISTS sessions_oauth_client_id_idx ON auth.sessions (oauth_client_id);
