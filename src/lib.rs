//! Warren as a library: your own binary with every command of `warren` (worker, scheduler,
//! ingest, dlq, status, dev, publish, topology, migrate, …) and your tasks registered next
//! to the built-in ones.
//!
//! ```no_run
//! use warren::workers::{JobContext, Task, TaskError};
//!
//! struct SendEmail;
//!
//! impl Task for SendEmail {
//!     const NAME: &'static str = "email.send";
//!     const QUEUE: &'static str = "emails";
//!     type Payload = serde_json::Value;
//!     async fn run(&self, payload: Self::Payload, _: &JobContext) -> Result<(), TaskError> {
//!         tracing::info!(to = %payload["to"], "sending");
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     warren::App::new().task(SendEmail).run()
//! }
//! ```
//!
//! `my-app worker --queue emails` then runs `email.send` jobs; `my-app topology`, the worker,
//! the scheduler and ingest declare the `emails` queue bound to `email.send` without a
//! config-file entry (docs/tasks.md).

mod cli;

pub use warren_core as core;
pub use warren_producer as producer;
pub use warren_workers as workers;

use clap::Parser;
use std::ffi::OsString;
use std::process::ExitCode;
use warren_workers::{DuplicateTask, Registry, Task};

/// A `warren` command line with a set of tasks: [`App::new`] has the built-in ones,
/// [`App::task`] adds yours, [`App::run`] parses the process's arguments and runs the
/// command.
#[derive(Debug)]
pub struct App {
    registry: Registry,
    /// The first task registered twice, reported by `run` before anything starts.
    duplicate: Option<DuplicateTask>,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// The built-in tasks: `demo.*` self-tests and `cron.*` maintenance, as in `warren`.
    /// The renewal handlers are added by the worker when a consumed queue receives them.
    pub fn new() -> Self {
        Self::with_registry(Registry::with_builtin())
    }

    /// Exactly the tasks of `registry` (start from [`Registry::new`] to leave out the
    /// built-in ones).
    pub fn with_registry(registry: Registry) -> Self {
        Self {
            registry,
            duplicate: None,
        }
    }

    /// Registers `task`; its queue (`Task::QUEUE`) joins the topology of every command. A
    /// task name registered twice makes [`run`](Self::run) fail before anything starts.
    pub fn task<T: Task>(mut self, task: T) -> Self {
        if let Err(e) = self.registry.register(task) {
            self.duplicate.get_or_insert(e);
        }
        self
    }

    /// The tasks registered so far.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Parses the process's command line and runs the command on a new Tokio runtime,
    /// blocking until it ends. `--help` and argument errors print and exit as clap does.
    pub fn run(self) -> ExitCode {
        self.run_from(std::env::args_os())
    }

    /// [`run`](Self::run) with the given arguments (the first is the program name).
    pub fn run_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut cli = cli::Cli::parse_from(args);
        warren_core::telemetry::init_logging(cli.global.log_format.into());
        if let Some(e) = self.duplicate {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        cli.global.tasks = self.registry;
        // Handler panics are caught and reported per job; keep them to one log line.
        std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.enable_all();
        if let Some(n) = cli.global.threads {
            rt.worker_threads(n.into());
        }
        let rt = match rt.build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match rt.block_on(cli::run(cli)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// The Rust blocks of docs/tasks.md, compiled as doctests so the guide stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../docs/tasks.md")]
pub struct TasksGuide;

/// The README's "Write a task" example, compiled as a doctest so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExample;

#[cfg(test)]
mod tests {
    use super::*;
    use warren_workers::{JobContext, TaskError};

    struct Mine;

    impl Task for Mine {
        const NAME: &'static str = "mine.do";
        const QUEUE: &'static str = "mine";
        type Payload = serde_json::Value;
        async fn run(&self, _: serde_json::Value, _: &JobContext) -> Result<(), TaskError> {
            Ok(())
        }
    }

    #[test]
    fn tasks_join_the_builtin_ones_and_duplicates_are_kept_for_run() {
        let app = App::new().task(Mine);
        let names: Vec<&str> = app.registry().names().collect();
        assert!(
            names.contains(&"mine.do") && names.contains(&"demo.noop"),
            "{names:?}"
        );
        assert!(app.duplicate.is_none());
        let app = app.task(Mine);
        assert_eq!(app.duplicate.as_ref().unwrap().0, "mine.do");
    }
}
