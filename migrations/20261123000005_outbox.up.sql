-- Transactional outbox (issue #5): an application enqueues a Warren job by inserting a row
-- in its own database transaction, with plain SQL from any language; `warren relay` (also
-- run by `warren scheduler` and `warren dev`) publishes due rows with confirms and marks
-- them published. Rows with a future `run_at` are how long delays wait: in PostgreSQL, not
-- in a broker queue or a consumer. Documented in docs/wire-contract.md, "Outbox".
CREATE TABLE warren_outbox (
    seq              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The job id (AMQP message_id). Redeliveries of a row reuse it, so the worker's ledger
    -- makes a second publish harmless.
    id               text        NOT NULL DEFAULT gen_random_uuid()::text,
    task             text        NOT NULL CHECK (task <> ''),
    payload          jsonb       NOT NULL DEFAULT '{}',
    idempotency_key  text,
    tenant           text,
    max_attempts     integer     CHECK (max_attempts >= 1),
    run_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    -- Failed publish attempts (e.g. no queue receives the task) and the last reason; the
    -- row is retried with backoff and stays visible here.
    publish_attempts integer     NOT NULL DEFAULT 0,
    last_error       text
);
CREATE INDEX warren_outbox_due ON warren_outbox (run_at, seq) WHERE published_at IS NULL;
