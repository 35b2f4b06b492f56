-- Loses: the job ledger (every job_runs row), so jobs already run are no longer recognised as duplicates.
DROP TABLE job_runs;
DROP TYPE job_status;
