//! Retry policy: how many attempts a task gets and which delay tier each retry waits in.
//!
//! Delays are not timers in worker memory: a retried job is republished to a delay queue
//! whose queue-level TTL dead-letters it back to the work exchange. The tiers are the
//! topology's (`[retry] tiers`); retry *n* waits in the *n*-th tier allowed by the policy's
//! `min_delay..=max_delay` window, staying in the longest one after that. Delays therefore
//! grow with each attempt; they are as precise as the broker's TTL expiry (milliseconds to
//! about a second under load) and carry no jitter.

use std::time::Duration;

/// A task's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included. `1` means never retry.
    pub max_attempts: u32,
    /// Skip tiers shorter than this.
    pub min_delay: Duration,
    /// Skip tiers longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            min_delay: Duration::ZERO,
            max_delay: Duration::MAX,
        }
    }
}

impl RetryPolicy {
    /// Index of the tier that retry number `retry` (1 after the first failure) waits in.
    pub fn tier(&self, retry: u32, tiers: &[Duration]) -> usize {
        assert!(!tiers.is_empty(), "the topology always has delay tiers");
        let allowed: Vec<usize> = (0..tiers.len())
            .filter(|&i| tiers[i] >= self.min_delay && tiers[i] <= self.max_delay)
            .collect();
        if allowed.is_empty() {
            // The window misses every tier: use the nearest end.
            return if tiers[tiers.len() - 1] < self.min_delay {
                tiers.len() - 1
            } else {
                0
            };
        }
        let n = usize::try_from(retry.max(1) - 1).unwrap_or(usize::MAX);
        allowed[n.min(allowed.len() - 1)]
    }
}

/// Index of the tier a job snoozed for `delay` waits in: the longest tier not longer than
/// `delay`, or the shortest when every tier is longer.
pub fn tier_for_delay(delay: Duration, tiers: &[Duration]) -> usize {
    tiers.iter().rposition(|t| *t <= delay).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn retries_climb_the_tiers_and_stay_on_the_last() {
        let tiers = [s(1), s(5), s(30)];
        let p = RetryPolicy::default();
        assert_eq!(
            (1..=5).map(|r| p.tier(r, &tiers)).collect::<Vec<_>>(),
            vec![0, 1, 2, 2, 2]
        );
    }

    #[test]
    fn a_snooze_waits_in_the_longest_tier_that_fits() {
        let tiers = [s(1), s(5), s(30)];
        assert_eq!(tier_for_delay(Duration::from_millis(10), &tiers), 0);
        assert_eq!(tier_for_delay(s(1), &tiers), 0);
        assert_eq!(tier_for_delay(s(29), &tiers), 1);
        assert_eq!(tier_for_delay(s(3600), &tiers), 2);
    }

    #[test]
    fn window_restricts_tiers() {
        let tiers = [s(1), s(5), s(30), s(120)];
        let p = RetryPolicy {
            min_delay: s(5),
            max_delay: s(30),
            ..Default::default()
        };
        assert_eq!(p.tier(1, &tiers), 1);
        assert_eq!(p.tier(2, &tiers), 2);
        assert_eq!(p.tier(9, &tiers), 2);
        let too_long = RetryPolicy {
            min_delay: s(999),
            ..Default::default()
        };
        assert_eq!(too_long.tier(1, &tiers), 3);
    }
}
