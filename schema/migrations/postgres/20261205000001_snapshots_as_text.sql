-- Snapshots are stored as the JSON text the appender wrote, out of line and
-- uncompressed (issue 12). A license of 100,000 live leases has a ~20 MB
-- snapshot, written in the batch that crosses its snapshot mark, and that
-- batch holds the appender and every caller queued behind it: as `jsonb`
-- (parsed into PostgreSQL's binary form, then compressed) one such UPDATE
-- took ~600 ms here, as uncompressed text ~180 ms. Nothing queries inside a
-- snapshot; the appender and the auditor tools parse it themselves.
-- Existing snapshots become jsonb's text rendering of the same value.
ALTER TABLE streams ALTER COLUMN state TYPE text USING state::text;
ALTER TABLE streams ALTER COLUMN state SET STORAGE EXTERNAL;
