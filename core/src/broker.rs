//! Connecting to RabbitMQ.
//!
//! lapin does not reconnect on its own; the roles that stay up (worker, scheduler, ingest)
//! run a supervised connect loop around [`connect`]. One-shot commands just call it.

use lapin::{Connection, ConnectionProperties};

/// Opens a connection named `role@host` (visible in the management UI).
pub async fn connect(url: &str, role: &str) -> Result<Connection, lapin::Error> {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "warren".into());
    let props = ConnectionProperties::default()
        .with_connection_name(format!("warren-{role}@{host}").into());
    Connection::connect(url, props).await
}

/// Whether an error means the connection or channel is gone (reconnect), as opposed to a
/// refusal of one operation.
pub fn is_connection_error(e: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::IOError(_)
        | K::RuntimeShutdownError(_)
        | K::MissingHeartbeatError
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::InvalidChannel(_) => true,
        K::ProtocolError(amqp) => e.is_amqp_hard_error() || amqp.get_id() == 320,
        _ => false,
    }
}

/// What a passive declare tells of an existing queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (not the unacked ones).
    pub ready: u32,
    pub consumers: u32,
}

/// Ready messages and consumers of an existing queue (a passive declare). A missing queue
/// is an error and the broker closes `ch` with it: ask on a channel you can lose.
pub async fn queue_counts(ch: &lapin::Channel, queue: &str) -> Result<QueueCounts, lapin::Error> {
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok(QueueCounts {
        ready: q.message_count(),
        consumers: q.consumer_count(),
    })
}
