//! The task of this example: `welcome.send`, on its own `welcomes` queue.
//!
//! [`Welcome`] is the payload, and knows its task ([`JobArgs`]), so a web app enqueues it with
//! `producer.enqueue(&Welcome { .. })` (see `src/bin/enqueue-welcome.rs`). [`SendWelcome`] is
//! the handler the worker runs (`custom-worker worker --queue welcomes`, see `src/main.rs`).

use serde::{Deserialize, Serialize};
use warren::core::task::JobArgs;
use warren::workers::{JobContext, Task, TaskError};

/// Payload of `welcome.send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    pub email: String,
    pub name: String,
}

impl JobArgs for Welcome {
    const TASK: &'static str = "welcome.send";
}

/// Sends the welcome mail (here: logs it). An address without `@` can never succeed, so it
/// is dead-lettered at once instead of retried.
pub struct SendWelcome;

impl Task for SendWelcome {
    const NAME: &'static str = Welcome::TASK;
    const QUEUE: &'static str = "welcomes";
    type Payload = Welcome;

    async fn run(&self, w: Welcome, ctx: &JobContext) -> Result<(), TaskError> {
        if !w.email.contains('@') {
            return Err(TaskError::Permanent(format!("{:?} is no address", w.email)));
        }
        tracing::info!(job_id = %ctx.job_id, to = %w.email, "welcome, {}", w.name);
        Ok(())
    }
}
