//! Decoding and validating job payloads: one implementation for the worker (which
//! dead-letters a body that does not decode as `malformed`) and the ingest API (which
//! refuses it before publishing).
//!
//! Errors name the JSON path of the first problem: `payload at $.mode: unknown variant …`,
//! with [`PayloadError::path`] = `mode`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use crate::task;
use serde::de::{DeserializeOwned, Deserializer, MapAccess, Visitor};

/// What is wrong with a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadErrorKind {
    /// Not JSON at all (syntax error, truncated, trailing characters).
    Syntax,
    /// JSON, but not the task's payload type.
    Invalid,
}

/// A body that is not JSON or does not decode into the task's payload type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PayloadError {
    pub kind: PayloadErrorKind,
    /// Path of the first error inside the payload (`ms`, `items[0].id`), `None` when the
    /// error is about the whole body.
    pub path: Option<String>,
    /// The whole message: `body is not valid JSON: …`, `payload: …` or
    /// `payload at $.<path>: …`.
    pub message: String,
}

impl PayloadError {
    fn syntax(e: impl std::fmt::Display) -> Self {
        Self {
            kind: PayloadErrorKind::Syntax,
            path: None,
            message: format!("body is not valid JSON: {e}"),
        }
    }

    /// A body outside [`crate::limits`] (not UTF-8, nested too deep): a syntax error.
    pub fn from_limit(e: crate::limits::LimitError) -> Self {
        Self::syntax(e)
    }

    pub fn is_syntax(&self) -> bool {
        self.kind == PayloadErrorKind::Syntax
    }
}

/// Decodes JSON, naming the path of the first error (`$.mode: unknown variant …`). A struct
/// payload must be a JSON object, as its schema says (serde alone would also take an array of
/// the fields in order). A body that is not JSON is always a syntax error, even where the
/// decoder meets a value of the wrong type before the broken part (`0"`, `{"ms":"x",`).
pub fn decode<P: DeserializeOwned>(body: &[u8]) -> Result<P, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: P = serde_path_to_error::deserialize(ObjectsOnly(&mut de)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            PayloadError::syntax(inner)
        } else if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            PayloadError::syntax(syntax)
        } else if path == "." {
            PayloadError {
                kind: PayloadErrorKind::Invalid,
                path: None,
                message: format!("payload: {inner}"),
            }
        } else {
            PayloadError {
                kind: PayloadErrorKind::Invalid,
                message: format!("payload at $.{path}: {inner}"),
                path: Some(path),
            }
        }
    })?;
    de.end().map_err(PayloadError::syntax)?;
    Ok(value)
}

/// A deserializer that refuses a struct written as a JSON array (serde's sequence form) at the
/// top level and passes everything else through.
struct ObjectsOnly<D>(D);

/// The struct's own visitor, minus `visit_seq`.
struct MapOnly<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for MapOnly<V> {
    type Value = V::Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.0.expecting(f)?;
        f.write_str(" as a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(map)
    }
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* v: V) -> Result<V::Value, D::Error> {
            self.0.$method($($arg,)* v)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectsOnly<D> {
    type Error = D::Error;
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, MapOnly(v))
    }
    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
    forward! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16();
        deserialize_i32(); deserialize_i64(); deserialize_i128(); deserialize_u8();
        deserialize_u16(); deserialize_u32(); deserialize_u64(); deserialize_u128();
        deserialize_f32(); deserialize_f64(); deserialize_char(); deserialize_str();
        deserialize_string(); deserialize_bytes(); deserialize_byte_buf(); deserialize_option();
        deserialize_unit(); deserialize_seq(); deserialize_map(); deserialize_identifier();
        deserialize_ignored_any();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }
}

/// Built-in tasks whose payload type this module knows (the cron maintenance tasks' types
/// live with their handlers in the workers crate and are only checked to be JSON).
pub const TYPED_TASKS: [&str; 5] = [
    task::DEMO_NOOP,
    task::DEMO_SLEEP,
    task::DEMO_FAIL,
    task::RENEWAL_PAGARME,
    task::RENEWAL_APPMAX,
];

/// Checks a body before it is published: for the built-in tasks of [`TYPED_TASKS`] it must
/// decode into the task's payload type (exactly what the worker will do); for any other
/// task it must be JSON.
///
/// Every body, typed or not, must also be UTF-8 within [`crate::limits::MAX_JSON_DEPTH`]
/// levels of nesting ([`crate::limits::check_body`]); a body that is not is a syntax error.
pub fn validate(task_name: &str, body: &[u8]) -> Result<(), PayloadError> {
    crate::limits::check_body("body", body).map_err(PayloadError::from_limit)?;
    match task_name {
        task::DEMO_NOOP => decode::<task::DemoNoop>(body).map(drop),
        task::DEMO_SLEEP => decode::<task::DemoSleep>(body).map(drop),
        task::DEMO_FAIL => decode::<task::DemoFail>(body).map(drop),
        task::RENEWAL_PAGARME | task::RENEWAL_APPMAX => {
            decode::<task::RenewalPayload>(body).map(drop)
        }
        _ => decode::<serde::de::IgnoredAny>(body).map(drop),
    }
}

/// Field decoders that accept exactly what the payload JSON Schemas in `schemas/` describe,
/// no more and no less (`tests/schemas.rs` checks the two agree):
/// - integers: any JSON number with no fractional part in the type's range (`50`, `50.0`,
///   `5e1`), as JSON Schema's `integer` does, and as JavaScript and Python clients send;
/// - UUIDs: the hyphenated form only (`format: uuid`), in either case;
/// - instants: RFC 3339 with `T` (or `t`) and an offset (`format: date-time`), not chrono's
///   looser forms (a space for `T`, `+0300`).
///
/// Used as `#[serde(deserialize_with = "…")]`; the schema comes from the field's type.
pub mod strict {
    use chrono::{DateTime, Utc};
    use serde::de::{self, Deserializer, Unexpected, Visitor};
    use std::fmt;

    /// A whole number from 0 to `max`.
    struct Whole(u64);

    impl Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a whole number from 0 to {}", self.0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            if v <= self.0 {
                Ok(v)
            } else {
                Err(E::invalid_value(Unexpected::Unsigned(v), &self))
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
            }
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is the first f64 past u64::MAX; `as` would saturate to u64::MAX.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                self.visit_u64(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole(u64::MAX))
    }

    pub fn u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        d.deserialize_any(Whole(u16::MAX.into())).map(|v| v as u16)
    }

    pub fn uuid<'de, D: Deserializer<'de>>(d: D) -> Result<uuid::Uuid, D::Error> {
        let s = <std::borrow::Cow<str> as serde::Deserialize>::deserialize(d)?;
        let expected = &"a UUID in hyphenated form (8-4-4-4-12 hex digits)";
        // The hyphenated form is the only 36-character one uuid parses.
        match uuid::Uuid::try_parse(&s) {
            Ok(u) if s.len() == 36 => Ok(u),
            _ => Err(de::Error::invalid_value(Unexpected::Str(&s), expected)),
        }
    }

    fn rfc3339<E: de::Error>(s: &str) -> Result<DateTime<Utc>, E> {
        let expected = &"an RFC 3339 date-time with an offset (2026-05-01T00:00:00Z)";
        match DateTime::parse_from_rfc3339(s) {
            Ok(t) if matches!(s.as_bytes().get(10), Some(b'T' | b't')) => Ok(t.to_utc()),
            _ => Err(E::invalid_value(Unexpected::Str(s), expected)),
        }
    }

    pub fn date_time<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<str> as serde::Deserialize>::deserialize(d)?;
        rfc3339(&s)
    }

    pub fn opt_date_time<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = <Option<std::borrow::Cow<str>> as serde::Deserialize>::deserialize(d)?;
        s.map(|s| rfc3339(&s)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::DemoFail;

    #[test]
    fn malformed_payloads_name_the_path() {
        let e = decode::<DemoFail>(br#"{"mode":"explode"}"#).unwrap_err();
        assert!(
            e.message.starts_with("payload at $.mode: unknown variant"),
            "{e}"
        );
        assert_eq!(e.path.as_deref(), Some("mode"));
        assert_eq!(e.kind, PayloadErrorKind::Invalid);
        let e = decode::<DemoFail>(b"{not json").unwrap_err();
        assert!(e.message.starts_with("body is not valid JSON"), "{e}");
        assert!(e.is_syntax() && e.path.is_none());
        let e = decode::<DemoFail>(br#"{"mode":"permanent"} trailing"#).unwrap_err();
        assert!(e.message.starts_with("body is not valid JSON"), "{e}");
        // Not JSON, although a value of the wrong type comes before the broken part.
        for body in [&b"0\""[..], br#"{"mode":"explode","#, br#"[1] x"#] {
            let e = decode::<DemoFail>(body).unwrap_err();
            assert!(e.is_syntax() && e.path.is_none(), "{e}");
            assert!(e.message.starts_with("body is not valid JSON"), "{e}");
        }
        let e = decode::<DemoFail>(b"[]").unwrap_err();
        assert!(e.message.contains("as a JSON object"), "{e}");
        assert_eq!(e.path, None);
        assert!(decode::<DemoFail>(br#"{"mode":"permanent"}"#).is_ok());
    }

    #[test]
    fn validate_knows_the_builtin_types() {
        let e = validate(task::DEMO_SLEEP, br#"{"ms":"x"}"#).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("ms"));
        assert!(
            e.message.starts_with("payload at $.ms: invalid type"),
            "{e}"
        );
        assert!(validate(task::DEMO_SLEEP, br#"{"ms":5}"#).is_ok());
        assert!(validate(task::DEMO_NOOP, br#"{"a":[1]}"#).is_ok());
        assert!(validate(task::DEMO_NOOP, b"[1]").is_err());
        assert!(validate(task::DEMO_FAIL, br#"{"mode":"panic","x":1}"#).is_err());
        let e = validate(task::RENEWAL_PAGARME, br#"{"subscription_id":"nope"}"#).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("subscription_id"));
        assert!(validate(
            task::RENEWAL_APPMAX,
            br#"{"subscription_id":"0190c8a4-0000-7000-8000-000000000000","period_end":"2026-01-01T00:00:00Z"}"#
        )
        .is_ok());
    }

    #[test]
    fn other_tasks_only_need_json() {
        assert!(validate("email.send", br#"[1, "two", {"three": 3}]"#).is_ok());
        assert!(validate("email.send", b"42").is_ok());
        assert!(validate("email.send", b"{").unwrap_err().is_syntax());
        assert!(validate("email.send", b"{} {}").unwrap_err().is_syntax());
        assert!(validate("email.send", b"").unwrap_err().is_syntax());
        // UTF-8 and the depth limit hold for untyped tasks too.
        assert!(validate("cron.x", b"\"\xff\"").unwrap_err().is_syntax());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = validate("cron.x", deep.as_bytes()).unwrap_err();
        assert!(
            e.is_syntax() && e.message.starts_with("body is not valid JSON"),
            "{e}"
        );
    }
}
