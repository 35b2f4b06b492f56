//! The scheduler role: leader election, due-renewal scans and cron.
//!
//! - [`leader`]: one leader among any number of replicas (PostgreSQL advisory lock).
//! - [`due`]: the due-renewal scans and their exactly-once-per-period enqueue.
//! - [`cron`]: schedule arithmetic (cron expressions, intervals, time zones, catch-up).
//! - [`ticks`]: recording each cron tick once and publishing its job.
//! - [`run`]: the loop that ties them together on the leader.
//! - [`outbox`]: the transactional outbox relay (runs on every replica).
//!
//! Each of those passes fails the same ways: [`PassError`].

pub mod cron;
pub mod due;
pub mod leader;
pub mod outbox;
pub mod run;
pub mod ticks;

use warren_producer::PublishError;

/// Why one pass failed: a due scan, a cron pass or an outbox batch. Every variant is worth
/// another pass except [`PassError::Lease`], which means this replica is no longer the
/// leader (the outbox relay, which needs no lease, never returns it).
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("publishing: {0}")]
    Publish(#[from] PublishError),
    #[error("leadership: {0}")]
    Lease(#[from] leader::LeaseError),
}
