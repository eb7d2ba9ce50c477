-- A user row is pending until its registration event is recorded (issue
-- 14): login refuses a pending user whose event is not in the log, and a
-- pending row abandoned by a crash stops holding its email after a grace
-- period. Rows from before this migration are recorded users (NULL).
ALTER TABLE users ADD COLUMN pending_since INTEGER;

-- Client tokens (issue 14): long-lived tokens an admin creates for
-- embedding in a client app. scope 'seats' allows seat operations only;
-- licenses, when set, is a JSON array of the license ids it may use.
-- Login tokens have NULL token_id, scope, name and licenses.
ALTER TABLE api_tokens ADD COLUMN token_id text;
ALTER TABLE api_tokens ADD COLUMN scope text;
ALTER TABLE api_tokens ADD COLUMN name text;
ALTER TABLE api_tokens ADD COLUMN licenses text;
CREATE UNIQUE INDEX api_tokens_token_id ON api_tokens (token_id);
CREATE INDEX api_tokens_org_scope ON api_tokens (org_id, scope);
ALTER TABLE api_tokens ADD COLUMN created_by text;
