//! A connect-on-demand producer for roles that publish now and then (ingest requests, the
//! scheduler's scans and cron, the outbox relay): the connection opens when a publish needs
//! it and is dropped after a connection failure so the next publish reconnects. Shareable:
//! a mutex around the link, a generation number so a caller resets only the link it failed
//! on, and an optional watcher that keeps `/readyz` and `warren_broker_connected` true to the
//! connection while nothing publishes. Every (re)connect declares the topology, as the
//! worker does.

use crate::{Producer, PublishError};
use lapin::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use warren_core::telemetry::{names, Health};
use warren_core::topology::Topology;

/// How long one connect attempt may take before the broker counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connect, requests fail fast for this long instead of each trying again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// RabbitMQ is unreachable (the message says why; it never contains the URL's password).
#[derive(Debug, Clone, thiserror::Error)]
#[error("RabbitMQ is unavailable: {0}")]
pub struct Unavailable(pub String);

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
}

impl SharedBroker {
    /// Nothing is opened until [`link`](Self::link) (or the watcher) needs it. `health`'s
    /// `broker` check follows the connection.
    pub fn new(url: String, role: &'static str, topology: Topology, health: Health) -> Self {
        Self {
            url,
            role,
            topology,
            health,
            state: Mutex::new(State::default()),
        }
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
                tracing::info!(generation = st.generation, "connected to RabbitMQ");
                Ok(link)
            }
            Ok(Err(e)) => Err(self.failed(&mut st, e)),
            Err(_) => {
                Err(self.failed(&mut st, format!("no connection within {CONNECT_TIMEOUT:?}")))
            }
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
                _ = tick.tick() => {
                    if let Err(e) = self.link().await {
                        tracing::debug!(error = %e, "broker still unavailable");
                    }
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

    async fn open(&self) -> Result<(Connection, Producer), String> {
        let conn = warren_core::broker::connect(&self.url, self.role)
            .await
            .map_err(|e| e.to_string())?;
        let setup = conn.create_channel().await.map_err(|e| e.to_string())?;
        self.topology
            .declare(&setup)
            .await
            .map_err(|e| e.to_string())?;
        let _ = setup.close(200, "topology declared".into()).await;
        let producer = Producer::new(&conn, self.topology.jobs_exchange())
            .await
            .map_err(|e: PublishError| e.to_string())?
            .with_topology(&self.topology);
        Ok((conn, producer))
    }

    fn failed(&self, st: &mut State, why: impl Into<String>) -> Unavailable {
        let why = why.into();
        if st.last_failure.is_none() {
            tracing::warn!(error = %why, role = self.role, "cannot reach RabbitMQ; publishes wait until it is back");
        }
        st.last_failure = Some((Instant::now(), why.clone()));
        self.mark(false);
        Unavailable(why)
    }

    fn mark(&self, up: bool) {
        self.health.set("broker", up);
        metrics::gauge!(names::BROKER_CONNECTED).set(if up { 1.0 } else { 0.0 });
    }
}
