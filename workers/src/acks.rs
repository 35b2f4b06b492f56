//! Batched acknowledgements for one consumer channel.
//!
//! Jobs finish out of order; acking each one costs the broker a frame and work per
//! message. The consumer loop registers every delivery tag here as it arrives; a job that
//! is finished (ledger committed, consequences confirmed) reports its tag. This task acks
//! the longest finished prefix of outstanding tags with one `multiple` ack, and acks any
//! finished tag stuck behind a still-running job individually, so a slow job never holds
//! the others' prefetch slots. Under load a single frame acks hundreds of jobs.

use lapin::options::BasicAckOptions;
use lapin::Channel;
use std::collections::BTreeMap;
use tokio::sync::mpsc;

pub(crate) enum AckEvent {
    /// A delivery arrived (sent by the consumer loop, in tag order).
    Delivered(u64),
    /// Ack this delivery.
    Done(u64),
    /// The delivery was settled another way (nack); forget it.
    Settled(u64),
}

/// Sends events to a channel's ack task.
#[derive(Clone)]
pub(crate) struct AckSender(mpsc::UnboundedSender<AckEvent>);

impl AckSender {
    pub fn send(&self, ev: AckEvent) {
        // The ack task only stops once every sender is gone.
        let _ = self.0.send(ev);
    }
}

/// Starts the ack task for `channel`; it ends when every [`AckSender`] is dropped, after
/// acking everything it was told about.
pub(crate) fn start(channel: Channel) -> (AckSender, impl std::future::Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (AckSender(tx), run(channel, rx))
}

async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<AckEvent>) {
    // tag -> finished?
    let mut pending: BTreeMap<u64, bool> = BTreeMap::new();
    let mut events = Vec::with_capacity(1024);
    let mut warned = false;
    while rx.recv_many(&mut events, 4096).await > 0 {
        for ev in events.drain(..) {
            match ev {
                AckEvent::Delivered(tag) => {
                    pending.insert(tag, false);
                }
                AckEvent::Done(tag) => {
                    pending.insert(tag, true);
                }
                AckEvent::Settled(tag) => {
                    pending.remove(&tag);
                }
            }
        }
        let mut prefix_end = None;
        for (&tag, &done) in &pending {
            if !done {
                break;
            }
            prefix_end = Some(tag);
        }
        let mut singles = Vec::new();
        if let Some(end) = prefix_end {
            let rest = pending.split_off(&(end + 1));
            pending = rest;
            if let Err(e) = channel
                .basic_ack(end, BasicAckOptions { multiple: true })
                .await
            {
                warn_once(&mut warned, &e);
            }
        }
        for (&tag, &done) in &pending {
            if done {
                singles.push(tag);
            }
        }
        for tag in singles {
            pending.remove(&tag);
            if let Err(e) = channel.basic_ack(tag, BasicAckOptions::default()).await {
                warn_once(&mut warned, &e);
            }
        }
    }
}

fn warn_once(warned: &mut bool, e: &lapin::Error) {
    if !*warned {
        *warned = true;
        tracing::warn!(error = %e,
            "acks not delivered (channel closed); the broker will redeliver and the ledger will deduplicate");
    }
}
