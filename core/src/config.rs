//! Typed configuration: the defaults that work on a developer machine, the optional TOML
//! file named by `WARREN_CONFIG`, and URL redaction for anything that gets printed.
//!
//! Env vars and flags are parsed by the binary (clap, one env var per flag); this module
//! owns the defaults, the file format and the validation, so every role reads the same.
//!
//! ```toml
//! [retry]
//! tiers = ["1s", "5s", "30s", "2m", "10m", "1h"]   # delay queues, shortest first
//!
//! [queues.default]
//! delivery_limit = 10          # override a built-in queue's crash-loop limit
//!
//! [queues.emails]              # a user queue: warren.emails bound to email.#
//! bindings = ["email.#"]
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/warren";
pub const DEFAULT_NAMESPACE: &str = "warren";
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9477";
/// Delay tiers used when the config file names none.
pub const DEFAULT_TIERS: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];
/// Largest job body accepted, in bytes (the wire contract's default).
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Broker-side crash-loop guard for work queues when the config file sets none.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 10;

/// A configuration error, naming the field and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// The optional TOML file (`WARREN_CONFIG`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Work queues to add, or built-in ones to adjust, by short name.
    #[serde(default)]
    pub queues: BTreeMap<String, QueueConfig>,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Rollout flags per billing provider (`pagarme`, `appmax`).
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub dunning: DunningConfig,
    #[serde(default)]
    pub billing: BillingConfig,
    /// `[[cron]]` schedules, kept as TOML here and parsed by the scheduler
    /// (`warren_scheduler::cron`), which owns their meaning.
    #[serde(default)]
    pub cron: Vec<toml::Value>,
}

/// One `[providers.NAME]` table; env vars (`WARREN_PAGARME_ENABLED`,
/// `WARREN_PAGARME_BASE_URL`, …) take precedence.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Scheduler: scan this provider's subscriptions at all.
    pub enabled: Option<bool>,
    /// Scheduler: count and log due renewals, publish nothing.
    pub dry_run: Option<bool>,
    /// Worker: the provider API's base URL (e.g. `https://api.pagar.me`).
    pub base_url: Option<String>,
    /// Worker: Pagar.me's secret key (Appmax credentials are per merchant, in the database).
    pub secret_key: Option<Secret>,
    /// Worker: most provider requests per second per worker process.
    pub rate_limit: Option<u32>,
}

/// The `[dunning]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DunningConfig {
    /// Wait before each retry of a declined renewal ("1d", "3d", "5d" by default); after
    /// the last retry is declined the subscription becomes UNPAID.
    #[serde(default)]
    pub schedule: Vec<String>,
}

/// The `[billing]` table: how renewal handlers treat a charge whose outcome they do not know.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// How long a renewal keeps looking up a charge request whose outcome is unknown (the
    /// provider answered `5xx`, timed out, or reports the order pending) before it is
    /// dead-lettered `unknown-outcome` for an operator. Default "24h".
    pub unknown_outcome_after: Option<String>,
    /// Pagar.me only, inside its idempotency window: how long a sent charge request must stay
    /// invisible to lookups before the same request (same `Idempotency-Key`) is sent again.
    /// Default "60s"; keep it above the provider's lookup lag.
    pub resend_after: Option<String>,
    /// How long Pagar.me answers a repeated `Idempotency-Key` with the first order. Past it a
    /// repeat could charge again, so Warren only looks the order up. Default "24h".
    pub pagarme_idempotency_window: Option<String>,
    /// How long a key's lease lasts unless renewed: a worker that dies mid-charge blocks
    /// that key this long. A live attempt renews it every third of it. Default "15s".
    pub lease: Option<String>,
}

/// [`BillingConfig`], parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingPolicy {
    pub unknown_outcome_after: Duration,
    pub resend_after: Duration,
    pub pagarme_idempotency_window: Duration,
    pub lease: Duration,
}

impl Default for BillingPolicy {
    fn default() -> Self {
        Self {
            unknown_outcome_after: Duration::from_secs(24 * 3600),
            resend_after: Duration::from_secs(60),
            pagarme_idempotency_window: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(15),
        }
    }
}

/// A credential: `Debug` prints `Secret(***)`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: for the request that needs it, never for a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Billing providers the scheduler knows.
pub const PROVIDERS: [&str; 2] = ["pagarme", "appmax"];

/// One `[queues.NAME]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Routing-key patterns bound to the queue (added to a built-in queue's own).
    #[serde(default)]
    pub bindings: Vec<String>,
    /// Quorum `x-delivery-limit`: redeliveries before the broker dead-letters a message.
    pub delivery_limit: Option<u32>,
}

/// The `[retry]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay tiers as durations ("500ms", "5s", "2m"), strictly increasing.
    #[serde(default)]
    pub tiers: Vec<String>,
}

impl FileConfig {
    /// Reads the file at `path`, or the empty config when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.tiers()?;
        cfg.dunning()?;
        cfg.billing()?;
        if let Some(name) = cfg
            .providers
            .keys()
            .find(|k| !PROVIDERS.contains(&k.as_str()))
        {
            return Err(ConfigError::Invalid {
                field: format!("providers.{name}"),
                message: format!("unknown provider; known: {}", PROVIDERS.join(", ")),
            });
        }
        Ok(cfg)
    }

    /// The delay tiers, parsed and checked.
    pub fn tiers(&self) -> Result<Vec<Duration>, ConfigError> {
        if self.retry.tiers.is_empty() {
            return Ok(DEFAULT_TIERS.to_vec());
        }
        let out = durations("retry.tiers", &self.retry.tiers)?;
        let too_short_or_not_increasing =
            |i: usize| out[i] < Duration::from_millis(1) || (i > 0 && out[i - 1] >= out[i]);
        if let Some(i) = (0..out.len()).find(|&i| too_short_or_not_increasing(i)) {
            return Err(ConfigError::Invalid {
                field: format!("retry.tiers[{i}]"),
                message: "tiers must be at least 1ms and strictly increasing".into(),
            });
        }
        Ok(out)
    }
}

impl FileConfig {
    /// The dunning schedule, parsed and checked.
    pub fn dunning(&self) -> Result<crate::billing::DunningSchedule, ConfigError> {
        if self.dunning.schedule.is_empty() {
            return Ok(crate::billing::DunningSchedule::default());
        }
        let out = durations("dunning.schedule", &self.dunning.schedule)?;
        Ok(crate::billing::DunningSchedule(out))
    }

    /// The `[billing]` table, parsed, with its defaults.
    pub fn billing(&self) -> Result<BillingPolicy, ConfigError> {
        let d = BillingPolicy::default();
        let b = &self.billing;
        let one = |field: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => duration(format!("billing.{field}"), t),
        };
        Ok(BillingPolicy {
            unknown_outcome_after: one(
                "unknown_outcome_after",
                &b.unknown_outcome_after,
                d.unknown_outcome_after,
            )?,
            resend_after: one("resend_after", &b.resend_after, d.resend_after)?,
            pagarme_idempotency_window: one(
                "pagarme_idempotency_window",
                &b.pagarme_idempotency_window,
                d.pagarme_idempotency_window,
            )?,
            lease: one("lease", &b.lease, d.lease)?.max(Duration::from_millis(300)),
        })
    }

    /// The `[providers.NAME]` table, or an empty one.
    pub fn provider(&self, name: &str) -> ProviderConfig {
        self.providers.get(name).cloned().unwrap_or_default()
    }
}

/// Parses a list of durations ("500ms", "1d"), naming `field[i]` on error.
fn durations(field: &str, values: &[String]) -> Result<Vec<Duration>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, t)| duration(format!("{field}[{i}]"), t))
        .collect()
}

/// Parses one duration ("500ms", "1d"), naming `field` on error.
fn duration(field: String, t: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(t).map_err(|e| ConfigError::Invalid {
        field,
        message: format!("{t:?} is not a duration like \"500ms\", \"5s\" or \"1d\": {e}"),
    })
}

/// Checks a namespace: lowercase letters, digits, `-`, `_` and `.`, not empty.
pub fn validate_namespace(ns: &str) -> Result<(), ConfigError> {
    let ok = !ns.is_empty()
        && ns.len() <= 100
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: "WARREN_NAMESPACE".into(),
            message: format!("{ns:?} must be 1-100 characters of a-z, 0-9, '-', '_' or '.'"),
        })
    }
}

/// Replaces the password (and a user without password) in a URL with `***`, so URLs can be
/// logged. Anything unparsable is hidden whole.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/warren"),
            "postgres://postgres@127.0.0.1:5432/warren"
        );
        assert_eq!(redact_url("not a url"), "<unparsable url>");
    }

    #[test]
    fn tiers_default_and_validate() {
        assert_eq!(
            FileConfig::default().tiers().unwrap(),
            DEFAULT_TIERS.to_vec()
        );
        let cfg: FileConfig = toml::from_str("[retry]\ntiers=[\"200ms\",\"1s\"]").unwrap();
        assert_eq!(
            cfg.tiers().unwrap(),
            vec![Duration::from_millis(200), Duration::from_secs(1)]
        );
        let bad: FileConfig = toml::from_str("[retry]\ntiers=[\"1s\",\"1s\"]").unwrap();
        let err = bad.tiers().unwrap_err().to_string();
        assert!(err.contains("retry.tiers[1]"), "{err}");
        let bad: FileConfig = toml::from_str("[retry]\ntiers=[\"soon\"]").unwrap();
        assert!(bad
            .tiers()
            .unwrap_err()
            .to_string()
            .contains("retry.tiers[0]"));
    }

    #[test]
    fn billing_durations_parse_with_defaults_and_name_bad_fields() {
        let cfg: FileConfig = toml::from_str("[billing]\nunknown_outcome_after=\"2h\"").unwrap();
        let b = cfg.billing().unwrap();
        assert_eq!(b.unknown_outcome_after, Duration::from_secs(7200));
        assert_eq!(b.resend_after, BillingPolicy::default().resend_after);
        let bad: FileConfig = toml::from_str("[billing]\nresend_after=\"soon\"").unwrap();
        let err = bad.billing().unwrap_err().to_string();
        assert!(err.contains("billing.resend_after"), "{err}");
    }

    #[test]
    fn dunning_schedule_parses_and_names_bad_entries() {
        let cfg: FileConfig = toml::from_str("[dunning]\nschedule=[\"2h\",\"1d\"]").unwrap();
        assert_eq!(
            cfg.dunning().unwrap().0,
            vec![Duration::from_secs(7200), Duration::from_secs(86_400)]
        );
        let bad: FileConfig = toml::from_str("[dunning]\nschedule=[\"later\"]").unwrap();
        let err = bad.dunning().unwrap_err().to_string();
        assert!(err.contains("dunning.schedule[0]"), "{err}");
        let secret: FileConfig =
            toml::from_str("[providers.pagarme]\nsecret_key=\"sk_live\"").unwrap();
        assert!(!format!("{secret:?}").contains("sk_live"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("[queues.x]\nbinding=[\"a\"]").is_err());
    }

    #[test]
    fn namespace_rules() {
        assert!(validate_namespace("warren").is_ok());
        assert!(validate_namespace("wt-1a2b.x_y").is_ok());
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("Warren").is_err());
        assert!(validate_namespace("a b").is_err());
    }
}
