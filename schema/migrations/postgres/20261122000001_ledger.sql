-- The log: append-only. Positions are gap-free per partition, in commit order.
CREATE TABLE events (
    partition      smallint    NOT NULL,
    position       bigint      NOT NULL,
    event_id       uuid        NOT NULL UNIQUE,
    stream_id      text        NOT NULL,
    stream_version bigint      NOT NULL,
    tenant_id      uuid        NOT NULL,
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL,
    payload        jsonb       NOT NULL,
    metadata       jsonb       NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    prev_hash      bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash           bytea       NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (partition, position),
    UNIQUE (stream_id, stream_version)
);

CREATE INDEX events_tenant_position ON events (tenant_id, partition, position);
-- Heartbeat and release name only a session: find its license.
CREATE INDEX events_session ON events ((payload->>'session_id')) WHERE event_type = 'SeatAcquired';

CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'seatledger events are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();

-- Each stream's current version, and a snapshot of its state taken when the
-- version crossed a multiple of 1,000 (snapshot_version says which).
CREATE TABLE streams (
    stream_id        text     PRIMARY KEY,
    partition        smallint NOT NULL,
    version          bigint   NOT NULL,
    snapshot_version bigint,
    state            jsonb
);

-- Ed25519 signatures over (partition, position, hash).
CREATE TABLE checkpoints (
    partition smallint    NOT NULL,
    position  bigint      NOT NULL,
    hash      bytea       NOT NULL,
    signed_at timestamptz NOT NULL,
    key_id    text        NOT NULL,
    signature bytea       NOT NULL,
    PRIMARY KEY (partition, position)
);

-- Where each follower (projection) has got to.
CREATE TABLE follower_checkpoints (
    follower   text        NOT NULL,
    partition  smallint    NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower, partition)
);

-- Idempotent commands: the result recorded with the events it produced.
CREATE TABLE commands (
    tenant_id    uuid        NOT NULL,
    command_id   text        NOT NULL,
    request_hash bytea       NOT NULL,
    result       jsonb       NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, command_id)
);

-- The ledger's Ed25519 signing key when none is given by file (PKCS#8).
CREATE TABLE signing_keys (
    key_id     text        PRIMARY KEY,
    pkcs8      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
