-- castellan: signing keys kept in the database (`castellan keys add`,
-- `promote`, `retire`), beside GOTRUE_JWT_KEYS, so every process sharing the
-- database picks a change up without a restart. `jwk` is the private JWK,
-- sealed when database encryption is on.
CREATE TABLE IF NOT EXISTS auth.castellan_signing_keys (
    kid text NOT NULL PRIMARY KEY,
    jwk text NOT NULL,
    state text NOT NULL CHECK (state IN ('verify', 'sign', 'retired')),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
-- At most one signing key.
CREATE UNIQUE INDEX IF NOT EXISTS castellan_signing_keys_one_signer
    ON auth.castellan_signing_keys (state) WHERE state = 'sign';
