-- Segments (docs/design.md §3, "Segments, archives and pruning"): the log
-- of a partition is cut into segments, each ending at a signed checkpoint.
-- The open segment has no last position yet; the compactor seals it at the
-- first checkpoint at or after its target size. A pruned segment's blocks
-- have left the database for an archive file whose SHA-256 is kept here
-- (and in the log, as a LogPruned event).
CREATE TABLE event_segments (
    partition      smallint NOT NULL,
    segment        bigint   NOT NULL CHECK (segment >= 1),
    first_position bigint   NOT NULL CHECK (first_position >= 1),
    last_position  bigint   CHECK (last_position >= first_position),
    archive_sha256 bytea    CHECK (octet_length(archive_sha256) = 32),
    pruned_at      text,
    PRIMARY KEY (partition, segment),
    CHECK (pruned_at IS NULL OR (last_position IS NOT NULL AND archive_sha256 IS NOT NULL))
);

-- Blocks and their keys become tables partitioned by segment, so a pruned
-- segment leaves by DETACH and DROP of its own tables: no DELETE ever runs
-- on a block. Each segment's tables are created when the segment opens.
ALTER TABLE event_blocks RENAME TO event_blocks_unsegmented;
ALTER INDEX event_blocks_pkey RENAME TO event_blocks_unsegmented_pkey;
ALTER TABLE event_block_keys RENAME TO event_block_keys_unsegmented;
ALTER INDEX event_block_keys_pkey RENAME TO event_block_keys_unsegmented_pkey;

CREATE TABLE event_blocks (
    partition      smallint NOT NULL,
    segment        bigint   NOT NULL,
    first_position bigint   NOT NULL,
    last_position  bigint   NOT NULL CHECK (last_position >= first_position),
    prev_hash      bytea    NOT NULL CHECK (octet_length(prev_hash) = 32),
    last_hash      bytea    NOT NULL CHECK (octet_length(last_hash) = 32),
    body           bytea    NOT NULL,
    PRIMARY KEY (partition, first_position, segment)
) PARTITION BY RANGE (partition, segment);

CREATE TABLE event_block_keys (
    key            bigint   NOT NULL,
    upto           bigint   NOT NULL,
    partition      smallint NOT NULL,
    first_position bigint   NOT NULL,
    segment        bigint   NOT NULL,
    PRIMARY KEY (key, upto, partition, first_position, segment)
) PARTITION BY RANGE (partition, segment);

CREATE TRIGGER event_blocks_no_update_delete BEFORE UPDATE OR DELETE ON event_blocks
    FOR EACH ROW EXECUTE FUNCTION event_blocks_are_append_only();
CREATE TRIGGER event_blocks_no_truncate BEFORE TRUNCATE ON event_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION event_blocks_are_append_only();
CREATE TRIGGER event_block_keys_no_update_delete BEFORE UPDATE OR DELETE ON event_block_keys
    FOR EACH ROW EXECUTE FUNCTION event_blocks_are_append_only();
CREATE TRIGGER event_block_keys_no_truncate BEFORE TRUNCATE ON event_block_keys
    FOR EACH STATEMENT EXECUTE FUNCTION event_blocks_are_append_only();

-- The tables of one segment: partitions of both, each refusing TRUNCATE
-- (row triggers are inherited from the parent; statement ones are not).
CREATE FUNCTION seatledger_open_segment_tables(p smallint, s bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    blocks text := format('event_blocks_%s_%s', p, s);
    keys   text := format('event_block_keys_%s_%s', p, s);
BEGIN
    IF to_regclass(blocks) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF event_blocks FOR VALUES FROM (%s, %s) TO (%s, %s)',
                       blocks, p, s, p, s + 1);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN body SET STORAGE EXTERNAL', blocks);
        EXECUTE format('CREATE TRIGGER no_truncate BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION event_blocks_are_append_only()', blocks);
    END IF;
    IF to_regclass(keys) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF event_block_keys FOR VALUES FROM (%s, %s) TO (%s, %s)',
                       keys, p, s, p, s + 1);
        EXECUTE format('CREATE TRIGGER no_truncate BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION event_blocks_are_append_only()', keys);
    END IF;
END;
$$;

-- Blocks compacted before segments existed belong to each partition's
-- first segment, which stays open until a checkpoint after them seals it.
INSERT INTO event_segments (partition, segment, first_position)
SELECT DISTINCT partition, 1, 1 FROM event_blocks_unsegmented;
SELECT seatledger_open_segment_tables(partition, 1) FROM event_segments;
INSERT INTO event_blocks (partition, segment, first_position, last_position, prev_hash, last_hash, body)
SELECT partition, 1, first_position, last_position, prev_hash, last_hash, body FROM event_blocks_unsegmented;
INSERT INTO event_block_keys (key, upto, partition, first_position, segment)
SELECT key, upto, partition, first_position, 1 FROM event_block_keys_unsegmented;
DROP TABLE event_blocks_unsegmented;
DROP TABLE event_block_keys_unsegmented;

-- A segment's bounds never move once sealed, and a pruned one stays pruned.
CREATE FUNCTION event_segments_stay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR OLD.pruned_at IS NOT NULL
       OR (OLD.last_position IS NOT NULL AND NEW.last_position IS DISTINCT FROM OLD.last_position)
       OR NEW.first_position <> OLD.first_position THEN
        RAISE EXCEPTION 'seatledger segments: a sealed segment cannot move and a pruned one stays pruned'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER event_segments_stay BEFORE UPDATE OR DELETE ON event_segments
    FOR EACH ROW EXECUTE FUNCTION event_segments_stay();

-- Sessions granted in a pruned segment that were still live when it was
-- pruned: the session lookup of a heartbeat finds them here once their
-- SeatAcquired has left the database.
CREATE TABLE pruned_sessions (
    session_id uuid NOT NULL PRIMARY KEY,
    stream_id  text NOT NULL,
    tenant_id  uuid NOT NULL
);
