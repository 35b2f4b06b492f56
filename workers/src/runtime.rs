//! The worker: a supervised connect → declare → qos → consume loop around
//! `execute` (one delivery, arrival to ack), with graceful shutdown.
//!
//! - **Reconnect.** lapin does not reconnect. A session ends on a connection error, a
//!   channel error or a consumer the server cancelled (a deleted queue, a node restart);
//!   the worker then marks `broker` down on `/readyz`, waits with capped exponential
//!   backoff and starts a new session, which redeclares the topology. Jobs still running
//!   from the old session finish, fail to ack, and are redelivered — the ledger turns the
//!   redelivery into a `duplicate` if they had succeeded.
//! - **Prefetch.** Each queue has its own channel with `basic.qos(prefetch)`, so at most
//!   `prefetch` deliveries per queue are unacked (= in flight) at once.
//! - **Shutdown.** On the token: cancel the consumers (no new deliveries), wait up to
//!   `grace` for in-flight jobs to finish and ack, then close the connection; whatever is
//!   still unacked returns to its queue.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use crate::execute::{self, Session};
use crate::ledger::Ledger;
use crate::Registry;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warren_core::backoff::Backoff;
use warren_core::telemetry::{names, Health};
use warren_core::topology::{Topology, TopologyError, WorkQueue};
use warren_producer::{Producer, PublishError};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    /// Bodies larger than this are dead-lettered as malformed without being parsed.
    pub max_body: usize,
    /// Short names of the queues to consume.
    pub queues: Vec<String>,
    /// Unacked deliveries per queue.
    pub prefetch: u16,
    /// How long shutdown waits for in-flight jobs.
    pub grace: Duration,
    /// Most rows per ledger group commit.
    pub ledger_batch: usize,
    /// Ledger writer tasks (each with its own PostgreSQL connection when busy).
    pub ledger_writers: usize,
}

impl WorkerConfig {
    /// Unacked deliveries per queue unless set.
    pub const DEFAULT_PREFETCH: u16 = 256;
    /// Shutdown grace unless set; keep the orchestrator's stop timeout above it.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(25);
    /// Rows per ledger group commit unless set.
    pub const DEFAULT_LEDGER_BATCH: u16 = 512;
    /// Ledger writers unless set.
    pub const DEFAULT_LEDGER_WRITERS: u8 = 1;
}

/// The settings of `warren worker` without flags: the local broker, the `default` queue.
impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            amqp_url: warren_core::config::DEFAULT_AMQP_URL.to_owned(),
            max_body: warren_core::config::DEFAULT_MAX_BODY,
            queues: vec!["default".to_owned()],
            prefetch: Self::DEFAULT_PREFETCH,
            grace: Self::DEFAULT_GRACE,
            ledger_batch: Self::DEFAULT_LEDGER_BATCH.into(),
            ledger_writers: Self::DEFAULT_LEDGER_WRITERS.into(),
        }
    }
}

/// Why a worker stopped or a session ended.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("opening the publish channel: {0}")]
    Publish(#[from] PublishError),
    #[error("the broker cancelled the consumer of {queue} (queue deleted or node restarted)")]
    ConsumerCancelled { queue: String },
    #[error("the connection reported an error: {0}")]
    Connection(String),
    #[error("no queue to consume: `queues` is empty")]
    NoQueues,
    #[error("`prefetch` is 0: at least one unacked delivery per queue is needed")]
    NoPrefetch,
}

impl WorkerError {
    /// A broker-side fault worth reconnecting for; everything else stops the worker.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Topology(t) => t.is_retryable(),
            Self::Broker(_) | Self::Publish(_) | Self::ConsumerCancelled { .. } => true,
            Self::Connection(_) => true,
            Self::NoQueues | Self::NoPrefetch => false,
        }
    }
}

/// The readiness checks a worker reports (`/readyz`): `broker` (connected and consuming),
/// `database` (the ledger reaches PostgreSQL), `flow` (RabbitMQ is not blocking this
/// connection's publishes: a memory or disk alarm stops retries and dead letters, so the
/// worker holds its deliveries meanwhile). Build the worker's [`Health`] with these.
pub const HEALTH_CHECKS: [&str; 3] = ["broker", "database", "flow"];

/// A worker process's runtime.
pub struct Worker {
    cfg: WorkerConfig,
    queues: Vec<Arc<WorkQueue>>,
    topology: Arc<Topology>,
    registry: Arc<Registry>,
    db: PgPool,
    health: Health,
    ledger_scope: crate::ledger::Scope,
}

/// First wait before reconnecting to the broker; it doubles after each session that failed
/// before consuming, up to [`RECONNECT_MOST`].
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between reconnects to the broker.
const RECONNECT_MOST: Duration = Duration::from_secs(15);

impl Worker {
    /// Resolves the queue names; an unknown one is an error that lists the known ones.
    pub fn new(
        cfg: WorkerConfig,
        topology: Topology,
        registry: Registry,
        db: PgPool,
        health: Health,
    ) -> Result<Self, WorkerError> {
        if cfg.queues.is_empty() {
            return Err(WorkerError::NoQueues);
        }
        if cfg.prefetch == 0 {
            return Err(WorkerError::NoPrefetch);
        }
        let mut queues = Vec::new();
        for name in &cfg.queues {
            let q = topology.queue(name)?.clone();
            if !queues.iter().any(|x: &Arc<WorkQueue>| x.name == q.name) {
                queues.push(Arc::new(q));
            }
        }
        Ok(Self {
            cfg,
            queues,
            topology: Arc::new(topology),
            registry: Arc::new(registry),
            db,
            health,
            ledger_scope: crate::ledger::Scope::Full,
        })
    }

    /// Runs with a ledger that does only part of its work: for `warren bench --ledger`,
    /// which measures what the ledger costs. A worker so built does not detect duplicates
    /// (and with [`Scope::Off`](crate::ledger::Scope::Off) records nothing); never use it
    /// for real jobs.
    #[doc(hidden)]
    pub fn with_ledger_scope(mut self, scope: crate::ledger::Scope) -> Self {
        self.ledger_scope = scope;
        self
    }

    /// Runs until `shutdown` is cancelled (then drains) or a non-retryable error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let ledger = Ledger::start(
            self.db.clone(),
            self.health.clone(),
            self.cfg.ledger_batch,
            self.cfg.ledger_writers,
        )
        .scoped(self.ledger_scope);
        let tracker = TaskTracker::new();
        let mut backoff = Backoff::doubling(RECONNECT_FIRST, RECONNECT_MOST);
        let mut sessions = 0u64;
        let result = loop {
            if shutdown.is_cancelled() {
                break Ok(None);
            }
            let consuming_before = sessions;
            let r = self
                .session(&ledger, &tracker, &shutdown, &mut sessions)
                .await;
            if r.is_err() {
                self.health.set("broker", false);
                metrics::gauge!(names::BROKER_CONNECTED).set(0.0);
            }
            match r {
                Ok(conn) => break Ok(Some(conn)),
                Err(e) if !e.is_retryable() => break Err(e),
                Err(e) => {
                    // A session that got as far as consuming was a healthy connection: the
                    // next reconnect starts from the shortest wait again, so a broker that
                    // drops connections now and then is rejoined at once, not after a wait
                    // grown by earlier drops. Only failures to get that far back off.
                    if sessions > consuming_before {
                        backoff.reset();
                    }
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "broker session ended; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break Ok(None),
                    }
                }
            }
        };
        // Drain: in-flight jobs (including any from sessions that died) get `grace` to
        // finish and ack on the still-open connection.
        tracing::info!(in_flight = tracker.len(), grace = ?self.cfg.grace, "draining in-flight jobs");
        tracker.close();
        if tokio::time::timeout(self.cfg.grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = tracker.len(),
                "grace period over; unfinished jobs return to their queues"
            );
        }
        self.health.set("broker", false);
        metrics::gauge!(names::BROKER_CONNECTED).set(0.0);
        match result {
            Ok(Some(open)) => {
                // Channels first: dropping them after the connection closed makes lapin log
                // a connection error on a clean stop.
                // Each close is bounded: a close racing the broker's own (lapin then logs
                // "invalid channel state: Closing") can wait forever for a close-ok, and a
                // stopping worker must exit; the broker requeues whatever is unacked.
                const CLOSE_WAIT: Duration = Duration::from_secs(5);
                for ch in &open.channels {
                    let closing = ch.close(200, "worker shutting down".into());
                    let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
                }
                drop(open.consumers);
                let closing = open.conn.close(200, "worker shutting down".into());
                if tokio::time::timeout(CLOSE_WAIT, closing).await.is_err() {
                    tracing::warn!("broker did not confirm the connection close; exiting anyway");
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn session(
        &self,
        ledger: &Ledger,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
        sessions: &mut u64,
    ) -> Result<Open, WorkerError> {
        let conn = warren_core::broker::connect(&self.cfg.amqp_url, "worker").await?;
        let setup = conn.create_channel().await?;
        self.topology.declare(&setup).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let producer = Producer::new(&conn, self.topology.jobs_exchange()).await?;

        let mut consumers: Vec<(Arc<WorkQueue>, Channel, Consumer)> = Vec::new();
        for q in &self.queues {
            let ch = conn.create_channel().await?;
            ch.basic_qos(self.cfg.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = ch
                .basic_consume(
                    self.topology.queue_name(&q.name).as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push((q.clone(), ch, consumer));
        }
        *sessions += 1;
        if *sessions > 1 {
            metrics::counter!(names::BROKER_RECONNECTS).increment(1);
        }
        self.health.set("broker", true);
        self.health.set("flow", true);
        metrics::gauge!(names::BROKER_CONNECTED).set(1.0);
        metrics::gauge!(names::BROKER_BLOCKED).set(0.0);
        tracing::info!(
            queues = ?self.queues.iter().map(|q| self.topology.queue_name(&q.name)).collect::<Vec<_>>(),
            prefetch = self.cfg.prefetch,
            "consuming"
        );

        let session = Arc::new(Session {
            producer,
            ledger: ledger.clone(),
            registry: self.registry.clone(),
            topology: self.topology.clone(),
            db: self.db.clone(),
            max_body: self.cfg.max_body,
        });
        let stop = CancellationToken::new();
        let mut loops = JoinSet::new();
        let mut cancel = Vec::new();
        for (q, ch, consumer) in consumers {
            let (acks, ack_task) = crate::acks::start(ch.clone());
            // Tracked, so shutdown waits for the last acks to go out.
            tracker.spawn(ack_task);
            cancel.push((ch, consumer.tag()));
            loops.spawn(consume(
                q,
                consumer,
                session.clone(),
                tracker.clone(),
                stop.clone(),
                acks,
            ));
        }
        let publisher = session.producer.channel().clone();
        let mut events = conn.events_listener();
        let mut health_tick = tokio::time::interval(Duration::from_secs(1));
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                Some(r) = loops.join_next() => {
                    break match r {
                        Ok(Err(e)) => Err(e),
                        Ok(Ok(_)) => Ok(()),
                        Err(join) => Err(WorkerError::Connection(join.to_string())),
                    };
                }
                _ = health_tick.tick() => {
                    // Retries and dead letters need the publish channel; without it every
                    // delivery would sit unacked. A broker-closed channel ends the session.
                    if !publisher.status().connected() {
                        break Err(WorkerError::Connection("the publish channel was closed".into()));
                    }
                }
                ev = events.next() => match ev {
                    Some(lapin::Event::Error(e)) => break Err(WorkerError::Connection(e.to_string())),
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        tracing::warn!(%reason, "RabbitMQ blocks this connection's publishes (resource alarm): retries and dead letters wait; not ready");
                        self.health.set("flow", false);
                        metrics::gauge!(names::BROKER_BLOCKED).set(1.0);
                    }
                    Some(lapin::Event::ConnectionUnblocked) => {
                        tracing::info!("RabbitMQ unblocked this connection");
                        self.health.set("flow", true);
                        metrics::gauge!(names::BROKER_BLOCKED).set(0.0);
                    }
                    Some(_) => {}
                    None => break Err(WorkerError::Connection("connection closed".into())),
                },
            }
        };
        stop.cancel();
        ended?;
        // Graceful: no new deliveries; the caller drains while acks still work. lapin closes
        // a channel when its last Channel and Consumer handles drop, so keep them all.
        let mut consumers = Vec::new();
        while let Some(r) = loops.join_next().await {
            if let Ok(Ok(c)) = r {
                consumers.push(c);
            }
        }
        for (ch, tag) in &cancel {
            let _ = ch
                .basic_cancel(tag.clone(), BasicCancelOptions::default())
                .await;
        }
        Ok(Open {
            conn,
            channels: cancel.into_iter().map(|(ch, _)| ch).collect(),
            consumers,
        })
    }
}

/// A session stopped for shutdown: everything that must stay open while in-flight jobs ack.
struct Open {
    conn: lapin::Connection,
    channels: Vec<Channel>,
    consumers: Vec<Consumer>,
}

async fn consume(
    queue: Arc<WorkQueue>,
    mut consumer: Consumer,
    session: Arc<Session>,
    tracker: TaskTracker,
    stop: CancellationToken,
    acks: crate::acks::AckSender,
) -> Result<Consumer, WorkerError> {
    let metrics = Arc::new(execute::QueueMetrics::new(&queue.name));
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(consumer),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    acks.send(crate::acks::AckEvent::Delivered(delivery.delivery_tag));
                    // Boxed: the job future is large, and spawning moves it.
                    tracker.spawn(Box::pin(execute::handle(
                        session.clone(),
                        queue.clone(),
                        metrics.clone(),
                        delivery,
                        acks.clone(),
                    )));
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(WorkerError::ConsumerCancelled { queue: queue.name.clone() }),
            },
        }
    }
}
