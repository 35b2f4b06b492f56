//! The simulated providers' memory: orders, per-key state and the ledger of charge requests.

use crate::outcome::Outcome;
use crate::script::Script;
use crate::SLOW_DELAY;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A billing provider the simulator stands in for: which one took a charge request, and
/// which one a seeded subscription bills through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// `POST /core/v5/orders`.
    Pagarme,
    /// `POST /api/v3/payment/credit-card`.
    Appmax,
}

impl Provider {
    /// `pagarme` / `appmax`, as in the ledger's JSON and in metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pagarme => "pagarme",
            Self::Appmax => "appmax",
        }
    }
}

/// A charge's status, in the ledger's vocabulary (Appmax's approved/declined map here too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChargeStatus {
    /// Money moved (Pagar.me `paid`, Appmax `approved`).
    Paid,
    /// Declined (Pagar.me `failed`, Appmax `declined`).
    Failed,
    /// Not decided yet (a `pending<N>` charge before it settles).
    Pending,
}

/// One ledger row (`GET /__sim/charges`): one charge request, in arrival order.
///
/// Every Pagar.me `POST /core/v5/orders` and Appmax `POST /api/v3/payment/credit-card`
/// that passed authentication and named its key (Pagar.me: an `Idempotency-Key` or order
/// `code`; Appmax: an existing order) is a row, whatever it was answered: charges, replays,
/// scripted 500/429s and refused cards (400) alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub provider: Provider,
    /// The Pagar.me idempotency key (or order `code` when no header was sent), or the
    /// Appmax order reference.
    pub key: String,
    /// The Pagar.me card id or Appmax card token of this request (empty when it had none).
    pub card: String,
    /// Pagar.me: the request's items total; Appmax: the order's amount.
    pub amount_cents: i64,
    /// 1-based count of charge requests for this (provider, key), this one included.
    pub call: u32,
    /// Whether this request created a new charge (paid, declined or opened pending). A
    /// replay, a scripted 500/429 and a refused request are `false`.
    pub charged: bool,
    /// The current status of the charge this request created (a pending charge's row turns
    /// paid/failed when it settles); `None` when it created none.
    pub status: Option<ChargeStatus>,
    /// What the client was told: the HTTP status (`"200"`, `"429"`, `"500"`, `"502"`, `"400"`,
    /// …), or `"reset"` when the answer was broken off (`thenreset`). A `_timeout` or
    /// `_slow` charge's `"200"` is sent after its wait.
    pub answer: String,
    /// The order this request charged or replayed (Appmax: the order it named, as a decimal
    /// string); `None` when a Pagar.me request reached no order.
    pub order_id: Option<String>,
}

/// A charge's decision, which a `pending<N>` charge keeps to itself until `settles_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Paid or failed.
    pub(crate) status: ChargeStatus,
    pub(crate) settles_at: Option<Instant>,
}

impl Decision {
    /// The status as seen at `now`.
    pub(crate) fn at(self, now: Instant) -> ChargeStatus {
        match self.settles_at {
            Some(t) if now < t => ChargeStatus::Pending,
            _ => self.status,
        }
    }
}

/// `now + d`, saturating far in the future instead of overflowing.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// A ledger row as stored (the status is computed when read).
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) provider: Provider,
    pub(crate) key: String,
    pub(crate) card: String,
    pub(crate) amount_cents: i64,
    pub(crate) call: u32,
    pub(crate) charge: Option<Decision>,
    pub(crate) answer: String,
    pub(crate) order_id: Option<String>,
}

impl Row {
    /// The row as served at `now`.
    pub(crate) fn view(&self, now: Instant) -> Charge {
        Charge {
            provider: self.provider,
            key: self.key.clone(),
            card: self.card.clone(),
            amount_cents: self.amount_cents,
            call: self.call,
            charged: self.charge.is_some(),
            status: self.charge.map(|d| d.at(now)),
            answer: self.answer.clone(),
            order_id: self.order_id.clone(),
        }
    }
}

/// One charge request being handled: what its ledger row says whatever the answer.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) provider: Provider,
    pub(crate) key: String,
    pub(crate) card: String,
    pub(crate) amount_cents: i64,
    pub(crate) call: u32,
}

/// What a charge attempt does, decided under the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Answer 500; nothing charged.
    Fail500,
    /// Answer 429 with `Retry-After: 1`; nothing charged.
    Throttle,
    /// Make the charge with this decision, then answer after `wait`.
    Charge {
        status: ChargeStatus,
        wait: Duration,
    },
}

/// A stored Pagar.me order (one order, one charge).
#[derive(Debug, Clone)]
pub(crate) struct PagarmeOrder {
    pub(crate) id: String,
    pub(crate) charge_id: String,
    pub(crate) code: String,
    pub(crate) amount: i64,
    pub(crate) decision: Decision,
    /// Lookups by code see it from then on (`lag<N>`).
    pub(crate) visible_at: Instant,
}

/// Appmax order status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AppmaxStatus {
    Pending,
    Approved,
    Declined,
}

impl From<ChargeStatus> for AppmaxStatus {
    fn from(s: ChargeStatus) -> Self {
        match s {
            ChargeStatus::Paid => Self::Approved,
            ChargeStatus::Failed => Self::Declined,
            ChargeStatus::Pending => Self::Pending,
        }
    }
}

/// The charge of an Appmax order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AppmaxCharge {
    pub(crate) decision: Decision,
    /// Lookups by reference show the order pending until then (`lag<N>`).
    pub(crate) visible_at: Instant,
}

/// A stored Appmax order.
#[derive(Debug, Clone)]
pub(crate) struct AppmaxOrder {
    pub(crate) id: u64,
    pub(crate) reference: String,
    pub(crate) amount_cents: i64,
    /// `None` until charged.
    pub(crate) charge: Option<AppmaxCharge>,
}

impl AppmaxOrder {
    /// Its status at `now`; `lookup` applies the charge's `lag<N>`.
    pub(crate) fn status(&self, now: Instant, lookup: bool) -> ChargeStatus {
        match self.charge {
            None => ChargeStatus::Pending,
            Some(c) if lookup && now < c.visible_at => ChargeStatus::Pending,
            Some(c) => c.decision.at(now),
        }
    }
}

/// What the simulator remembers about one (provider, key).
#[derive(Debug)]
struct KeyState {
    /// Charge requests, replays included (the ledger's `call`).
    calls: u32,
    /// Charge attempts that reached the outcome (not replays), for the "first attempt"
    /// outcomes.
    attempts: u32,
    first_call: Instant,
    /// `lookuperr<N>`: lookups for the key answer 500 until then.
    lookup_err_until: Option<Instant>,
    /// `duporder`: the reference is no longer unique for order creation.
    dup_order: bool,
}

/// Everything the simulator remembers. `DELETE /__sim/charges` empties it except the id
/// counter, so an id is never handed out twice in one process.
#[derive(Debug, Default)]
pub(crate) struct Sim {
    pub(crate) ledger: Vec<Row>,
    keys: HashMap<(Provider, String), KeyState>,
    pub(crate) pagarme_orders: Vec<PagarmeOrder>,
    /// Idempotency keys and order codes → index in `pagarme_orders` (not for `forget`).
    pub(crate) pagarme_by_key: HashMap<String, usize>,
    pub(crate) appmax_orders: Vec<AppmaxOrder>,
    /// Reference → indexes in `appmax_orders`, oldest first (several only with `duporder`).
    pub(crate) appmax_by_reference: HashMap<String, Vec<usize>>,
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

    /// Counts a charge request for `key` and arms the per-key modifiers its card carries
    /// (`lookuperr` from the key's first request, `duporder`); returns its call number.
    pub(crate) fn begin(
        &mut self,
        provider: Provider,
        key: &str,
        script: Option<&Script>,
        now: Instant,
    ) -> u32 {
        let k = self
            .keys
            .entry((provider, key.to_owned()))
            .or_insert(KeyState {
                calls: 0,
                attempts: 0,
                first_call: now,
                lookup_err_until: None,
                dup_order: false,
            });
        k.calls += 1;
        if let Some(s) = script {
            if let (Some(d), None) = (s.lookup_err, k.lookup_err_until) {
                k.lookup_err_until = Some(after(k.first_call, d));
            }
            k.dup_order |= s.dup_order;
        }
        k.calls
    }

    /// Whether lookups for `key` answer 500 at `now` (`lookuperr<N>`).
    pub(crate) fn lookup_failing(&self, provider: Provider, key: &str, now: Instant) -> bool {
        self.keys
            .get(&(provider, key.to_owned()))
            .and_then(|k| k.lookup_err_until)
            .is_some_and(|until| now < until)
    }

    /// Whether Appmax order creation ignores the uniqueness of `reference` (`duporder`).
    pub(crate) fn dup_order(&self, reference: &str) -> bool {
        self.keys
            .get(&(Provider::Appmax, reference.to_owned()))
            .is_some_and(|k| k.dup_order)
    }

    /// Appends the ledger row of `req`: the one place a charge request is recorded.
    pub(crate) fn record(
        &mut self,
        req: &Request,
        charge: Option<Decision>,
        answer: impl Into<String>,
        order_id: Option<String>,
    ) {
        self.ledger.push(Row {
            provider: req.provider,
            key: req.key.clone(),
            card: req.card.clone(),
            amount_cents: req.amount_cents,
            call: req.call,
            charge,
            answer: answer.into(),
            order_id,
        });
    }

    /// Counts a charge attempt for `key` (one that is not a replay) and decides what it does.
    pub(crate) fn step(
        &mut self,
        provider: Provider,
        key: &str,
        outcome: Outcome,
        timeout_hang: Duration,
    ) -> Step {
        let first = match self.keys.get_mut(&(provider, key.to_owned())) {
            Some(k) => {
                k.attempts += 1;
                k.attempts == 1
            }
            None => true,
        };
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

/// The acquirer message for a status.
pub(crate) fn decision_message(status: ChargeStatus) -> &'static str {
    match status {
        ChargeStatus::Paid => "Approved",
        ChargeStatus::Failed => "Insufficient funds",
        ChargeStatus::Pending => "",
    }
}
