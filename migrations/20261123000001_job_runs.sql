-- The job ledger: one row per job id, written by workers in group commits.
-- A job id whose row is 'succeeded' is never run again (redelivery or re-publish => 'duplicate').
CREATE TYPE job_status AS ENUM ('running', 'succeeded', 'failed', 'dead_lettered');

CREATE TABLE job_runs (
    job_id       text        PRIMARY KEY,          -- AMQP message_id (a UUID when Warren publishes)
    task         text        NOT NULL,             -- routing key
    queue        text        NOT NULL,             -- work queue short name
    status       job_status  NOT NULL,
    attempts     integer     NOT NULL DEFAULT 1,   -- executions started (redeliveries included)
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX job_runs_status_updated ON job_runs (status, updated_at);
CREATE INDEX job_runs_task_created ON job_runs (task, created_at);
