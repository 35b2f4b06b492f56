//! Warren's worker runtime.
//!
//! A job is one struct implementing [`Task`]; a [`Registry`] maps task names to tasks; a
//! [`Worker`] consumes work queues and, for every delivery:
//!
//! 1. dead-letters what can never succeed (crash loops past the delivery limit, unknown
//!    tasks, malformed payloads) without running anything;
//! 2. checks the job id in the [`ledger`] (a job that already succeeded is acked as a
//!    `duplicate` and not run again);
//! 3. runs the handler under its timeout, catching panics (a handler still running after
//!    200 ms is marked `running` in the ledger);
//! 4. publishes the consequence (a retry to a delay tier, or a dead letter) and waits for
//!    the broker's confirm;
//! 5. commits the outcome to the ledger (group commit), and only then acks (batched per
//!    channel, see `acks`).
//!
//! ```no_run
//! use warren_workers::{JobContext, Registry, Task, TaskError};
//!
//! struct SendEmail;
//! impl Task for SendEmail {
//!     const NAME: &'static str = "email.send";
//!     type Payload = serde_json::Value;
//!     async fn run(&self, payload: Self::Payload, ctx: &JobContext) -> Result<(), TaskError> {
//!         tracing::info!(job_id = %ctx.job_id, to = %payload["to"], "sending");
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = Registry::with_builtin();
//! registry.register(SendEmail).expect("registered once");
//! ```
//!
//! A task's `QUEUE` (default `default`) is where its jobs go: [`Registry::routes`] feeds
//! [`Topology::with_tasks`](warren_core::topology::Topology::with_tasks), so a new task
//! needs no config-file entry. [`testing`] runs one task in a test without a broker.

mod acks;
pub mod demo;
pub mod error;
mod execute;
mod gather;
pub mod ledger;
pub mod maintenance;
pub mod providers;
pub mod registry;
pub mod renewals;
pub mod retry;
pub mod runtime;
pub mod task;
pub mod testing;

pub use error::{ResultExt, TaskError};
pub use registry::{DuplicateTask, Registry};
pub use retry::RetryPolicy;
pub use runtime::{Worker, WorkerConfig, WorkerError, HEALTH_CHECKS};
pub use task::{JobContext, Task};
pub use warren_core::task::JobArgs;
