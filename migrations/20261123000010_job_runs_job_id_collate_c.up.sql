-- The job ledger's key compares bytewise. Job ids are opaque strings from producers (UUIDs
-- when Warren publishes, anything otherwise); the ledger only ever tests them for equality,
-- which no collation changes (a deterministic collation calls two strings equal exactly when
-- their bytes are), but every primary-key comparison in a ledger write or duplicate check
-- becomes a memcmp instead of a locale-aware strcoll. Only the primary key index is rebuilt;
-- the table is not rewritten.
ALTER TABLE job_runs ALTER COLUMN job_id TYPE text COLLATE "C";
