-- Loses: the charge request and refusal counts, send times and lease owner of payment_transactions; 'duplicate_charge' transactions become 'paid' again (list them with `warren billing anomalies` first).

DROP INDEX payment_transactions_undecided;
DROP INDEX payment_transactions_anomalies;
DROP INDEX payment_transactions_one_paid_per_period;

-- They were charged: 'paid' is what the earlier schema calls them. Applying the migration
-- again marks every second payment of a period 'duplicate_charge' once more.
UPDATE payment_transactions SET status = 'paid' WHERE status = 'duplicate_charge';
ALTER TABLE payment_transactions DROP CONSTRAINT payment_transactions_status_check;
ALTER TABLE payment_transactions ADD CONSTRAINT payment_transactions_status_check
    CHECK (status IN ('pending', 'paid', 'failed', 'unknown', 'rejected'));

ALTER TABLE payment_transactions
    DROP COLUMN lease_owner,
    DROP COLUMN last_charge_sent_at,
    DROP COLUMN first_charge_sent_at,
    DROP COLUMN charge_refusals,
    DROP COLUMN charge_requests;
