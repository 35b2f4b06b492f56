-- Loses: all billing data: customers, merchant_integrations, customer_payment_methods, customer_subscriptions, payment_transactions, renewal_enqueues.
DROP TABLE renewal_enqueues;
DROP TABLE payment_transactions;
DROP TABLE customer_subscriptions;
DROP TABLE customer_payment_methods;
DROP TABLE merchant_integrations;
DROP TABLE customers;
DROP TYPE billing_provider;
DROP TYPE "SubscriptionStatus";
