-- Loses: the PostgreSQL mirror of dead letters (dead_letters), with the history of replays and purges; messages still in the DLQs stay there.
DROP TABLE dead_letters;
