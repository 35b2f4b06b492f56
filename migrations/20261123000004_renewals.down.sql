-- Loses: the renewal audit trail (subscription_events), dunning state (dunning_attempt, next_attempt_at), dunning enqueues (renewal_enqueues rows with attempt > 1), the period, attempt and lease of payment_transactions; 'rejected' transactions become 'failed'.

DROP TABLE subscription_events;

DROP INDEX payment_transactions_subscription;
-- The provider refused these requests and charged nothing: 'failed' is the closest state
-- the earlier schema has.
UPDATE payment_transactions SET status = 'failed' WHERE status = 'rejected';
ALTER TABLE payment_transactions DROP CONSTRAINT payment_transactions_status_check;
ALTER TABLE payment_transactions ADD CONSTRAINT payment_transactions_status_check
    CHECK (status IN ('pending', 'paid', 'failed', 'unknown'));
ALTER TABLE payment_transactions
    DROP COLUMN charging_until,
    DROP COLUMN attempt,
    DROP COLUMN period_end;

-- One enqueue per (subscription, period) again: dunning attempts' rows cannot keep the key.
DELETE FROM renewal_enqueues WHERE attempt > 1;
ALTER TABLE renewal_enqueues DROP CONSTRAINT renewal_enqueues_pkey;
ALTER TABLE renewal_enqueues DROP COLUMN attempt;
ALTER TABLE renewal_enqueues ADD PRIMARY KEY (subscription_id, period_end);

-- The period scans cover PAST_DUE again; the dunning scans' indexes go.
DROP INDEX customer_subscriptions_dunning_appmax;
DROP INDEX customer_subscriptions_dunning_pagarme;
DROP INDEX customer_subscriptions_due_appmax;
CREATE INDEX customer_subscriptions_due_appmax
    ON customer_subscriptions (current_period_end, id)
    WHERE provider = 'APPMAX' AND canceled_at IS NULL
      AND status IN ('ACTIVE', 'PAST_DUE', 'TRIALING');
DROP INDEX customer_subscriptions_due_pagarme;
CREATE INDEX customer_subscriptions_due_pagarme
    ON customer_subscriptions (current_period_end, id)
    WHERE provider = 'PAGARME' AND is_native = false AND canceled_at IS NULL
      AND status IN ('ACTIVE', 'PAST_DUE', 'TRIALING');

ALTER TABLE customer_subscriptions
    DROP COLUMN next_attempt_at,
    DROP COLUMN dunning_attempt;
