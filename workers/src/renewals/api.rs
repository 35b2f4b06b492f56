//! The per-process rate limit and the provider metrics around every provider request a
//! renewal makes.
//!
//! An attempt takes its first permit with [`Api::admit`] *before* it takes the key's lease,
//! so a lease is never spent waiting in the limiter; later requests of the same attempt wait
//! for theirs while the lease is renewed.

use crate::providers::{Charge, ProviderError};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::future::Future;
use std::num::NonZeroU32;
use std::time::Instant;
use warren_core::telemetry::names;

/// Rate limit and metrics around one provider's API calls.
pub struct Api {
    provider: &'static str,
    limiter: Option<DefaultDirectRateLimiter>,
}

/// One request's worth of the rate limit, granted before the request is made.
#[must_use]
pub struct Permit(());

impl Api {
    /// `rate_limit`: most requests per second from this process (`None` or 0: unlimited).
    pub fn new(provider: &'static str, rate_limit: Option<u32>) -> Self {
        Self {
            provider,
            limiter: rate_limit
                .and_then(NonZeroU32::new)
                .map(|r| RateLimiter::direct(Quota::per_second(r))),
        }
    }

    /// Waits until the limiter grants one request.
    pub async fn admit(&self) -> Permit {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        Permit(())
    }

    /// Makes one request: with `permit` if the caller already holds one, else after the
    /// limiter grants it; records its duration and outcome.
    pub async fn call<T>(
        &self,
        permit: Option<Permit>,
        operation: &'static str,
        outcome: impl Fn(&T) -> &'static str,
        request: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        if permit.is_none() {
            let _ = self.admit().await;
        }
        let started = Instant::now();
        let result = request.await;
        let label = match &result {
            Ok(v) => outcome(v),
            Err(ProviderError::Declined { .. }) => "failed",
            Err(ProviderError::Retryable { .. }) => "retryable",
            Err(ProviderError::Permanent { .. }) => "permanent",
            Err(ProviderError::Unknown { .. }) => "unknown",
        };
        metrics::histogram!(names::PROVIDER_REQUEST_DURATION,
            "provider" => self.provider, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
        metrics::counter!(names::PROVIDER_REQUESTS,
            "provider" => self.provider, "operation" => operation, "outcome" => label)
        .increment(1);
        result
    }
}

/// The `outcome` label of a decision.
pub fn charge_label(c: &Charge) -> &'static str {
    match c {
        Charge::Paid { .. } => "paid",
        Charge::Failed { .. } => "failed",
        Charge::Pending { .. } => "pending",
    }
}

/// The `outcome` label of a lookup: its first (newest) order's decision, or `not_found`.
pub fn lookup_label(found: &[Charge]) -> &'static str {
    found.first().map(charge_label).unwrap_or("not_found")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn calls_wait_for_the_rate_limit_unless_admitted() {
        // 5/s allows a burst of 5, then one call per 200 ms: 10 calls take at least 1 s.
        let api = Api::new("test", Some(5));
        let started = Instant::now();
        for _ in 0..10 {
            api.call(None, "charge", charge_label, async {
                Ok(Charge::Pending {
                    order_id: "o".into(),
                })
            })
            .await
            .unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
        // A call made with a permit does not wait again: the limiter is empty now, yet it
        // returns at once.
        let permit = Permit(());
        let started = Instant::now();
        let label = |f: &Vec<Charge>| lookup_label(f);
        api.call(Some(permit), "lookup", label, async { Ok(vec![]) })
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(150));
        // 0 means unlimited.
        let unlimited = Api::new("test", Some(0));
        assert!(unlimited.limiter.is_none());
    }
}
