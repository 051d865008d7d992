-- WebAuthn second factors: GoTrue's columns of a factor's credential (its
-- PostgreSQL schema has them from the start).
ALTER TABLE mfa_factors ADD COLUMN web_authn_credential TEXT NULL;
ALTER TABLE mfa_factors ADD COLUMN web_authn_aaguid BLOB NULL;
