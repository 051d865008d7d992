-- A wrong email- or phone-change code is counted against the changes
-- outstanding to the address it was typed with: found by `relates_to`
-- (PostgreSQL has GoTrue's hash index on it already).
CREATE INDEX IF NOT EXISTS one_time_tokens_relates_to_idx ON one_time_tokens (relates_to);
