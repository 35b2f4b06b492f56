//! Decoding and validating job payloads: one implementation for the worker (which
//! dead-letters a body that does not decode as `malformed`) and the ingest API (which
//! refuses it before publishing).
//!
//! Errors name the JSON path of the first problem: `payload at $.mode: unknown variant …`,
//! with [`PayloadError::path`] = `mode`.

use crate::task;
use serde::de::DeserializeOwned;

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

    pub fn is_syntax(&self) -> bool {
        self.kind == PayloadErrorKind::Syntax
    }
}

/// Decodes JSON, naming the path of the first error (`$.mode: unknown variant …`).
pub fn decode<P: DeserializeOwned>(body: &[u8]) -> Result<P, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: P = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            PayloadError::syntax(inner)
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
pub fn validate(task_name: &str, body: &[u8]) -> Result<(), PayloadError> {
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
        let e = decode::<DemoFail>(b"[]").unwrap_err();
        assert!(e.message.starts_with("payload: invalid length 0"), "{e}");
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
    }
}
