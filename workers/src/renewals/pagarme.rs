//! `renewal.pagarme`: Pagar.me prepaid renewals on the stored card.
//!
//! Preconditions: a card (the vaulted `customer_payment_methods` row, or
//! `metadata.pagarmeCardId`), `metadata.pagarmeCustomerId`, and the interval
//! (`metadata.intervalUnit`, `metadata.intervalCount`). The renewal key is the order `code`
//! and the `Idempotency-Key`; reconciliation looks the order up by code.

use super::{Api, Provider, Subscription};
use crate::providers::{Charge, PagarmeClient, ProviderError, RenewalCharge};
use sqlx::PgPool;

/// The Pagar.me side of [`super::Renewal`].
pub struct Pagarme {
    client: PagarmeClient,
    api: Api,
}

impl Pagarme {
    pub fn new(client: PagarmeClient, rate_limit: Option<u32>) -> Self {
        Self {
            client,
            api: Api::new(<Self as Provider>::LABEL, rate_limit),
        }
    }
}

/// What a Pagar.me charge needs.
pub struct Card {
    customer_id: String,
    card_id: String,
}

impl Provider for Pagarme {
    const LABEL: &'static str = "pagarme";
    const DB: &'static str = "PAGARME";
    const INTERVAL_REQUIRED: bool = true;
    type Prepared = Card;

    async fn prepare(
        &self,
        sub: &Subscription,
        _db: &PgPool,
    ) -> Result<Result<Card, String>, sqlx::Error> {
        let Some(card_id) = sub.card("pagarmeCardId") else {
            return Ok(Err(
                "card: vault_payment_method_id names no PAGARME card and \
                           metadata.pagarmeCardId is missing"
                    .into(),
            ));
        };
        let Some(customer_id) = sub.meta_str("pagarmeCustomerId") else {
            return Ok(Err("metadata.pagarmeCustomerId is missing".into()));
        };
        Ok(Ok(Card {
            customer_id: customer_id.to_owned(),
            card_id: card_id.to_owned(),
        }))
    }

    async fn charge(
        &self,
        card: &Card,
        sub: &Subscription,
        key: &str,
    ) -> Result<Charge, ProviderError> {
        let req = RenewalCharge {
            key: key.to_owned(),
            customer_id: card.customer_id.clone(),
            card_id: card.card_id.clone(),
            amount_cents: sub.amount_cents,
            description: format!("Renewal of subscription {}", sub.id),
        };
        self.api.charge(self.client.create_order(&req)).await
    }

    async fn lookup(&self, _: &Card, key: &str) -> Result<Option<Charge>, ProviderError> {
        self.api.lookup(self.client.find_order_by_code(key)).await
    }
}
