//! Batched acknowledgements for one consumer channel.
//!
//! Jobs finish out of order; acking each one costs the broker a frame and, on a quorum
//! queue, a Raft log entry per ack. The consumer loop registers every delivery tag here as
//! it arrives; a job that is finished (ledger committed, consequences confirmed) reports its
//! tag. This task acks the longest finished prefix of outstanding tags with one `multiple`
//! ack. A finished tag stuck behind a still-running job waits [`STUCK_AFTER`] for the
//! prefix to catch up (a group commit wakes its jobs in no particular order, so the job
//! ahead is usually a moment behind) and is then acked on its own, so a slow job never holds
//! the others' prefetch slots for longer. Under load a single frame acks hundreds of jobs.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use crate::gather::gather;
use lapin::options::BasicAckOptions;
use lapin::Channel;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a finished delivery waits behind an unfinished one before it is acked alone.
pub(crate) const STUCK_AFTER: Duration = Duration::from_millis(20);

/// Most events taken in one pass.
const MAX_EVENTS: usize = 4096;

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
    // tag -> when it finished (None: still running).
    let mut pending: BTreeMap<u64, Option<Instant>> = BTreeMap::new();
    let mut events = Vec::with_capacity(1024);
    let mut warned = false;
    let mut wake: Option<Instant> = None;
    loop {
        let received = match wake {
            Some(at) => tokio::select! {
                n = rx.recv_many(&mut events, MAX_EVENTS) => n,
                () = tokio::time::sleep_until(at) => usize::MAX,
            },
            None => rx.recv_many(&mut events, MAX_EVENTS).await,
        };
        if received == 0 {
            break;
        }
        if received != usize::MAX {
            // A group commit wakes its jobs one by one: take them all into one ack frame.
            gather(&mut rx, &mut events, MAX_EVENTS).await;
        }
        let now = Instant::now();
        for ev in events.drain(..) {
            match ev {
                AckEvent::Delivered(tag) => {
                    pending.insert(tag, None);
                }
                AckEvent::Done(tag) => {
                    pending.insert(tag, Some(now));
                }
                AckEvent::Settled(tag) => {
                    pending.remove(&tag);
                }
            }
        }
        let mut prefix_end = None;
        for (&tag, done) in &pending {
            if done.is_none() {
                break;
            }
            prefix_end = Some(tag);
        }
        if let Some(end) = prefix_end {
            pending = pending.split_off(&(end + 1));
            if let Err(e) = channel
                .basic_ack(end, BasicAckOptions { multiple: true })
                .await
            {
                warn_once(&mut warned, &e);
            }
        }
        wake = ack_stuck(&channel, &mut pending, now, STUCK_AFTER, &mut warned).await;
    }
    // Every sender is gone: ack whatever finished, however recently.
    ack_stuck(
        &channel,
        &mut pending,
        Instant::now(),
        Duration::ZERO,
        &mut warned,
    )
    .await;
}

/// Acks, one by one, the finished tags that have waited `wait` by `now`; returns when the
/// next of the others will have.
async fn ack_stuck(
    channel: &Channel,
    pending: &mut BTreeMap<u64, Option<Instant>>,
    now: Instant,
    wait: Duration,
    warned: &mut bool,
) -> Option<Instant> {
    let mut stuck = Vec::new();
    let mut next: Option<Instant> = None;
    for (&tag, done) in pending.iter() {
        if let Some(at) = *done {
            let due = at + wait;
            if due <= now {
                stuck.push(tag);
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
    }
    for tag in stuck {
        pending.remove(&tag);
        if let Err(e) = channel.basic_ack(tag, BasicAckOptions::default()).await {
            warn_once(warned, &e);
        }
    }
    next
}

fn warn_once(warned: &mut bool, e: &lapin::Error) {
    if !*warned {
        *warned = true;
        tracing::warn!(error = %e,
            "acks not delivered (channel closed); the broker will redeliver and the ledger will deduplicate");
    }
}
