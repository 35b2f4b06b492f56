//! Appmax v3: `POST /api/v3/order`, `POST /api/v3/payment/credit-card` and
//! `GET /api/v3/order?reference=`.
//!
//! Every route needs an `access-token` header (any non-empty value). Appmax has no
//! idempotency header: an order is unique by `reference` (unless a card charged for that
//! reference said `duporder`), and charging an order that already has a charge answers it
//! without charging again.

use crate::error::{decided, script_for, ApiError};
use crate::reply::Reply;
use crate::script::Script;
use crate::state::{
    after, decision_message, AppmaxCharge, AppmaxOrder, AppmaxStatus, Decision, Provider, Request,
    Sim,
};
use crate::AppState;
use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize)]
struct CreateOrder {
    reference: String,
    #[serde(default)]
    #[allow(dead_code)] // accepted as the real API does; the simulator has no use for it
    subscription_id: Option<Value>,
    amount_cents: i64,
}

#[derive(Debug, Deserialize)]
struct ChargeCard {
    order_id: u64,
    token: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FindQuery {
    #[serde(default)]
    reference: Option<String>,
}

/// 401 unless a non-empty `access-token` header is present.
fn check_auth(headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = headers
        .get("access-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().is_empty());
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized("Invalid or missing access-token"))
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

/// The order as Appmax answers it at `now`; `lookup` applies the charge's `lag<N>`.
fn order_json(o: &AppmaxOrder, now: Instant, lookup: bool) -> Value {
    let status = o.status(now, lookup);
    json!({
        "id": o.id,
        "reference": o.reference,
        "status": AppmaxStatus::from(status),
        "message": decision_message(status),
    })
}

/// `POST /api/v3/order`: creates the order, or answers the existing one for that reference
/// (a new one every time once the reference is `duporder`).
pub(crate) async fn create_order(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_auth(&headers)?;
    let req: CreateOrder = parse(&body)?;
    if req.reference.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reference is required",
        ));
    }
    let mut sim = app.lock();
    let now = Instant::now();
    let existing = sim
        .appmax_by_reference
        .get(&req.reference)
        .and_then(|orders| orders.first().copied());
    if let Some(i) = existing {
        if !sim.dup_order(&req.reference) {
            return Ok(Json(order_json(&sim.appmax_orders[i], now, false)));
        }
    }
    let id = sim.next_id();
    let order = AppmaxOrder {
        id,
        reference: req.reference.clone(),
        amount_cents: req.amount_cents,
        charge: None,
    };
    let i = sim.appmax_orders.len();
    sim.appmax_orders.push(order);
    sim.appmax_by_reference
        .entry(req.reference)
        .or_default()
        .push(i);
    sim.appmax_by_id.insert(id, i);
    Ok(Json(order_json(&sim.appmax_orders[i], now, false)))
}

/// `POST /api/v3/payment/credit-card`: charges an order with a card token.
pub(crate) async fn charge(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_auth(&headers)?;
    let req: ChargeCard = parse(&body)?;
    let reply = {
        let mut sim = app.lock();
        let now = Instant::now();
        let Some(&i) = sim.appmax_by_id.get(&req.order_id) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("order {} not found", req.order_id),
            ));
        };
        let order = &sim.appmax_orders[i];
        let (reference, amount_cents) = (order.reference.clone(), order.amount_cents);
        let script = Script::from_card(&req.token);
        let call = sim.begin(Provider::Appmax, &reference, script.as_ref(), now);
        let request = Request {
            provider: Provider::Appmax,
            key: reference,
            card: req.token.clone(),
            amount_cents,
            call,
        };
        let result = charge_order(&mut sim, &request, i, now, app.cfg.timeout_hang);
        if let Err(e) = &result {
            sim.record(&request, None, e.answer(), Some(req.order_id.to_string()));
        }
        result?
    };
    Ok(reply.send().await)
}

/// Replays or charges order `i`, under the lock. Records the row of a replay or a charge;
/// an `Err` is recorded by the caller.
fn charge_order(
    sim: &mut Sim,
    request: &Request,
    i: usize,
    now: Instant,
    timeout_hang: Duration,
) -> Result<Reply, ApiError> {
    let order = &sim.appmax_orders[i];
    let id = order.id;
    if order.charge.is_some() {
        // Already charged: an order is charged at most once.
        tracing::debug!(reference = order.reference, "appmax replay");
        let body = charge_json(order, now);
        sim.record(request, None, "200", Some(id.to_string()));
        return Ok(Reply::ok(body));
    }
    let script = script_for("token", &request.card)?;
    let (status, wait) =
        decided(sim.step(Provider::Appmax, &request.key, script.outcome, timeout_hang))?;
    let decision = Decision {
        status,
        settles_at: script.pending.map(|d| after(now, d)),
    };
    let order = &mut sim.appmax_orders[i];
    order.charge = Some(AppmaxCharge {
        decision,
        visible_at: after(now, script.lag.unwrap_or_default()),
    });
    let body = charge_json(order, now);
    sim.record(
        request,
        Some(decision),
        Reply::answer(script.then),
        Some(id.to_string()),
    );
    tracing::info!(reference = request.key, ?status, %script, "appmax charge");
    Ok(Reply {
        body,
        wait,
        then: script.then,
    })
}

fn charge_json(o: &AppmaxOrder, now: Instant) -> Value {
    let status = o.status(now, false);
    json!({
        "order_id": o.id,
        "status": AppmaxStatus::from(status),
        "message": decision_message(status),
    })
}

/// `GET /api/v3/order?reference=`: `{ "data": [ <order>, … ] }`, newest first, empty when
/// none; a 500 while the reference's `lookuperr<N>` lasts. A charged order shows `pending`
/// until its `lag<N>` has passed.
pub(crate) async fn find_orders(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<FindQuery>,
) -> Result<Json<Value>, ApiError> {
    check_auth(&headers)?;
    let sim = app.lock();
    let now = Instant::now();
    let data: Vec<Value> = match q.reference.as_deref() {
        Some(reference) => {
            if sim.lookup_failing(Provider::Appmax, reference, now) {
                return Err(ApiError::lookup_failed());
            }
            sim.appmax_by_reference
                .get(reference)
                .into_iter()
                .flatten()
                .rev()
                .map(|&i| order_json(&sim.appmax_orders[i], now, true))
                .collect()
        }
        None => sim
            .appmax_orders
            .iter()
            .map(|o| order_json(o, now, true))
            .collect(),
    };
    Ok(Json(json!({ "data": data })))
}
