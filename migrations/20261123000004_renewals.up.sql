-- Renewal handlers (issue #4): dunning attempts with their own keys, the audit trail, and
-- the transaction states the handlers need. Design: docs/providers.md, "Dunning".

-- A declined period stays on the subscription (PAST_DUE) and is retried by the scheduler's
-- dunning scan at `next_attempt_at`; `dunning_attempt` counts the declined attempts of the
-- current period (0 while ACTIVE). Attempt n of a period (n = dunning_attempt + 1) is
-- charged with key `renewal:{sub}:{period_end}` for n = 1 and `...:{n}` after.
ALTER TABLE customer_subscriptions
    ADD COLUMN dunning_attempt smallint NOT NULL DEFAULT 0 CHECK (dunning_attempt >= 0),
    ADD COLUMN next_attempt_at timestamptz;
-- A PAST_DUE row without `next_attempt_at` (written before this migration, or by another
-- system) is due for its next attempt at its period end.

-- Period scans cover ACTIVE and TRIALING only; PAST_DUE is the dunning scan's. The
-- predicates stay identical to scheduler/src/due.rs.
DROP INDEX customer_subscriptions_due_pagarme;
CREATE INDEX customer_subscriptions_due_pagarme
    ON customer_subscriptions (current_period_end, id)
    WHERE provider = 'PAGARME' AND is_native = false AND canceled_at IS NULL
      AND status IN ('ACTIVE', 'TRIALING');
DROP INDEX customer_subscriptions_due_appmax;
CREATE INDEX customer_subscriptions_due_appmax
    ON customer_subscriptions (current_period_end, id)
    WHERE provider = 'APPMAX' AND canceled_at IS NULL
      AND status IN ('ACTIVE', 'TRIALING');
CREATE INDEX customer_subscriptions_dunning_pagarme
    ON customer_subscriptions ((COALESCE(next_attempt_at, current_period_end)), id)
    WHERE provider = 'PAGARME' AND is_native = false AND canceled_at IS NULL
      AND status = 'PAST_DUE';
CREATE INDEX customer_subscriptions_dunning_appmax
    ON customer_subscriptions ((COALESCE(next_attempt_at, current_period_end)), id)
    WHERE provider = 'APPMAX' AND canceled_at IS NULL
      AND status = 'PAST_DUE';

-- One enqueue per (subscription, period, attempt).
ALTER TABLE renewal_enqueues ADD COLUMN attempt smallint NOT NULL DEFAULT 1 CHECK (attempt >= 1);
ALTER TABLE renewal_enqueues DROP CONSTRAINT renewal_enqueues_pkey;
ALTER TABLE renewal_enqueues ADD PRIMARY KEY (subscription_id, period_end, attempt);

-- Which period and attempt a transaction charges; 'rejected' = the provider refused the
-- request itself (4xx: nothing was charged, the next try may charge). `charging_until` is
-- a lease: the one worker that holds it may call the provider for this key; it is released
-- when the attempt ends and expires by itself if the worker dies.
ALTER TABLE payment_transactions
    ADD COLUMN period_end timestamptz,
    ADD COLUMN attempt smallint NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    ADD COLUMN charging_until timestamptz;
ALTER TABLE payment_transactions DROP CONSTRAINT payment_transactions_status_check;
ALTER TABLE payment_transactions ADD CONSTRAINT payment_transactions_status_check
    CHECK (status IN ('pending', 'paid', 'failed', 'unknown', 'rejected'));
CREATE INDEX payment_transactions_subscription ON payment_transactions (subscription_id, created_at);

-- The audit trail: one row per renewal attempt and outcome.
CREATE TABLE subscription_events (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id  uuid        NOT NULL REFERENCES customer_subscriptions (id),
    -- renewal.paid | renewal.declined | renewal.unpaid | renewal.retry | renewal.unknown
    -- | renewal.rejected | renewal.precondition_failed | renewal.skipped
    kind             text        NOT NULL,
    period_end       timestamptz,
    attempt          smallint,
    idempotency_key  text,
    job_id           text,
    detail           jsonb       NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscription_events_subscription ON subscription_events (subscription_id, created_at);
