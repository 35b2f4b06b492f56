-- Loses: the record of published cron ticks (cron_ticks).
DROP TABLE cron_ticks;
