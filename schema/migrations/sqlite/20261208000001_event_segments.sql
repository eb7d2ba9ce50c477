-- Segments (see PostgreSQL's). SQLite has no partitioned tables: a block
-- carries its segment, and the only DELETE a block (or a block key)
-- allows is of a segment already marked pruned, in the transaction that
-- marks it. The pages it frees are reused by later blocks, so the file
-- stops growing at the retention window.
CREATE TABLE event_segments (
    partition      INTEGER NOT NULL,
    segment        INTEGER NOT NULL CHECK (segment >= 1),
    first_position INTEGER NOT NULL CHECK (first_position >= 1),
    last_position  INTEGER CHECK (last_position >= first_position),
    archive_sha256 BLOB    CHECK (length(archive_sha256) = 32),
    pruned_at      TEXT,
    PRIMARY KEY (partition, segment),
    CHECK (pruned_at IS NULL OR (last_position IS NOT NULL AND archive_sha256 IS NOT NULL))
);

ALTER TABLE event_blocks ADD COLUMN segment INTEGER NOT NULL DEFAULT 1;
ALTER TABLE event_block_keys ADD COLUMN segment INTEGER NOT NULL DEFAULT 1;
CREATE INDEX event_blocks_by_segment ON event_blocks (partition, segment);
CREATE INDEX event_block_keys_by_segment ON event_block_keys (partition, segment);

INSERT INTO event_segments (partition, segment, first_position)
SELECT DISTINCT partition, 1, 1 FROM event_blocks;

DROP TRIGGER event_blocks_no_delete;
CREATE TRIGGER event_blocks_no_delete BEFORE DELETE ON event_blocks
WHEN NOT EXISTS (
    SELECT 1 FROM event_segments s
    WHERE s.partition = OLD.partition AND s.segment = OLD.segment AND s.pruned_at IS NOT NULL
)
BEGIN
    SELECT RAISE(ABORT, 'seatledger event blocks are append-only: DELETE is not allowed');
END;
DROP TRIGGER event_block_keys_no_delete;
CREATE TRIGGER event_block_keys_no_delete BEFORE DELETE ON event_block_keys
WHEN NOT EXISTS (
    SELECT 1 FROM event_segments s
    WHERE s.partition = OLD.partition AND s.segment = OLD.segment AND s.pruned_at IS NOT NULL
)
BEGIN
    SELECT RAISE(ABORT, 'seatledger event blocks are append-only: DELETE is not allowed');
END;
-- A segment's bounds never move once sealed, and a pruned one stays pruned.
CREATE TRIGGER event_segments_sealed BEFORE UPDATE ON event_segments
WHEN OLD.pruned_at IS NOT NULL
  OR (OLD.last_position IS NOT NULL AND NEW.last_position IS NOT OLD.last_position)
  OR NEW.first_position IS NOT OLD.first_position
BEGIN
    SELECT RAISE(ABORT, 'seatledger segments: a sealed segment cannot move and a pruned one stays pruned');
END;
CREATE TRIGGER event_segments_no_delete BEFORE DELETE ON event_segments
BEGIN
    SELECT RAISE(ABORT, 'seatledger segments cannot be deleted');
END;

-- Sessions granted in a pruned segment that were still live when it was
-- pruned: the session lookup of a heartbeat finds them here once their
-- SeatAcquired has left the database.
CREATE TABLE pruned_sessions (
    session_id TEXT NOT NULL PRIMARY KEY,
    stream_id  TEXT NOT NULL,
    tenant_id  TEXT NOT NULL
);
