-- Passkeys: GoTrue's tables (present already in a database a recent GoTrue
-- made), and castellan's column beside them: the credential as the
-- verifier keeps it (its COSE key parsed, its counter, its flags), JSON.
-- A row GoTrue registered has none: it is listed and can be deleted, and
-- signs in once registered again with castellan.
CREATE TABLE IF NOT EXISTS auth.webauthn_credentials (
    id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    credential_id bytea NOT NULL,
    public_key bytea NOT NULL,
    attestation_type text NOT NULL DEFAULT '',
    aaguid uuid,
    sign_count bigint NOT NULL DEFAULT 0,
    transports jsonb NOT NULL DEFAULT '[]'::jsonb,
    backup_eligible boolean NOT NULL DEFAULT false,
    backed_up boolean NOT NULL DEFAULT false,
    friendly_name text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS webauthn_credentials_credential_id_key
    ON auth.webauthn_credentials (credential_id);
CREATE INDEX IF NOT EXISTS webauthn_credentials_user_id_idx
    ON auth.webauthn_credentials (user_id);
ALTER TABLE auth.webauthn_credentials ADD COLUMN IF NOT EXISTS castellan_passkey text NULL;

-- A ceremony's challenge, between its options and its verification: taken
-- (deleted) by the one verification that uses it.
CREATE TABLE IF NOT EXISTS auth.webauthn_challenges (
    id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    user_id uuid REFERENCES auth.users (id) ON DELETE CASCADE,
    challenge_type text NOT NULL CHECK (challenge_type IN ('signup', 'registration', 'authentication')),
    session_data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS webauthn_challenges_user_id_idx ON auth.webauthn_challenges (user_id);
CREATE INDEX IF NOT EXISTS webauthn_challenges_expires_at_idx ON auth.webauthn_challenges (expires_at);
