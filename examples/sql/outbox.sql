-- Enqueue Warren jobs from any language with plain SQL, inside your own transaction:
-- the jobs exist exactly when your other writes commit (rolled back: never run).
-- A relay (`warren relay`, or inside `warren scheduler` / `warren dev`) publishes due rows.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f examples/sql/outbox.sql
BEGIN;
-- ... your own writes here, e.g. UPDATE orders SET status = 'paid' WHERE id = 42;
INSERT INTO warren_outbox (task, payload)
VALUES ('demo.sleep', '{"ms": 50}');
-- A deterministic id makes a retried transaction enqueue the job once (the worker skips a
-- job id that already succeeded); run_at delays it (held in PostgreSQL until then).
INSERT INTO warren_outbox (id, task, payload, idempotency_key, tenant, run_at)
VALUES ('example-receipt-42', 'demo.noop', '{"order": 42}', 'receipt:42', 'acme',
        now() + interval '5 seconds');
COMMIT;
