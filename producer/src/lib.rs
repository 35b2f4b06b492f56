//! Publishing jobs: publisher confirms, `mandatory` routing, persistent JSON messages.
//!
//! [`Producer`] is the one way Warren code publishes: the CLI, the worker runtime (retries
//! and dead letters) and the benchmark all go through [`Producer::publish_raw`]. A publish
//! is done only when the broker confirmed it; an unroutable publish (no queue bound to the
//! task) is an error, never a silent success.

use futures::stream::{FuturesOrdered, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use warren_core::envelope::{self, json_properties};
use warren_core::telemetry::names;

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
}

/// A confirmed publisher on its own channel.
#[derive(Clone)]
pub struct Producer {
    channel: Channel,
    exchange: String,
}

impl Producer {
    /// Opens a confirm-mode channel publishing to `exchange` (normally `<ns>.jobs`).
    pub async fn new(conn: &Connection, exchange: String) -> Result<Self, PublishError> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel, exchange })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes one job and waits for the broker's confirm. Returns the job id.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        task: &str,
        payload: &T,
        opts: &PublishOptions,
    ) -> Result<String, PublishError> {
        let body = serde_json::to_vec(payload)?;
        let (id, props) = Self::envelope(opts);
        self.publish_raw(&self.exchange, task, task, &body, props)
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
            let (id, props) = Self::envelope(&opts);
            ids.push(id);
            // The futures borrow the producer and the task; only the body moves in.
            pending.push_back(async move {
                self.publish_raw(&self.exchange, task, task, &body, props)
                    .await
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

    /// Builds the job id and properties for a publish.
    pub fn envelope(opts: &PublishOptions) -> (String, BasicProperties) {
        let id = opts
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let mut headers = FieldTable::default();
        if let Some(k) = &opts.idempotency_key {
            envelope::set_str(&mut headers, envelope::H_IDEMPOTENCY_KEY, k);
        }
        if let Some(t) = &opts.tenant {
            envelope::set_str(&mut headers, envelope::H_TENANT, t);
        }
        if let Some(m) = opts.max_attempts {
            envelope::set_int(&mut headers, envelope::H_MAX_ATTEMPTS, m.into());
        }
        let props = json_properties(&id, headers);
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
        let outcome = self.try_publish(exchange, routing_key, body, props).await;
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
