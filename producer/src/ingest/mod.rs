//! The ingest HTTP API (`warren ingest`): publish a job with one `POST`.
//!
//! - `POST /v1/jobs/{task}`: the body is the job's JSON payload.
//! - `POST /v1/jobs`: a JSON array of `{task, payload, id?, idempotency_key?}`.
//!
//! Both answer `202 {"jobs":[{"id","task"}]}` only after the broker confirmed every
//! message (publisher confirms, `mandatory`), and errors as `{error, message, path?}`.
//! Requests carry `Authorization: Bearer <token>`; an `Idempotency-Key` header makes a
//! retried request answer the first response without publishing again. See
//! `docs/ingest.md` for the whole contract.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod auth;
mod idempotency;
mod linger;
mod outcome;
#[cfg(test)]
mod properties;
mod server;
mod wire;

use crate::broker::SharedBroker;
pub use auth::{Scope, Tokens, TokensError};
pub use idempotency::{request_hash, Claim, ClaimGuard, Store};
use outcome::{broker_blocked, broker_down, JobState, Outcome, Sent, RETRY_AFTER_SECS};
pub use server::{CONNECTIONS, TIMEOUTS};

use crate::{Producer, PublishError, PublishOptions};
use axum::body::{Bytes, HttpBody};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use warren_core::limits::{self, LimitError};
use warren_core::telemetry::Health;
use warren_core::topology::Topology;

/// counter {status}: ingest API requests answered, by HTTP status code.
pub const REQUESTS: &str = warren_core::telemetry::names::INGEST_REQUESTS;
/// histogram {status}: ingest API request wall time, seconds (publish confirms included).
pub const REQUEST_DURATION: &str = warren_core::telemetry::names::INGEST_REQUEST_DURATION;

/// The OpenAPI 3.1 description served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Longest accepted `Idempotency-Key` (and `X-Tenant`, `X-Job-Id`, task name), in bytes.
pub const MAX_KEY_LEN: usize = limits::MAX_SHORT;
/// Longest time from now a job may be delayed (`delay`, `run_at`): one year.
const MAX_DELAY_SECS: i64 = limits::MAX_DELAY.as_secs() as i64;
/// How long the broker may take to confirm a request's messages before it answers 503.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a request waiting for confirms checks whether RabbitMQ blocked the connection.
const FLOW_CHECK: Duration = Duration::from_millis(50);

/// Everything the API needs.
pub struct IngestConfig {
    pub topology: Topology,
    pub amqp_url: String,
    pub tokens: Tokens,
    /// `Idempotency-Key` records live this long.
    pub idempotency_window: Duration,
    /// Largest request body, bytes (`WARREN_MAX_BODY`). A request that declares a larger
    /// `Content-Length` is answered 413 before any of its body is read.
    pub max_body: usize,
    /// A new connection must send a complete request head within this; it is closed
    /// otherwise.
    pub header_timeout: Duration,
    /// A request body must arrive whole within this of its head; 408 otherwise.
    pub body_timeout: Duration,
    /// A kept-alive connection must send its next complete request head within this of the
    /// previous answer; it is closed otherwise.
    pub idle_timeout: Duration,
    /// Most connections open at once; at the cap, new ones wait in the listen backlog.
    pub max_connections: usize,
    /// PostgreSQL (only requests with an `Idempotency-Key` use it).
    pub pool: sqlx::PgPool,
    /// Its `broker` check follows the RabbitMQ connection.
    pub health: Health,
}

struct AppState {
    topology: Topology,
    tokens: Tokens,
    store: Store,
    broker: Arc<SharedBroker>,
    health: Health,
    max_body: usize,
    body_timeout: Duration,
}

type Shared = Arc<AppState>;

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in
/// flight and closes the broker connection.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: IngestConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // Help texts: `warren_core::telemetry::CATALOGUE`, registered with the recorder.
    let broker = Arc::new(
        SharedBroker::new(
            cfg.amqp_url.clone(),
            "ingest",
            cfg.topology.clone(),
            cfg.health.clone(),
        )
        .with_flow_probe(),
    );
    let store = Store::new(cfg.pool.clone(), cfg.idempotency_window);
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(
        broker
            .clone()
            .watch(Duration::from_secs(1), stop.clone().cancelled_owned()),
    );
    let pruner = tokio::spawn(prune_loop(store.clone(), stop.clone()));
    let state = Arc::new(AppState {
        topology: cfg.topology,
        tokens: cfg.tokens,
        store,
        broker: broker.clone(),
        health: cfg.health,
        max_body: cfg.max_body,
        body_timeout: cfg.body_timeout,
    });
    let limits = server::Limits {
        header_timeout: cfg.header_timeout,
        idle_timeout: cfg.idle_timeout,
        max_connections: cfg.max_connections,
    };
    server::run(listener, router(state), limits, shutdown).await;
    stop.cancel();
    let _ = watcher.await;
    pruner.abort();
    broker.close().await;
}

/// The routes: the API (authenticated, measured) plus `/openapi.json`, `/healthz` and
/// `/readyz` without authentication.
fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/v1/jobs", post(post_batch))
        .route("/v1/jobs/{task}", post(post_one))
        // After authentication: an anonymous client is told 401 whatever it declares.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_declared_oversize,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn(measure))
        .layer(DefaultBodyLimit::max(state.max_body))
        // Outermost: a body that authentication or the size limit refused unread is drained,
        // so the client gets the answer rather than a reset.
        .route_layer(middleware::map_request(linger::wrap));
    Router::new()
        .merge(api)
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Every `error` code an answer can carry (the OpenAPI document lists the same), besides
/// `outcome_unknown` (see [`outcome`]).
pub const ERROR_CODES: &[&str] = &[
    "unauthorized",
    "forbidden",
    "malformed_json",
    "bad_request",
    "invalid_header",
    "invalid_task",
    "unknown_task",
    "not_found",
    "method_not_allowed",
    "uri_too_long",
    "headers_too_large",
    "idempotency_key_in_use",
    "request_timeout",
    "payload_too_large",
    "invalid_payload",
    "invalid_delay",
    "idempotency_key_reused",
    "broker_unavailable",
    "broker_blocked",
    "database_unavailable",
];

/// An API error: `{error, message, path?}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub path: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            ERROR_CODES.contains(&code),
            "{code} is missing from ERROR_CODES"
        );
        Self {
            status,
            code,
            message: message.into(),
            path: None,
        }
    }

    fn at(mut self, path: Option<String>) -> Self {
        self.path = path;
        self
    }

    fn body(&self) -> String {
        let mut v = json!({"error": self.code, "message": self.message});
        if let Some(p) = &self.path {
            v["path"] = p.clone().into();
        }
        v.to_string()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_response(self.status, self.body());
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The rest of the body is not wanted (too large) or not coming (too slow): the
        // connection closes once it is answered.
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn measure(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(REQUESTS, "status" => status.clone()).increment(1);
    metrics::histogram!(REQUEST_DURATION, "status" => status)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// 401 without a bearer token, 403 with one that is not accepted. The token is never
/// logged.
async fn authenticate(State(st): State<Shared>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty());
    let Some(presented) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an API token as `Authorization: Bearer <token>`",
        )
        .into_response();
    };
    match st.tokens.check(presented) {
        Some(scope) => {
            req.extensions_mut().insert(scope);
            next.run(req).await
        }
        None => {
            tracing::warn!("request with an unknown API token refused (403)");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the API token is not accepted",
            )
            .into_response()
        }
    }
}

/// 413 at once for a request whose `Content-Length` is over the limit: none of its body is
/// read or waited for.
async fn refuse_declared_oversize(State(st): State<Shared>, req: Request, next: Next) -> Response {
    // hyper's body reports a declared Content-Length as its exact size (chunked: 0).
    if req.body().size_hint().lower() > st.max_body as u64 {
        return payload_too_large(st.max_body).into_response();
    }
    next.run(req).await
}

/// A request's whole body, read within [`AppState::body_timeout`] (counted from the end of
/// its head, when the handler starts reading) and [`AppState::max_body`]: 408
/// `request_timeout` or 413 otherwise.
struct RequestBody(Bytes);

impl FromRequest<Shared> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &Shared) -> Result<Self, ApiError> {
        match tokio::time::timeout(st.body_timeout, Bytes::from_request(req, st)).await {
            Ok(Ok(body)) => Ok(Self(body)),
            Ok(Err(r)) => Err(body_rejection(r, st.max_body)),
            Err(_) => {
                metrics::counter!(TIMEOUTS, "phase" => "body").increment(1);
                Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {:?} \
                         (WARREN_INGEST_BODY_TIMEOUT / --body-timeout)",
                        st.body_timeout
                    ),
                ))
            }
        }
    }
}

async fn openapi() -> Response {
    json_response(StatusCode::OK, OPENAPI.to_owned())
}

/// `200` when connected to RabbitMQ and not blocked by it (`broker`, `flow`), else `503`.
async fn readyz(State(st): State<Shared>) -> Response {
    let (broker, flow) = (st.health.is_up("broker"), st.health.is_up("flow"));
    let code = if broker && flow {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, json!({ "broker": broker, "flow": flow }).to_string())
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see GET /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method (jobs are sent with POST); see GET /openapi.json",
    )
}

/// One job to publish.
struct Job {
    task: String,
    body: Vec<u8>,
    opts: PublishOptions,
    /// Run no sooner than this (from `delay` or `run_at`).
    run_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `?delay=SECONDS` or `?run_at=RFC3339` on the single-job endpoint.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct When {
    #[serde(default)]
    delay: Option<f64>,
    #[serde(default)]
    run_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl When {
    /// What the request asked for, as it goes into the `Idempotency-Key` fingerprint (none:
    /// nothing, so requests without a delay keep their fingerprint).
    fn fingerprint(&self) -> Option<String> {
        match (self.delay, self.run_at) {
            (None, None) => None,
            (d, at) => Some(format!(
                "delay={};run_at={}",
                d.map(|d| d.to_string()).unwrap_or_default(),
                at.map(|a| a.to_rfc3339()).unwrap_or_default()
            )),
        }
    }

    /// The instant, or a 422 naming `path` (`delay`, `[i].delay`).
    fn run_at(&self, prefix: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        let invalid = |field: &str, message: &str| {
            let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_delay", message);
            e.path = Some(format!("{prefix}{field}"));
            e
        };
        match (self.delay, self.run_at) {
            (Some(_), Some(_)) => Err(invalid("delay", "give delay or run_at, not both")),
            (Some(d), None) if !(0.0..=MAX_DELAY_SECS as f64).contains(&d) => Err(invalid(
                "delay",
                "delay is seconds from 0 to 31536000 (one year)",
            )),
            (Some(d), None) => Ok(Some(
                chrono::Utc::now() + chrono::Duration::milliseconds((d * 1000.0).round() as i64),
            )),
            (None, Some(at))
                if at > chrono::Utc::now() + chrono::Duration::seconds(MAX_DELAY_SECS) =>
            {
                Err(invalid(
                    "run_at",
                    "run_at is at most one year (31536000 seconds) from now",
                ))
            }
            (None, at) => Ok(at),
        }
    }
}

/// A batch item.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    task: String,
    payload: serde_json::Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(flatten)]
    when: When,
}

/// What a request becomes before anything is published: its jobs, its `Idempotency-Key` and
/// the request's fingerprint for that key.
type Parsed = (Vec<Job>, Option<String>, String);

async fn post_one(
    State(st): State<Shared>,
    Extension(scope): Extension<Scope>,
    task: Result<Path<String>, PathRejection>,
    when: Result<Query<When>, QueryRejection>,
    headers: HeaderMap,
    body: Result<RequestBody, ApiError>,
) -> Response {
    let task = task.map(|Path(t)| t).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_task",
            format!("the task name in the path must be UTF-8 (percent-encoded): {e}"),
        )
        .at(Some("task".into()))
    });
    let when = when.map(|Query(w)| w).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("query parameters: only delay (seconds) or run_at (RFC 3339): {e}"),
        )
    });
    let body = body.map(|RequestBody(b)| b);
    match parse_one(&st.topology, task, when, &headers, body) {
        Ok((jobs, idem, hash)) => accept(&st, &scope, jobs, idem, hash).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/jobs/{task}` up to publishing, without a broker: the path, the query, the
/// headers and the body (each as its extractor left it) checked in this order, into one job
/// within [`warren_core::limits`] whose payload fits its task, or the first refusal (4xx).
fn parse_one(
    topology: &Topology,
    task: Result<String, ApiError>,
    when: Result<When, ApiError>,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<Parsed, ApiError> {
    let task = task?;
    limits::check_short("task", &task).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_task", e.to_string())
            .at(Some("task".into()))
    })?;
    let body = body?;
    let when = when?;
    let run_at = when.run_at("")?;
    let idem = header_value(headers, "Idempotency-Key")?;
    let tenant = header_value(headers, "X-Tenant")?;
    let id = header_value(headers, "X-Job-Id")?;
    check_task(topology, &task, Some("task".into()))?;
    warren_core::payload::validate(&task, &body).map_err(|e| payload_error(e, None))?;
    let route = format!("/v1/jobs/{task}");
    let when_part = when.fingerprint();
    let mut parts: Vec<&[u8]> = vec![
        route.as_bytes(),
        tenant.as_deref().unwrap_or_default().as_bytes(),
        id.as_deref().unwrap_or_default().as_bytes(),
        &body,
    ];
    if let Some(w) = &when_part {
        parts.push(w.as_bytes());
    }
    let hash = request_hash(&parts);
    let opts = PublishOptions {
        id,
        idempotency_key: idem.clone(),
        tenant,
        ..Default::default()
    };
    opts.check(&task)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_header", e.to_string()))?;
    let job = Job {
        task,
        body: body.to_vec(),
        opts,
        run_at,
    };
    Ok((vec![job], idem, hash))
}

async fn post_batch(
    State(st): State<Shared>,
    Extension(scope): Extension<Scope>,
    headers: HeaderMap,
    body: Result<RequestBody, ApiError>,
) -> Response {
    let body = body.map(|RequestBody(b)| b);
    match parse_batch(&st.topology, &headers, body) {
        Ok((jobs, idem, hash)) => accept(&st, &scope, jobs, idem, hash).await,
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/jobs` up to publishing, without a broker: every item checked as
/// [`parse_one`] checks a job, all before any is published, or the first refusal (4xx).
fn parse_batch(
    topology: &Topology,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<Parsed, ApiError> {
    let body = body?;
    let idem = header_value(headers, "Idempotency-Key")?;
    let tenant = header_value(headers, "X-Tenant")?;
    // Each payload is checked on its own below; the array and item objects add two levels.
    limits::check_body_within("body", &body, limits::MAX_JSON_DEPTH + 2)
        .map_err(|e| payload_error(warren_core::payload::PayloadError::from_limit(e), None))?;
    let items: Vec<Item> =
        warren_core::payload::decode(&body).map_err(|e| payload_error(e, None))?;
    if items.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_payload",
            "the batch is empty: send a JSON array of {task, payload, id?, idempotency_key?}",
        ));
    }
    let mut jobs = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let field = |e: LimitError| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_payload",
                format!("item {i}: {e}"),
            )
            .at(Some(format!("[{i}].{}", e.field())))
        };
        limits::check_short("task", &item.task).map_err(field)?;
        check_task(topology, &item.task, Some(format!("[{i}].task")))?;
        let bytes = serde_json::to_vec(&item.payload).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_payload",
                format!("item {i}: the payload cannot be encoded: {e}"),
            )
            .at(Some(format!("[{i}].payload")))
        })?;
        warren_core::payload::validate(&item.task, &bytes)
            .map_err(|e| payload_error(e, Some(i)))?;
        let run_at = item.when.run_at(&format!("[{i}]."))?;
        let opts = PublishOptions {
            id: item.id,
            idempotency_key: item.idempotency_key,
            tenant: tenant.clone(),
            ..Default::default()
        };
        opts.check(&item.task).map_err(field)?;
        jobs.push(Job {
            task: item.task,
            body: bytes,
            opts,
            run_at,
        });
    }
    let hash = request_hash(&[
        b"/v1/jobs",
        tenant.as_deref().unwrap_or_default().as_bytes(),
        &body,
    ]);
    Ok((jobs, idem, hash))
}

/// Publishes valid jobs, honouring the `Idempotency-Key`: a replay answers the stored
/// response; a refusal (nothing published) gives the key up so the client can retry; an
/// unknown outcome is kept with its job ids, so a retry with the key publishes under them
/// again (see [`outcome`]).
async fn accept(
    st: &AppState,
    scope: &Scope,
    mut jobs: Vec<Job>,
    idem: Option<String>,
    hash: String,
) -> Response {
    let Some(key) = idem else {
        return answer(&publish(st, jobs).await);
    };
    if key.len() > MAX_KEY_LEN {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            format!("Idempotency-Key is longer than {MAX_KEY_LEN} characters"),
        )
        .into_response();
    }
    let earlier = match st.store.claim(&scope.0, &key, &hash).await {
        Ok(Claim::New) => None,
        Ok(Claim::Resume { earlier }) => {
            // Same request, same ids: whatever of the earlier attempt reached the broker
            // and this attempt's copies are one job each.
            for (job, was) in jobs.iter_mut().zip(outcome::earlier_jobs(&earlier)) {
                if job.opts.id.is_none() && !was.id.is_empty() {
                    job.opts.id = Some(was.id);
                }
            }
            Some(earlier)
        }
        Ok(Claim::Replay { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            let mut r = json_response(status, body);
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return r;
        }
        Ok(Claim::Mismatch) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request (task, body, \
                 X-Tenant or X-Job-Id) within the idempotency window; use a new key",
            )
            .into_response()
        }
        Ok(Claim::InProgress) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still being processed; retry later",
            )
            .into_response()
        }
        Err(e) => return database_unavailable(e).into_response(),
    };
    // Should this request not finish (a panic, or the client gone and the request dropped),
    // the guard gives the claim up so a retry is not refused for minutes.
    let guard = st.store.guard(&scope.0, &key);
    let mut out = publish(st, jobs).await;
    if let (Some(earlier), Outcome::Refused(e)) = (&earlier, &out) {
        if e.status.is_server_error() {
            // Nothing was sent this time, but the earlier attempt may still run.
            out = Outcome::Unknown {
                jobs: outcome::earlier_jobs(earlier),
                why: format!("this retry was not published ({})", e.message),
            };
        }
    }
    let (status, body) = out.answer();
    let stored = match &out {
        Outcome::Refused(e) if e.status.is_server_error() => st.store.release(&scope.0, &key).await,
        _ => {
            st.store
                .complete(&scope.0, &key, status.as_u16(), &body)
                .await
        }
    };
    guard.disarm();
    if let Err(e) = stored {
        // The answer stays true; only a retry with this key is no longer recognised.
        tracing::error!(error = %e, "cannot store the Idempotency-Key record");
    }
    answer(&out)
}

/// The HTTP answer of an outcome; a `503` carries `Retry-After`.
fn answer(out: &Outcome) -> Response {
    let (status, body) = out.answer();
    let mut r = json_response(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    r
}

fn database_unavailable(e: sqlx::Error) -> ApiError {
    tracing::warn!(error = %e, "idempotency store unavailable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        "the Idempotency-Key store (PostgreSQL) is unavailable; retry later with the same key",
    )
}

/// Publishes every job and waits for every confirm, watching RabbitMQ's flow control while
/// it waits: see [`outcome`] for what each ending means.
async fn publish(st: &AppState, jobs: Vec<Job>) -> Outcome {
    let link = match st.broker.link().await {
        Ok(l) => l,
        Err(e) => return Outcome::Refused(broker_down(&e.to_string())),
    };
    if st.broker.follow_flow(&link) {
        return Outcome::Refused(broker_blocked());
    }
    let longest = st.topology.longest_tier();
    let mut sent = Vec::with_capacity(jobs.len());
    let mut pending = Vec::with_capacity(jobs.len());
    let mut held = Vec::new();
    let producer = &link.producer;
    for job in &jobs {
        let mut opts = job.opts.clone();
        let id = opts
            .id
            .get_or_insert_with(|| uuid::Uuid::now_v7().to_string())
            .clone();
        sent.push(Sent {
            id,
            task: job.task.clone(),
            state: JobState::Unknown,
        });
        let delay = job
            .run_at
            .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
            .filter(|d| !d.is_zero());
        if delay.is_some_and(|d| d > longest) {
            // Longer than any delay tier: held in PostgreSQL until due (docs/outbox.md).
            held.push((sent.len() - 1, job, opts));
            continue;
        }
        opts.delay = delay;
        let exchange = match producer.exchange_for(&job.task, &opts) {
            Ok(x) => x,
            Err(e) => return Outcome::Refused(broker_down(&e.to_string())),
        };
        let (_, props) = Producer::envelope(&opts);
        let index = sent.len() - 1;
        // Lazy: nothing is sent before the futures are polled below.
        pending.push(async move {
            let r = producer
                .publish_raw(&exchange, &job.task, &job.task, &job.body, props)
                .await;
            (index, r)
        });
    }
    if !held.is_empty() {
        let rows: Vec<_> = held
            .iter()
            .map(|(_, job, opts)| (*job, opts.clone()))
            .collect();
        if let Err(e) = hold(&st.store, &rows).await {
            return Outcome::Refused(e);
        }
        for (i, _, _) in &held {
            sent[*i].state = JobState::Accepted;
        }
    }
    let confirms = futures::future::join_all(pending);
    tokio::pin!(confirms);
    let deadline = tokio::time::sleep(CONFIRM_TIMEOUT);
    tokio::pin!(deadline);
    // The first look was the check before publishing; the next is one period later.
    let mut flow = tokio::time::interval_at(tokio::time::Instant::now() + FLOW_CHECK, FLOW_CHECK);
    let results = loop {
        tokio::select! {
            results = &mut confirms => break results,
            _ = &mut deadline => {
                st.broker.reset(link.generation).await;
                return Outcome::Unknown {
                    jobs: sent,
                    why: format!("RabbitMQ did not confirm within {CONFIRM_TIMEOUT:?}"),
                };
            }
            _ = flow.tick() => {
                if st.broker.follow_flow(&link) {
                    // What was sent waits in the connection until the alarm clears, then runs.
                    tracing::warn!(jobs = sent.len(), "RabbitMQ blocked publishes before confirming them: outcome unknown");
                    return Outcome::Unknown {
                        jobs: sent,
                        why: "RabbitMQ blocked publishes (a memory or disk alarm) before \
                              confirming these jobs"
                            .into(),
                    };
                }
            }
        }
    };
    let mut first_refusal = None;
    let mut lost = None;
    for (i, r) in results {
        match r {
            Ok(()) => sent[i].state = JobState::Accepted,
            Err(e @ PublishError::Broker(_)) => lost = Some(e),
            Err(e) => {
                sent[i].state = JobState::Refused;
                first_refusal.get_or_insert(e);
            }
        }
    }
    if let Some(e) = &lost {
        // A channel or connection error leaves the link unusable either way.
        tracing::warn!(error = %e, "publish failed: outcome unknown");
        st.broker.reset(link.generation).await;
    }
    let reached = |s: &Sent| s.state != JobState::Refused;
    match (first_refusal, lost) {
        (None, None) => {
            tracing::info!(jobs = sent.len(), "jobs accepted");
            Outcome::Accepted(sent)
        }
        (Some(e), None) if !sent.iter().any(reached) => Outcome::Refused(match e {
            PublishError::Unroutable { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_task", e.to_string())
            }
            other => broker_down(&other.to_string()),
        }),
        (refused, lost) => {
            let why = match (lost, refused) {
                (Some(e), _) => format!("the broker connection failed after publishing ({e})"),
                (None, Some(e)) => format!("only some of the jobs were accepted ({e})"),
                (None, None) => "the broker did not confirm every job".to_owned(),
            };
            Outcome::Unknown { jobs: sent, why }
        }
    }
}

/// Writes long-delayed jobs to the outbox in one transaction.
async fn hold(store: &Store, held: &[(&Job, PublishOptions)]) -> Result<(), ApiError> {
    let mut tx = store.pool().begin().await.map_err(database_unavailable)?;
    for (job, opts) in held {
        // The body was validated (UTF-8, depth) before; should it still not decode, refuse it
        // rather than panic.
        let payload: serde_json::Value = serde_json::from_slice(&job.body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("body is not valid JSON: {e}"),
            )
        })?;
        let Some(run_at) = job.run_at else { continue };
        let out = opts.held_until(run_at);
        if let Err(e) = warren_core::outbox::check(&job.task, &out) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                e.to_string(),
            ));
        }
        warren_core::outbox::insert(&mut *tx, &job.task, &payload, &out)
            .await
            .map_err(database_unavailable)?;
    }
    tx.commit().await.map_err(database_unavailable)
}

fn payload_too_large(max_body: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than {max_body} bytes (WARREN_MAX_BODY / --max-body)"),
    )
}

fn body_rejection(r: BytesRejection, max_body: usize) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        payload_too_large(max_body)
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
    }
}

/// A header's value, trimmed, within [`warren_core::limits`]: 1 to 255 bytes of UTF-8
/// without control characters, or a 400 `invalid_header` naming it.
fn header_value(h: &HeaderMap, name: &'static str) -> Result<Option<String>, ApiError> {
    let Some(v) = h.get(name) else {
        return Ok(None);
    };
    let bytes = v.as_bytes().trim_ascii();
    limits::check_short_bytes(name, bytes)
        .map(|s| Some(s.to_owned()))
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                format!("the {name} header: {e}"),
            )
            .at(Some(name.to_owned()))
        })
}

fn check_task(topology: &Topology, task: &str, path: Option<String>) -> Result<(), ApiError> {
    if topology.routes(task) {
        return Ok(());
    }
    let known: Vec<String> = topology
        .queues()
        .iter()
        .map(|q| format!("{} ({})", q.name, q.bindings.join(", ")))
        .collect();
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_task",
        format!(
            "no queue receives task {task:?}; queues and the tasks they receive: {}",
            known.join("; ")
        ),
    )
    .at(path))
}

/// 400 for a body that is not JSON, 422 (with the path) for one that does not fit. In a
/// batch, paths are prefixed with the item (`[2].payload.ms`).
fn payload_error(e: warren_core::payload::PayloadError, item: Option<usize>) -> ApiError {
    if e.is_syntax() {
        return ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.message);
    }
    let path = match item {
        None => e.path.clone(),
        Some(i) => Some(match &e.path {
            Some(p) if p.starts_with('[') => format!("[{i}].payload{p}"),
            Some(p) => format!("[{i}].payload.{p}"),
            None => format!("[{i}].payload"),
        }),
    };
    let message = match item {
        None => e.message,
        Some(i) => format!("item {i}: {}", e.message),
    };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_payload", message).at(path)
}

async fn prune_loop(store: Store, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => match store.prune().await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned expired Idempotency-Key records"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot prune Idempotency-Key records"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_every_error_code() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let listed: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
            ["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut ours = ERROR_CODES.to_vec();
        ours.sort_unstable();
        let mut theirs = listed.clone();
        theirs.sort_unstable();
        assert_eq!(ours, theirs);
        let unknown = &doc["components"]["schemas"]["OutcomeUnknown"]["properties"];
        assert_eq!(unknown["error"]["const"], "outcome_unknown");
    }

    #[test]
    fn the_parser_error_codes_are_listed() {
        for status in ["400", "414", "431"] {
            let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            let out = String::from_utf8(wire::rewrite(head.as_bytes()).unwrap()).unwrap();
            let body: serde_json::Value =
                serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
            assert!(
                ERROR_CODES.contains(&body["error"].as_str().unwrap()),
                "{body}"
            );
        }
    }
}
