//! `renewal.appmax`: Appmax renewals through the merchant's integration.
//!
//! Preconditions: `provider_subscription_id`, `merchant_id` with an enabled APPMAX row in
//! `merchant_integrations` holding `credentials.access_token`, and a card token (the vaulted
//! `customer_payment_methods` row, or `metadata.appmaxCardToken`). The interval defaults to
//! one month when the metadata has none. Appmax has no idempotency header: the renewal key
//! is the order `reference`; the order is opened first and its id recorded, and only that
//! order is ever charged. Reconciliation looks the orders up by reference. A `pending`
//! order is ambiguous (never charged, or charged and settling): only the recorded intent
//! tells them apart, so a charge request is never repeated.

use super::{Precondition, PrepareError, RenewalProvider, Subscription};
use crate::providers::{AppmaxClient, Charge, ProviderError, Secret};
use sqlx::PgPool;
use std::time::Duration;
use warren_core::task::RENEWAL_APPMAX;

/// The Appmax side of [`super::Renewal`].
pub struct Appmax {
    client: AppmaxClient,
}

impl Appmax {
    pub fn new(client: AppmaxClient) -> Self {
        Self { client }
    }
}

/// What an Appmax charge needs.
pub struct Merchant {
    access_token: Secret,
    subscription_id: String,
    card_token: String,
}

impl RenewalProvider for Appmax {
    const TASK: &'static str = RENEWAL_APPMAX;
    const QUEUE: &'static str = "renewals.appmax";
    const LABEL: &'static str = "appmax";
    const DB: &'static str = "APPMAX";
    const INTERVAL_REQUIRED: bool = false;
    const OPENS_ORDER: bool = true;
    type Prepared = Merchant;

    async fn prepare(&self, sub: &Subscription, db: &PgPool) -> Result<Merchant, PrepareError> {
        let Some(subscription_id) = sub
            .provider_subscription_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Err(Precondition::Missing("provider_subscription_id").into());
        };
        let Some(merchant_id) = sub.merchant_id else {
            return Err(Precondition::Missing("merchant_id").into());
        };
        let token: Option<Option<String>> = sqlx::query_scalar(
            "SELECT credentials->>'access_token' FROM merchant_integrations
              WHERE merchant_id = $1 AND provider = 'APPMAX' AND enabled",
        )
        .bind(merchant_id)
        .fetch_optional(db)
        .await?;
        let access_token = match token {
            None => return Err(Precondition::NoIntegration(merchant_id).into()),
            Some(t) => match t.filter(|t| !t.trim().is_empty()) {
                Some(t) => Secret::new(t),
                None => return Err(Precondition::NoAccessToken(merchant_id).into()),
            },
        };
        let Some(card_token) = sub.card("appmaxCardToken") else {
            return Err(Precondition::NoCard {
                provider: Self::DB,
                field: "appmaxCardToken",
            }
            .into());
        };
        Ok(Merchant {
            access_token,
            subscription_id: subscription_id.to_owned(),
            card_token: card_token.to_owned(),
        })
    }

    fn idempotency_window(&self) -> Option<Duration> {
        None
    }

    async fn open(
        &self,
        m: &Merchant,
        sub: &Subscription,
        key: &str,
    ) -> Result<Charge, ProviderError> {
        let order = self
            .client
            .create_order(&m.access_token, key, &m.subscription_id, sub.amount_cents)
            .await?;
        Ok(order.charge)
    }

    async fn charge(
        &self,
        m: &Merchant,
        _sub: &Subscription,
        _key: &str,
        order: Option<&str>,
    ) -> Result<Charge, ProviderError> {
        let order_id =
            order
                .and_then(|o| o.parse::<u64>().ok())
                .ok_or_else(|| ProviderError::Permanent {
                    status: None,
                    message: format!("an Appmax charge needs a numeric order id, got {order:?}"),
                })?;
        self.client
            .charge_card(&m.access_token, order_id, &m.card_token)
            .await
    }

    async fn lookup(&self, m: &Merchant, key: &str) -> Result<Vec<Charge>, ProviderError> {
        let orders = self
            .client
            .find_orders_by_reference(&m.access_token, key)
            .await?;
        Ok(orders.into_iter().map(|o| o.charge).collect())
    }
}
