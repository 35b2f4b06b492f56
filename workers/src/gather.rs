//! Batching by letting ready tasks go first.
//!
//! The runtime's batchers (the ledger's writer and checker, each channel's ack task) are
//! woken by the first op of a burst: a group commit wakes dozens of jobs, a burst of
//! deliveries queues dozens of checks. Sending at once would ship the first op alone and the
//! rest in the next batch. [`gather`] first lets the tasks that are ready run for a couple
//! of scheduler turns and takes what they queued: one statement or one ack frame instead of
//! several, for a wait no longer than those turns when nothing else is ready.

use tokio::sync::mpsc;

/// How many times [`gather`] yields. Measured in `warren bench` (docs/benchmarks.md): two
/// turns collect most of a burst; more collect hardly more.
const TURNS: usize = 2;

/// A channel receiver that can be emptied without waiting.
pub(crate) trait Queued<T> {
    fn take(&mut self) -> Option<T>;
}

impl<T> Queued<T> for mpsc::Receiver<T> {
    fn take(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T> Queued<T> for mpsc::UnboundedReceiver<T> {
    fn take(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// Lets the tasks that are ready to run go first, then moves what they queued into `batch`
/// (up to `max` in all).
pub(crate) async fn gather<T>(rx: &mut impl Queued<T>, batch: &mut Vec<T>, max: usize) {
    for _ in 0..TURNS {
        if batch.len() >= max {
            return;
        }
        tokio::task::yield_now().await;
        take_ready(rx, batch, max);
    }
}

/// Moves what is already queued into `batch`, up to `max` in all, without waiting.
pub(crate) fn take_ready<T>(rx: &mut impl Queued<T>, batch: &mut Vec<T>, max: usize) {
    while batch.len() < max {
        match rx.take() {
            Some(op) => batch.push(op),
            None => break,
        }
    }
}
