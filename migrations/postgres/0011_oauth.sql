-- External sign-in: GoTrue's table of code verifiers for providers that
-- want PKCE (present already on an adopted GoTrue database).
CREATE TABLE IF NOT EXISTS auth.oauth_client_states (
    id uuid NOT NULL PRIMARY KEY,
    provider_type text NOT NULL,
    code_verifier text NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_oauth_client_states_created_at ON auth.oauth_client_states (created_at);
