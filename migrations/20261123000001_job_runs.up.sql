-- The job ledger: one row per job id, written by workers in group commits.
-- A job id whose row is 'succeeded' is never run again (redelivery or re-publish => 'duplicate').
CREATE TYPE job_status AS ENUM ('running', 'succeeded', 'failed', 'dead_lettered');

CREATE TABLE job_runs (
    job_id       text        PRIMARY KEY,          -- AMQP message_id (a UUID when Warren publishes)
    task         text        NOT NULL,             -- routing key
    queue        text        NOT NULL,             -- work queue short name
    status       job_status  NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,   -- handler executions started (redeliveries included)
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- What operators look for (running, failed, dead-lettered jobs). Succeeded rows, the vast
-- majority, stay out of it so the hot path writes only the heap row and the primary key.
CREATE INDEX job_runs_unfinished ON job_runs (status, updated_at) WHERE status <> 'succeeded';
