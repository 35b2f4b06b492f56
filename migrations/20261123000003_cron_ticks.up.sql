-- One row per (schedule, tick): inserted in the transaction that waits for the broker's
-- confirm of the tick's job, so a tick is published once across replicas and restarts.
CREATE TABLE cron_ticks (
    schedule     text        NOT NULL,
    tick         timestamptz NOT NULL,
    job_id       uuid        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('published', 'skipped')),
    reason       text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, tick)
);
