//! Pagar.me v5: create a renewal order on a stored card, and find an order by its code to
//! reconcile after an unknown outcome.
//!
//! The renewal key is both the order `code` and the `Idempotency-Key`: sending the same
//! renewal again returns the first order, so nothing is charged twice.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{http_client, send_json, Charge, Effect, ProviderError, Secret};

/// A Pagar.me client: HTTP Basic with the secret key as user name, empty password.
#[derive(Debug, Clone)]
pub struct PagarmeClient {
    http: reqwest::Client,
    base_url: String,
    secret_key: Secret,
}

/// One renewal to charge on a stored card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalCharge {
    /// The renewal key (`renewal:{subscription_id}:{period_end}`): order code and idempotency key.
    pub key: String,
    /// `cus_…`
    pub customer_id: String,
    /// `card_…`
    pub card_id: String,
    pub amount_cents: i64,
    pub description: String,
}

impl PagarmeClient {
    /// `base_url` without the `/core/v5` path (production `https://api.pagar.me`);
    /// `timeout` bounds each whole request.
    pub fn new(
        base_url: impl Into<String>,
        secret_key: Secret,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        Ok(Self {
            http: http_client(timeout)?,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            secret_key,
        })
    }

    /// `POST /core/v5/orders` with `Idempotency-Key: <key>`: charges the card once per key.
    pub async fn create_order(&self, req: &RenewalCharge) -> Result<Charge, ProviderError> {
        let body = json!({
            "code": req.key,
            "customer_id": req.customer_id,
            "items": [{
                "amount": req.amount_cents,
                "description": req.description,
                "quantity": 1,
                "code": "renewal",
            }],
            "payments": [{
                "payment_method": "credit_card",
                "credit_card": {
                    "card_id": req.card_id,
                    "installments": 1,
                    "recurrence_cycle": "subsequent",
                },
            }],
        });
        let request = self
            .http
            .post(self.url())
            .basic_auth(self.secret_key.expose(), Some(""))
            .header("Idempotency-Key", &req.key)
            .json(&body);
        send_json::<Order>(request, Effect::Charges)
            .await?
            .into_charge()
    }

    /// `GET /core/v5/orders?code=<code>`: the orders a renewal key produced, as listed (one,
    /// unless a repeat past the idempotency window created another).
    pub async fn find_orders_by_code(&self, code: &str) -> Result<Vec<Charge>, ProviderError> {
        #[derive(Deserialize)]
        struct Orders {
            data: Vec<Order>,
        }
        let request = self
            .http
            .get(self.url())
            .basic_auth(self.secret_key.expose(), Some(""))
            .query(&[("code", code)]);
        let orders: Orders = send_json(request, Effect::Repeatable).await?;
        orders.data.into_iter().map(Order::into_charge).collect()
    }

    fn url(&self) -> String {
        format!("{}/core/v5/orders", self.base_url)
    }
}

#[derive(Debug, Deserialize)]
struct Order {
    id: String,
    status: Status,
    #[serde(default)]
    charges: Vec<OrderCharge>,
}

#[derive(Debug, Deserialize)]
struct OrderCharge {
    id: String,
    last_transaction: Option<Transaction>,
}

#[derive(Debug, Deserialize)]
struct Transaction {
    acquirer_message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Paid,
    Failed,
    Pending,
    #[serde(untagged)]
    Other(String),
}

impl Order {
    fn into_charge(self) -> Result<Charge, ProviderError> {
        let last = self.charges.into_iter().last();
        let order_id = self.id;
        match self.status {
            Status::Paid => Ok(Charge::Paid {
                order_id,
                charge_id: last.map(|c| c.id),
            }),
            Status::Failed => Ok(Charge::Failed {
                order_id,
                message: last
                    .and_then(|c| c.last_transaction)
                    .and_then(|t| t.acquirer_message)
                    .unwrap_or_else(|| "order failed".to_owned()),
            }),
            Status::Pending => Ok(Charge::Pending { order_id }),
            Status::Other(status) => Err(ProviderError::Permanent {
                status: None,
                message: format!("order {order_id} has an unexpected status {status:?}"),
            }),
        }
    }
}
