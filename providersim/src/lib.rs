//! Payment-provider simulator: Pagar.me v5 and Appmax on one port, with scripted outcomes.
//!
//! Implements exactly the subset of `docs/providers.md` that Warren's provider clients speak,
//! so workers, chaos tests and local `warren dev` runs can charge "cards" without a sandbox
//! account. The outcome of a charge is chosen by the suffix of the Pagar.me `card_id` or the
//! Appmax card `token` (see [`Outcome`]), and the tokens before it can make the simulator
//! misbehave the way real gateways do: answer an error after charging, break the connection,
//! leave the charge pending, hide it from lookups, fail lookups, forget idempotency keys or
//! duplicate orders (see [`Script`]). Both APIs are idempotent the way the real ones are:
//! Pagar.me by `Idempotency-Key` and order `code`, Appmax by order `reference`; a key is
//! charged at most once unless a modifier says otherwise. Every charge request is a row of
//! the ledger served at `GET /__sim/charges` (see [`Charge`]; `?key=` filters), reset by
//! `DELETE /__sim/charges`.
//!
//! State lives in one `Arc<Mutex<…>>` (a std mutex, never held across an `.await`); the
//! artificial waits (`_slow`, `_timeout`, [`SimConfig::latency`]) happen after the lock is
//! released, and a `_timeout` charge is recorded *before* the wait, so a client that gives up
//! can reconcile by code or reference and find it paid. Time-based modifiers (`pending<N>`,
//! `lag<N>`, `lookuperr<N>`) compare against the [`Instant`](std::time::Instant) the charge
//! was made: nothing runs in the background, state is settled when read.

mod appmax;
mod error;
mod outcome;
mod pagarme;
mod reply;
mod script;
mod state;

pub use outcome::{Outcome, KNOWN_SUFFIXES};
pub use script::{Script, ScriptError, Then, MODIFIERS};
pub use state::{Charge, ChargeStatus, Provider};

use axum::{
    extract::{Query, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Environment variable the `warren provider-sim` command reads for [`SimConfig::latency`]
/// (milliseconds), alongside its `--latency MS` flag.
pub const LATENCY_ENV: &str = "WARREN_SIM_LATENCY_MS";

/// How long a `_slow` charge takes to answer.
pub const SLOW_DELAY: Duration = Duration::from_millis(200);

/// Simulator settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Added before every answer, on every route (`--latency MS`). Default zero.
    pub latency: Duration,
    /// How long a `_timeout` charge waits before answering. Default 30 s, past any sane
    /// client timeout; tests shorten it.
    pub timeout_hang: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            timeout_hang: Duration::from_secs(30),
        }
    }
}

/// Shared handler state: the configuration and the simulated providers' memory.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) cfg: SimConfig,
    pub(crate) sim: Arc<Mutex<state::Sim>>,
}

impl AppState {
    /// Locks the simulator state. A poisoned lock (a handler panicked mid-update) is
    /// recovered: the state is plain data and a test harness is better served by answers.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, state::Sim> {
        self.sim.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Both provider APIs, the ledger and `/healthz`, with fresh state.
pub fn router(cfg: SimConfig) -> Router {
    let state = AppState {
        cfg,
        sim: Arc::new(Mutex::new(state::Sim::default())),
    };
    let latency = cfg.latency;
    Router::new()
        .route(
            "/core/v5/orders",
            get(pagarme::find_orders).post(pagarme::create_order),
        )
        .route(
            "/api/v3/order",
            get(appmax::find_orders).post(appmax::create_order),
        )
        .route(
            "/api/v3/payment/credit-card",
            axum::routing::post(appmax::charge),
        )
        .route("/__sim/charges", get(list_charges).delete(reset))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
        .layer(middleware::from_fn(
            move |req: Request, next: Next| async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                next.run(req).await
            },
        ))
}

/// Binds `addr` (port 0 picks a free port) and serves [`router`] on a spawned task.
/// Returns the bound address and the server task (abort it to stop the simulator).
pub async fn serve(
    addr: SocketAddr,
    cfg: SimConfig,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let app = router(cfg);
    tracing::info!(addr = %bound, ?cfg, "provider simulator listening");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "provider simulator stopped");
        }
    });
    Ok((bound, task))
}

/// `GET /__sim/charges` query: `?key=` keeps only that key's rows.
#[derive(Debug, serde::Deserialize)]
struct LedgerQuery {
    #[serde(default)]
    key: Option<String>,
}

/// `GET /__sim/charges[?key=]`: the ledger, one row per charge request, oldest first.
async fn list_charges(
    State(app): State<AppState>,
    Query(q): Query<LedgerQuery>,
) -> Json<Vec<Charge>> {
    let sim = app.lock();
    let now = std::time::Instant::now();
    Json(
        sim.ledger
            .iter()
            .filter(|r| q.key.as_deref().is_none_or(|k| r.key == k))
            .map(|r| r.view(now))
            .collect(),
    )
}

/// `DELETE /__sim/charges`: forget every charge request, order and per-key state.
async fn reset(State(app): State<AppState>) -> Response {
    app.lock().reset();
    tracing::info!("provider simulator state reset");
    StatusCode::NO_CONTENT.into_response()
}
