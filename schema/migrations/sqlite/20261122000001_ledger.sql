-- The log: append-only. Same columns as PostgreSQL; uuids as text,
-- timestamps as microseconds since the Unix epoch, JSON as text.
CREATE TABLE events (
    partition      INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    event_id       TEXT    NOT NULL UNIQUE,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    tenant_id      TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        TEXT    NOT NULL,
    metadata       TEXT    NOT NULL,
    occurred_at    INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL,
    prev_hash      BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash           BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (partition, position),
    UNIQUE (stream_id, stream_version)
) WITHOUT ROWID;

CREATE INDEX events_tenant_position ON events (tenant_id, partition, position);
CREATE INDEX events_session ON events (json_extract(payload, '$.session_id')) WHERE event_type = 'SeatAcquired';

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'seatledger events are append-only: UPDATE is not allowed');
END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'seatledger events are append-only: DELETE is not allowed');
END;

CREATE TABLE streams (
    stream_id        TEXT    PRIMARY KEY,
    partition        INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    snapshot_version INTEGER,
    state            TEXT
);

CREATE TABLE checkpoints (
    partition INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    hash      BLOB    NOT NULL,
    signed_at INTEGER NOT NULL,
    key_id    TEXT    NOT NULL,
    signature BLOB    NOT NULL,
    PRIMARY KEY (partition, position)
);

CREATE TABLE follower_checkpoints (
    follower   TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (follower, partition)
);

CREATE TABLE commands (
    tenant_id    TEXT    NOT NULL,
    command_id   TEXT    NOT NULL,
    request_hash BLOB    NOT NULL,
    result       TEXT    NOT NULL,
    recorded_at  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, command_id)
);

CREATE TABLE signing_keys (
    key_id     TEXT    PRIMARY KEY,
    pkcs8      BLOB    NOT NULL,
    created_at INTEGER NOT NULL DEFAULT 0
);
