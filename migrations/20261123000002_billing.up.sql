-- Billing schema: what the scheduler scans and the renewal handlers (issue #4) charge.
-- Column names are snake_case; the subscription status enum keeps its application name.

CREATE TYPE "SubscriptionStatus" AS ENUM ('ACTIVE', 'PAST_DUE', 'CANCELED', 'UNPAID', 'TRIALING');
CREATE TYPE billing_provider AS ENUM ('PAGARME', 'APPMAX');

CREATE TABLE customers (
    id          uuid        PRIMARY KEY,
    email       text,
    name        text,
    document    text,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Per-merchant provider credentials (Appmax). `credentials` is never logged.
CREATE TABLE merchant_integrations (
    id           uuid             PRIMARY KEY,
    merchant_id  uuid             NOT NULL,
    provider     billing_provider NOT NULL,
    credentials  jsonb            NOT NULL DEFAULT '{}',
    enabled      boolean          NOT NULL DEFAULT true,
    created_at   timestamptz      NOT NULL DEFAULT now(),
    updated_at   timestamptz      NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, provider)
);

CREATE TABLE customer_payment_methods (
    id                          uuid             PRIMARY KEY,
    customer_id                 uuid             NOT NULL REFERENCES customers (id),
    provider                    billing_provider NOT NULL,
    provider_payment_method_id  text             NOT NULL,  -- card id / token at the provider
    brand                       text,
    last4                       text,
    created_at                  timestamptz      NOT NULL DEFAULT now()
);

CREATE TABLE customer_subscriptions (
    id                        uuid                 PRIMARY KEY,
    customer_id               uuid                 NOT NULL REFERENCES customers (id),
    provider                  billing_provider     NOT NULL,
    is_native                 boolean              NOT NULL DEFAULT false, -- billed by the provider itself
    status                    "SubscriptionStatus" NOT NULL DEFAULT 'ACTIVE',
    current_period_start      timestamptz          NOT NULL,
    current_period_end        timestamptz          NOT NULL,
    canceled_at               timestamptz,
    vault_payment_method_id   uuid REFERENCES customer_payment_methods (id),
    metadata                  jsonb                NOT NULL DEFAULT '{}', -- intervalUnit, intervalCount, pagarmeCustomerId, pagarmeCardId, …
    amount_cents              bigint               NOT NULL CHECK (amount_cents >= 0),
    currency                  text                 NOT NULL DEFAULT 'BRL',
    merchant_id               uuid,
    provider_subscription_id  text,
    created_at                timestamptz          NOT NULL DEFAULT now(),
    updated_at                timestamptz          NOT NULL DEFAULT now()
);

-- The due scans (scheduler/src/due.rs) read only (current_period_end, id) through these
-- partial indexes: index-only range scans in keyset order. Their predicates must stay
-- identical to the scans' (see docs/scheduler.md for EXPLAIN).
CREATE INDEX customer_subscriptions_due_pagarme
    ON customer_subscriptions (current_period_end, id)
    WHERE provider = 'PAGARME' AND is_native = false AND canceled_at IS NULL
      AND status IN ('ACTIVE', 'PAST_DUE', 'TRIALING');
CREATE INDEX customer_subscriptions_due_pagarme_native
    ON customer_subscriptions (current_period_end, id)
    WHERE provider = 'PAGARME' AND is_native = true AND canceled_at IS NULL
      AND status IN ('ACTIVE', 'PAST_DUE', 'TRIALING');
CREATE INDEX customer_subscriptions_due_appmax
    ON customer_subscriptions (current_period_end, id)
    WHERE provider = 'APPMAX' AND canceled_at IS NULL
      AND status IN ('ACTIVE', 'PAST_DUE', 'TRIALING');
CREATE INDEX customer_subscriptions_customer ON customer_subscriptions (customer_id);

-- One row per charge attempt of a renewal; the idempotency key (renewal:{sub}:{period_end})
-- is also sent to the provider, so a retried job never charges twice.
CREATE TABLE payment_transactions (
    id                  uuid             PRIMARY KEY DEFAULT gen_random_uuid(),
    subscription_id     uuid             REFERENCES customer_subscriptions (id),
    provider            billing_provider NOT NULL,
    idempotency_key     text             NOT NULL UNIQUE,
    status              text             NOT NULL CHECK (status IN ('pending', 'paid', 'failed', 'unknown')),
    amount_cents        bigint           NOT NULL CHECK (amount_cents >= 0),
    currency            text             NOT NULL,
    provider_order_id   text,
    provider_charge_id  text,
    failure_reason      text,
    created_at          timestamptz      NOT NULL DEFAULT now(),
    updated_at          timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX payment_transactions_pending ON payment_transactions (created_at) WHERE status = 'pending';

-- The scheduler's decision to renew a subscription for one period: inserted in the same
-- transaction that waits for the broker's confirm, so a period is enqueued once.
CREATE TABLE renewal_enqueues (
    subscription_id  uuid             NOT NULL REFERENCES customer_subscriptions (id),
    period_end       timestamptz      NOT NULL,
    provider         billing_provider NOT NULL,
    job_id           uuid             NOT NULL,
    idempotency_key  text             NOT NULL UNIQUE,
    enqueued_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, period_end)
);
