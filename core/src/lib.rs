//! The Warren contract: what every role and every publisher agrees on.
//!
//! - [`backoff`]: the doubling wait of every reconnect loop.
//! - [`task`]: task names (= routing keys) and the built-in payload types.
//! - [`billing`]: billing intervals and period arithmetic.
//! - [`envelope`]: AMQP properties and headers a job carries, and dead-letter reasons.
//! - [`outbox`]: enqueueing a job inside your own database transaction (`warren_outbox`).
//! - [`limits`]: bounds on task names, ids, keys, headers and bodies, for every way in.
//! - [`payload`]: decoding and validating job bodies, naming the path of the first error.
//! - [`topology`]: exchanges, queues, bindings and delay tiers, declared as data.
//! - [`config`]: typed settings from env vars, flags and the optional TOML file.
//! - [`broker`]: connecting to RabbitMQ with credentials kept out of logs.
//! - [`db`]: connecting to PostgreSQL, creating the database, running migrations.
//! - [`migrations`]: the embedded migrations, what a database has applied, reverting.
//! - [`telemetry`]: logging, Prometheus metrics and the health endpoints.

pub mod backoff;
pub mod billing;
pub mod broker;
pub mod config;
pub mod db;
pub mod envelope;
pub mod limits;
pub mod migrations;
pub mod outbox;
pub mod payload;
pub mod task;
pub mod telemetry;
pub mod topology;
