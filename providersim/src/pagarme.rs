//! Pagar.me v5: `POST /core/v5/orders` and `GET /core/v5/orders?code=`.
//!
//! Basic auth must be present (the secret key is not checked). An order is found again by
//! its `Idempotency-Key` or its `code`; a replay answers the first order and charges nothing
//! (unless the card said `forget`: then the key is not remembered and charges again).

use crate::error::{decided, script_for, ApiError};
use crate::reply::Reply;
use crate::script::Script;
use crate::state::{
    after, decision_message, ChargeStatus, Decision, PagarmeOrder, Provider, Request, Sim,
};
use crate::AppState;
use axum::{
    body::Bytes,
    extract::{Query, State},
    http::{header, HeaderMap, StatusCode},
    response::Response,
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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

/// The order as Pagar.me answers it at `now`.
fn order_json(o: &PagarmeOrder, now: Instant) -> Value {
    let status = o.decision.at(now);
    let (status, tx_status, message) = match status {
        ChargeStatus::Paid => ("paid", "captured", Some(decision_message(status))),
        ChargeStatus::Failed => ("failed", "not_authorized", Some(decision_message(status))),
        ChargeStatus::Pending => ("pending", "pending", None),
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
                "acquirer_message": message,
            }
        }]
    })
}

/// `POST /core/v5/orders`.
pub(crate) async fn create_order(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
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
    let card = req
        .payments
        .iter()
        .find_map(|p| p.credit_card.as_ref()?.card_id.clone());

    let reply = {
        let mut sim = app.lock();
        let now = Instant::now();
        let script = card.as_deref().and_then(Script::from_card);
        let call = sim.begin(Provider::Pagarme, &key, script.as_ref(), now);
        let request = Request {
            provider: Provider::Pagarme,
            key: key.clone(),
            card: card.clone().unwrap_or_default(),
            amount_cents: req.items.iter().map(|i| i.amount * i.quantity).sum(),
            call,
        };
        let keys = [idempotency_key, code];
        let result = charge(
            &mut sim,
            &request,
            &keys,
            card.as_deref(),
            now,
            app.cfg.timeout_hang,
        );
        if let Err(e) = &result {
            sim.record(&request, None, e.answer(), None);
        }
        result?
    };
    Ok(reply.send().await)
}

/// Replays or charges, under the lock. Records the row of a replay or a charge; an `Err`
/// is recorded by the caller.
fn charge(
    sim: &mut Sim,
    request: &Request,
    keys: &[Option<String>; 2],
    card: Option<&str>,
    now: Instant,
    timeout_hang: Duration,
) -> Result<Reply, ApiError> {
    // A replay (same key or same code) answers the first order, whatever its body says.
    let existing = keys
        .iter()
        .flatten()
        .find_map(|k| sim.pagarme_by_key.get(k).copied());
    if let Some(i) = existing {
        let order = &sim.pagarme_orders[i];
        tracing::debug!(key = request.key, order = %order.id, "pagarme replay");
        let (body, id) = (order_json(order, now), order.id.clone());
        sim.record(request, None, "200", Some(id));
        return Ok(Reply::ok(body));
    }

    let card = card.ok_or_else(|| {
        invalid(
            "payments",
            "payments[].credit_card.card_id is required by the simulator",
        )
    })?;
    let script = script_for("card_id", card)?;
    let (status, wait) = decided(sim.step(
        Provider::Pagarme,
        &request.key,
        script.outcome,
        timeout_hang,
    ))?;
    let decision = Decision {
        status,
        settles_at: script.pending.map(|d| after(now, d)),
    };
    let n = sim.next_id();
    let order = PagarmeOrder {
        id: format!("or_sim{n:010}"),
        charge_id: format!("ch_sim{n:010}"),
        code: keys[1].clone().unwrap_or_else(|| request.key.clone()),
        amount: request.amount_cents,
        decision,
        visible_at: after(now, script.lag.unwrap_or_default()),
    };
    let i = sim.pagarme_orders.len();
    sim.pagarme_orders.push(order.clone());
    if !script.forget {
        for k in keys.iter().flatten() {
            sim.pagarme_by_key.entry(k.clone()).or_insert(i);
        }
    }
    sim.record(
        request,
        Some(decision),
        Reply::answer(script.then),
        Some(order.id.clone()),
    );
    tracing::info!(key = request.key, order = %order.id, ?status, %script, "pagarme charge");
    Ok(Reply {
        body: order_json(&order, now),
        wait,
        then: script.then,
    })
}

/// `GET /core/v5/orders?code=`: `{ "data": [ <order>, … ] }`, newest first, empty when none
/// (or none visible yet: `lag<N>`); a 500 while the code's `lookuperr<N>` lasts.
pub(crate) async fn find_orders(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<FindQuery>,
) -> Result<Json<Value>, ApiError> {
    check_auth(&headers)?;
    let sim = app.lock();
    let now = Instant::now();
    if let Some(code) = q.code.as_deref() {
        if sim.lookup_failing(Provider::Pagarme, code, now) {
            return Err(ApiError::lookup_failed());
        }
    }
    let data: Vec<Value> = sim
        .pagarme_orders
        .iter()
        .rev()
        .filter(|o| q.code.as_deref().is_none_or(|c| o.code == c))
        .filter(|o| now >= o.visible_at)
        .map(|o| order_json(o, now))
        .collect();
    Ok(Json(json!({ "data": data })))
}
