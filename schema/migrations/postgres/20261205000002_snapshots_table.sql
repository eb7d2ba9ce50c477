-- Snapshots move out of `streams` into a table of their own (issue 12).
-- The appender updates a stream's `streams` row in every batch that touches
-- it; a large snapshot (a license of 100,000 live leases: ~20 MB) written in
-- that row held the batch, and everyone queued behind it, for as long as
-- the write took. In a table of its own, a large snapshot is written after
-- its batch committed, by another connection, while the next batches go on:
-- a snapshot is valid at its version whenever it lands, and a write never
-- replaces a later snapshot with an earlier one.
CREATE TABLE snapshots (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL,
    -- The state as the JSON text the appender wrote (see
    -- 20261205000001_snapshots_as_text.sql: stored out of line, uncompressed).
    state     text   NOT NULL
);
ALTER TABLE snapshots ALTER COLUMN state SET STORAGE EXTERNAL;

INSERT INTO snapshots (stream_id, version, state)
    SELECT stream_id, snapshot_version, state FROM streams
    WHERE snapshot_version IS NOT NULL AND state IS NOT NULL;

ALTER TABLE streams DROP COLUMN snapshot_version, DROP COLUMN state;
