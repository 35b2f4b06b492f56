//! Reading one dead-letter message: who dead-lettered it (a worker, with Warren's headers, or
//! RabbitMQ, with `x-death`), why, when, for which task, and the properties to replay it with.

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Map, Value};
use warren_core::envelope::{self as env};

/// Headers a replay removes: the broker's redelivery and death records and Warren's
/// dead-letter headers, and the attempt counter, so the job starts with its full budget.
const STRIPPED_ON_REPLAY: &[&str] = &[
    env::H_DELIVERY_COUNT,
    env::H_ATTEMPT,
    env::H_ERROR,
    env::H_ERROR_KIND,
    env::H_ORIGINAL_ROUTING_KEY,
    env::H_FAILED_AT,
    env::H_ATTEMPTS,
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
];

/// Who put a message into the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A worker, with `x-error-kind` and the other dead-letter headers.
    Worker,
    /// RabbitMQ itself (delivery limit, reject without requeue, ...), with `x-death`.
    Broker,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Worker => "worker",
            Self::Broker => "broker",
        }
    }
}

/// What the mirror records of one dead-letter message.
#[derive(Debug, Clone)]
pub struct Letter {
    pub fingerprint: String,
    pub message_id: Option<String>,
    /// The task to replay to; `None` when nothing in the message says (never for Warren's
    /// own dead letters).
    pub task: Option<String>,
    pub source: Source,
    pub kind: String,
    pub error: String,
    pub attempts: i32,
    pub headers: Value,
    pub payload: Vec<u8>,
    pub payload_json: Option<Value>,
    /// `None` when the message carries no failure time (the mirror uses its first sighting).
    pub failed_at: Option<DateTime<Utc>>,
}

impl Letter {
    /// Reads a message taken from the DLQ of `queue` (short name).
    pub fn read(queue: &str, d: &Delivery) -> Self {
        let h = d.properties.headers().as_ref();
        let message_id = d
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .filter(|m| !m.is_empty());
        let death = h.and_then(first_death);
        let (source, kind, error, task, failed_at, marker);
        if let Some(k) = env::header_str(h, env::H_ERROR_KIND) {
            source = Source::Worker;
            kind = k;
            error = env::header_str(h, env::H_ERROR).unwrap_or_default();
            task = env::header_str(h, env::H_ORIGINAL_ROUTING_KEY);
            let at = env::header_str(h, env::H_FAILED_AT);
            failed_at = at.as_deref().and_then(|s| {
                DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            });
            marker = format!("worker|{}", at.unwrap_or_default());
        } else if let Some(death) = &death {
            source = Source::Broker;
            // RabbitMQ says `delivery_limit`; Warren's own kind for the same cause is
            // `delivery-limit`, so one --kind filter finds both.
            kind = death.reason.replace('_', "-");
            error = format!(
                "dead-lettered by RabbitMQ: {} in queue {} (x-death count {})",
                death.reason, death.queue, death.count
            );
            task = death.routing_key.clone();
            failed_at = DateTime::from_timestamp(death.time as i64, 0);
            marker = format!(
                "broker|{}|{}|{}|{}",
                death.queue, death.reason, death.time, death.count
            );
        } else {
            source = Source::Broker;
            kind = "unknown".into();
            error = "no x-error-kind and no x-death header: not dead-lettered by Warren or \
                     RabbitMQ (published straight into the DLQ?)"
                .into();
            task = None;
            failed_at = None;
            marker = format!("unknown|{}", headers_json(h));
        }
        // A broker dead letter's routing key is the queue name (x-dead-letter-routing-key);
        // any other routing key is the task.
        let task = task.or_else(|| {
            let rk = d.routing_key.as_str();
            (!rk.is_empty() && rk != queue).then(|| rk.to_owned())
        });
        let attempts = env::header_u64(h, env::H_ATTEMPTS)
            .or_else(|| env::header_u64(h, env::H_ATTEMPT))
            .unwrap_or(1)
            .min(i32::MAX as u64) as i32;
        let fingerprint = crate::ingest::request_hash(&[
            message_id.as_deref().unwrap_or("").as_bytes(),
            marker.as_bytes(),
            &d.data,
        ]);
        // What the mirror records goes into PostgreSQL text and jsonb, which cannot hold
        // U+0000: any publisher can send a NUL (a worker dead-letters such a job id or task
        // name as malformed), so it is recorded as `\0`. `payload` keeps the exact bytes.
        Self {
            fingerprint,
            message_id: message_id.map(|m| pg_text(&m)),
            task: task.map(|t| pg_text(&t)),
            source,
            kind: pg_text(&kind),
            error: pg_text(&error),
            attempts,
            headers: pg_json(headers_json(h)),
            payload: d.data.clone(),
            payload_json: serde_json::from_slice(&d.data).ok().map(pg_json),
            failed_at,
        }
    }
}

/// `s` with NUL, which PostgreSQL text cannot hold, written `\0`.
fn pg_text(s: &str) -> String {
    s.replace('\0', "\\0")
}

/// `v` with NUL written `\0` in every string and key (jsonb refuses `\u0000`).
fn pg_json(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(pg_text(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(pg_json).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (pg_text(&k), pg_json(v)))
                .collect(),
        ),
        v => v,
    }
}

/// The most recent `x-death` entry (RabbitMQ keeps the latest first).
struct Death {
    reason: String,
    queue: String,
    time: u64,
    count: u64,
    routing_key: Option<String>,
}

fn first_death(h: &FieldTable) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = h.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(t) = deaths.as_slice().first()? else {
        return None;
    };
    let t = Some(t);
    let routing_key = match t?.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(|k| match k {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }),
        _ => None,
    };
    Some(Death {
        reason: env::header_str(t, "reason").unwrap_or_else(|| "unknown".into()),
        queue: env::header_str(t, "queue").unwrap_or_default(),
        time: env::header_u64(t, "time").unwrap_or(0),
        count: env::header_u64(t, "count").unwrap_or(1),
        routing_key,
    })
}

/// The headers as JSON (strings, numbers, arrays, objects), without the broker's
/// redelivery counter, which changes every time the DLQ is drained. (`FieldTable` is
/// sorted, so the text form is stable.)
pub fn headers_json(h: Option<&FieldTable>) -> Value {
    let mut m = Map::new();
    if let Some(h) = h {
        for (k, v) in h.inner() {
            if k.as_str() != env::H_DELIVERY_COUNT {
                m.insert(k.as_str().to_owned(), amqp_json(v));
            }
        }
    }
    Value::Object(m)
}

fn amqp_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => json!(format!("{d:?}")),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_json).collect()),
        AMQPValue::Timestamp(t) => DateTime::from_timestamp(*t as i64, 0)
            .map_or_else(|| json!(t), |t| json!(t.to_rfc3339())),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), amqp_json(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(b) => json!(b
            .as_slice()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()),
        AMQPValue::Void => Value::Null,
    }
}

/// Properties to republish a dead letter with: the job's own (id, content type,
/// timestamp, ...), persistent, and its headers minus `STRIPPED_ON_REPLAY`. No expiration:
/// a replay runs now.
pub fn replay_properties(p: &BasicProperties) -> BasicProperties {
    let mut headers = p.headers().clone().unwrap_or_default();
    for key in STRIPPED_ON_REPLAY {
        env::remove(&mut headers, key);
    }
    let mut out = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_mirrored_as_an_escape() {
        assert_eq!(pg_text("a\0b"), "a\\0b");
        let v = pg_json(json!({"k\0": ["x\0", 1, {"y": "\0"}], "ok": "fine"}));
        assert_eq!(v, json!({"k\\0": ["x\\0", 1, {"y": "\\0"}], "ok": "fine"}));
    }

    #[test]
    fn replay_strips_death_and_attempt_headers_and_keeps_the_rest() {
        let mut h = FieldTable::default();
        env::set_int(&mut h, env::H_ATTEMPT, 5);
        env::set_int(&mut h, env::H_DELIVERY_COUNT, 3);
        env::set_str(&mut h, env::H_ERROR_KIND, "exhausted");
        env::set_str(&mut h, env::H_TENANT, "acme");
        h.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        let p = BasicProperties::default()
            .with_message_id("job-1".into())
            .with_expiration("500".into())
            .with_headers(h);
        let r = replay_properties(&p);
        let h = r.headers().as_ref();
        assert_eq!(env::header_u64(h, env::H_ATTEMPT), None);
        assert_eq!(env::header_u64(h, env::H_DELIVERY_COUNT), None);
        assert_eq!(env::header_str(h, env::H_ERROR_KIND), None);
        assert!(!h.unwrap().contains_key("x-death"));
        assert_eq!(env::header_str(h, env::H_TENANT).as_deref(), Some("acme"));
        assert_eq!(r.message_id().as_ref().unwrap().as_str(), "job-1");
        assert_eq!(r.expiration(), &None);
        assert_eq!(r.delivery_mode(), &Some(2));
    }
}
