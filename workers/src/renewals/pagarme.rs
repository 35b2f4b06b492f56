//! `renewal.pagarme`: Pagar.me prepaid renewals on the stored card.
//!
//! Preconditions: a card (the vaulted `customer_payment_methods` row, or
//! `metadata.pagarmeCardId`), `metadata.pagarmeCustomerId`, and the interval
//! (`metadata.intervalUnit`, `metadata.intervalCount`). The renewal key is the order `code`
//! and the `Idempotency-Key`; reconciliation looks the orders up by code. Inside Pagar.me's
//! idempotency window a repeated request answers the first order, so it may be repeated.

use super::{Precondition, PrepareError, RenewalProvider, Subscription};
use crate::providers::{Charge, PagarmeClient, ProviderError, RenewalCharge};
use sqlx::PgPool;
use std::time::Duration;
use warren_core::task::RENEWAL_PAGARME;

/// The Pagar.me side of [`super::Renewal`].
pub struct Pagarme {
    client: PagarmeClient,
    idempotency_window: Duration,
}

impl Pagarme {
    /// `idempotency_window`: how long Pagar.me answers a repeated `Idempotency-Key` with the
    /// first order (24 h).
    pub fn new(client: PagarmeClient, idempotency_window: Duration) -> Self {
        Self {
            client,
            idempotency_window,
        }
    }
}

/// What a Pagar.me charge needs.
pub struct Card {
    customer_id: String,
    card_id: String,
}

impl RenewalProvider for Pagarme {
    const TASK: &'static str = RENEWAL_PAGARME;
    const QUEUE: &'static str = "renewals.pagarme";
    const LABEL: &'static str = "pagarme";
    const DB: &'static str = "PAGARME";
    const INTERVAL_REQUIRED: bool = true;
    const OPENS_ORDER: bool = false;
    type Prepared = Card;

    async fn prepare(&self, sub: &Subscription, _db: &PgPool) -> Result<Card, PrepareError> {
        let Some(card_id) = sub.card("pagarmeCardId") else {
            return Err(Precondition::NoCard {
                provider: Self::DB,
                field: "pagarmeCardId",
            }
            .into());
        };
        let Some(customer_id) = sub.meta_str("pagarmeCustomerId") else {
            return Err(Precondition::Missing("metadata.pagarmeCustomerId").into());
        };
        Ok(Card {
            customer_id: customer_id.to_owned(),
            card_id: card_id.to_owned(),
        })
    }

    fn idempotency_window(&self) -> Option<Duration> {
        Some(self.idempotency_window)
    }

    async fn charge(
        &self,
        card: &Card,
        sub: &Subscription,
        key: &str,
        _order: Option<&str>,
    ) -> Result<Charge, ProviderError> {
        let req = RenewalCharge {
            key: key.to_owned(),
            customer_id: card.customer_id.clone(),
            card_id: card.card_id.clone(),
            amount_cents: sub.amount_cents,
            description: format!("Renewal of subscription {}", sub.id),
        };
        self.client.create_order(&req).await
    }

    async fn lookup(&self, _: &Card, key: &str) -> Result<Vec<Charge>, ProviderError> {
        self.client.find_orders_by_code(key).await
    }
}
