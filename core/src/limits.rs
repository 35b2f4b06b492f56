//! Bounds on everything a job carries, checked wherever a job comes in (the ingest HTTP API,
//! `warren publish`, the producer library, the outbox insert), so that no input can make a
//! publisher panic or make RabbitMQ close a shared connection.
//!
//! | What | Rule |
//! |---|---|
//! | Task name (routing key) | 1 to [`MAX_SHORT`] (255) bytes of UTF-8, no control characters |
//! | Job id (`message_id`) | 1 to 255 bytes, same characters |
//! | Idempotency key (`x-idempotency-key`) | 1 to 255 bytes, same characters |
//! | Tenant (`x-tenant`) | 1 to 255 bytes, same characters |
//! | `traceparent` | 1 to 255 bytes, same characters |
//! | All headers of a message, encoded | at most [`MAX_HEADERS_BYTES`] (16 KiB) |
//! | Body | UTF-8 JSON nested at most [`MAX_JSON_DEPTH`] (64) levels, for every task |
//! | Delay (`delay`, `run_at`) | at most [`MAX_DELAY`] (one year) from now |
//!
//! Why these numbers: AMQP 0-9-1 *short strings* (routing key, `message_id`) hold at most 255
//! bytes, and the client library panics on a longer one. All message properties travel in a
//! single frame; one bigger than the connection's `frame_max` (128 KiB on RabbitMQ by default)
//! is a protocol error that closes the **whole connection**, with every other publish on it.
//! 16 KiB of headers leaves ample room for what the runtime adds on retries and dead letters
//! (`x-error` holds up to 4000 characters, `x-death`). The depth limit stays well below the
//! 127 levels `serde_json` decodes, so a payload accepted here always decodes (also inside a
//! batch, which adds two levels). Control characters (NUL, CR, LF, DEL, C1) are refused: they
//! break logs, HTTP headers and some AMQP clients.
//!
//! [`LimitError`] names the field and says what to do.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use lapin::types::{AMQPValue, FieldArray, FieldTable};
use std::time::Duration;

/// Longest task name, job id, idempotency key, tenant or `traceparent`, in bytes (an AMQP
/// short string).
pub const MAX_SHORT: usize = 255;
/// Largest encoded header table of a job published through Warren, in bytes.
pub const MAX_HEADERS_BYTES: usize = 16 * 1024;
/// Largest encoded header table any Warren publish sends (retries and dead letters of
/// messages other clients published included): a frame guard below RabbitMQ's default
/// `frame_max` of 128 KiB, so one message can never close the connection.
pub const MAX_FRAME_HEADERS_BYTES: usize = 120 * 1024;
/// Deepest nesting of arrays and objects in a job body.
pub const MAX_JSON_DEPTH: usize = 64;
/// Longest a job may be delayed: one year (365 days). Further is a mistake more often than a
/// plan (a unit or a year typed wrong), and a row held that long outlives most retention.
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A value outside the bounds. `field` names it as the caller knows it (`X-Tenant`,
/// `--tenant`, `[2].id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{field} is empty; give a value or leave it out")]
    Empty { field: String },
    #[error("{field} is {len} bytes; at most {max} are allowed (an AMQP short string); use a shorter value")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("{field} is not valid UTF-8; send UTF-8 text")]
    NotUtf8 { field: String },
    #[error("{field} contains a control character (byte {byte:#04x} at offset {at}); remove it")]
    ControlChar { field: String, byte: u32, at: usize },
    #[error("the message headers would be {len} bytes encoded; at most {max} are allowed; shorten {field}")]
    HeadersTooLarge {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("{field} is not valid UTF-8 (at byte {at}); JSON bodies must be UTF-8")]
    BodyNotUtf8 { field: String, at: usize },
    #[error("{field} nests arrays and objects deeper than {max} levels; flatten it")]
    BodyTooDeep { field: String, max: usize },
    #[error("{field} is {secs} seconds from now; at most {max} (one year) are allowed")]
    DelayTooLong { field: String, secs: u64, max: u64 },
}

impl LimitError {
    /// The field the error is about.
    pub fn field(&self) -> &str {
        match self {
            Self::Empty { field }
            | Self::TooLong { field, .. }
            | Self::NotUtf8 { field }
            | Self::ControlChar { field, .. }
            | Self::HeadersTooLarge { field, .. }
            | Self::BodyNotUtf8 { field, .. }
            | Self::BodyTooDeep { field, .. }
            | Self::DelayTooLong { field, .. } => field,
        }
    }

    /// True for a body that is not UTF-8 JSON within the depth limit (the caller answers as
    /// it would for malformed JSON).
    pub fn is_body(&self) -> bool {
        matches!(self, Self::BodyNotUtf8 { .. } | Self::BodyTooDeep { .. })
    }
}

/// Checks a delay (from now) against [`MAX_DELAY`].
pub fn check_delay(field: &str, delay: Duration) -> Result<(), LimitError> {
    if delay > MAX_DELAY {
        return Err(LimitError::DelayTooLong {
            field: field.to_owned(),
            secs: delay.as_secs(),
            max: MAX_DELAY.as_secs(),
        });
    }
    Ok(())
}

/// Checks a short text value (task name, job id, idempotency key, tenant, `traceparent`):
/// 1 to [`MAX_SHORT`] bytes, no control characters.
pub fn check_short(field: &str, value: &str) -> Result<(), LimitError> {
    check_text(field, value, MAX_SHORT)
}

/// Checks raw bytes as a short text value (an HTTP header value): UTF-8 first.
pub fn check_short_bytes<'a>(field: &str, value: &'a [u8]) -> Result<&'a str, LimitError> {
    if value.len() > MAX_SHORT {
        // Before decoding, so a huge value costs nothing.
        return Err(LimitError::TooLong {
            field: field.to_owned(),
            len: value.len(),
            max: MAX_SHORT,
        });
    }
    let s = std::str::from_utf8(value).map_err(|_| LimitError::NotUtf8 {
        field: field.to_owned(),
    })?;
    check_short(field, s)?;
    Ok(s)
}

/// 1 to `max` bytes of text without control characters.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), LimitError> {
    if value.is_empty() {
        return Err(LimitError::Empty {
            field: field.to_owned(),
        });
    }
    if value.len() > max {
        return Err(LimitError::TooLong {
            field: field.to_owned(),
            len: value.len(),
            max,
        });
    }
    if let Some((at, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(LimitError::ControlChar {
            field: field.to_owned(),
            byte: c as u32,
            at,
        });
    }
    Ok(())
}

/// Checks a job body: UTF-8 (the whole body, strings included) and at most
/// [`MAX_JSON_DEPTH`] levels of arrays and objects. It does not check the JSON grammar (the
/// decoder does); it only scans brackets outside strings, in one pass without recursion.
pub fn check_body(field: &str, body: &[u8]) -> Result<(), LimitError> {
    check_body_within(field, body, MAX_JSON_DEPTH)
}

/// [`check_body`] with another depth limit (a batch of payloads allows two more levels).
pub fn check_body_within(field: &str, body: &[u8], max_depth: usize) -> Result<(), LimitError> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(LimitError::BodyNotUtf8 {
            field: field.to_owned(),
            at: e.valid_up_to(),
        });
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(LimitError::BodyTooDeep {
                        field: field.to_owned(),
                        max: max_depth,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Encoded size of a header table as AMQP writes it (its 4-byte length included).
pub fn encoded_len(table: &FieldTable) -> usize {
    4 + table
        .inner()
        .iter()
        .map(|(k, v)| 1 + k.as_str().len() + 1 + value_len(v))
        .sum::<usize>()
}

fn array_len(a: &FieldArray) -> usize {
    4 + a.as_slice().iter().map(|v| 1 + value_len(v)).sum::<usize>()
}

fn value_len(v: &AMQPValue) -> usize {
    match v {
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(b) => 4 + b.as_slice().len(),
        AMQPValue::FieldArray(a) => array_len(a),
        AMQPValue::FieldTable(t) => encoded_len(t),
        AMQPValue::Void => 0,
    }
}

/// Checks that a header table fits `max` encoded bytes; `field` names what to shorten.
pub fn check_headers(field: &str, table: &FieldTable, max: usize) -> Result<(), LimitError> {
    let len = encoded_len(table);
    if len > max {
        return Err(LimitError::HeadersTooLarge {
            field: field.to_owned(),
            len,
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values() {
        assert!(check_short("X-Tenant", "acme").is_ok());
        assert!(check_short("X-Tenant", &"é".repeat(127)).is_ok());
        assert!(check_short("X-Tenant", &"a".repeat(255)).is_ok());
        let e = check_short("X-Tenant", &"a".repeat(256)).unwrap_err();
        assert!(e.to_string().starts_with("X-Tenant is 256 bytes"), "{e}");
        assert_eq!(e.field(), "X-Tenant");
        assert!(matches!(
            check_short("id", "a\0b"),
            Err(LimitError::ControlChar { at: 1, .. })
        ));
        assert!(check_short("id", "a\u{85}").is_err());
        assert!(check_short("id", "a\x7f").is_err());
        assert!(matches!(
            check_short("id", ""),
            Err(LimitError::Empty { .. })
        ));
        assert!(check_short_bytes("id", b"\xff").is_err());
        assert!(check_short_bytes("id", &[b'a'; 300_000]).is_err());
    }

    #[test]
    fn bodies() {
        assert!(check_body("body", br#"{"a":[1,{"b":"[[[[\"{"}]}"#).is_ok());
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_body("body", deep(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let e = check_body("body", deep(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(e.is_body() && e.to_string().contains("64 levels"), "{e}");
        assert!(check_body("body", deep(100_000).as_bytes()).is_err());
        // Brackets inside strings do not count.
        let s = format!("\"{}\"", "[".repeat(1000));
        assert!(check_body("body", s.as_bytes()).is_ok());
        assert!(matches!(
            check_body("body", b"\"\xff\""),
            Err(LimitError::BodyNotUtf8 { at: 1, .. })
        ));
    }

    #[test]
    fn header_sizes() {
        let mut t = FieldTable::default();
        crate::envelope::set_str(&mut t, "x-tenant", "acme");
        crate::envelope::set_int(&mut t, "x-max-attempts", 3);
        // 4 + (1+8+1+4+4) + (1+14+1+8)
        assert_eq!(encoded_len(&t), 4 + 18 + 24);
        crate::envelope::set_str(&mut t, "x-pad", &"x".repeat(MAX_HEADERS_BYTES));
        assert!(check_headers("x-pad", &t, MAX_HEADERS_BYTES).is_err());
    }
}
