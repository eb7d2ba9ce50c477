-- API tokens expire (issue 14): tokens issued before this migration get
-- 30 days from their creation. Revocation already exists (revoked_at).
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
UPDATE api_tokens SET expires_at = created_at + 2592000000000 WHERE expires_at IS NULL;
CREATE INDEX api_tokens_user ON api_tokens (user_id);
