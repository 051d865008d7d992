-- castellan: every lookup by address is `lower(email) = $1`, which GoTrue's
-- `(instance_id, lower(email))` index cannot serve without `instance_id` in
-- the query: without this index a sign-in scans the whole table.
CREATE INDEX IF NOT EXISTS users_lower_email_idx ON auth.users (lower(email));
