//! Built-in self-test tasks, routed to the `default` queue (`demo.#`). Operators publish them
//! to check a deployment end to end; the test suite and the benchmark use them too.

use crate::{JobContext, Registry, Task, TaskError};
use warren_core::task::{self, DemoFail, DemoNoop, DemoSleep, FailMode};

/// `demo.noop`: accepts any JSON object and succeeds.
pub struct Noop;

impl Task for Noop {
    const NAME: &'static str = task::DEMO_NOOP;
    type Payload = DemoNoop;
    async fn run(&self, _: DemoNoop, _: &JobContext) -> Result<(), TaskError> {
        Ok(())
    }
}

/// `demo.sleep`: sleeps `ms` milliseconds, then succeeds.
pub struct Sleep;

impl Task for Sleep {
    const NAME: &'static str = task::DEMO_SLEEP;
    type Payload = DemoSleep;
    async fn run(&self, p: DemoSleep, _: &JobContext) -> Result<(), TaskError> {
        tokio::time::sleep(std::time::Duration::from_millis(p.ms)).await;
        Ok(())
    }
}

/// `demo.fail`: fails as asked until `until` (or always when absent).
pub struct Fail;

impl Task for Fail {
    const NAME: &'static str = task::DEMO_FAIL;
    type Payload = DemoFail;
    async fn run(&self, p: DemoFail, ctx: &JobContext) -> Result<(), TaskError> {
        if p.until.is_some_and(|u| chrono::Utc::now() >= u) {
            return Ok(());
        }
        let msg = format!("demo.fail asked to fail (attempt {})", ctx.attempt);
        match p.mode {
            FailMode::Retryable => Err(TaskError::Retryable(msg)),
            FailMode::Permanent => Err(TaskError::Permanent(msg)),
            FailMode::Panic => panic!("{msg}"),
        }
    }
}

/// Registers the three demo tasks.
pub fn register(r: &mut Registry) -> Result<(), crate::DuplicateTask> {
    r.register(Noop)?.register(Sleep)?.register(Fail)?;
    Ok(())
}
