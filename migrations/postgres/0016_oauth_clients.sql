-- castellan as an OAuth 2.1 server: the registered clients, GoTrue's table
-- (present already in a database a recent GoTrue made). A client's id is its
-- public client_id; a confidential client's secret is kept as its SHA-256.
DO $$ BEGIN
    CREATE TYPE auth.oauth_registration_type AS ENUM ('dynamic', 'manual');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
    CREATE TYPE auth.oauth_client_type AS ENUM ('public', 'confidential');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE IF NOT EXISTS auth.oauth_clients (
    id uuid NOT NULL PRIMARY KEY,
    client_secret_hash text NULL,
    registration_type auth.oauth_registration_type NOT NULL,
    redirect_uris text NOT NULL,
    grant_types text NOT NULL,
    client_name text NULL CHECK (char_length(client_name) <= 1024),
    client_uri text NULL CHECK (char_length(client_uri) <= 2048),
    logo_uri text NULL CHECK (char_length(logo_uri) <= 2048),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz NULL,
    client_type auth.oauth_client_type NOT NULL DEFAULT 'confidential',
    token_endpoint_auth_method text NOT NULL
        CHECK (token_endpoint_auth_method IN ('client_secret_basic', 'client_secret_post', 'none'))
);
CREATE INDEX IF NOT EXISTS oauth_clients_deleted_at_idx ON auth.oauth_clients (deleted_at);

-- A table an earlier GoTrue made (an adopted database): brought to the
-- shape above, as GoTrue's own later migrations do.
ALTER TABLE auth.oauth_clients ALTER COLUMN client_secret_hash DROP NOT NULL;
ALTER TABLE auth.oauth_clients ADD COLUMN IF NOT EXISTS client_type auth.oauth_client_type NOT NULL DEFAULT 'confidential';
ALTER TABLE auth.oauth_clients DROP CONSTRAINT IF EXISTS oauth_clients_client_id_key;
DROP INDEX IF EXISTS auth.oauth_clients_client_id_idx;
ALTER TABLE auth.oauth_clients DROP COLUMN IF EXISTS client_id;
ALTER TABLE auth.oauth_clients ADD COLUMN IF NOT EXISTS token_endpoint_auth_method text
    CHECK (token_endpoint_auth_method IN ('client_secret_basic', 'client_secret_post', 'none'));
UPDATE auth.oauth_clients SET token_endpoint_auth_method =
    CASE WHEN client_type = 'public' THEN 'none' ELSE 'client_secret_basic' END
    WHERE token_endpoint_auth_method IS NULL;
ALTER TABLE auth.oauth_clients ALTER COLUMN token_endpoint_auth_method SET NOT NULL;
