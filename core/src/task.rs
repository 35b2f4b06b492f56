//! Task names, the payloads of the built-in tasks, and [`JobArgs`], which ties a payload
//! type to its task name so publishers enqueue it without spelling the name.
//!
//! A task name is a stable string and is the AMQP routing key of every job of that task. It
//! is never derived from a Rust type name, so renaming code never orphans queued jobs.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Does nothing; accepts any JSON object. Operators publish it to check a deployment.
pub const DEMO_NOOP: &str = "demo.noop";
/// Sleeps for `ms` milliseconds ([`DemoSleep`]).
pub const DEMO_SLEEP: &str = "demo.sleep";
/// Fails on purpose ([`DemoFail`]): exercises retries and dead-lettering.
pub const DEMO_FAIL: &str = "demo.fail";
/// Renews one Pagar.me prepaid subscription (handler in the renewals issue).
pub const RENEWAL_PAGARME: &str = "renewal.pagarme";
/// Renews one Appmax subscription (handler in the renewals issue).
pub const RENEWAL_APPMAX: &str = "renewal.appmax";

/// A payload type that knows its task: `producer.enqueue(&args)` publishes it to
/// [`JobArgs::TASK`] (`warren_producer::Producer::enqueue`), and the worker's handler for
/// that task names the same type as its payload.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use warren_core::task::JobArgs;
///
/// #[derive(Serialize, Deserialize)]
/// struct Welcome {
///     email: String,
/// }
///
/// impl JobArgs for Welcome {
///     const TASK: &'static str = "email.welcome";
/// }
/// assert_eq!(Welcome::TASK, "email.welcome");
/// ```
pub trait JobArgs: Serialize {
    /// The task name (routing key): a stable string, never derived from the type's name.
    const TASK: &'static str;
}

impl JobArgs for DemoSleep {
    const TASK: &'static str = DEMO_SLEEP;
}

impl JobArgs for DemoFail {
    const TASK: &'static str = DEMO_FAIL;
}

/// Payload of `demo.noop`: any JSON object.
pub type DemoNoop = serde_json::Map<String, serde_json::Value>;

/// Payload of `demo.sleep`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoSleep {
    /// How long the handler sleeps, in milliseconds.
    #[serde(deserialize_with = "crate::payload::strict::u64")]
    #[schemars(range(max = u64::MAX))]
    pub ms: u64,
}

/// How `demo.fail` fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// A retryable error: retried through the delay tiers, then dead-lettered `exhausted`.
    Retryable,
    /// A permanent error: dead-lettered `permanent` at once.
    Permanent,
    /// The handler panics; the worker survives and treats it as a retryable failure.
    Panic,
}

/// Payload of `demo.fail`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DemoFail {
    /// How the job fails: `retryable`, `permanent` or `panic`.
    pub mode: FailMode,
    /// Fail only before this instant; at or after it the job succeeds, so a replay of the
    /// dead letter after `until` goes through.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::payload::strict::opt_date_time"
    )]
    pub until: Option<DateTime<Utc>>,
}

/// Payload of `renewal.pagarme` and `renewal.appmax`: renew one subscription for the period
/// that ended at `period_end` (the scheduler publishes it; handlers validate it). `attempt`
/// is the charge attempt of that period: 1 (the default, omitted on the wire) for the
/// renewal, 2, 3, … for dunning attempts after declines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewalPayload {
    /// The subscription to renew (`customer_subscriptions.id`).
    #[serde(deserialize_with = "crate::payload::strict::uuid")]
    pub subscription_id: uuid::Uuid,
    /// End of the period being renewed (RFC 3339): the subscription's `current_period_end`
    /// when the scheduler found it due.
    #[serde(deserialize_with = "crate::payload::strict::date_time")]
    pub period_end: DateTime<Utc>,
    /// Charge attempt of the period: 1 (the default) for the renewal, 2, 3, … for dunning
    /// attempts. The handler dead-letters 0 as permanent, so the schema asks for 1 or more.
    #[serde(
        default = "first_attempt",
        skip_serializing_if = "is_first_attempt",
        deserialize_with = "crate::payload::strict::u16"
    )]
    #[schemars(range(min = 1), extend("default" = 1))]
    pub attempt: u16,
}

fn first_attempt() -> u16 {
    1
}

fn is_first_attempt(a: &u16) -> bool {
    *a == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_fail_parses_modes_and_rejects_unknown_fields() {
        let p: DemoFail = serde_json::from_str(r#"{"mode":"retryable"}"#).unwrap();
        assert_eq!(p.mode, FailMode::Retryable);
        assert!(p.until.is_none());
        let p: DemoFail =
            serde_json::from_str(r#"{"mode":"panic","until":"2030-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(p.mode, FailMode::Panic);
        assert!(p.until.is_some());
        assert!(serde_json::from_str::<DemoFail>(r#"{"mode":"explode"}"#).is_err());
        assert!(serde_json::from_str::<DemoFail>(r#"{"mode":"permanent","x":1}"#).is_err());
    }

    #[test]
    fn demo_sleep_requires_ms() {
        assert!(serde_json::from_str::<DemoSleep>("{}").is_err());
        assert_eq!(
            serde_json::from_str::<DemoSleep>(r#"{"ms":5}"#).unwrap(),
            DemoSleep { ms: 5 }
        );
    }
}
