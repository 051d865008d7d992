-- castellan: every lookup by address is `lower(email) = $1`; without this
-- index a sign-in scans the whole table. (Phone lookups use the UNIQUE
-- constraint's index.)
CREATE INDEX users_lower_email_idx ON users (lower(email));
