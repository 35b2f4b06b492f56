//! The scheduler role: leader election, due-renewal scans and cron.
//!
//! - [`leader`]: one leader among any number of replicas (PostgreSQL advisory lock).
//! - [`due`]: the due-renewal scans and their exactly-once-per-period enqueue.
//! - [`cron`]: schedule arithmetic (cron expressions, intervals, time zones, catch-up).

pub mod cron;
pub mod due;
pub mod leader;
pub mod run;
