//! Cron schedules: when each schedule ticks, and which ticks to run now.
//!
//! Pure arithmetic on instants: no database, no broker, no clock (callers pass `now`).
//! The runner records each (schedule, tick) once in PostgreSQL under [`Schedule::tick_key`]
//! and publishes the schedule's task; this module only says which ticks exist and which are
//! due.
//!
//! ```toml
//! [[cron]]
//! name = "fail-stale-payments"        # unique; part of every tick key
//! cron = "*/5 * * * *"                # or: every = "10s" (never both)
//! timezone = "America/Sao_Paulo"      # IANA name, default "UTC"; cron only
//! task = "cron.fail-stale-payments"   # must start with "cron." (the warren.cron queue)
//! payload = { max_age = "2h" }        # any table, default {}; the job's JSON body
//! catch_up = "once"                   # skip | once | all, default once
//! catch_up_window = "6h"              # once/all only, default 1h
//! overlap = "skip"                    # allow | skip, default skip
//! ```
//!
//! # Ticks
//!
//! A tick is an instant, always a whole second, written in UTC. Every replica computes the
//! same ticks from the same config, whatever its own clock or time zone, so a tick (and its
//! key) names the same run everywhere.
//!
//! - `every = "10s"`: the ticks are the multiples of the interval since the Unix epoch
//!   (1970-01-01T00:00:00Z), not "10 s after the process started". The interval is a whole
//!   number of seconds between 1 s and 366 days; `timezone` is refused with `every`
//!   because it could not change anything (`every = "1d"` ticks at 00:00 UTC; `every =
//!   "7d"` on Thursdays, the epoch's weekday). Use `cron` for calendar schedules.
//! - `cron = "…"`: five fields (minute hour day-of-month month day-of-week), or six with a
//!   leading seconds field, parsed by the `croner` crate: ranges, lists, steps, names
//!   (`MON`, `JAN`), `L`, `#`, `W`, the `+` prefix on day-of-week (day-of-month AND
//!   day-of-week; without it the two are ORed, as in Vixie cron) and the nicknames
//!   (`@hourly`, `@daily`, …). A year field is refused. The fields are matched against the
//!   wall clock of `timezone`.
//!
//! # Daylight saving time
//!
//! Wall clocks skip an hour in spring (02:00 becomes 03:00 in New York) and repeat one in
//! autumn (02:00 goes back to 01:00). A cron pattern belongs to one of two kinds, told
//! apart the way Vixie cron does it:
//!
//! - **Interval patterns**: the seconds, minutes or hours field starts with `*` (`*`, `*/5`),
//!   e.g. `0 * * * *`, `*/5 * * * *`, `0 */2 * * *`. They tick at every *real* instant whose
//!   wall clock time matches. A skipped wall time does not happen, so nothing ticks for it;
//!   a repeated one happens twice, so it ticks twice (once per offset). `0 * * * *` ticks
//!   once per real hour: 23 times on a spring-forward day, 25 on a fall-back day. This is
//!   croner's own rule for these patterns, and it is what croner computes here.
//! - **Wall-clock patterns**: none of those three fields starts with `*`, e.g.
//!   `30 2 * * *`, `0 9-17 * * 1-5`, `30 1,2 * * *`. Each matching wall clock time ticks
//!   exactly once: a repeated time ticks at its first occurrence only (the earlier offset);
//!   a time inside a gap ticks at the first instant after the gap, which is the instant of
//!   the change itself. `30 2 * * *` in New York on 2026-03-08 ticks at 03:00 EDT
//!   (07:00Z), and on 2026-11-01 once at 02:30 EST (07:30Z). Several matching times inside
//!   one gap (`0,30 2 * * *`) share that one tick, as do a time inside the gap and a match
//!   at the gap's end (`0 2,3 * * *` ticks once, at 03:00 EDT, that day): a tick is an
//!   instant, and one instant runs once.
//!
//! Croner on its own treats only patterns with one fixed value in each of seconds, minutes
//! and hours as fixed times, and lists or ranges of hours as intervals: its `30 1,2 * * *`
//! would drop 02:30 on the spring-forward day and run 01:30 twice on the fall-back day.
//! So wall-clock patterns are matched here against the plain wall clock (croner on
//! `NaiveDateTime`), and each match is mapped to an instant by the rule above. Interval
//! patterns use croner's time-zone search directly.
//!
//! # What is due: catch-up
//!
//! [`Schedule::due_ticks`] takes the latest tick the runner has recorded for the schedule
//! (`last_recorded`, the greatest recorded tick) and `now`, and returns the ticks to
//! publish now, oldest first. Only ticks `t` with `last_recorded < t <= now` are candidates.
//! *Lateness* is `now - t`. Every comparison below is strict (`lateness < bound`).
//!
//! - `skip`: only the latest candidate, and only if it is less than
//!   [`SKIP_TOLERANCE`] (60 s) late, or less than one period late when the period is
//!   shorter. A run that would be late is never made.
//! - `once` (default): only the latest candidate, if it is less than `catch_up_window` late.
//!   After an outage of any length, at most one run makes up for it.
//! - `all`: every candidate less than `catch_up_window` late, oldest first, at most
//!   [`MAX_TICKS`] per call; the runner records them and the next call continues after the
//!   last one it recorded.
//! - No tick recorded yet (a new schedule, or a renamed one: the name keys the records):
//!   at most the latest tick `<= now`, and only if it is less than one *period* late and
//!   within the mode's bound (the skip tolerance for `skip`, `catch_up_window` for the
//!   others). History is never replayed on first start. For `every` the period is the
//!   interval (so the latest tick always qualifies, bound permitting); for `cron` it is
//!   the time from the tick before to that tick: a weekday 09:00 job first started on
//!   Monday 08:00 does not run Friday's tick (71 h late, period 24 h), nor does a daily
//!   job deployed at 23:00 run that morning's 02:30 with the default 1 h window.
//!
//! Ticks that are not returned are never recorded and never come back: the next call sees
//! them later still, and they stay outside every bound. A `last_recorded` in the future
//! (a replica with a fast clock) makes nothing due until `now` passes it.
//!
//! # What the caller must do
//!
//! - Record each returned tick under [`Schedule::tick_key`] with a unique constraint, in
//!   the same transaction as the publish decision (or the outbox row), and derive the job
//!   id from the key (e.g. UUIDv5), so a tick is published once across replicas, restarts
//!   and failover. Pass the greatest recorded tick as `last_recorded`. Retention that
//!   prunes tick records must keep each schedule's latest one, or the schedule starts over
//!   as new.
//! - **Overlap** is the caller's to enforce, because it depends on the job ledger. With
//!   `overlap = "skip"`, before publishing a tick the caller looks up the run of the
//!   schedule's previous published tick; if that run has not finished (neither succeeded
//!   nor dead-lettered), it records the new tick as skipped for overlap (so it is neither
//!   published nor caught up later) and counts it. A run that never finishes would block
//!   the schedule forever, so a run older than the task's timeout plus its retries should
//!   count as finished. With `catch_up = "all"` and `overlap = "skip"`, several ticks due at
//!   once reduce to the first (the rest overlap it); use `overlap = "allow"` to replay them
//!   all. With `overlap = "allow"` the caller publishes every due tick.
//! - Sleep until [`Schedule::next_tick_after`]`(now)` (or poll), and measure lag as
//!   `now - tick` at publish time.

use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, SubsecRound, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// The most ticks [`Schedule::ticks_between`] (and so `catch_up = "all"`) returns in one
/// call: the earliest ones. A caller that gets this many continues after the last.
pub const MAX_TICKS: usize = 10_000;
/// Every schedule's task starts with this, so it routes to the cron queue (`cron.#`).
pub const TASK_PREFIX: &str = "cron.";
/// `catch_up_window` when the config names none.
pub const DEFAULT_CATCH_UP_WINDOW: Duration = Duration::from_secs(3600);
/// The most a tick may be late under `catch_up = "skip"` (less when the period is shorter).
pub const SKIP_TOLERANCE: Duration = Duration::from_secs(60);
/// The longest `every` interval and `catch_up_window`.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Iterations allowed when stepping over wall clock matches that map to the wrong side of an
/// instant; only a repeated range of wall times needs any, and it holds at most a few hours
/// of seconds.
const FOLD_SCAN_LIMIT: usize = 100_000;
/// The field TOML date-times turn into when deserialised into JSON values.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

/// A schedule that cannot be used, naming the schedule and the field:
/// `cron[fail-stale-payments].timezone: "Mars/Base" is not an IANA time zone`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron[{schedule}].{field}: {message}")]
pub struct ScheduleError {
    /// The schedule's `name` as written.
    pub schedule: String,
    /// The config field at fault.
    pub field: &'static str,
    pub message: String,
}

/// One `[[cron]]` table as written; [`Schedule`] is the checked form.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub name: String,
    /// A cron expression: 5 fields, or 6 with leading seconds.
    pub cron: Option<String>,
    /// An interval ("10s", "5m"), ticks aligned to multiples of it since the Unix epoch.
    pub every: Option<String>,
    /// IANA time zone the cron fields are read in; default UTC.
    pub timezone: Option<String>,
    pub task: String,
    #[serde(default)]
    pub payload: serde_json::Map<String, serde_json::Value>,
    /// `skip`, `once` or `all`; default `once`.
    pub catch_up: Option<String>,
    /// How late a tick may still run under `once` and `all`; default 1h.
    pub catch_up_window: Option<String>,
    /// `allow` or `skip`; default `skip`.
    pub overlap: Option<String>,
}

/// Which missed ticks to run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CatchUp {
    /// Only the latest tick, and only if barely late.
    Skip,
    /// The latest missed tick within the window.
    Once,
    /// Every missed tick within the window.
    All,
}

/// Whether a tick may be published while the previous run is unfinished (enforced by the
/// caller; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Overlap {
    Allow,
    Skip,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::Once => "once",
            CatchUp::All => "all",
        }
    }
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a schedule's ticks are computed.
#[derive(Debug, Clone)]
enum Timing {
    Cron {
        expression: String,
        cron: Box<Cron>,
        tz: Tz,
        /// No `*` in seconds, minutes or hours: each matching wall time ticks once.
        wall_clock: bool,
    },
    Every {
        seconds: i64,
    },
}

/// A checked cron schedule. Deserialises from a `[[cron]]` table (through
/// [`ScheduleConfig`], so unknown fields and invalid values are errors).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ScheduleConfig")]
pub struct Schedule {
    name: String,
    timing: Timing,
    task: String,
    payload: serde_json::Map<String, serde_json::Value>,
    catch_up: CatchUp,
    catch_up_window: Duration,
    window: TimeDelta,
    overlap: Overlap,
}

/// Checks a list of `[[cron]]` tables, including that names are unique (they key the tick
/// records).
pub fn parse_schedules(configs: Vec<ScheduleConfig>) -> Result<Vec<Schedule>, ScheduleError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(configs.len());
    for config in configs {
        let schedule = Schedule::try_from(config)?;
        if !seen.insert(schedule.name.clone()) {
            return Err(ScheduleError {
                schedule: schedule.name,
                field: "name",
                message: "is used by more than one schedule; names key the tick records and \
                          must be unique"
                    .into(),
            });
        }
        out.push(schedule);
    }
    Ok(out)
}

impl TryFrom<ScheduleConfig> for Schedule {
    type Error = ScheduleError;

    fn try_from(c: ScheduleConfig) -> Result<Self, ScheduleError> {
        let name = c.name;
        let err = |field: &'static str, message: String| ScheduleError {
            schedule: name.clone(),
            field,
            message,
        };

        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
        if !name_ok {
            return Err(err(
                "name",
                format!("{name:?} must be 1-100 characters of a-z, A-Z, 0-9, '-', '_' or '.'"),
            ));
        }

        let timing = match (c.cron, c.every) {
            (Some(_), Some(every)) => {
                return Err(err(
                    "every",
                    format!(
                        "{every:?} cannot be combined with cron: a schedule has either a cron \
                         expression or an interval, not both"
                    ),
                ))
            }
            (None, None) => {
                return Err(err(
                    "cron",
                    "missing: set cron (an expression like \"*/5 * * * *\") or every (an \
                     interval like \"10s\")"
                        .into(),
                ))
            }
            (Some(expression), None) => {
                let tz = match &c.timezone {
                    None => Tz::UTC,
                    Some(name) => name.parse::<Tz>().map_err(|_| {
                        err(
                            "timezone",
                            format!(
                                "{name:?} is not an IANA time zone (e.g. \"America/Sao_Paulo\", \
                                 \"UTC\")"
                            ),
                        )
                    })?,
                };
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .year(Year::Disallowed)
                    .build()
                    .parse(&expression)
                    .map_err(|e| {
                        err(
                            "cron",
                            format!(
                                "{expression:?} is not a cron expression (5 fields: minute hour \
                                 day-of-month month day-of-week, or 6 with leading seconds): {e}"
                            ),
                        )
                    })?;
                // A pattern that never matches (Feb 30) would make every search run to
                // croner's year-5000 limit.
                let epoch = DateTime::<Utc>::UNIX_EPOCH.naive_utc();
                if cron.find_next_occurrence(&epoch, false).is_err() {
                    return Err(err("cron", format!("{expression:?} never matches a date")));
                }
                let p = &cron.pattern;
                let wall_clock =
                    !p.seconds.from_wildcard && !p.minutes.from_wildcard && !p.hours.from_wildcard;
                Timing::Cron {
                    expression,
                    cron: Box::new(cron),
                    tz,
                    wall_clock,
                }
            }
            (None, Some(every)) => {
                if let Some(tz) = &c.timezone {
                    return Err(err(
                        "timezone",
                        format!(
                            "{tz:?} cannot be used with every: interval ticks are multiples of \
                             the interval since the Unix epoch, the same in every time zone; \
                             use cron for wall-clock times"
                        ),
                    ));
                }
                let d = parse_duration(&every).map_err(|m| err("every", m))?;
                if d.subsec_nanos() != 0 || d < Duration::from_secs(1) || d > MAX_DURATION {
                    return Err(err(
                        "every",
                        format!("{every:?} must be a whole number of seconds from 1s to 366d"),
                    ));
                }
                let seconds = i64::try_from(d.as_secs())
                    .map_err(|_| err("every", format!("{every:?} is too long")))?;
                Timing::Every { seconds }
            }
        };

        let task = c.task;
        let Some(suffix) = task.strip_prefix(TASK_PREFIX) else {
            return Err(err(
                "task",
                format!(
                    "{task:?} must start with \"{TASK_PREFIX}\" so it routes to the cron queue \
                     (bound to cron.#)"
                ),
            ));
        };
        let suffix_ok = !suffix.is_empty()
            && task.len() <= 255
            && suffix
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
        if !suffix_ok {
            return Err(err(
                "task",
                format!(
                    "{task:?} must be \"{TASK_PREFIX}\" followed by 1 or more of a-z, A-Z, 0-9, \
                     '-', '_' or '.' (at most 255 bytes in all)"
                ),
            ));
        }

        if let Some(path) = find_toml_datetime(&c.payload, "payload") {
            return Err(err(
                "payload",
                format!(
                    "{path} is a TOML date-time, which has no JSON form; quote it as a string \
                     (\"2026-01-01T00:00:00Z\")"
                ),
            ));
        }

        let catch_up = match c.catch_up.as_deref() {
            None | Some("once") => CatchUp::Once,
            Some("skip") => CatchUp::Skip,
            Some("all") => CatchUp::All,
            Some(other) => {
                return Err(err(
                    "catch_up",
                    format!("{other:?} is not one of \"skip\", \"once\", \"all\""),
                ))
            }
        };

        let catch_up_window = match &c.catch_up_window {
            None => DEFAULT_CATCH_UP_WINDOW,
            Some(_) if catch_up == CatchUp::Skip => {
                return Err(err(
                    "catch_up_window",
                    "has no effect with catch_up = \"skip\" (a skipped tick never runs late); \
                     remove it, or use catch_up = \"once\" or \"all\""
                        .into(),
                ))
            }
            Some(w) => {
                let d = parse_duration(w).map_err(|m| err("catch_up_window", m))?;
                if d < Duration::from_secs(1) || d > MAX_DURATION {
                    return Err(err(
                        "catch_up_window",
                        format!("{w:?} must be from 1s to 366d"),
                    ));
                }
                d
            }
        };
        let window = TimeDelta::from_std(catch_up_window)
            .map_err(|e| err("catch_up_window", e.to_string()))?;

        let overlap = match c.overlap.as_deref() {
            None | Some("skip") => Overlap::Skip,
            Some("allow") => Overlap::Allow,
            Some(other) => {
                return Err(err(
                    "overlap",
                    format!("{other:?} is not one of \"allow\", \"skip\""),
                ))
            }
        };

        Ok(Schedule {
            name,
            timing,
            task,
            payload: c.payload,
            catch_up,
            catch_up_window,
            window,
            overlap,
        })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like \"10s\", \"5m\" or \"2h\": {e}"))
}

/// The path of the first TOML date-time in a payload, if any.
fn find_toml_datetime(
    map: &serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Option<String> {
    if map.contains_key(TOML_DATETIME_KEY) {
        return Some(path.to_owned());
    }
    map.iter()
        .find_map(|(k, v)| find_in_value(v, &format!("{path}.{k}")))
}

fn find_in_value(v: &serde_json::Value, path: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => find_toml_datetime(m, path),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_in_value(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

impl Schedule {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The task (= routing key) each tick's job is published with.
    pub fn task(&self) -> &str {
        &self.task
    }

    /// The job's JSON body.
    pub fn payload(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.payload
    }

    pub fn catch_up(&self) -> CatchUp {
        self.catch_up
    }

    /// How late a tick may still run under `once` and `all`.
    pub fn catch_up_window(&self) -> Duration {
        self.catch_up_window
    }

    pub fn overlap(&self) -> Overlap {
        self.overlap
    }

    /// The cron expression as written, for `cron` schedules.
    pub fn cron_expression(&self) -> Option<&str> {
        match &self.timing {
            Timing::Cron { expression, .. } => Some(expression),
            Timing::Every { .. } => None,
        }
    }

    /// The interval, for `every` schedules.
    pub fn every(&self) -> Option<Duration> {
        match self.timing {
            Timing::Every { seconds } => Some(Duration::from_secs(seconds.unsigned_abs())),
            Timing::Cron { .. } => None,
        }
    }

    /// The time zone cron fields are read in (UTC for `every`).
    pub fn timezone(&self) -> Tz {
        match self.timing {
            Timing::Cron { tz, .. } => tz,
            Timing::Every { .. } => Tz::UTC,
        }
    }

    /// The key of one tick, for its record and its job id: `cron:{name}:{tick}`, the tick in
    /// RFC 3339 UTC (`cron:fail-stale-payments:2026-03-08T07:00:00Z`). Ticks are whole
    /// seconds; a fractional instant keeps its fraction, so distinct instants never share
    /// a key.
    pub fn tick_key(&self, tick: DateTime<Utc>) -> String {
        format!(
            "cron:{}:{}",
            self.name,
            tick.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        )
    }

    /// Every tick `t` with `after < t <= until`, oldest first, at most [`MAX_TICKS`] (the
    /// earliest ones; continue from the last to get more). Empty when `after >= until`.
    pub fn ticks_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        if after >= until {
            return out;
        }
        match self.timing {
            Timing::Every { seconds } => {
                let first = after.timestamp().div_euclid(seconds).saturating_add(1);
                let last = until.timestamp().div_euclid(seconds);
                for k in first..=last {
                    if out.len() >= MAX_TICKS {
                        break;
                    }
                    match every_tick(k, seconds) {
                        Some(t) => out.push(t),
                        None => break,
                    }
                }
            }
            Timing::Cron { .. } => {
                let mut cursor = after;
                while out.len() < MAX_TICKS {
                    match self.next_tick_after(cursor) {
                        Some(t) if t <= until => {
                            out.push(t);
                            cursor = t;
                        }
                        _ => break,
                    }
                }
            }
        }
        out
    }

    /// The first tick strictly after `t`, or `None` if there is none before croner's search
    /// limit (year 5000).
    pub fn next_tick_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are whole seconds, so the first tick after `t` is the first after its second.
        let t = t.trunc_subsecs(0);
        match &self.timing {
            Timing::Every { seconds } => {
                every_tick(t.timestamp().div_euclid(*seconds).checked_add(1)?, *seconds)
            }
            Timing::Cron {
                cron,
                tz,
                wall_clock: false,
                ..
            } => cron
                .find_next_occurrence(&t.with_timezone(tz), false)
                .ok()
                .map(|x| x.with_timezone(&Utc)),
            Timing::Cron {
                cron,
                tz,
                wall_clock: true,
                ..
            } => {
                // Wall times after `t`'s own map to instants at or after `t`'s, except on the
                // second pass of a repeated range, where the rest of the range maps to the
                // first pass: step over those.
                let mut m = cron.find_next_occurrence(&wall(t, tz), false).ok()?;
                for _ in 0..FOLD_SCAN_LIMIT {
                    let x = wall_to_instant(*tz, m)?;
                    if x > t {
                        return Some(x);
                    }
                    m = cron.find_next_occurrence(&m, false).ok()?;
                }
                None
            }
        }
    }

    /// The latest tick at or before `t`, or `None` if there is none after year 1.
    pub fn latest_tick_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let t = t.trunc_subsecs(0);
        match &self.timing {
            Timing::Every { seconds } => every_tick(t.timestamp().div_euclid(*seconds), *seconds),
            Timing::Cron {
                cron,
                tz,
                wall_clock: false,
                ..
            } => cron
                .find_previous_occurrence(&t.with_timezone(tz), true)
                .ok()
                .map(|x| x.with_timezone(&Utc)),
            Timing::Cron {
                cron,
                tz,
                wall_clock: true,
                ..
            } => {
                // On the second pass of a repeated range, the wall times still ahead in that
                // range already ticked (on the first pass): search from the range's far end,
                // stepping back over what maps after `t`.
                let local = t.with_timezone(tz);
                let mut bound = local.naive_local();
                if let LocalResult::Ambiguous(earlier, later) = tz.from_local_datetime(&bound) {
                    if local >= later {
                        bound = bound.checked_add_signed(later - earlier)?;
                    }
                }
                let mut m = cron.find_previous_occurrence(&bound, true).ok()?;
                for _ in 0..FOLD_SCAN_LIMIT {
                    let x = wall_to_instant(*tz, m)?;
                    if x <= t {
                        return Some(x);
                    }
                    m = cron.find_previous_occurrence(&m, false).ok()?;
                }
                None
            }
        }
    }

    /// The length of the period that ends at `tick`: the time since the tick before it.
    fn period_ending_at(&self, tick: DateTime<Utc>) -> Option<TimeDelta> {
        match self.timing {
            Timing::Every { seconds } => TimeDelta::try_seconds(seconds),
            Timing::Cron { .. } => {
                let before = tick.checked_sub_signed(TimeDelta::nanoseconds(1))?;
                let prev = self.latest_tick_at_or_before(before)?;
                Some(tick - prev)
            }
        }
    }

    /// How late the latest tick may be under `skip`.
    fn skip_tolerance(&self, tick: DateTime<Utc>) -> TimeDelta {
        let tolerance = TimeDelta::seconds(SKIP_TOLERANCE.as_secs() as i64);
        self.period_ending_at(tick)
            .map_or(tolerance, |p| p.min(tolerance))
    }

    /// The ticks to publish now, oldest first, by `catch_up` (see the module docs):
    ///
    /// - `last_recorded = None`: at most the latest tick `<= now`, if it is less than one
    ///   period late and less than the mode's bound late (skip tolerance, or the window).
    /// - `skip`: the latest tick in `(last_recorded, now]`, if less than
    ///   `min(60 s, period)` late.
    /// - `once`: the latest tick in `(last_recorded, now]`, if less than `catch_up_window`
    ///   late.
    /// - `all`: every tick in `(last_recorded, now]` less than `catch_up_window` late, at
    ///   most [`MAX_TICKS`] (the oldest).
    pub fn due_ticks(
        &self,
        last_recorded: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let Some(latest) = self.latest_tick_at_or_before(now) else {
            return Vec::new();
        };
        if last_recorded.is_some_and(|last| latest <= last) {
            return Vec::new();
        }
        let lateness = now - latest;
        let bound = match (last_recorded, self.catch_up) {
            (_, CatchUp::Skip) => self.skip_tolerance(latest),
            (None, CatchUp::Once | CatchUp::All) => match self.period_ending_at(latest) {
                Some(period) => period.min(self.window),
                None => self.window,
            },
            (Some(_), CatchUp::Once) => self.window,
            (Some(last), CatchUp::All) => {
                let oldest = now
                    .checked_sub_signed(self.window)
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
                return self.ticks_between(last.max(oldest), now);
            }
        };
        if lateness < bound {
            vec![latest]
        } else {
            Vec::new()
        }
    }
}

/// Tick number `k` of an `every` schedule.
fn every_tick(k: i64, seconds: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(k.checked_mul(seconds)?, 0)
}

/// `t`'s wall clock time in `tz`.
fn wall(t: DateTime<Utc>, tz: &Tz) -> NaiveDateTime {
    t.with_timezone(tz).naive_local()
}

/// The instant a matching wall time ticks at, for wall-clock patterns: the time itself when
/// it happens once, its first occurrence when it happens twice, and the end of the gap
/// (the instant of the change) when it does not happen.
fn wall_to_instant(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(x) => Some(x.with_timezone(&Utc)),
        LocalResult::Ambiguous(earlier, _) => Some(earlier.with_timezone(&Utc)),
        LocalResult::None => gap_end(tz, wall),
    }
}

/// The first instant after the gap holding `wall` (a wall time that does not happen in `tz`):
/// the instant of the first wall time after it that does happen.
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let resolve = |offset: i64| -> Option<DateTime<Utc>> {
        let w = wall.checked_add_signed(TimeDelta::try_seconds(offset)?)?;
        tz.from_local_datetime(&w)
            .earliest()
            .map(|x| x.with_timezone(&Utc))
    };
    // Minute steps find the end (gaps last minutes to a day), a bisection the exact second.
    let mut hi = (1..=24 * 60)
        .map(|m| m * 60)
        .find(|&s| resolve(s).is_some())?;
    let mut lo = hi - 60; // known not to happen (or `wall` itself)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if resolve(mid).is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    resolve(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test instant")
            .with_timezone(&Utc)
    }

    fn config(toml_text: &str) -> ScheduleConfig {
        toml::from_str(toml_text).expect("test config parses")
    }

    fn schedule(toml_text: &str) -> Schedule {
        Schedule::try_from(config(toml_text)).expect("test schedule is valid")
    }

    fn cron_in(expr: &str, tz: &str) -> Schedule {
        schedule(&format!(
            "name = \"t\"\ncron = \"{expr}\"\ntimezone = \"{tz}\"\ntask = \"cron.t\""
        ))
    }

    fn error(toml_text: &str) -> String {
        match Schedule::try_from(config(toml_text)) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn strings(ticks: &[DateTime<Utc>]) -> Vec<String> {
        ticks
            .iter()
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .collect()
    }

    /// The ticks on one local calendar day: [start, end) = (start - 1s, end - 1s].
    fn day(s: &Schedule, start: &str, end: &str) -> Vec<String> {
        let one = TimeDelta::seconds(1);
        strings(&s.ticks_between(utc(start) - one, utc(end) - one))
    }

    // New York, 2026-03-08: 02:00 EST (07:00Z) jumps to 03:00 EDT. The local day runs from
    // 00:00 EST (05:00Z) to 00:00 EDT on the 9th (04:00Z): 23 hours.
    const SPRING_START: &str = "2026-03-08T05:00:00Z";
    const SPRING_END: &str = "2026-03-09T04:00:00Z";
    // New York, 2026-11-01: 02:00 EDT (06:00Z) goes back to 01:00 EST. The local day runs from
    // 00:00 EDT (04:00Z) to 00:00 EST on the 2nd (05:00Z): 25 hours.
    const FALL_START: &str = "2026-11-01T04:00:00Z";
    const FALL_END: &str = "2026-11-02T05:00:00Z";

    #[test]
    fn daily_0230_new_york_fires_once_on_spring_forward_day_at_0300_edt() {
        let s = cron_in("30 2 * * *", "America/New_York");
        // 02:30 does not happen; the tick is the first instant after the gap, 03:00 EDT.
        assert_eq!(day(&s, SPRING_START, SPRING_END), ["2026-03-08T07:00:00Z"]);
        // The days around are plain: 02:30 EST, then 02:30 EDT.
        assert_eq!(
            strings(&s.ticks_between(utc("2026-03-07T00:00:00Z"), utc("2026-03-10T00:00:00Z"))),
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ]
        );
    }

    #[test]
    fn daily_0230_new_york_fires_once_on_fall_back_day() {
        let s = cron_in("30 2 * * *", "America/New_York");
        // 02:30 happens once, in EST (only 01:00-02:00 repeats).
        assert_eq!(day(&s, FALL_START, FALL_END), ["2026-11-01T07:30:00Z"]);
        assert_eq!(
            strings(&s.ticks_between(utc("2026-10-31T00:00:00Z"), utc("2026-11-03T00:00:00Z"))),
            [
                "2026-10-31T06:30:00Z",
                "2026-11-01T07:30:00Z",
                "2026-11-02T07:30:00Z"
            ]
        );
    }

    #[test]
    fn hourly_new_york_ticks_once_per_real_hour_23_on_spring_forward_day() {
        let s = cron_in("0 * * * *", "America/New_York");
        let ticks = day(&s, SPRING_START, SPRING_END);
        assert_eq!(ticks.len(), 23);
        // Every UTC hour of the local day: 00:00 EST (05Z), 01:00 EST (06Z), then 03:00 EDT
        // (07Z) … 23:00 EDT (03Z on the 9th). No 02:00: it did not happen.
        let expected: Vec<String> = (0..23)
            .map(|h| {
                (utc(SPRING_START) + TimeDelta::hours(h)).to_rfc3339_opts(SecondsFormat::Secs, true)
            })
            .collect();
        assert_eq!(ticks, expected);
        assert_eq!(ticks[1], "2026-03-08T06:00:00Z");
        assert_eq!(ticks[2], "2026-03-08T07:00:00Z");
        assert_eq!(ticks[22], "2026-03-09T03:00:00Z");
    }

    #[test]
    fn hourly_new_york_ticks_once_per_real_hour_25_on_fall_back_day() {
        let s = cron_in("0 * * * *", "America/New_York");
        let ticks = day(&s, FALL_START, FALL_END);
        assert_eq!(ticks.len(), 25);
        let expected: Vec<String> = (0..25)
            .map(|h| {
                (utc(FALL_START) + TimeDelta::hours(h)).to_rfc3339_opts(SecondsFormat::Secs, true)
            })
            .collect();
        assert_eq!(ticks, expected);
        // 01:00 happens twice: 01:00 EDT (05Z) and 01:00 EST (06Z); then 02:00 EST (07Z).
        assert_eq!(
            &ticks[1..4],
            [
                "2026-11-01T05:00:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T07:00:00Z"
            ]
        );
    }

    #[test]
    fn hour_lists_are_wall_clock_times_once_each_across_dst() {
        // Croner alone would drop 02:30 on the spring day and run 01:30 twice in the autumn.
        let s = cron_in("30 1,2 * * *", "America/New_York");
        assert_eq!(
            day(&s, SPRING_START, SPRING_END),
            ["2026-03-08T06:30:00Z", "2026-03-08T07:00:00Z"]
        );
        assert_eq!(
            day(&s, FALL_START, FALL_END),
            ["2026-11-01T05:30:00Z", "2026-11-01T07:30:00Z"]
        );
        // Times inside one gap share its tick.
        let s = cron_in("0,30 2 * * *", "America/New_York");
        assert_eq!(day(&s, SPRING_START, SPRING_END), ["2026-03-08T07:00:00Z"]);
        // …and with a match at the gap's end: 02:00 and 03:00 are one instant that day.
        let s = cron_in("0 2,3 * * *", "America/New_York");
        assert_eq!(day(&s, SPRING_START, SPRING_END), ["2026-03-08T07:00:00Z"]);
        assert_eq!(
            day(&s, FALL_START, FALL_END),
            ["2026-11-01T07:00:00Z", "2026-11-01T08:00:00Z"]
        );
        // A single time in the repeated hour runs at its first occurrence (EDT).
        let s = cron_in("30 1 * * *", "America/New_York");
        assert_eq!(day(&s, FALL_START, FALL_END), ["2026-11-01T05:30:00Z"]);
    }

    #[test]
    fn searches_from_inside_the_repeated_hour_agree() {
        let s = cron_in("30 1,2 * * *", "America/New_York");
        // 06:10Z is 01:10 EST, the second pass: 01:30 already ran at 05:30Z.
        let t = utc("2026-11-01T06:10:00Z");
        assert_eq!(
            s.latest_tick_at_or_before(t),
            Some(utc("2026-11-01T05:30:00Z"))
        );
        assert_eq!(s.next_tick_after(t), Some(utc("2026-11-01T07:30:00Z")));
        let hourly = cron_in("0 * * * *", "America/New_York");
        let t = utc("2026-11-01T05:30:00Z"); // 01:30 EDT, first pass
        assert_eq!(hourly.next_tick_after(t), Some(utc("2026-11-01T06:00:00Z")));
        assert_eq!(
            hourly.latest_tick_at_or_before(utc("2026-11-01T06:59:59Z")),
            Some(utc("2026-11-01T06:00:00Z"))
        );
    }

    /// An independent statement of the tick rules, instant by instant: an interval pattern
    /// ticks at every real minute whose wall time matches; a wall-clock pattern ticks at the
    /// first real minute with each matching wall time, and at the end of a gap that hides a
    /// matching wall time.
    fn oracle(s: &Schedule, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let Timing::Cron {
            cron,
            tz,
            wall_clock,
            ..
        } = &s.timing
        else {
            panic!("cron schedules only")
        };
        let mut out: Vec<DateTime<Utc>> = Vec::new();
        let mut seen_walls = BTreeSet::new();
        let mut t = from;
        while t <= to {
            let w = wall(t, tz);
            let prev_wall = wall(t - TimeDelta::minutes(1), tz);
            let mut tick = cron.is_time_matching(&w).expect("match");
            if *wall_clock {
                tick &= seen_walls.insert(w);
                // A gap between the previous minute and this one: its wall times are skipped.
                let mut g = prev_wall + TimeDelta::minutes(1);
                while g < w {
                    tick |= cron.is_time_matching(&g).expect("match");
                    g += TimeDelta::minutes(1);
                }
            }
            if tick {
                out.push(t);
            }
            t += TimeDelta::minutes(1);
        }
        out
    }

    #[test]
    fn ticks_match_the_oracle_around_dst_changes_in_several_zones() {
        let patterns = [
            "30 2 * * *",
            "0 * * * *",
            "*/20 * * * *",
            "30 1,2 * * *",
            "0,30 0 * * *",
            "0 0 * * *",
            "15 1 * * *",
            "0 23 * * *",
            "45 2 8 3 *",
            "15,45 0-3 * * *",
            "0 */2 * * *",
            "10 1-2/1 * * 0",
        ];
        // (zone, a day with a change): New York (both), São Paulo 2018/2019 (midnight
        // changes: 00:00 -> 01:00, and 00:00 back to 23:00 the day before), Lord Howe (30-min
        // changes).
        let days = [
            ("America/New_York", "2026-03-08T12:00:00Z"),
            ("America/New_York", "2026-11-01T12:00:00Z"),
            ("America/Sao_Paulo", "2018-11-04T12:00:00Z"),
            ("America/Sao_Paulo", "2019-02-17T12:00:00Z"),
            ("Australia/Lord_Howe", "2026-04-05T00:00:00Z"),
            ("Australia/Lord_Howe", "2026-10-04T00:00:00Z"),
        ];
        for (zone, mid) in days {
            let from = utc(mid) - TimeDelta::hours(36);
            let to = utc(mid) + TimeDelta::hours(36);
            let tz: Tz = zone.parse().expect("zone");
            assert_ne!(
                from.with_timezone(&tz).offset().to_string(),
                to.with_timezone(&tz).offset().to_string(),
                "{zone} changes offset around {mid}"
            );
            for pattern in patterns {
                let s = cron_in(pattern, zone);
                let expected = oracle(&s, from, to);
                let got = s.ticks_between(from - TimeDelta::seconds(1), to);
                assert_eq!(
                    strings(&got),
                    strings(&expected),
                    "{pattern} in {zone} near {mid}"
                );
                // Every instant in the range agrees with the list on what comes next and what
                // came last, so a runner polling at any moment neither skips nor doubles.
                let mut t = from;
                while t < to {
                    let next = expected.iter().find(|x| **x > t).copied();
                    let last = expected.iter().rev().find(|x| **x <= t).copied();
                    if next.is_some() {
                        assert_eq!(
                            s.next_tick_after(t),
                            next,
                            "{pattern} {zone} next after {t}"
                        );
                    }
                    if last.is_some() {
                        assert_eq!(
                            s.latest_tick_at_or_before(t),
                            last,
                            "{pattern} {zone} latest at or before {t}"
                        );
                    }
                    t += TimeDelta::minutes(7) + TimeDelta::seconds(13);
                }
            }
        }
    }

    #[test]
    fn seconds_field_and_nicknames() {
        let s = cron_in("*/15 * * * * *", "UTC");
        assert_eq!(
            strings(&s.ticks_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-01T00:01:00Z"))),
            [
                "2026-01-01T00:00:15Z",
                "2026-01-01T00:00:30Z",
                "2026-01-01T00:00:45Z",
                "2026-01-01T00:01:00Z"
            ]
        );
        let s = cron_in("@hourly", "UTC");
        assert_eq!(
            s.next_tick_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T01:00:00Z"))
        );
    }

    #[test]
    fn every_ticks_are_aligned_to_the_epoch() {
        let s = schedule("name = \"e\"\nevery = \"2s\"\ntask = \"cron.e\"");
        assert_eq!(s.every(), Some(Duration::from_secs(2)));
        // Exclusive of `after`, inclusive of `until`, sub-seconds ignored.
        assert_eq!(
            strings(&s.ticks_between(utc("2026-01-01T00:00:01.500Z"), utc("2026-01-01T00:00:08Z"))),
            [
                "2026-01-01T00:00:02Z",
                "2026-01-01T00:00:04Z",
                "2026-01-01T00:00:06Z",
                "2026-01-01T00:00:08Z"
            ]
        );
        assert_eq!(
            strings(&s.ticks_between(utc("2026-01-01T00:00:02Z"), utc("2026-01-01T00:00:03.9Z"))),
            ["2026-01-01T00:00:02Z"; 0]
        );
        // Any two replicas agree, whenever they started: every tick is an even second.
        assert_eq!(
            s.next_tick_after(utc("2026-01-01T00:00:03Z")),
            Some(utc("2026-01-01T00:00:04Z"))
        );
        assert_eq!(
            s.latest_tick_at_or_before(utc("2026-01-01T00:00:05.999Z")),
            Some(utc("2026-01-01T00:00:04Z"))
        );
        // Before the epoch too (floor division).
        assert_eq!(
            s.latest_tick_at_or_before(utc("1969-12-31T23:59:59Z")),
            Some(utc("1969-12-31T23:59:58Z"))
        );
        let s = schedule("name = \"e\"\nevery = \"7m\"\ntask = \"cron.e\"");
        let t = s
            .next_tick_after(utc("2026-05-05T10:00:00Z"))
            .expect("tick");
        assert_eq!(t.timestamp() % 420, 0);
    }

    #[test]
    fn ticks_between_is_bounded() {
        let s = schedule("name = \"e\"\nevery = \"1s\"\ntask = \"cron.e\"");
        let ticks = s.ticks_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-02T00:00:00Z"));
        assert_eq!(ticks.len(), MAX_TICKS);
        assert_eq!(ticks[0], utc("2026-01-01T00:00:01Z"));
        let s = cron_in("* * * * * *", "UTC");
        let ticks = s.ticks_between(utc("2026-01-01T00:00:00Z"), utc("2026-01-02T00:00:00Z"));
        assert_eq!(ticks.len(), MAX_TICKS);
        assert!(s
            .ticks_between(utc("2026-01-02T00:00:00Z"), utc("2026-01-01T00:00:00Z"))
            .is_empty());
    }

    #[test]
    fn tick_keys_are_rfc3339_utc() {
        let s = schedule(
            "name = \"fail-stale-payments\"\ncron = \"*/5 * * * *\"\n\
             timezone = \"America/Sao_Paulo\"\ntask = \"cron.fail-stale-payments\"",
        );
        assert_eq!(
            s.tick_key(utc("2026-03-08T04:05:00-03:00")),
            "cron:fail-stale-payments:2026-03-08T07:05:00Z"
        );
        assert_eq!(
            s.tick_key(utc("2026-03-08T07:05:00.250Z")),
            "cron:fail-stale-payments:2026-03-08T07:05:00.250Z"
        );
    }

    fn every_10s(extra: &str) -> Schedule {
        schedule(&format!(
            "name = \"e\"\nevery = \"10s\"\ntask = \"cron.e\"\n{extra}"
        ))
    }

    #[test]
    fn first_start_runs_at_most_the_latest_tick() {
        // `every`: the latest tick is always less than one interval late.
        let s = every_10s("catch_up = \"all\"\ncatch_up_window = \"6h\"");
        assert_eq!(
            s.due_ticks(None, utc("2026-01-01T00:00:07Z")),
            [utc("2026-01-01T00:00:00Z")]
        );
        // Daily 02:30, window 6h: started at 04:00 it runs 02:30; at 23:00 it is too late.
        let s = schedule(
            "name = \"d\"\ncron = \"30 2 * * *\"\ntask = \"cron.d\"\ncatch_up_window = \"6h\"",
        );
        assert_eq!(
            s.due_ticks(None, utc("2026-01-01T04:00:00Z")),
            [utc("2026-01-01T02:30:00Z")]
        );
        assert!(s.due_ticks(None, utc("2026-01-01T23:00:00Z")).is_empty());
        // Weekdays 09:00 with a 100h window: Monday 08:00 is 71h after Friday's tick, more
        // than the 24h period: no replay.
        let s = schedule(
            "name = \"w\"\ncron = \"0 9 * * 1-5\"\ntask = \"cron.w\"\ncatch_up_window = \"100h\"",
        );
        assert!(s.due_ticks(None, utc("2026-01-05T08:00:00Z")).is_empty()); // a Monday
        assert_eq!(
            s.due_ticks(None, utc("2026-01-05T09:00:30Z")),
            [utc("2026-01-05T09:00:00Z")]
        );
        // skip: only within the 60 s tolerance.
        let s = schedule(
            "name = \"k\"\ncron = \"*/5 * * * *\"\ntask = \"cron.k\"\ncatch_up = \"skip\"",
        );
        assert_eq!(
            s.due_ticks(None, utc("2026-01-01T00:05:59Z")),
            [utc("2026-01-01T00:05:00Z")]
        );
        assert!(s.due_ticks(None, utc("2026-01-01T00:06:00Z")).is_empty());
    }

    #[test]
    fn catch_up_skip_runs_only_a_barely_late_latest_tick() {
        let s = schedule(
            "name = \"k\"\ncron = \"*/5 * * * *\"\ntask = \"cron.k\"\ncatch_up = \"skip\"",
        );
        assert_eq!(s.catch_up(), CatchUp::Skip);
        let last = Some(utc("2026-01-01T00:00:00Z"));
        // On time.
        assert_eq!(
            s.due_ticks(last, utc("2026-01-01T00:05:01Z")),
            [utc("2026-01-01T00:05:00Z")]
        );
        // Two ticks missed; the latest is 59 s late: it runs, the older one never does.
        assert_eq!(
            s.due_ticks(last, utc("2026-01-01T00:10:59Z")),
            [utc("2026-01-01T00:10:00Z")]
        );
        // 60 s late: skipped.
        assert!(s.due_ticks(last, utc("2026-01-01T00:11:00Z")).is_empty());
        // Already recorded.
        assert!(s
            .due_ticks(
                Some(utc("2026-01-01T00:10:00Z")),
                utc("2026-01-01T00:10:30Z")
            )
            .is_empty());
        // The tolerance shrinks to the period: every 10s, 10 s late is too late.
        let s = every_10s("catch_up = \"skip\"");
        let last = Some(utc("2026-01-01T00:00:00Z"));
        assert_eq!(
            s.due_ticks(last, utc("2026-01-01T00:00:19Z")),
            [utc("2026-01-01T00:00:10Z")]
        );
    }

    #[test]
    fn catch_up_once_runs_the_latest_missed_tick_within_the_window() {
        let s = schedule(
            "name = \"o\"\ncron = \"0 * * * *\"\ntask = \"cron.o\"\ncatch_up_window = \"6h\"",
        );
        assert_eq!(s.catch_up(), CatchUp::Once);
        let last = Some(utc("2026-01-01T00:00:00Z"));
        // Down from 00:30 to 05:20: five ticks missed, one run, for the latest.
        assert_eq!(
            s.due_ticks(last, utc("2026-01-01T05:20:00Z")),
            [utc("2026-01-01T05:00:00Z")]
        );
        // Nothing new since the last record.
        assert!(s.due_ticks(last, utc("2026-01-01T00:59:59Z")).is_empty());
        // Default window 1h: 59 min late runs, 60 min late does not.
        let s = schedule("name = \"o\"\ncron = \"0 */3 * * *\"\ntask = \"cron.o\"");
        assert_eq!(s.catch_up_window(), DEFAULT_CATCH_UP_WINDOW);
        assert_eq!(
            s.due_ticks(last, utc("2026-01-01T03:59:59Z")),
            [utc("2026-01-01T03:00:00Z")]
        );
        assert!(s.due_ticks(last, utc("2026-01-01T04:00:00Z")).is_empty());
    }

    #[test]
    fn catch_up_all_runs_every_missed_tick_within_the_window() {
        let s = every_10s("catch_up = \"all\"\ncatch_up_window = \"35s\"");
        let last = Some(utc("2026-01-01T00:00:00Z"));
        // Ticks 10..60 missed; only those less than 35 s late (30, 40, 50, 60).
        assert_eq!(
            strings(&s.due_ticks(last, utc("2026-01-01T00:01:04Z"))),
            [
                "2026-01-01T00:00:30Z",
                "2026-01-01T00:00:40Z",
                "2026-01-01T00:00:50Z",
                "2026-01-01T00:01:00Z"
            ]
        );
        // The last record bounds it too.
        assert_eq!(
            strings(&s.due_ticks(
                Some(utc("2026-01-01T00:00:50Z")),
                utc("2026-01-01T00:01:04Z")
            )),
            ["2026-01-01T00:01:00Z"]
        );
        // Bounded per call: the oldest MAX_TICKS, and the next call continues.
        let s = schedule(
            "name = \"a\"\nevery = \"1s\"\ntask = \"cron.a\"\ncatch_up = \"all\"\n\
             catch_up_window = \"6h\"",
        );
        let now = utc("2026-01-01T06:00:00Z");
        let first = s.due_ticks(Some(utc("2026-01-01T00:00:00Z")), now);
        assert_eq!(first.len(), MAX_TICKS);
        assert_eq!(first[0], utc("2026-01-01T00:00:01Z"));
        let rest = s.due_ticks(first.last().copied(), now);
        assert_eq!(rest[0], first[MAX_TICKS - 1] + TimeDelta::seconds(1));
    }

    #[test]
    fn a_future_last_record_makes_nothing_due() {
        let s = every_10s("");
        assert!(s
            .due_ticks(
                Some(utc("2026-01-01T00:01:00Z")),
                utc("2026-01-01T00:00:30Z")
            )
            .is_empty());
    }

    #[test]
    fn parses_the_documented_example_with_defaults_and_overrides() {
        #[derive(Deserialize)]
        struct File {
            cron: Vec<Schedule>,
        }
        let file: File = toml::from_str(
            r#"
            [[cron]]
            name = "fail-stale-payments"
            cron = "*/5 * * * *"
            timezone = "America/Sao_Paulo"
            task = "cron.fail-stale-payments"
            payload = { max_age = "2h" }
            catch_up = "once"
            catch_up_window = "6h"
            overlap = "skip"

            [[cron]]
            name = "prune"
            every = "10s"
            task = "cron.prune-job-runs"
            "#,
        )
        .expect("valid config");
        let [a, b] = &file.cron[..] else {
            panic!("two schedules")
        };
        assert_eq!(a.name(), "fail-stale-payments");
        assert_eq!(a.cron_expression(), Some("*/5 * * * *"));
        assert_eq!(a.timezone(), chrono_tz::America::Sao_Paulo);
        assert_eq!(a.task(), "cron.fail-stale-payments");
        assert_eq!(a.payload()["max_age"], "2h");
        assert_eq!(a.catch_up(), CatchUp::Once);
        assert_eq!(a.catch_up_window(), Duration::from_secs(6 * 3600));
        assert_eq!(a.overlap(), Overlap::Skip);
        assert_eq!(b.every(), Some(Duration::from_secs(10)));
        assert_eq!(b.cron_expression(), None);
        assert_eq!(b.timezone(), Tz::UTC);
        assert!(b.payload().is_empty());
        assert_eq!(b.catch_up(), CatchUp::Once);
        assert_eq!(b.catch_up_window(), Duration::from_secs(3600));
        assert_eq!(b.overlap(), Overlap::Skip);
        let c =
            schedule("name = \"c\"\ncron = \"0 0 * * *\"\ntask = \"cron.c\"\noverlap = \"allow\"");
        assert_eq!(c.overlap(), Overlap::Allow);
        assert_eq!(c.timezone(), Tz::UTC);
    }

    #[test]
    fn deserialising_reports_the_schedule_and_field() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct File {
            cron: Vec<Schedule>,
        }
        let e = toml::from_str::<File>(
            "[[cron]]\nname = \"x\"\ncron = \"* * * * *\"\ntask = \"cron.x\"\ntimezone = \"Mars/Base\"",
        )
        .expect_err("invalid");
        assert!(
            e.to_string()
                .contains("cron[x].timezone: \"Mars/Base\" is not an IANA time zone"),
            "{e}"
        );
        let e = toml::from_str::<File>(
            "[[cron]]\nname = \"x\"\ncron = \"* * * * *\"\ntask = \"cron.x\"\nretries = 3",
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `retries`"), "{e}");
    }

    #[test]
    fn errors_name_the_schedule_and_field() {
        let base = "task = \"cron.fail-stale-payments\"\nname = \"fail-stale-payments\"";
        assert_eq!(
            error(&format!(
                "{base}\ncron = \"*/5 * * * *\"\ntimezone = \"Mars/Base\""
            )),
            "cron[fail-stale-payments].timezone: \"Mars/Base\" is not an IANA time zone (e.g. \
             \"America/Sao_Paulo\", \"UTC\")"
        );
        assert_eq!(
            error(&format!("{base}\ncron = \"*/5 * * * *\"\nevery = \"10s\"")),
            "cron[fail-stale-payments].every: \"10s\" cannot be combined with cron: a schedule \
             has either a cron expression or an interval, not both"
        );
        assert!(error(base).starts_with("cron[fail-stale-payments].cron: missing"));
        let e = error(&format!("{base}\ncron = \"*/5 * * *\""));
        assert!(
            e.starts_with("cron[fail-stale-payments].cron: \"*/5 * * *\" is not a cron expression"),
            "{e}"
        );
        assert!(error(&format!("{base}\ncron = \"0 0 0 * * * 2030\""))
            .starts_with("cron[fail-stale-payments].cron:"));
        assert!(error(&format!("{base}\ncron = \"61 * * * *\""))
            .starts_with("cron[fail-stale-payments].cron:"));
        assert_eq!(
            error(&format!("{base}\ncron = \"0 0 30 2 *\"")),
            "cron[fail-stale-payments].cron: \"0 0 30 2 *\" never matches a date"
        );
        assert!(error(&format!("{base}\nevery = \"10 parsecs\""))
            .starts_with("cron[fail-stale-payments].every: \"10 parsecs\" is not a duration"));
        assert!(error(&format!("{base}\nevery = \"500ms\""))
            .contains("whole number of seconds from 1s to 366d"));
        assert!(error(&format!("{base}\nevery = \"0s\""))
            .starts_with("cron[fail-stale-payments].every:"));
        assert!(
            error(&format!("{base}\nevery = \"10s\"\ntimezone = \"UTC\"")).starts_with(
                "cron[fail-stale-payments].timezone: \"UTC\" cannot be used with every"
            )
        );
        assert!(error(&format!(
            "{base}\ncron = \"0 * * * *\"\ncatch_up = \"sometimes\""
        ))
        .starts_with("cron[fail-stale-payments].catch_up: \"sometimes\" is not one of \"skip\""));
        assert!(error(&format!(
            "{base}\ncron = \"0 * * * *\"\ncatch_up_window = \"soon\""
        ))
        .starts_with("cron[fail-stale-payments].catch_up_window: \"soon\" is not a duration"));
        assert!(error(&format!(
            "{base}\ncron = \"0 * * * *\"\ncatch_up_window = \"0s\""
        ))
        .starts_with("cron[fail-stale-payments].catch_up_window:"));
        assert!(error(&format!(
            "{base}\ncron = \"0 * * * *\"\ncatch_up = \"skip\"\ncatch_up_window = \"1h\""
        ))
        .starts_with("cron[fail-stale-payments].catch_up_window: has no effect"));
        assert!(error(&format!(
            "{base}\ncron = \"0 * * * *\"\noverlap = \"queue\""
        ))
        .starts_with("cron[fail-stale-payments].overlap: \"queue\" is not one of"));
        assert!(error(&format!(
            "{base}\ncron = \"0 * * * *\"\npayload = {{ at = 2026-01-01T00:00:00Z }}"
        ))
        .starts_with("cron[fail-stale-payments].payload: payload.at is a TOML date-time"));

        let e = error("name = \"x\"\ncron = \"0 * * * *\"\ntask = \"billing.sweep\"");
        assert!(
            e.starts_with("cron[x].task: \"billing.sweep\" must start with \"cron.\""),
            "{e}"
        );
        assert!(
            error("name = \"x\"\ncron = \"0 * * * *\"\ntask = \"cron.\"")
                .starts_with("cron[x].task:")
        );
        assert!(
            error("name = \"x\"\ncron = \"0 * * * *\"\ntask = \"cron.#\"")
                .starts_with("cron[x].task:")
        );
        assert!(
            error("name = \"a:b\"\ncron = \"0 * * * *\"\ntask = \"cron.x\"")
                .starts_with("cron[a:b].name: \"a:b\" must be")
        );
        assert!(
            error("name = \"\"\ncron = \"0 * * * *\"\ntask = \"cron.x\"")
                .starts_with("cron[].name:")
        );
    }

    #[test]
    fn names_must_be_unique() {
        let a = config("name = \"a\"\nevery = \"1m\"\ntask = \"cron.a\"");
        let b = config("name = \"b\"\nevery = \"1m\"\ntask = \"cron.b\"");
        assert_eq!(
            parse_schedules(vec![a.clone(), b])
                .expect("unique")
                .iter()
                .map(Schedule::name)
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        let e = parse_schedules(vec![a.clone(), a]).expect_err("duplicate");
        assert_eq!(
            e.to_string(),
            "cron[a].name: is used by more than one schedule; names key the tick records and \
             must be unique"
        );
    }
}
