-- castellan as an OAuth 2.1 server: the registered clients, GoTrue's table.
-- A client's id is its public client_id; a confidential client's secret is
-- kept as its SHA-256.
CREATE TABLE oauth_clients (
    id BLOB NOT NULL PRIMARY KEY,
    client_secret_hash TEXT NULL,
    registration_type TEXT NOT NULL CHECK (registration_type IN ('dynamic', 'manual')),
    redirect_uris TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    client_name TEXT NULL CHECK (length(client_name) <= 1024),
    client_uri TEXT NULL CHECK (length(client_uri) <= 2048),
    logo_uri TEXT NULL CHECK (length(logo_uri) <= 2048),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT NULL,
    client_type TEXT NOT NULL DEFAULT 'confidential' CHECK (client_type IN ('public', 'confidential')),
    token_endpoint_auth_method TEXT NOT NULL
        CHECK (token_endpoint_auth_method IN ('client_secret_basic', 'client_secret_post', 'none'))
);
CREATE INDEX oauth_clients_deleted_at_idx ON oauth_clients (deleted_at);
