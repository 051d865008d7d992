-- castellan: signing keys kept in the database (see the PostgreSQL migration).
CREATE TABLE castellan_signing_keys (
    kid TEXT NOT NULL PRIMARY KEY,
    jwk TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('verify', 'sign', 'retired')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX castellan_signing_keys_one_signer
    ON castellan_signing_keys (state) WHERE state = 'sign';
