-- Users can be deactivated (issue 14): login refused, tokens revoked,
-- leases released; the row stays so the email stays taken and events keep
-- naming a known user.
ALTER TABLE users ADD COLUMN deactivated_at bigint;
