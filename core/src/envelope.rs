//! The job envelope: AMQP properties and headers that travel with every job.
//!
//! The body is the task's JSON payload; the routing key is the task name; `message_id` is
//! the job id. Everything else is an optional header, read and written only here.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use std::fmt;

/// Idempotency key the handler forwards to providers.
pub const H_IDEMPOTENCY_KEY: &str = "x-idempotency-key";
/// Tenant the job belongs to.
pub const H_TENANT: &str = "x-tenant";
/// Attempt number of this delivery, starting at 1; set by the runtime on retries.
pub const H_ATTEMPT: &str = "x-attempt";
/// Overrides the task's `max_attempts` for this job.
pub const H_MAX_ATTEMPTS: &str = "x-max-attempts";
/// W3C trace context.
pub const H_TRACEPARENT: &str = "traceparent";
/// Dead letters: the last error's message.
pub const H_ERROR: &str = "x-error";
/// Dead letters: why the job was dead-lettered ([`DeadLetterKind`]).
pub const H_ERROR_KIND: &str = "x-error-kind";
/// Dead letters: the routing key (task) the job was published with.
pub const H_ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// Dead letters: RFC 3339 time of dead-lettering.
pub const H_FAILED_AT: &str = "x-failed-at";
/// Dead letters: how many attempts ran.
pub const H_ATTEMPTS: &str = "x-attempts";
/// Set by quorum queues on redelivery: how many times the broker has returned the message.
pub const H_DELIVERY_COUNT: &str = "x-delivery-count";

/// Why a job ended in a dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterKind {
    /// The handler returned a permanent error.
    Permanent,
    /// Retryable failures used up `max_attempts`.
    Exhausted,
    /// The body is not valid JSON or does not match the task's payload type.
    Malformed,
    /// No handler is registered for the routing key.
    UnknownTask,
    /// The last attempt ran over the task's timeout and no attempts are left.
    Timeout,
    /// The broker redelivered the message up to the queue's delivery limit (crash loop).
    DeliveryLimit,
    /// The handler cannot tell whether its external effect happened (a charge the provider
    /// still reports as pending past the bound): an operator decides.
    UnknownOutcome,
}

impl DeadLetterKind {
    /// Every kind, for listings and filters.
    pub const ALL: [Self; 7] = [
        Self::Permanent,
        Self::Exhausted,
        Self::Malformed,
        Self::UnknownTask,
        Self::Timeout,
        Self::DeliveryLimit,
        Self::UnknownOutcome,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
            Self::Malformed => "malformed",
            Self::UnknownTask => "unknown-task",
            Self::Timeout => "timeout",
            Self::DeliveryLimit => "delivery-limit",
            Self::UnknownOutcome => "unknown-outcome",
        }
    }
}

impl fmt::Display for DeadLetterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Namespace of deterministic job ids.
const JOB_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5f1c_2a4e_8d3b_4c6a_9e7f_1b2d_3c4e_5f60);

/// The job id of an idempotency key (UUIDv5): whoever publishes the same key — a scheduler
/// replica after failover, a retried scan, a cron tick — publishes the same job id, which
/// the worker's ledger deduplicates. Keys carry their kind as a prefix (`renewal:…`,
/// `cron:…`), so one namespace serves them all.
pub fn job_id_for_key(key: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&JOB_ID_NAMESPACE, key.as_bytes())
}

/// Persistent JSON message properties, as every Warren publisher sets them. Never panics: a
/// `job_id` that is not an AMQP short string (over [`crate::limits::MAX_SHORT`] bytes) is left
/// out; publishers check ids with [`crate::limits::check_short`] first.
pub fn json_properties(job_id: &str, headers: FieldTable) -> BasicProperties {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(now)
        .with_headers(headers);
    match ShortString::try_new(job_id) {
        Ok(id) => props.with_message_id(id),
        Err(_) => props,
    }
}

/// Reads a header as a string (AMQP short or long string).
pub fn header_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads a header as an unsigned integer, whatever integer width (or decimal string) the
/// publisher's client chose.
pub fn header_u64(headers: Option<&FieldTable>, key: &str) -> Option<u64> {
    let v = headers?.inner().get(key)?;
    let n: i128 = match v {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            return header_str(headers, key)?.trim().parse().ok()
        }
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// Sets a string header.
pub fn set_str(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(value.as_bytes().to_vec().into()),
    );
}

/// Sets an integer header (as a signed 64-bit AMQP integer, which every client reads).
pub fn set_int(headers: &mut FieldTable, key: &str, value: u64) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
    );
}

/// Removes a header; used to strip broker-owned headers before republishing. (lapin's
/// `FieldTable` has no remove, so the table is rebuilt, only when the key is there.)
pub fn remove(headers: &mut FieldTable, key: &str) {
    if !headers.contains_key(key) {
        return;
    }
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != key {
            kept.insert(k.clone(), v.clone());
        }
    }
    *headers = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_read_whatever_their_width() {
        let mut h = FieldTable::default();
        h.insert("a".into(), AMQPValue::ShortShortUInt(3));
        h.insert("b".into(), AMQPValue::LongInt(7));
        h.insert("c".into(), AMQPValue::LongString("12".into()));
        h.insert("d".into(), AMQPValue::LongInt(-1));
        assert_eq!(header_u64(Some(&h), "a"), Some(3));
        assert_eq!(header_u64(Some(&h), "b"), Some(7));
        assert_eq!(header_u64(Some(&h), "c"), Some(12));
        assert_eq!(header_u64(Some(&h), "d"), None);
        assert_eq!(header_u64(Some(&h), "missing"), None);
        assert_eq!(header_u64(None, "a"), None);
    }

    #[test]
    fn job_ids_are_deterministic_v5_per_key() {
        let a = job_id_for_key("renewal:x:2026-01-01T00:00:00Z");
        assert_eq!(a, job_id_for_key("renewal:x:2026-01-01T00:00:00Z"));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, job_id_for_key("cron:x:2026-01-01T00:00:00Z"));
    }

    #[test]
    fn set_and_remove_round_trip() {
        let mut h = FieldTable::default();
        set_str(&mut h, H_ERROR, "boom");
        set_int(&mut h, H_ATTEMPT, 2);
        set_int(&mut h, H_DELIVERY_COUNT, 4);
        remove(&mut h, H_DELIVERY_COUNT);
        assert_eq!(header_str(Some(&h), H_ERROR).as_deref(), Some("boom"));
        assert_eq!(header_u64(Some(&h), H_ATTEMPT), Some(2));
        assert_eq!(header_u64(Some(&h), H_DELIVERY_COUNT), None);
    }
}
