//! Publishing jobs: publisher confirms, `mandatory` routing, persistent JSON messages.
//!
//! [`Producer::enqueue`] publishes a typed payload ([`JobArgs`] names its task);
//! [`Producer::publish`] takes the task name and any serializable payload. [`Producer`] is
//! the one way Warren code publishes: the CLI, the worker runtime (retries
//! and dead letters) and the benchmark all go through [`Producer::publish_raw`]. A publish
//! is done only when the broker confirmed it; an unroutable publish (no queue bound to the
//! task) is an error, never a silent success. A `Producer` lives on one channel; to survive
//! connection loss, publish through [`broker::SharedBroker`] ([`reliable`]), which reconnects
//! and republishes only the unconfirmed jobs, under the same ids.
//!
//! **Delays.** A producer built [`with_topology`](Producer::with_topology) can publish with
//! [`PublishOptions::delay`]: the job goes to the shortest delay tier at least that long,
//! with a per-message expiration of exactly the delay, and the tier dead-letters it to
//! `<ns>.jobs` when it expires. It runs no sooner than the delay; when delays of one tier
//! are mixed it may run up to that tier's length late (expiry happens at the queue head).
//! Delays longer than the longest tier belong in the outbox (`warren_outbox.run_at`), which
//! holds them in PostgreSQL.

pub mod broker;
pub mod depths;
pub mod dlq;
pub mod ingest;
pub mod reliable;

pub use reliable::{BatchError, BatchReport, RepublishPolicy};

use futures::stream::{FuturesOrdered, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::types::ShortString;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use warren_core::envelope::{self, json_properties};
use warren_core::limits::{self, LimitError};
pub use warren_core::task::JobArgs;
use warren_core::telemetry::names;
use warren_core::topology::Topology;

/// Why a publish did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no queue is bound to task {task:?} on exchange {exchange:?} (message returned unroutable); check the task name or declare a queue for it")]
    Unroutable { task: String, exchange: String },
    #[error("the broker refused the message for task {task:?} (nack)")]
    Nacked { task: String },
    #[error("payload is not serializable JSON: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("a delay of {delay:?} is longer than the longest delay tier ({longest:?}); hold it in the outbox instead (warren_outbox.run_at)")]
    DelayTooLong { delay: Duration, longest: Duration },
    #[error("delayed publishes need the topology's delay tiers (Producer::with_topology)")]
    NoTiers,
    /// A task name, id, key, tenant or header table outside [`warren_core::limits`]: refused
    /// before it reaches the broker (a too-long AMQP string or an oversized header frame
    /// would otherwise panic or close the shared connection).
    #[error("{0}")]
    Invalid(#[from] LimitError),
}

impl PublishError {
    /// Worth retrying on a new connection (the message may or may not have arrived: publish
    /// again with the same job id, the ledger makes the duplicate harmless).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Broker(_) | Self::Nacked { .. })
    }
}

/// Optional envelope fields of a publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Job id (`message_id`); a UUIDv7 is generated when absent.
    pub id: Option<String>,
    pub idempotency_key: Option<String>,
    pub tenant: Option<String>,
    pub max_attempts: Option<u32>,
    /// Run no sooner than this from now (through a delay tier; see the crate docs).
    pub delay: Option<Duration>,
}

impl PublishOptions {
    /// Checks `task` and these options against [`warren_core::limits`]: every string an AMQP
    /// short string can hold, no control characters, headers within
    /// [`limits::MAX_HEADERS_BYTES`]. Every publish of [`Producer`] and
    /// [`broker::SharedBroker`] calls it first.
    pub fn check(&self, task: &str) -> Result<(), LimitError> {
        limits::check_short("task", task)?;
        for (field, value) in [
            ("id", &self.id),
            ("idempotency_key", &self.idempotency_key),
            ("tenant", &self.tenant),
        ] {
            if let Some(v) = value {
                limits::check_short(field, v)?;
            }
        }
        limits::check_headers("the headers", &self.headers(), limits::MAX_HEADERS_BYTES)
    }

    fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        if let Some(k) = &self.idempotency_key {
            envelope::set_str(&mut headers, envelope::H_IDEMPOTENCY_KEY, k);
        }
        if let Some(t) = &self.tenant {
            envelope::set_str(&mut headers, envelope::H_TENANT, t);
        }
        if let Some(m) = self.max_attempts {
            envelope::set_int(&mut headers, envelope::H_MAX_ATTEMPTS, m.into());
        }
        headers
    }

    /// The same job as an outbox row published no sooner than `run_at` (for delays longer
    /// than the longest tier).
    pub fn held_until(
        &self,
        run_at: chrono::DateTime<chrono::Utc>,
    ) -> warren_core::outbox::OutboxJob {
        warren_core::outbox::OutboxJob {
            id: self.id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            tenant: self.tenant.clone(),
            max_attempts: self.max_attempts,
            run_at: Some(run_at),
        }
    }
}

/// A confirmed publisher on its own channel.
#[derive(Clone)]
pub struct Producer {
    channel: Channel,
    exchange: String,
    topology: Option<Arc<Topology>>,
}

impl Producer {
    /// Opens a confirm-mode channel publishing to `exchange` (normally `<ns>.jobs`).
    pub async fn new(conn: &Connection, exchange: String) -> Result<Self, PublishError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            exchange,
            topology: None,
        })
    }

    /// Enables delayed publishes through `topology`'s delay tiers.
    pub fn with_topology(mut self, topology: &Topology) -> Self {
        self.topology = Some(Arc::new(topology.clone()));
        self
    }

    /// Where a publish goes: the work exchange, or for a delayed job the delay tier that
    /// holds it. A delay tier is a fanout exchange, so the broker cannot say a task is
    /// unroutable: the topology is asked instead.
    pub fn exchange_for(
        &self,
        task: &str,
        opts: &PublishOptions,
    ) -> Result<Cow<'_, str>, PublishError> {
        let Some(delay) = opts.delay.filter(|d| !d.is_zero()) else {
            return Ok(Cow::Borrowed(&self.exchange));
        };
        let topology = self.topology.as_ref().ok_or(PublishError::NoTiers)?;
        let Some(i) = topology.tiers().iter().position(|t| *t >= delay) else {
            return Err(PublishError::DelayTooLong {
                delay,
                longest: topology.longest_tier(),
            });
        };
        if !topology.routes(task) {
            return Err(PublishError::Unroutable {
                task: task.to_owned(),
                exchange: self.exchange.clone(),
            });
        }
        Ok(Cow::Owned(topology.tier_name(i)))
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a job of `A::TASK` with `args` as its payload and waits for the broker's
    /// confirm. Returns the job id.
    ///
    /// ```no_run
    /// # async fn demo(producer: &warren_producer::Producer) -> Result<(), warren_producer::PublishError> {
    /// use warren_core::task::DemoSleep;
    /// let job_id = producer.enqueue(&DemoSleep { ms: 10 }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue<A: JobArgs>(&self, args: &A) -> Result<String, PublishError> {
        self.publish(A::TASK, args, &PublishOptions::default())
            .await
    }

    /// [`enqueue`](Self::enqueue) with envelope options (id, idempotency key, tenant,
    /// attempts, delay).
    pub async fn enqueue_with<A: JobArgs>(
        &self,
        args: &A,
        opts: &PublishOptions,
    ) -> Result<String, PublishError> {
        self.publish(A::TASK, args, opts).await
    }

    /// Publishes one job and waits for the broker's confirm. Returns the job id. The task is
    /// named at run time; [`enqueue`](Self::enqueue) takes it from the payload's type.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &T,
        opts: &PublishOptions,
    ) -> Result<String, PublishError> {
        opts.check(task)?;
        let body = serde_json::to_vec(payload)?;
        let exchange = self.exchange_for(task, opts)?;
        let (id, props) = Self::try_envelope(opts)?;
        self.publish_raw(&exchange, task, task, &body, props)
            .await?;
        Ok(id)
    }

    /// Publishes many jobs of one task, keeping up to `window` confirms outstanding, and
    /// calls `progress(done)` as confirms arrive. Returns the job ids in order.
    pub async fn publish_many(
        &self,
        task: &str,
        bodies: impl IntoIterator<Item = (Vec<u8>, PublishOptions)>,
        window: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<String>, PublishError> {
        let mut ids = Vec::new();
        let mut pending = FuturesOrdered::new();
        let mut done = 0;
        for (body, opts) in bodies {
            opts.check(task)?;
            let exchange = self.exchange_for(task, &opts)?;
            let (id, props) = Self::try_envelope(&opts)?;
            ids.push(id);
            // The futures borrow the producer and the task; body and target move in.
            pending.push_back(async move {
                self.publish_raw(&exchange, task, task, &body, props).await
            });
            while pending.len() >= window.max(1) {
                if let Some(r) = pending.next().await {
                    r?;
                    done += 1;
                    progress(done);
                }
            }
        }
        while let Some(r) = pending.next().await {
            r?;
            done += 1;
            progress(done);
        }
        Ok(ids)
    }

    /// Builds the job id and properties for a publish, refusing options outside
    /// [`warren_core::limits`] (without the task name: see [`PublishOptions::check`]).
    pub fn try_envelope(opts: &PublishOptions) -> Result<(String, BasicProperties), PublishError> {
        if let Some(id) = &opts.id {
            limits::check_short("id", id)?;
        }
        let headers = opts.headers();
        limits::check_headers("the headers", &headers, limits::MAX_HEADERS_BYTES)?;
        Ok(Self::envelope(opts))
    }

    /// Builds the job id and properties for a publish. Never panics: a job id that is not an
    /// AMQP short string (over 255 bytes) is left out of `message_id` and logged as an error;
    /// use [`try_envelope`](Self::try_envelope) to refuse it instead.
    pub fn envelope(opts: &PublishOptions) -> (String, BasicProperties) {
        let id = opts
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let headers = opts.headers();
        if ShortString::try_new(id.as_str()).is_err() {
            tracing::error!(
                len = id.len(),
                "a job id over 255 bytes cannot be a message_id; published without one"
            );
        }
        let mut props = json_properties(&id, headers);
        if let Some(d) = opts.delay.filter(|d| !d.is_zero()) {
            // Per-message TTL in milliseconds, at least 1 (0 would mean "now or drop").
            let ms = d.as_millis().max(1);
            props = props.with_expiration(ms.to_string().into());
        }
        (id, props)
    }

    /// Publishes bytes with `mandatory` and waits for the confirm: the one publish path.
    /// `task` labels the metric (dead letters are routed by queue name, not task).
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        task: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let outcome = match Self::frame_guard(exchange, routing_key, &props) {
            Ok(()) => self.try_publish(exchange, routing_key, body, props).await,
            Err(e) => Err(e.into()),
        };
        let label = match &outcome {
            Ok(()) => "confirmed",
            Err(PublishError::Unroutable { .. }) => "unroutable",
            Err(PublishError::Nacked { .. }) => "nacked",
            Err(_) => "error",
        };
        metrics::counter!(names::PUBLISHED, "task" => task.to_owned(), "outcome" => label)
            .increment(1);
        outcome
    }

    /// What would panic in the client (an AMQP short string over 255 bytes) or make the
    /// broker close the connection (properties bigger than a frame) is refused here, on the
    /// one publish path, whatever the caller checked.
    fn frame_guard(
        exchange: &str,
        routing_key: &str,
        props: &BasicProperties,
    ) -> Result<(), LimitError> {
        for (field, value) in [("exchange", exchange), ("routing key", routing_key)] {
            if value.len() > limits::MAX_SHORT {
                return Err(LimitError::TooLong {
                    field: field.to_owned(),
                    len: value.len(),
                    max: limits::MAX_SHORT,
                });
            }
        }
        if let Some(h) = props.headers() {
            limits::check_headers("the headers", h, limits::MAX_FRAME_HEADERS_BYTES)?;
        }
        Ok(())
    }

    async fn try_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?
            .await?;
        // lapin reports an unroutable mandatory publish as Ack(Some(returned)): is_ack() is
        // true, so the returned message must be checked explicitly.
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                Err(PublishError::Unroutable {
                    task: routing_key.to_owned(),
                    exchange: exchange.to_owned(),
                })
            }
            Confirmation::Nack(None) | Confirmation::NotRequested => Err(PublishError::Nacked {
                task: routing_key.to_owned(),
            }),
        }
    }
}
