//! Task name → handler, type-erased so one worker runs many payload types.

use crate::task::{JobContext, Task};
use crate::{RetryPolicy, TaskError};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Registering a task name twice is a startup error, never a silent override.
#[derive(Debug, thiserror::Error)]
#[error("task {0:?} is registered twice")]
pub struct DuplicateTask(pub String);

/// The payload did not decode into the task's type.
#[derive(Debug)]
pub(crate) struct Malformed(pub String);

pub(crate) trait ErasedTask: Send + Sync {
    fn start(
        self: Arc<Self>,
        body: &[u8],
        ctx: JobContext,
    ) -> Result<BoxFuture<'static, Result<(), TaskError>>, Malformed>;
    fn retry_policy(&self) -> RetryPolicy;
    fn timeout(&self) -> Duration;
}

impl<T: Task> ErasedTask for T {
    fn start(
        self: Arc<Self>,
        body: &[u8],
        ctx: JobContext,
    ) -> Result<BoxFuture<'static, Result<(), TaskError>>, Malformed> {
        let payload = decode::<T::Payload>(body)?;
        Ok(Box::pin(async move { self.run(payload, &ctx).await }))
    }
    fn retry_policy(&self) -> RetryPolicy {
        Task::retry_policy(self)
    }
    fn timeout(&self) -> Duration {
        Task::timeout(self)
    }
}

/// Decodes the payload with [`warren_core::payload::decode`] (the ingest API validates with
/// the same code), naming the path of the first error (`payload at $.mode: …`).
pub(crate) fn decode<P: serde::de::DeserializeOwned>(body: &[u8]) -> Result<P, Malformed> {
    warren_core::payload::decode(body).map_err(|e| Malformed(e.message))
}

/// The tasks a worker can run.
#[derive(Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, Arc<dyn ErasedTask>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in tasks: self-tests (`demo.noop`, `demo.sleep`, `demo.fail`) and cron
    /// maintenance (`cron.fail-stale-payments`, `cron.prune-job-runs`).
    pub fn with_builtin() -> Self {
        let mut r = Self::new();
        crate::demo::register(&mut r).expect("built-in task names are distinct");
        crate::maintenance::register(&mut r).expect("built-in task names are distinct");
        r
    }

    pub fn register<T: Task>(&mut self, task: T) -> Result<&mut Self, DuplicateTask> {
        if self.tasks.contains_key(T::NAME) {
            return Err(DuplicateTask(T::NAME.to_owned()));
        }
        self.tasks.insert(T::NAME.to_owned(), Arc::new(task));
        Ok(self)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn ErasedTask>> {
        self.tasks.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::task::DemoFail;

    #[test]
    fn duplicate_registration_fails() {
        let mut r = Registry::with_builtin();
        let e = crate::demo::register(&mut r).unwrap_err();
        assert_eq!(e.0, "demo.noop");
    }

    #[test]
    fn malformed_payloads_keep_core_messages() {
        // The cases live in warren_core::payload; this checks the worker passes them on.
        let e = decode::<DemoFail>(br#"{"mode":"explode"}"#).unwrap_err().0;
        assert!(e.starts_with("payload at $.mode: unknown variant"), "{e}");
        let e = decode::<DemoFail>(b"{not json").unwrap_err().0;
        assert!(e.starts_with("body is not valid JSON"), "{e}");
        assert!(decode::<DemoFail>(br#"{"mode":"permanent"}"#).is_ok());
    }
}
