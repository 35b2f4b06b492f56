//! Waits between attempts to reach a broker or database that is down.
//!
//! Every reconnect loop in Warren waits the same way: a first pause that doubles after each
//! failed attempt up to a ceiling, without jitter, and starts from the first pause again once
//! the connection has been healthy. [`Backoff`] is that schedule, built on `backon`'s
//! exponential backoff; the loops keep their own decisions about what counts as healthy.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

/// A doubling wait: `first`, `2 × first`, `4 × first`, … up to `most`, for as many attempts
/// as it takes. (`backon` doubles in `f32` seconds, so a wait may be off its nominal value by
/// well under a microsecond, below the timer's millisecond resolution.)
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    waits: ExponentialBackoff,
    most: Duration,
}

impl Backoff {
    /// Starts at `first` and doubles after each wait up to `most`.
    pub fn doubling(first: Duration, most: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_factor(2.0)
            .with_max_delay(most)
            .without_max_times();
        Self {
            waits: builder.build(),
            builder,
            most,
        }
    }

    /// The wait before the next attempt; the one after it is twice as long (up to the most).
    pub fn next_wait(&mut self) -> Duration {
        // Without a limit on attempts or on the total the schedule never ends.
        self.waits.next().unwrap_or(self.most)
    }

    /// Starts again from the first wait: the connection was healthy since the last failure.
    pub fn reset(&mut self) {
        self.waits = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `backon` doubles in `f32` seconds: a wait is its nominal value to within a microsecond.
    fn next_ms(b: &mut Backoff) -> Duration {
        let w = b.next_wait();
        let nominal = ms((w.as_secs_f64() * 1000.0).round() as u64);
        assert!(w.abs_diff(nominal) < Duration::from_micros(1), "{w:?}");
        nominal
    }

    #[test]
    fn doubles_up_to_the_most_and_stays_there() {
        let mut b = Backoff::doubling(ms(250), Duration::from_secs(15));
        let waits: Vec<Duration> = (0..9).map(|_| next_ms(&mut b)).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000].map(ms)
        );
    }

    #[test]
    fn reset_starts_from_the_first_wait() {
        let mut b = Backoff::doubling(ms(100), Duration::from_secs(5));
        next_ms(&mut b);
        next_ms(&mut b);
        assert_eq!(next_ms(&mut b), ms(400));
        b.reset();
        assert_eq!(next_ms(&mut b), ms(100));
        assert_eq!(next_ms(&mut b), ms(200));
    }

    #[test]
    fn a_first_wait_above_the_most_falls_to_the_most() {
        let mut b = Backoff::doubling(ms(800), ms(500));
        assert_eq!(next_ms(&mut b), ms(800));
        assert_eq!(next_ms(&mut b), ms(500));
    }
}
