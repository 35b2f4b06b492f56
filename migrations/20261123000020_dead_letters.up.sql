-- Dead letters mirrored from the <ns>.<queue>.dlq queues by `warren dlq` (docs/dlq.md), so
-- they can be queried with SQL. The queue stays the truth: every `warren dlq` command first
-- drains the DLQs it looks at (holding the messages unacked), records what it saw here, and
-- only then acks what it replayed or purged; everything else goes back to the queue.
CREATE TABLE dead_letters (
    id             bigserial   PRIMARY KEY,            -- the ID `warren dlq show` takes
    queue          text        NOT NULL,               -- work queue short name; DLQ <ns>.<queue>.dlq
    -- One dead-lettering of one job: SHA-256 of message_id, the failure marker
    -- (x-failed-at, or RabbitMQ's x-death entry) and the body. Copies of one message (an
    -- at-least-once publish twice) share it; the same job dead-lettered again does not.
    fingerprint    text        NOT NULL,
    message_id     text,                               -- the job id (AMQP message_id)
    task           text,                               -- the task to replay to; NULL when the message does not say
    source         text        NOT NULL CHECK (source IN ('worker', 'broker')),
    kind           text        NOT NULL,               -- x-error-kind, or RabbitMQ's death reason
    error          text        NOT NULL,
    attempts       integer     NOT NULL,               -- x-attempts (x-attempt for broker dead letters)
    headers        jsonb       NOT NULL,               -- AMQP headers, minus x-delivery-count
    payload        bytea       NOT NULL,               -- the body as it is in the queue
    payload_json   jsonb,                              -- the body, when it is JSON
    failed_at      timestamptz NOT NULL,
    state          text        NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'replayed', 'purged', 'gone')),
    copies         integer     NOT NULL DEFAULT 1,     -- messages with this fingerprint at the last sighting
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at    timestamptz,                        -- republished (confirmed) and acked
    purged_at      timestamptz,                        -- acked without republishing
    gone_at        timestamptz,                        -- missing from a complete drain: removed elsewhere
    UNIQUE (queue, fingerprint)
);

CREATE INDEX dead_letters_queued ON dead_letters (queue, failed_at) WHERE state = 'queued';
