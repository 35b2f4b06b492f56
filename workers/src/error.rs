//! How a handler says it failed: retry later, or never.

use std::fmt::Display;
use std::time::Duration;

/// A handler's failure, classified where it is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// Might succeed later (a timeout, a 5xx, a lock): retried through the delay tiers until
    /// the task's `max_attempts`, then dead-lettered `exhausted`.
    #[error("{0}")]
    Retryable(String),
    /// Will never succeed (bad input, a declined card): dead-lettered `permanent` at once.
    #[error("{0}")]
    Permanent(String),
    /// Not a failure: the job is not ready to finish (a provider still settling a charge, a
    /// key another worker holds). It waits about `after` in a delay tier and runs again
    /// without spending an attempt; the handler bounds how long it keeps waiting.
    #[error("{reason}")]
    Snooze { after: Duration, reason: String },
    /// The handler cannot know whether its external effect happened: dead-lettered
    /// `unknown-outcome` at once, for an operator to resolve (docs/operations.md).
    #[error("{0}")]
    UnknownOutcome(String),
}

/// `.retryable()?` / `.permanent()?` on any `Result` whose error displays.
pub trait ResultExt<T> {
    fn retryable(self) -> Result<T, TaskError>;
    fn permanent(self) -> Result<T, TaskError>;
}

impl<T, E: Display> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, TaskError> {
        self.map_err(|e| TaskError::Retryable(e.to_string()))
    }
    fn permanent(self) -> Result<T, TaskError> {
        self.map_err(|e| TaskError::Permanent(e.to_string()))
    }
}
