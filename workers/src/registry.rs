//! Task name → handler, type-erased so one worker runs many payload types.

use crate::task::{JobContext, Task};
use crate::{RetryPolicy, TaskError};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use warren_core::topology::TaskRoute;

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
    fn queue(&self) -> &'static str;
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
    fn queue(&self) -> &'static str {
        T::QUEUE
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

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.tasks.iter().map(|(name, t)| (name, t.queue())))
            .finish()
    }
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

    /// Each registered task's own route (its `QUEUE`, bound to its `NAME`), by task name,
    /// for [`Topology::with_tasks`](warren_core::topology::Topology::with_tasks).
    pub fn routes(&self) -> Vec<TaskRoute> {
        self.tasks
            .iter()
            .map(|(name, task)| TaskRoute {
                task: name.clone(),
                queue: task.queue().to_owned(),
            })
            .collect()
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
    fn builtin_routes_leave_the_topology_as_it_was() {
        let none = warren_core::config::FileConfig::default();
        let builtin = warren_core::topology::Topology::new("warren", &none).unwrap();
        let routed = warren_core::topology::Topology::with_tasks(
            "warren",
            &none,
            &Registry::with_builtin().routes(),
        )
        .unwrap();
        assert_eq!(routed.queues(), builtin.queues());
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
