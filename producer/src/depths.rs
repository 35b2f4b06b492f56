//! What the broker holds per work queue, for `warren status`: ready messages and consumers
//! (a passive declare, which needs nothing but AMQP), the DLQ's depth, and unacked messages,
//! which only RabbitMQ's management HTTP API knows (used when it is reachable).

use lapin::Connection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;
use warren_core::broker::{queue_counts, QueueCounts};
use warren_core::topology::Topology;

/// One work queue's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    /// Short name (`renewals.pagarme`).
    pub queue: String,
    pub ready: u32,
    pub consumers: u32,
    /// `None` when the management API could not be asked.
    pub unacked: Option<u64>,
    /// Messages in `<ns>.<queue>.dlq`.
    pub dlq: u32,
}

/// Why the depths could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DepthError {
    #[error("queue {queue} cannot be inspected ({source}); has `warren topology` run for this namespace?")]
    Queue {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
}

/// Why the management API gave no unacked counts, classified where it happened.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("not reachable at {url} ({source})")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("unexpected answer from {url}: {source}")]
    Answer {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ManagementError {
    /// Whether asking again can succeed: the API is down or busy, not refusing the
    /// credentials or answering something other than the management API.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Status { status, .. } => {
                status.is_server_error() || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            Self::Answer { .. } => false,
        }
    }
}

/// The management HTTP API (the `rabbitmq_management` plugin).
pub struct Management {
    base: String,
    user: String,
    password: String,
    vhost: String,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct ApiQueue {
    name: String,
    #[serde(default)]
    messages_unacknowledged: u64,
}

impl Management {
    /// `url` like `http://127.0.0.1:15672`; credentials in it win, else the AMQP URL's
    /// user and password are used, and the AMQP URL's vhost.
    pub fn new(url: &str, amqp_url: &str) -> Self {
        let amqp = lapin::uri::AMQPUri::from_str(amqp_url).unwrap_or_default();
        let (mut user, mut password) = (
            amqp.authority.userinfo.username.clone(),
            amqp.authority.userinfo.password.clone(),
        );
        let mut base = url.trim_end_matches('/').to_owned();
        if let Some((scheme, rest)) = base.split_once("://") {
            if let Some((creds, host)) = rest.rsplit_once('@') {
                let (u, p) = creds.split_once(':').unwrap_or((creds, ""));
                (user, password) = (u.to_owned(), p.to_owned());
                base = format!("{scheme}://{host}");
            }
        }
        Self {
            base,
            user,
            password,
            vhost: amqp.vhost,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The URL without credentials, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Unacked messages per broker queue name of the vhost.
    pub async fn unacked(&self) -> Result<HashMap<String, u64>, ManagementError> {
        let vhost: String = self
            .vhost
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let url = format!(
            "{}/api/queues/{vhost}?columns=name,messages_unacknowledged",
            self.base
        );
        let resp = self
            .client
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|source| ManagementError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(ManagementError::Status {
                url: self.base.clone(),
                status: resp.status(),
            });
        }
        let queues: Vec<ApiQueue> =
            resp.json()
                .await
                .map_err(|source| ManagementError::Answer {
                    url: self.base.clone(),
                    source,
                })?;
        Ok(queues
            .into_iter()
            .map(|q| (q.name, q.messages_unacknowledged))
            .collect())
    }
}

/// Every work queue's depths. Unacked counts come from `management` when given and
/// reachable; otherwise they are `None` and the second value says why.
pub async fn depths(
    conn: &Connection,
    topology: &Topology,
    management: Option<&Management>,
) -> Result<(Vec<QueueDepth>, Option<String>), DepthError> {
    let (unacked, why) = match management {
        Some(m) => match m.unacked().await {
            Ok(u) => (Some(u), None),
            Err(e) => (None, Some(format!("management API {e}"))),
        },
        None => (None, Some("no management API URL set".to_owned())),
    };
    let mut out = Vec::new();
    for q in topology.queues() {
        let name = topology.queue_name(&q.name);
        let QueueCounts { ready, consumers } = passive(conn, &name).await?;
        let dlq = passive(conn, &topology.dlq_name(&q.name)).await?.ready;
        out.push(QueueDepth {
            queue: q.name.clone(),
            ready,
            consumers,
            unacked: unacked.as_ref().map(|u| u.get(&name).copied().unwrap_or(0)),
            dlq,
        });
    }
    Ok((out, why))
}

/// A queue's counts on a channel of its own: a missing queue closes the channel it was
/// asked on.
async fn passive(conn: &Connection, name: &str) -> Result<QueueCounts, DepthError> {
    let ch = conn.create_channel().await?;
    let counts = queue_counts(&ch, name)
        .await
        .map_err(|source| DepthError::Queue {
            queue: name.to_owned(),
            source,
        })?;
    let _ = ch.close(200, "inspected".into()).await;
    Ok(counts)
}
