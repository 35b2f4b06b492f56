-- Loses: the ingest API's Idempotency-Key records (ingest_idempotency): a retried request may publish its job again.
DROP TABLE ingest_idempotency;
