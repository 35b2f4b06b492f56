//! The simulated providers' memory: orders, per-key attempt counts and the charge ledger.

use crate::outcome::Outcome;
use crate::SLOW_DELAY;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// Which simulated provider took a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Pagarme,
    Appmax,
}

/// A charge's decision, in the ledger's vocabulary (Appmax's approved/declined map here too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChargeStatus {
    Paid,
    Failed,
}

/// One ledger row: a charge attempt that reached a decision (`GET /__sim/charges`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub provider: Provider,
    /// The Pagar.me idempotency key (or order `code` when no header was sent), or the
    /// Appmax order reference.
    pub key: String,
    /// The Pagar.me card id or Appmax card token.
    pub card: String,
    pub amount_cents: i64,
    pub status: ChargeStatus,
}

/// What a charge attempt does, decided under the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Answer 500; nothing charged.
    Fail500,
    /// Answer 429 with `Retry-After: 1`; nothing charged.
    Throttle,
    /// Record the charge with this status, then answer after `wait`.
    Charge {
        status: ChargeStatus,
        wait: Duration,
    },
}

/// A stored Pagar.me order (the decision and what the answer needs).
#[derive(Debug, Clone)]
pub(crate) struct PagarmeOrder {
    pub(crate) id: String,
    pub(crate) charge_id: String,
    pub(crate) code: String,
    pub(crate) amount: i64,
    pub(crate) status: ChargeStatus,
}

/// Appmax order status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AppmaxStatus {
    Pending,
    Approved,
    Declined,
}

/// A stored Appmax order.
#[derive(Debug, Clone)]
pub(crate) struct AppmaxOrder {
    pub(crate) id: u64,
    pub(crate) reference: String,
    pub(crate) amount_cents: i64,
    pub(crate) status: AppmaxStatus,
    pub(crate) message: String,
}

/// Everything the simulator remembers. `DELETE /__sim/charges` empties it except the id
/// counter, so an id is never handed out twice in one process.
#[derive(Debug, Default)]
pub(crate) struct Sim {
    pub(crate) ledger: Vec<Charge>,
    /// Charge attempts seen per (provider, key), for the "first attempt" outcomes.
    attempts: HashMap<(Provider, String), u32>,
    pub(crate) pagarme_orders: Vec<PagarmeOrder>,
    /// Idempotency keys and order codes → index in `pagarme_orders`.
    pub(crate) pagarme_by_key: HashMap<String, usize>,
    pub(crate) appmax_orders: Vec<AppmaxOrder>,
    pub(crate) appmax_by_reference: HashMap<String, usize>,
    pub(crate) appmax_by_id: HashMap<u64, usize>,
    next_id: u64,
}

impl Sim {
    /// Forgets the ledger, every order and every per-key state.
    pub(crate) fn reset(&mut self) {
        *self = Sim {
            next_id: self.next_id,
            ..Sim::default()
        };
    }

    /// A fresh number for ids (never reused, even across resets).
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Counts a charge attempt for `key`, decides what it does and, when it reaches a
    /// decision, records it in the ledger: the one place a charge is recorded.
    pub(crate) fn charge(
        &mut self,
        provider: Provider,
        key: &str,
        card: &str,
        amount_cents: i64,
        outcome: Outcome,
        timeout_hang: Duration,
    ) -> Step {
        let step = self.step(provider, key, outcome, timeout_hang);
        if let Step::Charge { status, .. } = step {
            self.ledger.push(Charge {
                provider,
                key: key.to_owned(),
                card: card.to_owned(),
                amount_cents,
                status,
            });
        }
        step
    }

    /// Counts a charge attempt for `key` and decides what it does.
    fn step(
        &mut self,
        provider: Provider,
        key: &str,
        outcome: Outcome,
        timeout_hang: Duration,
    ) -> Step {
        let seen = self.attempts.entry((provider, key.to_owned())).or_insert(0);
        *seen += 1;
        let first = *seen == 1;
        let paid = |wait| Step::Charge {
            status: ChargeStatus::Paid,
            wait,
        };
        match outcome {
            Outcome::Error500 => Step::Fail500,
            Outcome::Error500Once if first => Step::Fail500,
            Outcome::TooManyRequestsOnce if first => Step::Throttle,
            Outcome::Decline => Step::Charge {
                status: ChargeStatus::Failed,
                wait: Duration::ZERO,
            },
            Outcome::Timeout => paid(timeout_hang),
            Outcome::Slow => paid(SLOW_DELAY),
            Outcome::Ok | Outcome::Error500Once | Outcome::TooManyRequestsOnce => {
                paid(Duration::ZERO)
            }
        }
    }
}

/// The acquirer message for a decision.
pub(crate) fn decision_message(status: ChargeStatus) -> &'static str {
    match status {
        ChargeStatus::Paid => "Approved",
        ChargeStatus::Failed => "Insufficient funds",
    }
}
