//! Properties of what every job passes through on its way in and out: the limits
//! (`warren_core::limits`), the payload decoder and validator (`warren_core::payload`) and the
//! envelope's header codec (`warren_core::envelope`). Inputs are hostile on purpose: NUL and
//! other control characters, invalid UTF-8, values around and far over 255 bytes, JSON nested
//! thousands of levels deep, and AMQP header values of every type, including tables read off
//! arbitrary wire bytes. Nothing may panic, and each function must accept exactly what its
//! documented rules say.
//!
//! Each property runs 256 cases, or `PROPTEST_CASES` (a long run:
//! `PROPTEST_CASES=20000 cargo test -p warren-core --test decoder_properties --release`).

use amq_protocol_types::generation::gen_field_table;
use amq_protocol_types::parsing::parse_field_table;
use chrono::{DateTime, TimeZone, Utc};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, ShortString};
use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde_json::Value;
use warren_core::envelope::{self, header_str, header_u64, json_properties, set_int, set_str};
use warren_core::limits::{self, LimitError, MAX_JSON_DEPTH, MAX_SHORT};
use warren_core::payload::{self, PayloadErrorKind, TYPED_TASKS};
use warren_core::task::{self, DemoFail, DemoSleep, FailMode, RenewalPayload};

// ---------------------------------------------------------------------------------------
// Strategies

/// Text a hostile client sends: anything Unicode, control characters, lengths around the
/// 255-byte limit, and now and then far over it.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-z0-9.:_-]{0,40}",
        2 => "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f} a-zé]{0,12}",
        1 => (250usize..262).prop_map(|n| "a".repeat(n)),
        1 => (120usize..132).prop_map(|n| "é".repeat(n)),
        1 => (1000usize..70_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// JSON without floats (whose text form does not round-trip exactly through `serde_json`
/// without its `float_roundtrip` feature), up to 6 levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        hostile_text().prop_map(Value::String),
        "[\\[\\]{}\"\\\\]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\\[{\"\\\\]{0,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value wrapped in `levels` arrays or objects (deeper than the limit, often).
fn nested_json() -> impl Strategy<Value = Value> {
    (
        json_value(),
        prop::collection::vec(any::<bool>(), 0..200),
        any::<bool>(),
    )
        .prop_map(|(core, wrappers, object_outside)| {
            let mut v = core;
            for as_array in wrappers {
                v = if as_array {
                    Value::Array(vec![v])
                } else {
                    serde_json::json!({ "k[": v })
                };
            }
            if object_outside {
                serde_json::json!({ "x": v })
            } else {
                v
            }
        })
}

/// Levels of arrays and objects in `v`.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Bytes a hostile client sends as a body: JSON, JSON with bytes flipped or cut, invalid
/// UTF-8, unbalanced brackets by the thousand, or noise.
fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        2 => (json_value(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4))
            .prop_map(|(v, edits)| {
                let mut b = serde_json::to_vec(&v).unwrap_or_default();
                for (at, byte) in edits {
                    if b.is_empty() {
                        b.push(byte);
                    } else {
                        let i = at.index(b.len());
                        b[i] = byte;
                    }
                }
                b
            }),
        1 => (json_value(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let mut b = serde_json::to_vec(&v).unwrap_or_default();
            let cut = at.index(b.len() + 1);
            b.truncate(cut);
            b
        }),
        1 => (0usize..100_000, prop_oneof![Just(b'['), Just(b'{')]).prop_map(|(n, c)| vec![c; n]),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => "[\\[\\]{}\"\\\\:,0-9a-z ]{0,64}".prop_map(String::into_bytes),
    ]
}

fn short_string() -> impl Strategy<Value = ShortString> {
    hostile_text().prop_map(|s| {
        let mut s = s;
        while s.len() > MAX_SHORT {
            s.pop();
        }
        ShortString::from(s)
    })
}

/// Any AMQP field value, nested tables and arrays included.
fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        short_string().prop_map(AMQPValue::ShortString),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| AMQPValue::LongString(b.into())),
        hostile_text().prop_map(|s| AMQPValue::LongString(s.into())),
        "[ ]{0,2}[0-9]{1,22}[ ]{0,2}".prop_map(|s| AMQPValue::LongString(s.into())),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            prop::collection::btree_map(short_string(), inner, 0..4)
                .prop_map(|m| AMQPValue::FieldTable(FieldTable::from(m))),
        ]
    })
}

/// Header names Warren reads, and others.
fn header_key() -> impl Strategy<Value = ShortString> {
    prop_oneof![
        3 => prop::sample::select(vec![
            envelope::H_ATTEMPT,
            envelope::H_MAX_ATTEMPTS,
            envelope::H_TENANT,
            envelope::H_IDEMPOTENCY_KEY,
            envelope::H_TRACEPARENT,
            envelope::H_DELIVERY_COUNT,
            envelope::H_ERROR,
        ])
        .prop_map(ShortString::from),
        1 => short_string(),
    ]
}

fn header_table() -> impl Strategy<Value = FieldTable> {
    prop::collection::btree_map(header_key(), amqp_value(), 0..8).prop_map(FieldTable::from)
}

fn encode(t: &FieldTable) -> Vec<u8> {
    cookie_factory::gen_simple(gen_field_table(t), Vec::new()).unwrap_or_default()
}

fn cases() -> ProptestConfig {
    ProptestConfig::default()
}

// ---------------------------------------------------------------------------------------
// limits

proptest! {
    #![proptest_config(cases())]

    /// A short value passes exactly when it is 1 to 255 bytes without a control character;
    /// a refusal names the field it was given.
    #[test]
    fn short_values_pass_exactly_by_the_rules(field in "[A-Za-z-]{1,16}", value in hostile_text()) {
        let ok = !value.is_empty() && value.len() <= MAX_SHORT && !value.chars().any(char::is_control);
        match limits::check_short(&field, &value) {
            Ok(()) => prop_assert!(ok),
            Err(e) => {
                prop_assert!(!ok);
                prop_assert_eq!(e.field(), field.as_str());
                prop_assert!(e.to_string().starts_with(&field), "{}", e);
                prop_assert!(!e.is_body());
            }
        }
    }

    /// Raw header bytes: UTF-8 first, then the same rules; what passes is the input itself.
    #[test]
    fn short_bytes_are_utf8_then_short(value in prop_oneof![
        hostile_text().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..300),
    ]) {
        let expected = std::str::from_utf8(&value)
            .ok()
            .filter(|s| limits::check_short("h", s).is_ok());
        match limits::check_short_bytes("h", &value) {
            Ok(s) => prop_assert_eq!(Some(s), expected),
            Err(e) => {
                prop_assert!(expected.is_none());
                prop_assert_eq!(e.field(), "h");
            }
        }
    }

    /// JSON passes `check_body` exactly when it nests at most 64 levels, brackets inside
    /// strings not counting; a refusal is a body error naming the field.
    #[test]
    fn json_bodies_pass_exactly_within_the_depth_limit(v in prop_oneof![json_value(), nested_json()]) {
        let body = serde_json::to_vec(&v).unwrap_or_default();
        let within = depth(&v) <= MAX_JSON_DEPTH;
        match limits::check_body("body", &body) {
            Ok(()) => prop_assert!(within),
            Err(e) => {
                prop_assert!(!within, "{}", e);
                let is_too_deep = matches!(e, LimitError::BodyTooDeep { .. });
                prop_assert!(is_too_deep && e.is_body() && e.field() == "body");
            }
        }
        // A batch allows two more levels.
        prop_assert_eq!(
            limits::check_body_within("b", &body, MAX_JSON_DEPTH + 2).is_ok(),
            depth(&v) <= MAX_JSON_DEPTH + 2
        );
    }

    /// Any bytes: no panic; what passes is UTF-8; bytes that are not are refused with the
    /// offset of the first bad byte.
    #[test]
    fn any_body_is_judged_without_a_panic(body in hostile_body()) {
        match (limits::check_body("body", &body), std::str::from_utf8(&body)) {
            (Ok(()), Ok(_)) | (Err(LimitError::BodyTooDeep { .. }), Ok(_)) => {}
            (Err(LimitError::BodyNotUtf8 { at, .. }), Err(e)) => prop_assert_eq!(at, e.valid_up_to()),
            (r, u) => prop_assert!(false, "check_body {:?} for UTF-8 {:?}", r, u.map(drop)),
        }
    }

    /// `encoded_len` is the size AMQP gives the table on the wire, for tables of any value
    /// types; `check_headers` refuses exactly those over the bound.
    #[test]
    fn header_sizes_are_the_encoded_sizes(t in header_table(), max in 0usize..2048) {
        let len = limits::encoded_len(&t);
        prop_assert_eq!(len, encode(&t).len());
        prop_assert_eq!(limits::check_headers("h", &t, max).is_ok(), len <= max);
    }

    /// A table read off arbitrary wire bytes (what a broker hands a consumer) takes at most
    /// the bytes it was read from, and reading any header of it never panics.
    #[test]
    fn tables_read_off_the_wire_are_measured_and_read_safely(
        t in header_table(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        use_noise in any::<bool>(),
    ) {
        let mut wire = if use_noise { noise } else { encode(&t) };
        for (at, byte) in edits {
            if !wire.is_empty() {
                let i = at.index(wire.len());
                wire[i] = byte;
            }
        }
        if let Ok((rest, parsed)) = parse_field_table(wire.as_slice()) {
            prop_assert!(limits::encoded_len(&parsed) <= wire.len() - rest.len());
            for key in parsed.inner().keys() {
                let _ = header_u64(Some(&parsed), key.as_str());
                let _ = header_str(Some(&parsed), key.as_str());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// envelope

proptest! {
    #![proptest_config(cases())]

    /// Integers of any width, and decimal strings, read back as the number they hold when
    /// it is a `u64`; everything else reads as absent. Strings read as text (lossily when
    /// not UTF-8). Never a panic, whatever the value's type.
    #[test]
    fn headers_read_as_what_they_hold(v in amqp_value()) {
        let mut t = FieldTable::default();
        t.insert("k".into(), v.clone());
        let n = header_u64(Some(&t), "k");
        let expected: Option<u64> = match &v {
            AMQPValue::ShortShortInt(x) => u64::try_from(*x).ok(),
            AMQPValue::ShortShortUInt(x) => Some((*x).into()),
            AMQPValue::ShortInt(x) => u64::try_from(*x).ok(),
            AMQPValue::ShortUInt(x) => Some((*x).into()),
            AMQPValue::LongInt(x) => u64::try_from(*x).ok(),
            AMQPValue::LongUInt(x) => Some((*x).into()),
            AMQPValue::LongLongInt(x) => u64::try_from(*x).ok(),
            AMQPValue::Timestamp(x) => Some(*x),
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
            AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
            _ => None,
        };
        prop_assert_eq!(n, expected);
        let s = header_str(Some(&t), "k");
        let expected: Option<String> = match &v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        };
        prop_assert_eq!(s, expected);
        prop_assert_eq!(header_u64(Some(&t), "missing"), None);
    }

    /// What the runtime writes reads back unchanged; `remove` drops that key and keeps the
    /// others.
    #[test]
    fn written_headers_read_back(t in header_table(), text in hostile_text(), n in any::<u64>()) {
        let mut h = t.clone();
        set_str(&mut h, envelope::H_ERROR, &text);
        set_int(&mut h, envelope::H_ATTEMPT, n);
        prop_assert_eq!(header_str(Some(&h), envelope::H_ERROR), Some(text));
        prop_assert_eq!(header_u64(Some(&h), envelope::H_ATTEMPT), Some(n.min(i64::MAX as u64)));
        envelope::remove(&mut h, envelope::H_ATTEMPT);
        prop_assert!(!h.contains_key(envelope::H_ATTEMPT));
        for (k, v) in t.inner() {
            if k.as_str() != envelope::H_ATTEMPT && k.as_str() != envelope::H_ERROR {
                prop_assert_eq!(h.inner().get(k), Some(v));
            }
        }
    }

    /// Properties for any job id: the id becomes `message_id` when it is an AMQP short
    /// string, and is left out (never a panic) when it is not.
    #[test]
    fn json_properties_never_panic(id in hostile_text(), t in header_table()) {
        let p = json_properties(&id, t.clone());
        let expected = (id.len() <= MAX_SHORT).then_some(id.as_str());
        prop_assert_eq!(p.message_id().as_ref().map(ShortString::as_str), expected);
        prop_assert_eq!(p.headers().as_ref(), Some(&t));
        prop_assert_eq!(p.delivery_mode(), &Some(2));
    }

    /// The job id of a key is a UUIDv5, the same every time, and differs between keys.
    #[test]
    fn job_ids_of_keys_are_stable(a in hostile_text(), b in hostile_text()) {
        let id = envelope::job_id_for_key(&a);
        prop_assert_eq!(id, envelope::job_id_for_key(&a));
        prop_assert_eq!(id.get_version_num(), 5);
        prop_assert_eq!(a == b, id == envelope::job_id_for_key(&b));
    }
}

// ---------------------------------------------------------------------------------------
// payload

/// Every task `validate` knows, and some it does not.
fn task_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(TYPED_TASKS.to_vec()).prop_map(str::to_owned),
        1 => Just("cron.prune-job-runs".to_owned()),
        1 => hostile_text(),
    ]
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // Years 1970 to 9999 (RFC 3339 has four-digit years), with and without fractions.
    (
        0i64..253_402_300_800,
        prop_oneof![Just(0u32), 0u32..1_000_000_000],
    )
        .prop_map(|(s, ns)| Utc.timestamp_opt(s, ns).single().unwrap_or_default())
}

proptest! {
    #![proptest_config(cases())]

    /// For a task without a known type the rule is: UTF-8 JSON within 64 levels. `validate`
    /// accepts exactly that (with `serde_json` as the judge of the grammar), and every
    /// refusal is a syntax error.
    #[test]
    fn untyped_bodies_pass_exactly_when_json_within_limits(body in hostile_body()) {
        let rule = limits::check_body("body", &body).is_ok()
            && serde_json::from_slice::<IgnoredAny>(&body).is_ok();
        match payload::validate("email.send", &body) {
            Ok(()) => prop_assert!(rule),
            Err(e) => {
                prop_assert!(!rule, "{}", e);
                prop_assert!(e.is_syntax() && e.path.is_none());
                prop_assert!(e.message.starts_with("body is not valid JSON"), "{}", e);
            }
        }
    }

    /// Any body for any task: no panic; an accepted body is JSON within the limits; a body
    /// refused as not fitting the type (rather than as not JSON) is JSON within the limits.
    #[test]
    fn any_body_for_any_task_is_judged_and_classified(task in task_name(), body in hostile_body()) {
        let json_within_limits = limits::check_body("body", &body).is_ok()
            && serde_json::from_slice::<IgnoredAny>(&body).is_ok();
        match payload::validate(&task, &body) {
            Ok(()) => prop_assert!(json_within_limits),
            Err(e) if e.is_syntax() => {
                prop_assert!(!json_within_limits, "{}", e);
                prop_assert!(e.message.starts_with("body is not valid JSON"), "{}", e);
            }
            Err(e) => {
                prop_assert_eq!(e.kind, PayloadErrorKind::Invalid);
                prop_assert!(json_within_limits, "{}: {}", e, String::from_utf8_lossy(&body));
                prop_assert!(e.message.starts_with("payload"), "{}", e);
                if let Some(p) = &e.path {
                    // A field named "" has the path "".
                    let expected = format!("payload at $.{p}: ");
                    prop_assert!(e.message.starts_with(&expected), "{}", e);
                }
            }
        }
    }

    /// JSON within the limits decodes back to the same value; a `demo.noop` body passes
    /// exactly when it is an object.
    #[test]
    fn json_round_trips(v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap_or_default();
        prop_assert!(payload::validate("email.send", &body).is_ok());
        prop_assert_eq!(payload::decode::<Value>(&body).ok(), Some(v.clone()));
        let noop = payload::validate(task::DEMO_NOOP, &body);
        prop_assert_eq!(noop.is_ok(), v.is_object());
        if let Err(e) = noop {
            prop_assert_eq!(e.kind, PayloadErrorKind::Invalid);
            prop_assert!(e.path.is_none() && e.message.starts_with("payload: "), "{}", e);
        }
    }

    /// Typed payloads round-trip: what a publisher serializes validates and decodes back to
    /// the same value.
    #[test]
    fn typed_payloads_round_trip(
        ms in any::<u64>(),
        mode in prop::sample::select(vec![FailMode::Retryable, FailMode::Permanent, FailMode::Panic]),
        until in prop::option::of(instant()),
        subscription in any::<u128>(),
        period_end in instant(),
        attempt in any::<u16>(),
    ) {
        let sleep = DemoSleep { ms };
        let body = serde_json::to_vec(&sleep).unwrap_or_default();
        prop_assert!(payload::validate(task::DEMO_SLEEP, &body).is_ok());
        prop_assert_eq!(payload::decode::<DemoSleep>(&body).ok(), Some(sleep));

        let fail = DemoFail { mode, until };
        let body = serde_json::to_vec(&fail).unwrap_or_default();
        prop_assert!(payload::validate(task::DEMO_FAIL, &body).is_ok());
        prop_assert_eq!(payload::decode::<DemoFail>(&body).ok(), Some(fail));

        let renewal = RenewalPayload {
            subscription_id: uuid::Uuid::from_u128(subscription),
            period_end,
            attempt,
        };
        let body = serde_json::to_vec(&renewal).unwrap_or_default();
        prop_assert!(payload::validate(task::RENEWAL_PAGARME, &body).is_ok());
        prop_assert!(payload::validate(task::RENEWAL_APPMAX, &body).is_ok());
        prop_assert_eq!(payload::decode::<RenewalPayload>(&body).ok(), Some(renewal));
    }

    /// A whole number is accepted however JSON writes it (`50`, `50.0`, `5e1`), within the
    /// type's range; a fraction, a negative number or a number past the range is refused at
    /// its path.
    #[test]
    fn whole_numbers_are_read_in_every_spelling(n in any::<u64>(), frac in 1u32..1000, neg in 1u64..u64::MAX) {
        let decode = |text: &str| payload::decode::<DemoSleep>(format!("{{\"ms\":{text}}}").as_bytes());
        prop_assert_eq!(decode(&n.to_string()).ok(), Some(DemoSleep { ms: n }));
        // Spelled as a float, a number is exact up to 2^53.
        let small = n >> 14;
        for text in [format!("{small}.0"), format!("{small}e0"), format!("{small}0e-1")] {
            prop_assert_eq!(decode(&text).ok(), Some(DemoSleep { ms: small }), "{}", text);
        }
        // A fraction of a thousandth shows up to 2^43.
        let tiny = n >> 24;
        let mut refused = vec![format!("{tiny}.{frac:03}"), format!("-{neg}")];
        if n > 0 {
            refused.push(format!("{n}0000000000000000000000"));
        }
        for text in refused {
            match decode(&text) {
                Ok(v) => prop_assert!(false, "{} decoded as {:?}", text, v),
                Err(e) => {
                    prop_assert_eq!(e.kind, PayloadErrorKind::Invalid, "{}", e);
                    prop_assert_eq!(e.path.as_deref(), Some("ms"));
                }
            }
        }
        let attempt = format!(
            "{{\"subscription_id\":\"0190c8a4-0000-7000-8000-000000000000\",\
              \"period_end\":\"2026-01-01T00:00:00Z\",\"attempt\":{n}}}"
        );
        let r = payload::decode::<RenewalPayload>(attempt.as_bytes());
        prop_assert_eq!(r.is_ok(), n <= u64::from(u16::MAX));
    }
}
