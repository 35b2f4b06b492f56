//! A connect-on-demand producer for roles that publish now and then (ingest requests, the
//! scheduler's scans and cron, the outbox relay): the connection opens when a publish needs
//! it and is dropped after a connection failure so the next publish reconnects. Shareable:
//! a mutex around the link, a generation number so a caller resets only the link it failed
//! on, and an optional watcher that keeps `/readyz` and `warren_broker_connected` true to the
//! connection while nothing publishes. Every (re)connect declares the topology, as the
//! worker does.
//!
//! Flow control: RabbitMQ blocks a connection's publishes during a memory or disk alarm, and
//! tells a connection so (`connection.blocked`) only once it publishes. The watcher can
//! probe (see [`SharedBroker::with_flow_probe`]) so an idle publisher learns of an alarm
//! before a caller's publish gets stuck behind it; the `flow` health check and
//! `warren_broker_blocked` follow the connection's state.

use crate::{Producer, PublishError};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use warren_core::broker::is_connection_error;
use warren_core::telemetry::{names, Health};
use warren_core::topology::{Topology, TopologyError};

/// How long one connect attempt may take before the broker counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connect, requests fail fast for this long instead of each trying again.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Routing key of the flow probe on the default exchange, which routes by queue name: no
/// client may declare a queue named `amq.*`, so the probe reaches no queue and is dropped.
const FLOW_PROBE_KEY: &str = "amq.warren.flow-probe";

/// RabbitMQ is unreachable (the message says why; it never contains the URL's password).
#[derive(Debug, Clone, thiserror::Error)]
#[error("RabbitMQ is unavailable: {0}")]
pub struct Unavailable(pub String);

/// Why opening a link failed, classified where it happened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Connect(#[source] lapin::Error),
    #[error("opening a channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Producer(#[from] PublishError),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
}

impl OpenError {
    /// Whether another attempt can succeed without an operator changing something (the
    /// broker is down or busy, not refusing this topology or these credentials).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(e) | Self::Channel(e) => is_connection_error(e),
            Self::Topology(e) => e.is_retryable(),
            Self::Producer(e) => e.is_retryable(),
            Self::Timeout(_) => true,
        }
    }
}

/// A confirmed producer on the current connection, and which connection that is.
#[derive(Clone)]
pub struct Link {
    pub producer: Producer,
    pub generation: u64,
    conn: Arc<Connection>,
}

impl Link {
    fn alive(&self) -> bool {
        self.conn.status().connected() && self.producer.channel().status().connected()
    }

    /// RabbitMQ blocks this connection's publishes (a memory or disk alarm): whatever is
    /// published now waits, unconfirmed, until the alarm clears.
    pub fn blocked(&self) -> bool {
        self.conn.status().blocked()
    }

    /// Publishes nothing anyone receives, so that RabbitMQ, during an alarm, blocks this
    /// connection and says so now rather than on the next real publish.
    fn probe_flow(&self) {
        let channel = self.producer.channel().clone();
        tokio::spawn(async move {
            let sent = channel.basic_publish(
                "".into(),
                FLOW_PROBE_KEY.into(),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default(),
            );
            // The confirm arrives (for a message no queue took) once the connection flows.
            let _ = tokio::time::timeout(Duration::from_secs(30), async {
                if let Ok(confirm) = sent.await {
                    let _ = confirm.await;
                }
            })
            .await;
        });
    }
}

#[derive(Default)]
struct State {
    link: Option<Link>,
    generation: u64,
    last_failure: Option<(Instant, String)>,
}

/// The shared, reconnecting broker handle.
pub struct SharedBroker {
    url: String,
    role: &'static str,
    topology: Topology,
    health: Health,
    state: Mutex<State>,
    probe_flow: bool,
}

impl SharedBroker {
    /// Nothing is opened until [`link`](Self::link) (or the watcher) needs it. `health`'s
    /// `broker` check follows the connection, its `flow` check whether RabbitMQ blocks it.
    pub fn new(url: String, role: &'static str, topology: Topology, health: Health) -> Self {
        health.set("flow", true);
        Self {
            url,
            role,
            topology,
            health,
            state: Mutex::new(State::default()),
            probe_flow: false,
        }
    }

    /// The watcher also publishes a probe no queue receives on every check while the
    /// connection flows, so a resource alarm blocks the connection, and shows on `/readyz`,
    /// within a check of being raised even while nothing else publishes. For roles whose
    /// connection exists to publish (ingest), never for one that must keep acking.
    pub fn with_flow_probe(mut self) -> Self {
        self.probe_flow = true;
        self
    }

    /// The current link, connecting first when there is none or it died.
    pub async fn link(&self) -> Result<Link, Unavailable> {
        let mut st = self.state.lock().await;
        if let Some(link) = &st.link {
            if link.alive() {
                return Ok(link.clone());
            }
            tracing::warn!("RabbitMQ connection lost; reconnecting on the next publish");
            st.link = None;
            self.mark(false);
        }
        if let Some((at, why)) = &st.last_failure {
            if at.elapsed() < RETRY_AFTER {
                return Err(Unavailable(why.clone()));
            }
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, self.open()).await {
            Ok(Ok((conn, producer))) => {
                st.generation += 1;
                if st.generation > 1 {
                    metrics::counter!(names::BROKER_RECONNECTS).increment(1);
                }
                let link = Link {
                    producer,
                    generation: st.generation,
                    conn: Arc::new(conn),
                };
                st.link = Some(link.clone());
                st.last_failure = None;
                self.mark(true);
                self.mark_flow(false);
                tracing::info!(generation = st.generation, "connected to RabbitMQ");
                Ok(link)
            }
            Ok(Err(e)) => Err(self.failed(&mut st, e)),
            Err(_) => Err(self.failed(&mut st, OpenError::Timeout(CONNECT_TIMEOUT))),
        }
    }

    /// Drops the link of `generation` (a publish on it failed for connection reasons); the
    /// next request reconnects.
    pub async fn reset(&self, generation: u64) {
        let mut st = self.state.lock().await;
        if st.link.as_ref().is_some_and(|l| l.generation == generation) {
            if let Some(old) = st.link.take() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        old.conn.close(200, "reconnecting".into()),
                    )
                    .await;
                });
            }
            self.mark(false);
        }
    }

    /// Checks the connection every `every` (reconnecting when it is gone) until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => match self.link().await {
                    Ok(link) => {
                        let blocked = self.follow_flow(&link);
                        if self.probe_flow && !blocked {
                            link.probe_flow();
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "broker still unavailable"),
                }
            }
        }
    }

    /// The topology it declares and publishes into.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Closes the connection (shutdown).
    pub async fn close(&self) {
        let mut st = self.state.lock().await;
        if let Some(link) = st.link.take() {
            let why = format!("{} stopping", self.role);
            let _ = link
                .producer
                .channel()
                .close(200, why.as_str().into())
                .await;
            let _ = link.conn.close(200, why.as_str().into()).await;
        }
        self.mark(false);
    }

    async fn open(&self) -> Result<(Connection, Producer), OpenError> {
        let conn = warren_core::broker::connect(&self.url, self.role)
            .await
            .map_err(OpenError::Connect)?;
        let setup = conn.create_channel().await.map_err(OpenError::Channel)?;
        self.topology.declare(&setup).await?;
        let _ = setup.close(200, "topology declared".into()).await;
        let producer = Producer::new(&conn, self.topology.jobs_exchange())
            .await?
            .with_topology(&self.topology);
        Ok((conn, producer))
    }

    fn failed(&self, st: &mut State, e: OpenError) -> Unavailable {
        let why = e.to_string();
        if st.last_failure.is_none() {
            tracing::warn!(error = %why, retryable = e.is_retryable(), role = self.role,
                "cannot reach RabbitMQ; publishes wait until it is back");
        }
        st.last_failure = Some((Instant::now(), why.clone()));
        self.mark(false);
        Unavailable(why)
    }

    /// Records whether RabbitMQ blocks `link`'s connection (`flow` check,
    /// `warren_broker_blocked`), logging the changes. Returns whether it does.
    pub fn follow_flow(&self, link: &Link) -> bool {
        let blocked = link.blocked();
        let was_blocked = !self.health.is_up("flow");
        if blocked != was_blocked {
            if blocked {
                tracing::warn!(role = self.role, "RabbitMQ blocks publishes (a memory or disk alarm): publishes are refused until it clears; not ready");
            } else {
                tracing::info!(role = self.role, "RabbitMQ accepts publishes again");
            }
        }
        self.mark_flow(blocked);
        blocked
    }

    fn mark_flow(&self, blocked: bool) {
        self.health.set("flow", !blocked);
        metrics::gauge!(names::BROKER_BLOCKED).set(if blocked { 1.0 } else { 0.0 });
    }

    fn mark(&self, up: bool) {
        self.health.set("broker", up);
        metrics::gauge!(names::BROKER_CONNECTED).set(if up { 1.0 } else { 0.0 });
    }
}
