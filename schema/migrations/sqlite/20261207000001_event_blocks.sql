-- Compacted events (docs/design.md §3, "Compact storage"): the older part
-- of the log as blocks of consecutive events, one zstd-compressed body
-- each, instead of one row per event.
CREATE TABLE event_blocks (
    partition      INTEGER NOT NULL,
    first_position INTEGER NOT NULL,
    last_position  INTEGER NOT NULL CHECK (last_position >= first_position),
    prev_hash      BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    last_hash      BLOB    NOT NULL CHECK (length(last_hash) = 32),
    body           BLOB    NOT NULL,
    PRIMARY KEY (partition, first_position)
);

-- How readers find a block without a position (see PostgreSQL's).
CREATE TABLE event_block_keys (
    key            INTEGER NOT NULL,
    upto           INTEGER NOT NULL,
    partition      INTEGER NOT NULL,
    first_position INTEGER NOT NULL,
    PRIMARY KEY (key, upto, partition, first_position)
) WITHOUT ROWID;

CREATE TRIGGER event_blocks_no_update BEFORE UPDATE ON event_blocks
BEGIN
    SELECT RAISE(ABORT, 'seatledger event blocks are append-only: UPDATE is not allowed');
END;
CREATE TRIGGER event_blocks_no_delete BEFORE DELETE ON event_blocks
BEGIN
    SELECT RAISE(ABORT, 'seatledger event blocks are append-only: DELETE is not allowed');
END;
CREATE TRIGGER event_block_keys_no_update BEFORE UPDATE ON event_block_keys
BEGIN
    SELECT RAISE(ABORT, 'seatledger event blocks are append-only: UPDATE is not allowed');
END;
CREATE TRIGGER event_block_keys_no_delete BEFORE DELETE ON event_block_keys
BEGIN
    SELECT RAISE(ABORT, 'seatledger event blocks are append-only: DELETE is not allowed');
END;

-- An event row may now leave `events`, but only into a block.
DROP TRIGGER events_no_delete;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN NOT EXISTS (
    SELECT 1 FROM event_blocks b
    WHERE b.partition = OLD.partition AND b.first_position <= OLD.position
      AND b.last_position >= OLD.position
)
BEGIN
    SELECT RAISE(ABORT, 'seatledger events are append-only: DELETE is not allowed');
END;
