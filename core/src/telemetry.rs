//! Logs, metrics and health: what every long-running role exposes.
//!
//! Metric names are fixed here (see the brief); labels are fixed per metric. Durations are
//! histograms in seconds with explicit buckets. The HTTP listener serves `/metrics`,
//! `/healthz` (the process is up) and `/readyz` (every dependency the role needs is up).

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Metric names, one constant each.
pub mod names {
    /// counter {queue, task, outcome = succeeded|retried|dead_lettered|duplicate}
    pub const JOBS_PROCESSED: &str = "warren_jobs_processed_total";
    /// histogram {queue, task}: handler wall time.
    pub const JOB_DURATION: &str = "warren_job_duration_seconds";
    /// gauge {queue}: deliveries being processed.
    pub const JOBS_IN_FLIGHT: &str = "warren_jobs_in_flight";
    /// counter {task, outcome = confirmed|unroutable|nacked|error}
    pub const PUBLISHED: &str = "warren_published_total";
    /// gauge: 1 while connected to RabbitMQ.
    pub const BROKER_CONNECTED: &str = "warren_broker_connected";
    /// counter: connections re-established after a loss.
    pub const BROKER_RECONNECTS: &str = "warren_broker_reconnects_total";
    /// histogram: rows per job-ledger group commit.
    pub const LEDGER_BATCH_SIZE: &str = "warren_ledger_batch_size";
    /// histogram {op = write|check}: wall time of one job-ledger statement, seconds: a group
    /// commit including its WAL flush (`write`), or one batch of duplicate checks (`check`).
    /// Every job waits for at least one of each, so this bounds a worker's throughput at
    /// about prefetch ÷ (check + 2 × write) jobs/s.
    pub const LEDGER_STATEMENT_DURATION: &str = "warren_ledger_statement_seconds";
    /// counter: ledger writes that failed and were retried (PostgreSQL trouble).
    pub const LEDGER_ERRORS: &str = "warren_ledger_errors_total";
    /// gauge: 1 on the scheduler replica that holds leadership, 0 on the others.
    pub const SCHEDULER_IS_LEADER: &str = "warren_scheduler_is_leader";
    /// gauge {provider = pagarme|pagarme_native|appmax}: subscriptions due at the last scan.
    pub const SCHEDULER_DUE: &str = "warren_scheduler_due";
    /// counter {provider}: renewal jobs published (confirmed and recorded).
    pub const SCHEDULER_PUBLISHED: &str = "warren_scheduler_published_total";
    /// histogram {provider}: one scan of one provider, seconds.
    pub const SCHEDULER_SCAN_DURATION: &str = "warren_scheduler_scan_duration_seconds";
    /// gauge: this replica's clock minus the database's, seconds (the scheduler uses the latter).
    pub const SCHEDULER_CLOCK_SKEW: &str = "warren_scheduler_clock_skew_seconds";
    /// counter {schedule}: cron ticks published.
    pub const CRON_RUNS: &str = "warren_cron_runs_total";
    /// gauge {schedule}: how late the last tick was published, seconds.
    pub const CRON_TICK_LAG: &str = "warren_cron_tick_lag_seconds";
    /// counter {provider, operation = open|charge|lookup, outcome = paid|failed|pending|
    /// not_found|retryable|permanent|unknown}: provider API calls.
    pub const PROVIDER_REQUESTS: &str = "warren_provider_requests_total";
    /// histogram {provider, operation}: provider API call wall time, seconds.
    pub const PROVIDER_REQUEST_DURATION: &str = "warren_provider_request_duration_seconds";
    /// counter {provider, outcome = paid|declined|unpaid|skipped|precondition_failed|
    /// rejected|retry|unknown|unknown_outcome|duplicate_charge}: renewal handler outcomes
    /// (`unknown`: looked again later; `unknown_outcome`: dead-lettered for an operator;
    /// `duplicate_charge`: a period charged twice, to refund).
    pub const RENEWALS: &str = "warren_renewals_total";
    /// counter {provider, outcome = paid|declined|failed|left}: stale payment transactions
    /// the `cron.fail-stale-payments` sweep reconciled with the provider.
    pub const STALE_PAYMENTS: &str = "warren_stale_payments_total";
    /// gauge: 1 while RabbitMQ blocks the process's connection (a memory or disk alarm:
    /// publishes wait; ingest refuses requests), 0 otherwise.
    pub const BROKER_BLOCKED: &str = "warren_broker_blocked";
    /// gauge: 1 while the role is ready (what `/readyz` answers), 0 otherwise; set on every
    /// scrape, so alerts can tell a running-but-unready process from a dead one.
    pub const READY: &str = "warren_ready";
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
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(names::JOBS_PROCESSED, "Deliveries finished, by outcome");
    describe_histogram!(names::JOB_DURATION, Unit::Seconds, "Handler run time");
    describe_gauge!(names::JOBS_IN_FLIGHT, "Deliveries being processed");
    describe_counter!(names::PUBLISHED, "Publishes by broker outcome");
    describe_gauge!(names::BROKER_CONNECTED, "1 while connected to RabbitMQ");
    describe_counter!(
        names::BROKER_RECONNECTS,
        "Broker connections re-established"
    );
    describe_histogram!(names::LEDGER_BATCH_SIZE, "Rows per job-ledger group commit");
    describe_histogram!(
        names::LEDGER_STATEMENT_DURATION,
        Unit::Seconds,
        "Job-ledger statement wall time: a group commit with its WAL flush, or a batch of checks"
    );
    describe_counter!(
        names::LEDGER_ERRORS,
        "Job-ledger writes retried after an error"
    );
    describe_gauge!(
        names::READY,
        "1 while every readiness check is up (/readyz)"
    );
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
