//! `renewal.appmax`: Appmax renewals through the merchant's integration.
//!
//! Preconditions: `provider_subscription_id`, `merchant_id` with an enabled APPMAX row in
//! `merchant_integrations` holding `credentials.access_token`, and a card token (the vaulted
//! `customer_payment_methods` row, or `metadata.appmaxCardToken`). The interval defaults to
//! one month when the metadata has none. Appmax has no idempotency header: the renewal key
//! is the order `reference`, and reconciliation looks the order up by reference.

use super::{Api, Provider, Subscription};
use crate::providers::{AppmaxClient, AppmaxRenewal, Charge, ProviderError, Secret};
use sqlx::PgPool;

/// The Appmax side of [`super::Renewal`].
pub struct Appmax {
    client: AppmaxClient,
    api: Api,
}

impl Appmax {
    pub fn new(client: AppmaxClient, rate_limit: Option<u32>) -> Self {
        Self {
            client,
            api: Api::new(<Self as Provider>::LABEL, rate_limit),
        }
    }
}

/// What an Appmax charge needs.
pub struct Merchant {
    access_token: Secret,
    subscription_id: String,
    card_token: String,
}

impl Provider for Appmax {
    const LABEL: &'static str = "appmax";
    const DB: &'static str = "APPMAX";
    const INTERVAL_REQUIRED: bool = false;
    type Prepared = Merchant;

    async fn prepare(
        &self,
        sub: &Subscription,
        db: &PgPool,
    ) -> Result<Result<Merchant, String>, sqlx::Error> {
        let Some(subscription_id) = sub
            .provider_subscription_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Ok(Err("provider_subscription_id is missing".into()));
        };
        let Some(merchant_id) = sub.merchant_id else {
            return Ok(Err("merchant_id is missing".into()));
        };
        let token: Option<Option<String>> = sqlx::query_scalar(
            "SELECT credentials->>'access_token' FROM merchant_integrations
              WHERE merchant_id = $1 AND provider = 'APPMAX' AND enabled",
        )
        .bind(merchant_id)
        .fetch_optional(db)
        .await?;
        let access_token = match token {
            None => {
                return Ok(Err(format!(
                    "merchant_integrations: merchant {merchant_id} has no enabled APPMAX integration"
                )))
            }
            Some(t) => match t.filter(|t| !t.trim().is_empty()) {
                Some(t) => Secret::new(t),
                None => {
                    return Ok(Err(format!(
                        "merchant_integrations.credentials.access_token is missing for merchant {merchant_id}"
                    )))
                }
            },
        };
        let Some(card_token) = sub.card("appmaxCardToken") else {
            return Ok(Err(
                "card: vault_payment_method_id names no APPMAX card and \
                           metadata.appmaxCardToken is missing"
                    .into(),
            ));
        };
        Ok(Ok(Merchant {
            access_token,
            subscription_id: subscription_id.to_owned(),
            card_token: card_token.to_owned(),
        }))
    }

    async fn charge(
        &self,
        m: &Merchant,
        sub: &Subscription,
        key: &str,
    ) -> Result<Charge, ProviderError> {
        let req = AppmaxRenewal {
            reference: key.to_owned(),
            subscription_id: m.subscription_id.clone(),
            card_token: m.card_token.clone(),
            amount_cents: sub.amount_cents,
        };
        self.api
            .charge(self.client.charge(&m.access_token, &req))
            .await
    }

    async fn lookup(&self, m: &Merchant, key: &str) -> Result<Option<Charge>, ProviderError> {
        self.api
            .lookup(async {
                self.client
                    .find_order_by_reference(&m.access_token, key)
                    .await
                    .map(|o| o.map(|o| o.charge))
            })
            .await
    }
}
