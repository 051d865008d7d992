-- The expiry sweep finds dead one-time tokens by age; the other kinds it
-- sweeps already have GoTrue's indexes.
CREATE INDEX IF NOT EXISTS one_time_tokens_created_at_idx ON auth.one_time_tokens (created_at);
