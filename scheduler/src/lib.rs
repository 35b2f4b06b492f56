//! The scheduler role: leader election, due-renewal scans and cron.
//!
//! - [`leader`]: one leader among any number of replicas (PostgreSQL advisory lock).
//! - [`due`]: the due-renewal scans and their exactly-once-per-period enqueue.
//! - [`cron`]: schedule arithmetic (cron expressions, intervals, time zones, catch-up).
//! - [`ticks`]: recording each cron tick once and publishing its job.
//! - [`run`]: the loop that ties them together on the leader.
//! - [`outbox`]: the transactional outbox relay (runs on every replica).

pub mod cron;
pub mod due;
pub mod leader;
pub mod outbox;
pub mod run;
pub mod ticks;
