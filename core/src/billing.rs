//! Billing periods: the `intervalUnit` × `intervalCount` a subscription renews by, and the
//! arithmetic that advances a period.
//!
//! Months and years are calendar arithmetic in UTC, clamped to the month's last day: a
//! period ending January 31 renews to February 28 (29 in a leap year); February 29 plus one
//! year is February 28. The time of day is kept. Clamping is not undone later (February 28
//! plus one month is March 28), which is how most billing systems without a separate anchor
//! day behave; the renewal key uses the exact period end, so the drift never double-charges.
//!
//! Also here: the renewal key of a period's charge attempt, and the dunning schedule that
//! spaces the attempts after a decline.

use chrono::{DateTime, Duration, Months, SecondsFormat, Utc};
use std::fmt;
use std::str::FromStr;

/// The unit of a billing interval (`metadata.intervalUnit`, case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntervalUnit {
    Day,
    Week,
    Month,
    Year,
}

/// A billing interval: `count` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub unit: IntervalUnit,
    pub count: u32,
}

/// A malformed interval, naming the metadata field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    #[error("metadata.intervalUnit: {0:?} is not one of DAY, WEEK, MONTH, YEAR")]
    Unit(String),
    #[error("metadata.intervalCount: {0} is not a whole number from 1 to 1000")]
    Count(String),
    #[error("advancing {0} overflows the calendar")]
    Overflow(String),
}

impl FromStr for IntervalUnit {
    type Err = IntervalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "DAY" | "DAYS" => Ok(Self::Day),
            "WEEK" | "WEEKS" => Ok(Self::Week),
            "MONTH" | "MONTHS" => Ok(Self::Month),
            "YEAR" | "YEARS" => Ok(Self::Year),
            _ => Err(IntervalError::Unit(s.to_owned())),
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} × {:?}", self.count, self.unit)
    }
}

impl Interval {
    /// Parses `metadata.intervalUnit` and `metadata.intervalCount` (a JSON number or a
    /// numeric string, as upstream systems write either).
    pub fn from_metadata(
        unit: &serde_json::Value,
        count: &serde_json::Value,
    ) -> Result<Self, IntervalError> {
        let unit = match unit {
            serde_json::Value::String(s) => s.parse()?,
            other => return Err(IntervalError::Unit(other.to_string())),
        };
        let n = match count {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        let count = n
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| IntervalError::Count(count.to_string()))? as u32;
        Ok(Self { unit, count })
    }

    /// The end of the period that follows one ending at `end`.
    pub fn advance(&self, end: DateTime<Utc>) -> Result<DateTime<Utc>, IntervalError> {
        let n = self.count;
        let next = match self.unit {
            IntervalUnit::Day => end.checked_add_signed(Duration::days(n.into())),
            IntervalUnit::Week => end.checked_add_signed(Duration::weeks(n.into())),
            IntervalUnit::Month => end.checked_add_months(Months::new(n)),
            IntervalUnit::Year => n
                .checked_mul(12)
                .and_then(|m| end.checked_add_months(Months::new(m))),
        };
        next.ok_or_else(|| IntervalError::Overflow(format!("{end} by {self}")))
    }
}

/// `renewal:{subscription_id}:{period_end RFC 3339}` for the first attempt at a period, with
/// `:{attempt}` appended for dunning attempts 2, 3, …: the provider idempotency key / order
/// code / reference of that charge, and (through [`crate::envelope::job_id_for_key`]) its
/// job id. A provider charges a key at most once, so every attempt needs its own.
pub fn renewal_key(subscription_id: uuid::Uuid, period_end: DateTime<Utc>, attempt: u16) -> String {
    let end = period_end.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    if attempt <= 1 {
        format!("renewal:{subscription_id}:{end}")
    } else {
        format!("renewal:{subscription_id}:{end}:{attempt}")
    }
}

/// Default wait before each dunning attempt after a decline: 1, 3 and 5 days.
pub const DEFAULT_DUNNING: [std::time::Duration; 3] = [
    std::time::Duration::from_secs(86_400),
    std::time::Duration::from_secs(3 * 86_400),
    std::time::Duration::from_secs(5 * 86_400),
];

/// When a declined period is tried again: entry `i` is the wait after the `i + 1`-th
/// declined attempt; after the last, the subscription becomes `UNPAID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DunningSchedule(pub Vec<std::time::Duration>);

impl Default for DunningSchedule {
    fn default() -> Self {
        Self(DEFAULT_DUNNING.to_vec())
    }
}

impl DunningSchedule {
    /// The wait before the next attempt after `declined` attempts of a period were declined
    /// (1 after the first decline); `None` when dunning is over.
    pub fn after_decline(&self, declined: u16) -> Option<std::time::Duration> {
        let i = usize::from(declined.max(1)) - 1;
        self.0.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renewal_keys_qualify_dunning_attempts() {
        let sub = uuid::Uuid::parse_str("0b9a4f7e-52a4-4a1f-9d55-8f6a0c1d2e3f").unwrap();
        let end = at("2026-11-23T12:00:00Z");
        assert_eq!(
            renewal_key(sub, end, 1),
            "renewal:0b9a4f7e-52a4-4a1f-9d55-8f6a0c1d2e3f:2026-11-23T12:00:00Z"
        );
        assert_eq!(
            renewal_key(sub, end, 3),
            "renewal:0b9a4f7e-52a4-4a1f-9d55-8f6a0c1d2e3f:2026-11-23T12:00:00Z:3"
        );
        assert_eq!(
            renewal_key(sub, at("2026-12-23T12:00:00.5Z"), 1),
            "renewal:0b9a4f7e-52a4-4a1f-9d55-8f6a0c1d2e3f:2026-12-23T12:00:00.500Z"
        );
    }

    #[test]
    fn dunning_schedule_ends_after_its_last_entry() {
        let s = DunningSchedule::default();
        assert_eq!(
            s.after_decline(1),
            Some(std::time::Duration::from_secs(86_400))
        );
        assert_eq!(
            s.after_decline(3),
            Some(std::time::Duration::from_secs(5 * 86_400))
        );
        assert_eq!(s.after_decline(4), None);
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn adv(unit: IntervalUnit, count: u32, from: &str) -> String {
        Interval { unit, count }
            .advance(at(from))
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    #[test]
    fn month_end_clamps() {
        use IntervalUnit::*;
        assert_eq!(
            adv(Month, 1, "2026-01-31T10:00:00Z"),
            "2026-02-28T10:00:00Z"
        );
        assert_eq!(
            adv(Month, 1, "2028-01-31T10:00:00Z"),
            "2028-02-29T10:00:00Z"
        ); // leap year
        assert_eq!(
            adv(Month, 1, "2026-03-31T00:00:00Z"),
            "2026-04-30T00:00:00Z"
        );
        assert_eq!(
            adv(Month, 3, "2026-11-30T23:59:59Z"),
            "2027-02-28T23:59:59Z"
        );
        assert_eq!(
            adv(Month, 12, "2026-05-15T08:00:00Z"),
            "2027-05-15T08:00:00Z"
        );
    }

    #[test]
    fn years_weeks_days() {
        use IntervalUnit::*;
        assert_eq!(adv(Year, 1, "2028-02-29T12:00:00Z"), "2029-02-28T12:00:00Z");
        assert_eq!(adv(Year, 4, "2028-02-29T12:00:00Z"), "2032-02-29T12:00:00Z");
        assert_eq!(adv(Year, 1, "2026-06-01T00:00:00Z"), "2027-06-01T00:00:00Z");
        assert_eq!(adv(Week, 2, "2026-12-25T09:30:00Z"), "2027-01-08T09:30:00Z");
        assert_eq!(adv(Day, 30, "2026-02-01T00:00:00Z"), "2026-03-03T00:00:00Z");
        assert_eq!(adv(Day, 1, "2028-02-28T00:00:00Z"), "2028-02-29T00:00:00Z");
    }

    #[test]
    fn metadata_parsing_names_the_field() {
        let i = Interval::from_metadata(&json!("month"), &json!(1)).unwrap();
        assert_eq!(
            i,
            Interval {
                unit: IntervalUnit::Month,
                count: 1
            }
        );
        let i = Interval::from_metadata(&json!("YEAR"), &json!("2")).unwrap();
        assert_eq!(
            i,
            Interval {
                unit: IntervalUnit::Year,
                count: 2
            }
        );
        let e = Interval::from_metadata(&json!("fortnight"), &json!(1)).unwrap_err();
        assert!(e.to_string().starts_with("metadata.intervalUnit"), "{e}");
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!("x"),
            json!(null),
            json!(5000),
        ] {
            let e = Interval::from_metadata(&json!("DAY"), &bad).unwrap_err();
            assert!(e.to_string().starts_with("metadata.intervalCount"), "{e}");
        }
    }
}
