-- Signed checkpoints are part of the log (issue 15): append-only, like
-- events. Whoever holds the database can still drop these triggers; a
-- witness keeping the signed heads outside it (`seatledger-replay witness`)
-- is what catches that.
CREATE FUNCTION checkpoints_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'seatledger checkpoints are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER checkpoints_no_update_delete BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION checkpoints_are_append_only();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION checkpoints_are_append_only();
