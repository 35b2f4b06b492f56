//! Appmax: create an order for a renewal, charge it with the stored card token, and find
//! orders by reference to reconcile. Creating and charging are separate calls so the caller
//! can record the order, and its intent to charge it, in between.
//!
//! Appmax has no idempotency header: the renewal key is the order `reference`, and creating
//! an order whose reference exists returns the existing order. Credentials are per merchant,
//! so every call takes the merchant's `access_token`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{http_client, send_json, Charge, Effect, ProviderError, Secret};

/// An Appmax client, shared by every merchant.
#[derive(Debug, Clone)]
pub struct AppmaxClient {
    http: reqwest::Client,
    base_url: String,
}

/// An Appmax order and what was decided about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppmaxOrder {
    pub id: u64,
    pub reference: String,
    /// `Pending` until a charge was decided.
    pub charge: Charge,
}

impl AppmaxClient {
    /// `timeout` bounds each whole request.
    pub fn new(base_url: impl Into<String>, timeout: Duration) -> Result<Self, ProviderError> {
        Ok(Self {
            http: http_client(timeout)?,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
        })
    }

    /// `POST /api/v3/order`; an existing `reference` answers the existing order.
    pub async fn create_order(
        &self,
        access_token: &Secret,
        reference: &str,
        subscription_id: &str,
        amount_cents: i64,
    ) -> Result<AppmaxOrder, ProviderError> {
        let body = json!({
            "reference": reference,
            "subscription_id": subscription_id,
            "amount_cents": amount_cents,
        });
        let request = self
            .http
            .post(self.url("/api/v3/order"))
            .header("access-token", access_token.expose())
            .json(&body);
        send_json::<Order>(request, Effect::Repeatable)
            .await?
            .into_order()
    }

    /// `POST /api/v3/payment/credit-card`: charges `order_id` with the stored card `token`.
    pub async fn charge_card(
        &self,
        access_token: &Secret,
        order_id: u64,
        token: &str,
    ) -> Result<Charge, ProviderError> {
        #[derive(Deserialize)]
        struct Payment {
            order_id: u64,
            status: Status,
            message: Option<String>,
        }
        let body = json!({ "order_id": order_id, "token": token, "installments": 1 });
        let request = self
            .http
            .post(self.url("/api/v3/payment/credit-card"))
            .header("access-token", access_token.expose())
            .json(&body);
        let payment: Payment = send_json(request, Effect::Charges).await?;
        payment
            .status
            .into_charge(payment.order_id, payment.message)
    }

    /// `GET /api/v3/order?reference=<reference>`: the orders a renewal key produced, as
    /// listed (one, unless the gateway broke reference uniqueness).
    pub async fn find_orders_by_reference(
        &self,
        access_token: &Secret,
        reference: &str,
    ) -> Result<Vec<AppmaxOrder>, ProviderError> {
        #[derive(Deserialize)]
        struct Orders {
            data: Vec<Order>,
        }
        let request = self
            .http
            .get(self.url("/api/v3/order"))
            .header("access-token", access_token.expose())
            .query(&[("reference", reference)]);
        let orders: Orders = send_json(request, Effect::Repeatable).await?;
        orders.data.into_iter().map(Order::into_order).collect()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
    reference: String,
    status: Status,
    message: Option<String>,
}

impl Order {
    fn into_order(self) -> Result<AppmaxOrder, ProviderError> {
        Ok(AppmaxOrder {
            charge: self.status.into_charge(self.id, self.message)?,
            id: self.id,
            reference: self.reference,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Approved,
    Declined,
    Pending,
    #[serde(untagged)]
    Other(String),
}

impl Status {
    fn into_charge(self, order_id: u64, message: Option<String>) -> Result<Charge, ProviderError> {
        let order_id = order_id.to_string();
        match self {
            Self::Approved => Ok(Charge::Paid {
                order_id,
                charge_id: None,
            }),
            Self::Declined => Ok(Charge::Failed {
                order_id,
                message: message.unwrap_or_else(|| "declined".to_owned()),
            }),
            Self::Pending => Ok(Charge::Pending { order_id }),
            Self::Other(status) => Err(ProviderError::Permanent {
                status: None,
                message: format!("order {order_id} has an unexpected status {status:?}"),
            }),
        }
    }
}
