-- Signed checkpoints are part of the log (issue 15): append-only, like
-- events.
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'seatledger checkpoints are append-only: UPDATE is not allowed');
END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'seatledger checkpoints are append-only: DELETE is not allowed');
END;
