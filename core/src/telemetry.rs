//! Logs, metrics and health: what every long-running role exposes.
//!
//! Every metric is listed once in [`CATALOGUE`] (name, type, labels, help); labels are
//! fixed per metric. Durations are
//! histograms in seconds with explicit buckets. The HTTP listener serves `/metrics`,
//! `/healthz` (the process is up) and `/readyz` (every dependency the role needs is up).

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Metric names, one constant each. What each one means, its type and labels are in
/// [`CATALOGUE`].
pub mod names {
    pub const JOBS_PROCESSED: &str = "warren_jobs_processed_total";
    pub const JOB_DURATION: &str = "warren_job_duration_seconds";
    pub const JOBS_IN_FLIGHT: &str = "warren_jobs_in_flight";
    pub const PUBLISHED: &str = "warren_published_total";
    pub const BROKER_CONNECTED: &str = "warren_broker_connected";
    pub const BROKER_RECONNECTS: &str = "warren_broker_reconnects_total";
    pub const BROKER_BLOCKED: &str = "warren_broker_blocked";
    pub const READY: &str = "warren_ready";
    pub const LEDGER_BATCH_SIZE: &str = "warren_ledger_batch_size";
    pub const LEDGER_STATEMENT_DURATION: &str = "warren_ledger_statement_seconds";
    pub const LEDGER_ERRORS: &str = "warren_ledger_errors_total";
    pub const SCHEDULER_IS_LEADER: &str = "warren_scheduler_is_leader";
    pub const SCHEDULER_DUE: &str = "warren_scheduler_due";
    pub const SCHEDULER_PUBLISHED: &str = "warren_scheduler_published_total";
    pub const SCHEDULER_SCAN_DURATION: &str = "warren_scheduler_scan_duration_seconds";
    pub const SCHEDULER_CLOCK_SKEW: &str = "warren_scheduler_clock_skew_seconds";
    pub const CRON_RUNS: &str = "warren_cron_runs_total";
    pub const CRON_TICK_LAG: &str = "warren_cron_tick_lag_seconds";
    pub const PROVIDER_REQUESTS: &str = "warren_provider_requests_total";
    pub const PROVIDER_REQUEST_DURATION: &str = "warren_provider_request_duration_seconds";
    pub const RENEWALS: &str = "warren_renewals_total";
    pub const STALE_PAYMENTS: &str = "warren_stale_payments_total";
    /// Defined here so the catalogue holds it; `warren_producer::ingest::REQUESTS` is this.
    pub const INGEST_REQUESTS: &str = "warren_ingest_requests_total";
    /// `warren_producer::ingest::REQUEST_DURATION` is this.
    pub const INGEST_REQUEST_DURATION: &str = "warren_ingest_request_duration_seconds";
    /// `warren_producer::ingest::CONNECTIONS` is this.
    pub const INGEST_CONNECTIONS: &str = "warren_ingest_connections";
    /// `warren_producer::ingest::TIMEOUTS` is this.
    pub const INGEST_TIMEOUTS: &str = "warren_ingest_timeouts_total";
}

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// As Prometheus writes it in `# TYPE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One label of a metric and the values it takes (free text when open-ended).
#[derive(Debug, Clone, Copy)]
pub struct Label {
    pub name: &'static str,
    pub values: &'static str,
}

const fn label(name: &'static str, values: &'static str) -> Label {
    Label { name, values }
}

/// One metric every Warren process may export: the single source of its name, type,
/// labels and help. [`describe_all`] registers the help texts; `warren reference metrics`
/// renders docs/metrics.md from the same list.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    /// `Some(Unit::Seconds)` for durations.
    pub unit: Option<metrics::Unit>,
    pub labels: &'static [Label],
    /// One line, served as `# HELP`.
    pub help: &'static str,
    /// More for the reference (Markdown), or empty.
    pub notes: &'static str,
    /// Which roles export it.
    pub roles: &'static str,
}

const QUEUE: Label = label("queue", "queue short name");
const TASK: Label = label("task", "task name");
const SCAN_KIND: Label = label(
    "provider",
    "`pagarme`, `pagarme_dunning`, `pagarme_native`, `appmax`, `appmax_dunning`",
);
const PROVIDER: Label = label("provider", "`pagarme`, `appmax`");
const SCHEDULE: Label = label("schedule", "`[[cron]]` schedule name");
const BROKER_ROLES: &str = "worker, scheduler, ingest, relay, dev";

/// Every metric, in the order docs/metrics.md lists them.
pub const CATALOGUE: &[MetricDef] = &[
    MetricDef {
        name: names::JOBS_PROCESSED,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[
            QUEUE,
            TASK,
            label(
                "outcome",
                "`succeeded`, `retried`, `dead_lettered`, `duplicate`, `snoozed`",
            ),
        ],
        help: "Deliveries finished, by outcome",
        notes: "",
        roles: "worker, dev",
    },
    MetricDef {
        name: names::JOB_DURATION,
        kind: MetricKind::Histogram,
        unit: Some(metrics::Unit::Seconds),
        labels: &[QUEUE, TASK],
        help: "Handler run time",
        notes: "Buckets 1 ms to 300 s.",
        roles: "worker, dev",
    },
    MetricDef {
        name: names::JOBS_IN_FLIGHT,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[QUEUE],
        help: "Deliveries being processed",
        notes: "",
        roles: "worker, dev",
    },
    MetricDef {
        name: names::PUBLISHED,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[
            TASK,
            label("outcome", "`confirmed`, `unroutable`, `nacked`, `error`"),
        ],
        help: "Publishes by broker outcome",
        notes: "Retries and dead letters count under their job's task.",
        roles: BROKER_ROLES,
    },
    MetricDef {
        name: names::BROKER_CONNECTED,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "1 while connected to RabbitMQ",
        notes: "",
        roles: BROKER_ROLES,
    },
    MetricDef {
        name: names::BROKER_RECONNECTS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Broker connections re-established",
        notes: "Only after a connection loss.",
        roles: BROKER_ROLES,
    },
    MetricDef {
        name: names::BROKER_BLOCKED,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "1 while RabbitMQ blocks this process's connection (memory or disk alarm)",
        notes: "Publishes wait (retries and dead letters too) and ingest refuses requests \
                until the alarm clears.",
        roles: BROKER_ROLES,
    },
    MetricDef {
        name: names::READY,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "1 while every readiness check is up (/readyz)",
        notes: "Set on every scrape, so alerts can tell a running-but-unready process from \
                a dead one.",
        roles: "every role serving /metrics",
    },
    MetricDef {
        name: names::LEDGER_BATCH_SIZE,
        kind: MetricKind::Histogram,
        unit: None,
        labels: &[],
        help: "Rows per job-ledger group commit",
        notes: "Finishes and running marks; buckets 1 to 500.",
        roles: "worker, dev",
    },
    MetricDef {
        name: names::LEDGER_STATEMENT_DURATION,
        kind: MetricKind::Histogram,
        unit: Some(metrics::Unit::Seconds),
        labels: &[label("op", "`write`, `check`")],
        help: "Job-ledger statement wall time: a group commit with its WAL flush, or a batch \
               of checks",
        notes: "Buckets 0.1 ms to 1 s. A job waits for about one check and two writes, so a \
                worker runs at most ≈ prefetch ÷ (check + 2 × write) jobs/s per queue.",
        roles: "worker, dev",
    },
    MetricDef {
        name: names::LEDGER_ERRORS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Job-ledger writes retried after an error",
        notes: "PostgreSQL trouble; only after an error.",
        roles: "worker, dev",
    },
    MetricDef {
        name: names::SCHEDULER_IS_LEADER,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "1 on the scheduler replica that holds leadership, 0 on the others",
        notes: "",
        roles: "scheduler, dev",
    },
    MetricDef {
        name: names::SCHEDULER_DUE,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[SCAN_KIND],
        help: "Subscriptions due at the last scan",
        notes: "",
        roles: "scheduler, dev",
    },
    MetricDef {
        name: names::SCHEDULER_PUBLISHED,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[SCAN_KIND],
        help: "Renewal jobs published (confirmed and recorded)",
        notes: "",
        roles: "scheduler, dev",
    },
    MetricDef {
        name: names::SCHEDULER_SCAN_DURATION,
        kind: MetricKind::Histogram,
        unit: Some(metrics::Unit::Seconds),
        labels: &[SCAN_KIND],
        help: "One due scan of one kind",
        notes: "",
        roles: "scheduler, dev",
    },
    MetricDef {
        name: names::SCHEDULER_CLOCK_SKEW,
        kind: MetricKind::Gauge,
        unit: Some(metrics::Unit::Seconds),
        labels: &[],
        help: "This replica's clock minus the database's",
        notes: "The scheduler uses the database's clock; it warns past `--max-clock-skew`.",
        roles: "scheduler, dev",
    },
    MetricDef {
        name: names::CRON_RUNS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[SCHEDULE],
        help: "Cron ticks published",
        notes: "Only with `[[cron]]` schedules in the config file.",
        roles: "scheduler, dev",
    },
    MetricDef {
        name: names::CRON_TICK_LAG,
        kind: MetricKind::Gauge,
        unit: Some(metrics::Unit::Seconds),
        labels: &[SCHEDULE],
        help: "How late the last tick was published",
        notes: "",
        roles: "scheduler, dev",
    },
    MetricDef {
        name: names::PROVIDER_REQUESTS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[
            PROVIDER,
            label("operation", "`open`, `charge`, `lookup`"),
            label(
                "outcome",
                "`paid`, `failed`, `pending`, `not_found`, `retryable`, `permanent`, `unknown`",
            ),
        ],
        help: "Payment provider API calls",
        notes: "",
        roles: "worker, dev (renewal and cron queues)",
    },
    MetricDef {
        name: names::PROVIDER_REQUEST_DURATION,
        kind: MetricKind::Histogram,
        unit: Some(metrics::Unit::Seconds),
        labels: &[PROVIDER, label("operation", "`open`, `charge`, `lookup`")],
        help: "Payment provider API call wall time",
        notes: "",
        roles: "worker, dev (renewal and cron queues)",
    },
    MetricDef {
        name: names::RENEWALS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[
            PROVIDER,
            label(
                "outcome",
                "`paid`, `declined`, `unpaid`, `skipped`, `precondition_failed`, `rejected`, \
                 `retry`, `unknown`, `unknown_outcome`, `duplicate_charge`",
            ),
        ],
        help: "Renewal handler outcomes",
        notes: "`unknown`: looked up again later; `unknown_outcome`: dead-lettered for an \
                operator; `duplicate_charge`: a period charged twice, to refund (`warren \
                billing anomalies`).",
        roles: "worker, dev (renewal queues)",
    },
    MetricDef {
        name: names::STALE_PAYMENTS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[
            PROVIDER,
            label("outcome", "`paid`, `declined`, `failed`, `left`"),
        ],
        help: "Stale payment transactions the cron.fail-stale-payments sweep reconciled",
        notes: "",
        roles: "worker, dev (cron queue)",
    },
    MetricDef {
        name: names::INGEST_REQUESTS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[label("status", "HTTP status code")],
        help: "Ingest API requests answered, by status",
        notes: "",
        roles: "ingest",
    },
    MetricDef {
        name: names::INGEST_REQUEST_DURATION,
        kind: MetricKind::Histogram,
        unit: Some(metrics::Unit::Seconds),
        labels: &[label("status", "HTTP status code")],
        help: "Ingest API request wall time",
        notes: "Publisher confirms included.",
        roles: "ingest",
    },
    MetricDef {
        name: names::INGEST_CONNECTIONS,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "Open connections of the ingest API listener",
        notes: "At `--max-connections` the listener stops accepting until one closes.",
        roles: "ingest",
    },
    MetricDef {
        name: names::INGEST_TIMEOUTS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[label(
            "phase",
            "`head` (no complete request head in time on a new connection), `idle` (a kept-alive connection sent no next request in time), `body` (a request body did not arrive in time: 408)",
        )],
        help: "Ingest connections or requests cut off by a timeout, by phase",
        notes: "",
        roles: "ingest",
    },
];

/// Registers the help text (and unit) of every metric in [`CATALOGUE`] with the installed
/// recorder. Called once, by [`metrics_handle`].
pub fn describe_all() {
    for m in CATALOGUE {
        match (m.kind, m.unit) {
            (MetricKind::Counter, Some(u)) => metrics::describe_counter!(m.name, u, m.help),
            (MetricKind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (MetricKind::Gauge, Some(u)) => metrics::describe_gauge!(m.name, u, m.help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (MetricKind::Histogram, Some(u)) => metrics::describe_histogram!(m.name, u, m.help),
            (MetricKind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the tracing subscriber (level from `RUST_LOG`, default `info`), on stderr.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=error,sqlx=warn"));
    use std::io::IsTerminal;
    // Colours only for a person at a terminal; log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            const SECONDS: &[f64] = &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ];
            const BATCH: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0];
            // A WAL flush takes from ≈ 0.1 ms (a quiet local disk) to tens of ms.
            const STATEMENT: &[f64] = &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::LEDGER_BATCH_SIZE.into()), BATCH)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::LEDGER_STATEMENT_DURATION.into()),
                        STATEMENT,
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process");
            describe_all();
            handle
        })
        .clone()
}

/// Named readiness checks; the role is ready when all are up.
#[derive(Clone, Debug)]
pub struct Health {
    checks: Arc<Vec<(&'static str, AtomicBool)>>,
}

impl Health {
    /// A health state with these checks, all down until reported up.
    pub fn new(checks: &[&'static str]) -> Self {
        Self {
            checks: Arc::new(
                checks
                    .iter()
                    .map(|c| (*c, AtomicBool::new(false)))
                    .collect(),
            ),
        }
    }

    /// Records a check's state. Unknown names are ignored.
    pub fn set(&self, check: &str, up: bool) {
        if let Some((_, flag)) = self.checks.iter().find(|(n, _)| *n == check) {
            flag.store(up, Ordering::Relaxed);
        }
    }

    pub fn is_up(&self, check: &str) -> bool {
        self.checks
            .iter()
            .any(|(n, f)| *n == check && f.load(Ordering::Relaxed))
    }

    pub fn ready(&self) -> bool {
        self.checks.iter().all(|(_, f)| f.load(Ordering::Relaxed))
    }

    fn report(&self) -> serde_json::Value {
        self.checks
            .iter()
            .map(|(n, f)| ((*n).to_owned(), f.load(Ordering::Relaxed).into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Binds `addr` (port 0 picks a free port) and serves the telemetry endpoints until the
/// process ends. Returns the bound address.
pub async fn serve(addr: SocketAddr, health: Health) -> std::io::Result<SocketAddr> {
    let handle = metrics_handle();
    let ready = health.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                let up = if ready.ready() { 1.0 } else { 0.0 };
                metrics::gauge!(names::READY).set(up);
                async move { h.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for /metrics: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "telemetry listener stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

async fn readyz(State(h): State<Health>) -> (StatusCode, Json<serde_json::Value>) {
    let code = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(h.report()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_are_unique_and_conventional() {
        let mut seen = std::collections::BTreeSet::new();
        for m in CATALOGUE {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("warren_"), "{}", m.name);
            assert!(!m.help.is_empty(), "{} has no help", m.name);
            assert_eq!(
                m.kind == MetricKind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                m.name
            );
            assert_eq!(
                m.unit == Some(metrics::Unit::Seconds),
                m.name.ends_with("_seconds"),
                "{}: durations, and only durations, end in _seconds",
                m.name
            );
        }
        for name in [
            names::JOBS_PROCESSED,
            names::JOB_DURATION,
            names::JOBS_IN_FLIGHT,
            names::PUBLISHED,
            names::BROKER_CONNECTED,
            names::BROKER_RECONNECTS,
            names::BROKER_BLOCKED,
            names::READY,
            names::LEDGER_BATCH_SIZE,
            names::LEDGER_STATEMENT_DURATION,
            names::LEDGER_ERRORS,
            names::SCHEDULER_IS_LEADER,
            names::SCHEDULER_DUE,
            names::SCHEDULER_PUBLISHED,
            names::SCHEDULER_SCAN_DURATION,
            names::SCHEDULER_CLOCK_SKEW,
            names::CRON_RUNS,
            names::CRON_TICK_LAG,
            names::PROVIDER_REQUESTS,
            names::PROVIDER_REQUEST_DURATION,
            names::RENEWALS,
            names::STALE_PAYMENTS,
            names::INGEST_REQUESTS,
            names::INGEST_REQUEST_DURATION,
            names::INGEST_CONNECTIONS,
            names::INGEST_TIMEOUTS,
        ] {
            assert!(seen.contains(name), "{name} is not in CATALOGUE");
        }
    }

    #[test]
    fn ready_only_when_every_check_is_up() {
        let h = Health::new(&["broker", "database"]);
        assert!(!h.ready());
        h.set("broker", true);
        assert!(!h.ready());
        h.set("database", true);
        assert!(h.ready());
        h.set("broker", false);
        assert!(!h.ready() && !h.is_up("broker") && h.is_up("database"));
    }
}
