-- The ingest API's Idempotency-Key records (warren ingest, docs/ingest.md).
-- A request with an Idempotency-Key first claims (scope, key) by inserting a row with no
-- status; the request that inserted it publishes, then stores its answer. A later request
-- with the same key, within the window, gets that answer back and publishes nothing.
-- `scope` is derived from the API token (a hash prefix, never the token itself), so two
-- tokens never see each other's keys.
CREATE TABLE ingest_idempotency (
    scope         text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,             -- SHA-256 of route, tenant, job id and body
    status        smallint,                         -- HTTP status; NULL while the first request runs
    response      text,                             -- the JSON body answered, byte for byte
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    PRIMARY KEY (scope, key)
);

-- Pruning expired keys.
CREATE INDEX ingest_idempotency_created ON ingest_idempotency (created_at);
