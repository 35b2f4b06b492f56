-- Loses: nothing; the job ledger's key compares with the database's default collation again.
ALTER TABLE job_runs ALTER COLUMN job_id TYPE text COLLATE "default";
