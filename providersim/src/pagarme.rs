//! Pagar.me v5: `POST /core/v5/orders` and `GET /core/v5/orders?code=`.
//!
//! Basic auth must be present (the secret key is not checked). An order is found again by
//! its `Idempotency-Key` or its `code`; a replay answers the first order and charges nothing.

use crate::error::{decided, outcome_for, ApiError};
use crate::state::{decision_message, ChargeStatus, PagarmeOrder, Provider};
use crate::AppState;
use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{header, HeaderMap, StatusCode},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
struct CreateOrder {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    items: Vec<Item>,
    #[serde(default)]
    payments: Vec<Payment>,
}

#[derive(Debug, Deserialize)]
struct Item {
    amount: i64,
    #[serde(default = "one")]
    quantity: i64,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
struct Payment {
    #[serde(default)]
    credit_card: Option<CreditCard>,
}

#[derive(Debug, Deserialize)]
struct CreditCard {
    #[serde(default)]
    card_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FindQuery {
    #[serde(default)]
    code: Option<String>,
}

/// 401 unless an `Authorization: Basic <credentials>` header is present.
fn check_auth(headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, creds)| {
            scheme.eq_ignore_ascii_case("basic") && !creds.trim().is_empty()
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::unauthorized(
            "Authorization has been denied for this request.",
        ))
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "The request is invalid.")
        .with_errors(json!({ field: [message] }))
}

/// The order as Pagar.me answers it.
fn order_json(o: &PagarmeOrder) -> Value {
    let (status, tx_status) = match o.status {
        ChargeStatus::Paid => ("paid", "captured"),
        ChargeStatus::Failed => ("failed", "not_authorized"),
    };
    json!({
        "id": o.id,
        "code": o.code,
        "amount": o.amount,
        "status": status,
        "charges": [{
            "id": o.charge_id,
            "status": status,
            "last_transaction": {
                "status": tx_status,
                "acquirer_message": decision_message(o.status),
            }
        }]
    })
}

/// `POST /core/v5/orders`.
pub(crate) async fn create_order(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_auth(&headers)?;
    let req: CreateOrder =
        serde_json::from_slice(&body).map_err(|e| invalid("body", e.to_string()))?;
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let code = req.code.clone().filter(|c| !c.is_empty());
    let Some(key) = idempotency_key.clone().or_else(|| code.clone()) else {
        return Err(invalid(
            "code",
            "an Idempotency-Key header or an order code is required",
        ));
    };

    let (order, wait) = {
        let mut sim = app.lock();
        // A replay (same key or same code) answers the first order, whatever its body says.
        let existing = [idempotency_key.as_deref(), code.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|k| sim.pagarme_by_key.get(k).copied());
        if let Some(i) = existing {
            let order = &sim.pagarme_orders[i];
            tracing::debug!(key, order = %order.id, "pagarme replay");
            return Ok(Json(order_json(order)));
        }

        let card = req
            .payments
            .iter()
            .find_map(|p| p.credit_card.as_ref()?.card_id.clone())
            .ok_or_else(|| {
                invalid(
                    "payments",
                    "payments[].credit_card.card_id is required by the simulator",
                )
            })?;
        let outcome = outcome_for("card_id", &card)?;
        let amount: i64 = req.items.iter().map(|i| i.amount * i.quantity).sum();

        let (status, wait) = decided(sim.charge(
            Provider::Pagarme,
            &key,
            &card,
            amount,
            outcome,
            app.cfg.timeout_hang,
        ))?;
        let n = sim.next_id();
        let order = PagarmeOrder {
            id: format!("or_sim{n:010}"),
            charge_id: format!("ch_sim{n:010}"),
            code: code.clone().unwrap_or_else(|| key.clone()),
            amount,
            status,
        };
        let i = sim.pagarme_orders.len();
        sim.pagarme_orders.push(order.clone());
        for k in [idempotency_key, code].into_iter().flatten() {
            sim.pagarme_by_key.entry(k).or_insert(i);
        }
        tracing::info!(key, order = %order.id, ?status, %outcome, "pagarme charge");
        (order, wait)
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    Ok(Json(order_json(&order)))
}

/// `GET /core/v5/orders?code=`: `{ "data": [ <order> ] }`, empty when none.
pub(crate) async fn find_orders(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<FindQuery>,
) -> Result<Json<Value>, ApiError> {
    check_auth(&headers)?;
    let sim = app.lock();
    let data: Vec<Value> = match q.code.as_deref() {
        Some(code) => sim
            .pagarme_orders
            .iter()
            .filter(|o| o.code == code)
            .map(order_json)
            .collect(),
        None => sim.pagarme_orders.iter().map(order_json).collect(),
    };
    Ok(Json(json!({ "data": data })))
}
