//! Appmax v3: `POST /api/v3/order`, `POST /api/v3/payment/credit-card` and
//! `GET /api/v3/order?reference=`.
//!
//! Every route needs an `access-token` header (any non-empty value). Appmax has no
//! idempotency header: an order is unique by `reference`, and charging an order that already
//! has a decision answers that decision without charging again.

use crate::error::{decided, outcome_for, ApiError};
use crate::state::{decision_message, AppmaxOrder, AppmaxStatus, ChargeStatus, Provider};
use crate::AppState;
use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

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

fn order_json(o: &AppmaxOrder) -> Value {
    json!({ "id": o.id, "reference": o.reference, "status": o.status, "message": o.message })
}

/// `POST /api/v3/order`: creates the order, or answers the existing one for that reference.
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
    if let Some(&i) = sim.appmax_by_reference.get(&req.reference) {
        return Ok(Json(order_json(&sim.appmax_orders[i])));
    }
    let id = sim.next_id();
    let order = AppmaxOrder {
        id,
        reference: req.reference.clone(),
        amount_cents: req.amount_cents,
        status: AppmaxStatus::Pending,
        message: String::new(),
    };
    let i = sim.appmax_orders.len();
    sim.appmax_orders.push(order);
    sim.appmax_by_reference.insert(req.reference, i);
    sim.appmax_by_id.insert(id, i);
    Ok(Json(order_json(&sim.appmax_orders[i])))
}

/// `POST /api/v3/payment/credit-card`: charges an order with a card token.
pub(crate) async fn charge(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_auth(&headers)?;
    let req: ChargeCard = parse(&body)?;
    let (answer, wait) = {
        let mut sim = app.lock();
        let Some(&i) = sim.appmax_by_id.get(&req.order_id) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("order {} not found", req.order_id),
            ));
        };
        let order = &sim.appmax_orders[i];
        if order.status != AppmaxStatus::Pending {
            // Already decided: a reference is charged at most once.
            tracing::debug!(reference = order.reference, "appmax replay");
            return Ok(Json(charge_json(order)));
        }
        let reference = order.reference.clone();
        let amount_cents = order.amount_cents;
        let outcome = outcome_for("token", &req.token)?;
        let (status, wait) = decided(sim.charge(
            Provider::Appmax,
            &reference,
            &req.token,
            amount_cents,
            outcome,
            app.cfg.timeout_hang,
        ))?;
        let order = &mut sim.appmax_orders[i];
        order.status = match status {
            ChargeStatus::Paid => AppmaxStatus::Approved,
            ChargeStatus::Failed => AppmaxStatus::Declined,
        };
        order.message = decision_message(status).to_owned();
        tracing::info!(reference, ?status, %outcome, "appmax charge");
        (charge_json(order), wait)
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    Ok(Json(answer))
}

fn charge_json(o: &AppmaxOrder) -> Value {
    json!({ "order_id": o.id, "status": o.status, "message": o.message })
}

/// `GET /api/v3/order?reference=`: `{ "data": [ <order> ] }`, empty when none.
pub(crate) async fn find_orders(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<FindQuery>,
) -> Result<Json<Value>, ApiError> {
    check_auth(&headers)?;
    let sim = app.lock();
    let data: Vec<Value> = match q.reference.as_deref() {
        Some(reference) => sim
            .appmax_by_reference
            .get(reference)
            .map(|&i| order_json(&sim.appmax_orders[i]))
            .into_iter()
            .collect(),
        None => sim.appmax_orders.iter().map(order_json).collect(),
    };
    Ok(Json(json!({ "data": data })))
}
