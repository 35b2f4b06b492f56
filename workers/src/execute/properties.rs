//! Properties of the worker's decoding of a delivery, [`Envelope::read`] then [`admit`], over
//! what any AMQP client can send: routing keys and `message_id`s with NUL and other control
//! characters or at the 255-byte limit, header values of every AMQP type (tables read off
//! arbitrary wire bytes too), and bodies that are invalid UTF-8, cut, or nested thousands of
//! levels deep. Nothing may panic; every delivery either becomes a job whose id and task name
//! the ledger (and a republish's `message_id`) can hold, or is refused as `malformed` or
//! `unknown-task`, both dead-lettered without running.
//!
//! Each property runs 256 cases, or `PROPTEST_CASES`.

use super::*;
use amq_protocol_types::parsing::parse_field_table;
use lapin::types::{AMQPValue, ByteArray, FieldArray, ShortString};
use proptest::prelude::*;
use std::cell::Cell;
use std::sync::OnceLock;
use warren_core::limits::MAX_SHORT;

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        3 => prop::sample::select(vec!["demo.noop", "demo.sleep", "demo.fail", "cron.prune-job-runs"])
            .prop_map(str::to_owned),
        2 => "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f} a-zé.]{0,12}",
        1 => (250usize..262).prop_map(|n| "a".repeat(n)),
        1 => (120usize..132).prop_map(|n| "é".repeat(n)),
        1 => (1000usize..70_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// At most 255 bytes, as an AMQP short string holds.
fn short(s: String) -> ShortString {
    let mut s = s;
    while s.len() > MAX_SHORT {
        s.pop();
    }
    ShortString::from(s)
}

fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f64>().prop_map(AMQPValue::Double),
        hostile_text().prop_map(|s| AMQPValue::ShortString(short(s))),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| AMQPValue::LongString(b.into())),
        hostile_text().prop_map(|s| AMQPValue::LongString(s.into())),
        "[ ]{0,2}-?[0-9]{1,22}[ ]{0,2}".prop_map(|s| AMQPValue::LongString(s.into())),
        prop::collection::vec(any::<u8>(), 0..16)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            prop::collection::btree_map(hostile_text().prop_map(short), inner, 0..4)
                .prop_map(|m| AMQPValue::FieldTable(FieldTable::from(m))),
        ]
    })
}

/// Headers a delivery may carry: the ones the runtime reads, with values of any type, and
/// others; or whatever a table read off arbitrary bytes holds.
fn headers() -> impl Strategy<Value = Option<FieldTable>> {
    let key = prop_oneof![
        3 => prop::sample::select(vec![
            env::H_ATTEMPT,
            env::H_MAX_ATTEMPTS,
            env::H_TENANT,
            env::H_IDEMPOTENCY_KEY,
            env::H_TRACEPARENT,
            env::H_DELIVERY_COUNT,
        ])
        .prop_map(ShortString::from),
        1 => hostile_text().prop_map(short),
    ];
    prop_oneof![
        1 => Just(None),
        4 => prop::collection::btree_map(key, amqp_value(), 0..8)
            .prop_map(|m| Some(FieldTable::from(m))),
        1 => prop::collection::vec(any::<u8>(), 0..96).prop_map(|wire| {
            parse_field_table(wire.as_slice()).ok().map(|(_, t)| t)
        }),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        hostile_text().prop_map(Value::String),
        prop::sample::select(vec![
            "retryable",
            "permanent",
            "panic",
            "ms",
            "mode",
            "until"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec!["ms", "mode", "until", "x"]).prop_map(str::to_owned),
                    hostile_text(),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies: JSON (often close to the demo payloads), JSON with bytes changed, invalid UTF-8,
/// unbalanced brackets by the ten thousand, noise.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        2 => (json_value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            let mut b = serde_json::to_vec(&v).unwrap_or_default();
            if !b.is_empty() {
                let i = at.index(b.len());
                b[i] = byte;
            }
            b
        }),
        1 => (0usize..50_000, prop_oneof![Just(b'['), Just(b'{')]).prop_map(|(n, c)| vec![c; n]),
        1 => prop::collection::vec(any::<u8>(), 0..128),
    ]
}

/// A built-in task and a body it takes, as a well-behaved publisher sends them.
fn good_delivery() -> impl Strategy<Value = (String, Vec<u8>)> {
    let obj = |v: serde_json::Value| serde_json::to_vec(&v).unwrap_or_default();
    prop_oneof![
        json_value()
            .prop_map(move |v| ("demo.noop".to_owned(), obj(serde_json::json!({ "v": v })))),
        any::<u64>().prop_map(move |ms| (
            "demo.sleep".to_owned(),
            obj(serde_json::json!({ "ms": ms }))
        )),
        prop::sample::select(vec!["retryable", "permanent", "panic"]).prop_map(move |m| (
            "demo.fail".to_owned(),
            obj(serde_json::json!({ "mode": m }))
        )),
        Just(("cron.prune-job-runs".to_owned(), b"{}".to_vec())),
    ]
}

fn properties(message_id: Option<String>, headers: Option<FieldTable>) -> lapin::BasicProperties {
    let mut p = lapin::BasicProperties::default();
    if let Some(id) = message_id {
        p = p.with_message_id(short(id));
    }
    if let Some(h) = headers {
        p = p.with_headers(h);
    }
    p
}

/// A pool that never connects: handlers are built, never run.
fn pool() -> PgPool {
    static RT: OnceLock<(tokio::runtime::Runtime, PgPool)> = OnceLock::new();
    RT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pool = {
            let _in = rt.enter();
            sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://127.0.0.1:1/never")
                .unwrap()
        };
        (rt, pool)
    })
    .1
    .clone()
}

fn ctx(task: &str, max_attempts: u32) -> JobContext {
    JobContext {
        job_id: "j".into(),
        task: task.into(),
        queue: "default".into(),
        attempt: 1,
        max_attempts,
        idempotency_key: None,
        tenant: None,
        db: pool(),
    }
}

proptest! {
    /// Whatever the routing key, `message_id` and headers: the job id and task name are
    /// storable and fit a `message_id`; they are the message's own exactly when those are
    /// storable, and otherwise the delivery is marked to be dead-lettered `malformed`; the
    /// attempt is at least 1.
    #[test]
    fn every_envelope_reads_as_a_storable_job(
        routing_key in hostile_text(),
        message_id in prop::option::of(hostile_text()),
        headers in headers(),
    ) {
        let props = properties(message_id, headers);
        let e = Envelope::read(&routing_key, &props);
        prop_assert!(ledger::unstorable(&e.job_id).is_none() && !e.job_id.is_empty());
        prop_assert!(ledger::unstorable(&e.task).is_none());
        prop_assert!(ShortString::try_new(e.job_id.as_str()).is_ok());
        prop_assert!(ShortString::try_new(e.task.as_str()).is_ok());

        let raw_id = props.message_id().as_ref().map(|id| id.as_str()).filter(|id| !id.is_empty());
        let task_ok = ledger::unstorable(&routing_key).is_none();
        let id_ok = raw_id.is_none_or(|id| ledger::unstorable(id).is_none());
        prop_assert_eq!(e.unstorable.is_none(), task_ok && id_ok, "{:?}", e.unstorable);
        if task_ok {
            prop_assert_eq!(&e.task, &routing_key);
        }
        if let (Some(id), true) = (raw_id, id_ok) {
            prop_assert_eq!(e.job_id.as_str(), id);
        }
        let h = props.headers().as_ref();
        let attempt = env::header_u64(h, env::H_ATTEMPT).unwrap_or(1).clamp(1, u32::MAX.into());
        prop_assert_eq!(u64::from(e.attempt), attempt);
        prop_assert_eq!(e.tenant, env::header_str(h, env::H_TENANT));
    }

    /// Whatever the body and headers: a delivery is admitted only with a body within
    /// `max_body` that decodes into its task's payload type, and at least one attempt;
    /// otherwise it is refused `malformed` (too large, does not decode) or `unknown-task`.
    /// What the ingest API accepts for a built-in task, the worker admits.
    #[test]
    fn every_delivery_is_admitted_or_refused_as_permanent(
        (task, body) in prop_oneof![good_delivery(), (hostile_text(), body())],
        headers in headers(),
        max_body in prop_oneof![4 => Just(1usize << 20), 1 => 0usize..64],
    ) {
        let registry = Registry::with_builtin();
        let built = Cell::new(None);
        let r = admit(&registry, &task, &body, max_body, headers.as_ref(), |m| {
            built.set(Some(m));
            ctx(&task, m)
        });
        let known = registry.get(&task).is_some();
        match r {
            Ok(a) => {
                prop_assert!(body.len() <= max_body && known);
                prop_assert!(a.max_attempts >= 1);
                prop_assert_eq!(built.get(), Some(a.max_attempts));
                if let Some(m) = env::header_u64(headers.as_ref(), env::H_MAX_ATTEMPTS) {
                    prop_assert_eq!(u64::from(a.max_attempts), m.clamp(1, u32::MAX.into()));
                }
            }
            Err(Refusal { kind, message }) => {
                prop_assert!(!message.is_empty());
                if body.len() > max_body {
                    prop_assert_eq!(kind, DeadLetterKind::Malformed);
                    prop_assert!(message.starts_with("body is "), "{}", message);
                } else if !known {
                    prop_assert_eq!(kind, DeadLetterKind::UnknownTask);
                } else {
                    prop_assert_eq!(kind, DeadLetterKind::Malformed);
                    prop_assert!(
                        message.starts_with("body is not valid JSON") || message.starts_with("payload"),
                        "{}", message
                    );
                    let typed = warren_core::payload::TYPED_TASKS.contains(&task.as_str());
                    prop_assert!(
                        !(typed && warren_core::payload::validate(&task, &body).is_ok()),
                        "ingest accepts what the worker refuses: {}", message
                    );
                }
            }
        }
    }
}
