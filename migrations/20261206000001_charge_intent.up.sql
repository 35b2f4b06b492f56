-- Exactly one charge per renewal key, whatever a provider answers.
--
-- Intent before act: `charge_requests` is incremented (and committed) before every request
-- that may charge a card, `charge_refusals` when the provider positively refused one (a 429,
-- a 4xx, a connection that never opened). While requests > refusals a charge may exist, and
-- the handler only reconciles: it looks the key up and waits, it never charges again
-- (Pagar.me alone may repeat a request inside its idempotency window). The first and last
-- request times bound that wait and the window.
ALTER TABLE payment_transactions
    ADD COLUMN charge_requests      integer     NOT NULL DEFAULT 0 CHECK (charge_requests >= 0),
    ADD COLUMN charge_refusals      integer     NOT NULL DEFAULT 0 CHECK (charge_refusals >= 0),
    ADD COLUMN first_charge_sent_at timestamptz,
    ADD COLUMN last_charge_sent_at  timestamptz,
    -- Who holds `charging_until`: "<job id>@<worker instance>". Only the holder renews or
    -- releases it, and a request is recorded as sent only while its sender holds it.
    ADD COLUMN lease_owner          text;

-- Rows written before this migration did not record their requests: any row that got past
-- its claim may have reached the provider, so treat it as sent once (reconciled, never
-- charged blind).
UPDATE payment_transactions
   SET charge_requests = 1, first_charge_sent_at = created_at, last_charge_sent_at = updated_at;

-- 'duplicate_charge': the provider charged a period that another transaction had already
-- paid (two keys charged for one period). Kept apart from 'paid' for a refund, listed by
-- `warren billing anomalies`.
ALTER TABLE payment_transactions DROP CONSTRAINT payment_transactions_status_check;
ALTER TABLE payment_transactions ADD CONSTRAINT payment_transactions_status_check
    CHECK (status IN ('pending', 'paid', 'failed', 'unknown', 'rejected', 'duplicate_charge'));

-- Earlier double payments, if any, become anomalies before the index below forbids them.
UPDATE payment_transactions t
   SET status = 'duplicate_charge', updated_at = now()
  FROM (SELECT id, row_number() OVER (PARTITION BY subscription_id, period_end
                                      ORDER BY updated_at, id) AS n
          FROM payment_transactions
         WHERE status = 'paid' AND period_end IS NOT NULL) d
 WHERE t.id = d.id AND d.n > 1;

-- One paid transaction per subscription period.
CREATE UNIQUE INDEX payment_transactions_one_paid_per_period
    ON payment_transactions (subscription_id, period_end) WHERE status = 'paid';
CREATE INDEX payment_transactions_anomalies
    ON payment_transactions (updated_at) WHERE status = 'duplicate_charge';
-- The stale sweep's rows.
CREATE INDEX payment_transactions_undecided
    ON payment_transactions (created_at) WHERE status IN ('pending', 'unknown');
