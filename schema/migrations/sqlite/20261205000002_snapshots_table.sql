-- Snapshots move out of `streams` into a table of their own, as on
-- PostgreSQL (see its migration of the same name). SQLite still writes them
-- in the batch's transaction: it has one writer at a time, so a write on
-- another connection would hold the appender all the same.
CREATE TABLE snapshots (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL,
    state     TEXT    NOT NULL
);

INSERT INTO snapshots (stream_id, version, state)
    SELECT stream_id, snapshot_version, state FROM streams
    WHERE snapshot_version IS NOT NULL AND state IS NOT NULL;

ALTER TABLE streams DROP COLUMN snapshot_version;
ALTER TABLE streams DROP COLUMN state;
