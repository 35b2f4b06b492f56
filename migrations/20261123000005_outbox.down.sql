-- Loses: the transactional outbox (warren_outbox), including rows not yet published: those jobs never run.
DROP TABLE warren_outbox;
