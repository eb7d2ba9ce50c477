-- Compacted events (docs/design.md §3, "Compact storage"): the older part
-- of the log as blocks of consecutive events, one zstd-compressed body
-- each, instead of one row per event. A block's body is already
-- compressed, so PostgreSQL stores it out of line without trying again.
CREATE TABLE event_blocks (
    partition      smallint NOT NULL,
    first_position bigint   NOT NULL,
    last_position  bigint   NOT NULL CHECK (last_position >= first_position),
    prev_hash      bytea    NOT NULL CHECK (octet_length(prev_hash) = 32),
    last_hash      bytea    NOT NULL CHECK (octet_length(last_hash) = 32),
    body           bytea    NOT NULL,
    PRIMARY KEY (partition, first_position)
);
ALTER TABLE event_blocks ALTER COLUMN body SET STORAGE EXTERNAL;

-- How readers find a block without a position: by a stream (upto: the last
-- stream version the block holds of it), an organization or a granted
-- session (upto: the last position it holds of them). `key` is the first
-- 8 bytes of SHA-256 of the key's text.
CREATE TABLE event_block_keys (
    key            bigint   NOT NULL,
    upto           bigint   NOT NULL,
    partition      smallint NOT NULL,
    first_position bigint   NOT NULL,
    PRIMARY KEY (key, upto, partition, first_position)
);

CREATE FUNCTION event_blocks_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'seatledger event blocks are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER event_blocks_no_update_delete BEFORE UPDATE OR DELETE ON event_blocks
    FOR EACH ROW EXECUTE FUNCTION event_blocks_are_append_only();
CREATE TRIGGER event_blocks_no_truncate BEFORE TRUNCATE ON event_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION event_blocks_are_append_only();
CREATE TRIGGER event_block_keys_no_update_delete BEFORE UPDATE OR DELETE ON event_block_keys
    FOR EACH ROW EXECUTE FUNCTION event_blocks_are_append_only();
CREATE TRIGGER event_block_keys_no_truncate BEFORE TRUNCATE ON event_block_keys
    FOR EACH STATEMENT EXECUTE FUNCTION event_blocks_are_append_only();

-- An event row may now leave `events`, but only into a block: a DELETE of
-- rows that no block covers is refused, as every UPDATE still is. Checked
-- once per statement, over the rows it removed.
DROP TRIGGER events_no_update_delete ON events;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

CREATE FUNCTION events_leave_only_into_blocks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM gone g
        WHERE NOT EXISTS (
            SELECT 1 FROM (
                SELECT b.last_position FROM event_blocks b
                WHERE b.partition = g.partition AND b.first_position <= g.position
                ORDER BY b.first_position DESC LIMIT 1
            ) covering
            WHERE covering.last_position >= g.position
        )
    ) THEN
        RAISE EXCEPTION 'seatledger events are append-only: DELETE is not allowed'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER events_leave_only_into_blocks AFTER DELETE ON events
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION events_leave_only_into_blocks();
