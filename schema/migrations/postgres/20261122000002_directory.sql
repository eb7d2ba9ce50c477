-- Credentials and look-ups: ordinary tables, never the log (the log cannot
-- forget). Ids are text, times are microseconds since the epoch, so the
-- same statements serve PostgreSQL and SQLite.
CREATE TABLE users (
    user_id       text   PRIMARY KEY,
    org_id        text   NOT NULL,
    email         text   NOT NULL UNIQUE,
    password_hash text   NOT NULL,
    role          text   NOT NULL,
    created_at    bigint NOT NULL
);

-- Bearer tokens, stored as SHA-256 of the token.
CREATE TABLE api_tokens (
    token_hash bytea  PRIMARY KEY,
    user_id    text   NOT NULL,
    org_id     text   NOT NULL,
    role       text   NOT NULL,
    created_at bigint NOT NULL,
    revoked_at bigint
);

-- License keys, stored as SHA-256 of the key; also the per-org index of
-- licenses for listing.
CREATE TABLE license_keys (
    key_hash   bytea  PRIMARY KEY,
    license_id text   NOT NULL UNIQUE,
    org_id     text   NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX license_keys_org ON license_keys (org_id, created_at);
