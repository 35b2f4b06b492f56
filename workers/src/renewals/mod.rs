//! The renewal handlers `renewal.pagarme` and `renewal.appmax`: charge one subscription for
//! one period (and dunning attempt) exactly once, whatever crashes, redeliveries and
//! provider answers happen.
//!
//! The rule is *intent before act*: the key's `payment_transactions` row records, committed,
//! every charge request before it is sent ([`record::Lease::intend_charge`]). A charge
//! request is sent only while no request for the key is outstanding (none was sent, or the
//! provider positively refused each: a 429, a 4xx, a connection that never opened), or —
//! Pagar.me only — when repeating it is harmless: the same `Idempotency-Key` inside the
//! provider's window, after lookups showed nothing for a while. Otherwise the attempt only
//! reconciles: it looks the key up and records what the provider decided, or waits and
//! looks again (a snooze, no attempt spent); past `[billing] unknown_outcome_after` the job
//! is dead-lettered `unknown-outcome` and the subscription flagged.
//!
//! One attempt, in order (design and states: `docs/providers.md`):
//!
//! 1. Load the subscription. Canceled, UNPAID, already renewed past this period, or a
//!    different attempt than the one due → acked as a no-op.
//! 2. Preconditions (card, customer, interval, merchant integration). Missing → permanent
//!    error naming the field; the reason goes to `metadata.renewalError` and an event row;
//!    no provider call.
//! 3. Wait for the rate limiter, then take the key's lease: insert the `pending` row, or
//!    take the existing row's lease when it is free. The lease names its owner (this job
//!    attempt on this worker), is renewed while the attempt runs and released only by it.
//! 4. A `paid` row is finished again. A row with a request outstanding is reconciled (see
//!    above). Otherwise charge: Appmax opens the order first (recording its id), then the
//!    intent is recorded and the one charging request sent.
//! 5. Paid → row `paid`, period advanced, `ACTIVE`, event (a period another key already
//!    paid → `duplicate_charge`, for a refund). Declined → row `failed`, `PAST_DUE` with the
//!    next dunning attempt (or `UNPAID`), event; the job succeeds. Pending, `5xx`, timeout or
//!    reset → look the key up at once, then wait. Refused (429, connect) → the runtime
//!    retries (a short `Retry-After` is honoured in place); a 4xx → `rejected`, permanent.

mod api;
mod appmax;
mod pagarme;
mod record;
pub mod stale;

pub use api::Api;
pub use appmax::Appmax;
pub use pagarme::Pagarme;

use crate::providers::{Charge, ProviderError};
use crate::{JobContext, Registry, Task, TaskError};
use api::{charge_label, lookup_label, Permit};
use chrono::{DateTime, Utc};
use record::{Claim, Event, Lease, NewRow, Row, Undecided};
use serde_json::json;
use sqlx::PgPool;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use uuid::Uuid;
use warren_core::billing::{renewal_key, DunningSchedule, Interval, IntervalError};
use warren_core::config::BillingPolicy;
use warren_core::task::RenewalPayload;
use warren_core::telemetry::names;

/// A `Retry-After` up to this long is waited out inside the attempt; longer ones go back
/// to the runtime's delay tiers.
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The longest a reconciling job snoozes between two lookups.
const MAX_LOOK_AGAIN: Duration = Duration::from_secs(3600);

/// This process, in lease owners: the pid and a random suffix (pids repeat across hosts).
static INSTANCE: LazyLock<String> = LazyLock::new(|| {
    let r = Uuid::new_v4().simple().to_string();
    format!("{}-{}", std::process::id(), &r[..8])
});

/// Why a subscription cannot be charged as it stands: recorded as
/// `renewal.precondition_failed` and never retried (an operator fixes the data).
#[derive(Debug, thiserror::Error)]
pub enum Precondition {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error(
        "card: vault_payment_method_id names no {provider} card and metadata.{field} is missing"
    )]
    NoCard {
        provider: &'static str,
        field: &'static str,
    },
    #[error("merchant_integrations: merchant {0} has no enabled APPMAX integration")]
    NoIntegration(Uuid),
    #[error("merchant_integrations.credentials.access_token is missing for merchant {0}")]
    NoAccessToken(Uuid),
    #[error(transparent)]
    Interval(#[from] IntervalError),
}

/// Why [`RenewalProvider::prepare`] gave nothing to charge with.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The database did not answer: the attempt runs again.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The subscription's data rules the charge out: permanent.
    #[error(transparent)]
    Precondition(#[from] Precondition),
}

impl PrepareError {
    /// Whether running the attempt again can succeed without anyone changing the data.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Db(_))
    }
}

/// What differs between the providers. The methods make one raw request each; the handler
/// wraps them in its [`Api`] (rate limit, metrics) and records intent around them.
pub trait RenewalProvider: Send + Sync + 'static {
    /// The task whose jobs renew through this provider (`renewal.pagarme`).
    const TASK: &'static str;
    /// The queue that receives [`TASK`](Self::TASK) (`renewals.pagarme`).
    const QUEUE: &'static str;
    /// `pagarme` / `appmax`: metric label.
    const LABEL: &'static str;
    /// `PAGARME` / `APPMAX`: the database enum.
    const DB: &'static str;
    /// Whether `metadata.intervalUnit`/`intervalCount` must be present (else one month).
    const INTERVAL_REQUIRED: bool;
    /// Whether a charge needs an order opened first ([`RenewalProvider::open`]).
    const OPENS_ORDER: bool;
    /// What a charge needs, checked before any call.
    type Prepared: Send + Sync;

    /// Checks the preconditions; a [`Precondition`] names the missing or invalid field.
    fn prepare(
        &self,
        sub: &Subscription,
        db: &PgPool,
    ) -> impl Future<Output = Result<Self::Prepared, PrepareError>> + Send;

    /// How long the provider answers a repeated charge request for one key with the first
    /// one (Pagar.me's `Idempotency-Key`). `None`: a repeat may charge again (Appmax).
    fn idempotency_window(&self) -> Option<Duration>;

    /// Opens what the charge request charges, charging nothing (Appmax: the order for the
    /// key, or the one that exists). `Pending` carries the order to charge; a decided
    /// order answers its decision. Called only when [`RenewalProvider::OPENS_ORDER`].
    fn open(
        &self,
        _p: &Self::Prepared,
        _sub: &Subscription,
        _key: &str,
    ) -> impl Future<Output = Result<Charge, ProviderError>> + Send {
        async {
            Err(ProviderError::Permanent {
                status: None,
                message: format!("{} opens no order before a charge", Self::LABEL),
            })
        }
    }

    /// The one request that may charge the card; `order` is the opened order, if any.
    fn charge(
        &self,
        p: &Self::Prepared,
        sub: &Subscription,
        key: &str,
        order: Option<&str>,
    ) -> impl Future<Output = Result<Charge, ProviderError>> + Send;

    /// Every order the provider holds for `key`, newest first.
    fn lookup(
        &self,
        p: &Self::Prepared,
        key: &str,
    ) -> impl Future<Output = Result<Vec<Charge>, ProviderError>> + Send;
}

/// A renewal handler for provider `P`.
pub struct Renewal<P> {
    provider: P,
    api: Api,
    dunning: DunningSchedule,
    policy: BillingPolicy,
    request_timeout: Duration,
}

impl<P: RenewalProvider> Renewal<P> {
    /// `rate_limit`: most provider requests per second from this process; `request_timeout`
    /// is the provider client's.
    pub fn new(
        provider: P,
        rate_limit: Option<u32>,
        dunning: DunningSchedule,
        policy: BillingPolicy,
        request_timeout: Duration,
    ) -> Self {
        Self {
            provider,
            api: Api::new(P::LABEL, rate_limit),
            dunning,
            policy,
            request_timeout,
        }
    }

    /// An attempt may wait out a dead worker's lease, then make up to five requests (a
    /// lookup, the order, the charge, a charge after a short `Retry-After`, a lookup).
    fn attempt_timeout(&self) -> Duration {
        self.policy.lease
            + MAX_INLINE_RETRY_AFTER
            + self.request_timeout * 5
            + Duration::from_secs(10)
    }
}

impl<P: RenewalProvider> Task for Renewal<P> {
    const NAME: &'static str = P::TASK;
    const QUEUE: &'static str = P::QUEUE;
    type Payload = RenewalPayload;
    async fn run(&self, p: RenewalPayload, ctx: &JobContext) -> Result<(), TaskError> {
        renew(self, p, ctx).await
    }
    fn timeout(&self) -> Duration {
        self.attempt_timeout()
    }
}

/// Registers whichever handlers are configured, and `cron.fail-stale-payments`, which
/// reconciles stale rows with the same providers.
pub fn register(
    registry: &mut Registry,
    pagarme: Option<Renewal<Pagarme>>,
    appmax: Option<Renewal<Appmax>>,
) -> Result<(), crate::DuplicateTask> {
    let pagarme = pagarme.map(Arc::new);
    let appmax = appmax.map(Arc::new);
    if let Some(h) = &pagarme {
        registry.register(Shared(h.clone()))?;
    }
    if let Some(h) = &appmax {
        registry.register(Shared(h.clone()))?;
    }
    registry.register(stale::FailStalePayments::new(pagarme, appmax))?;
    Ok(())
}

/// A handler the registry shares with the stale-payment sweep.
struct Shared<T>(Arc<T>);

impl<T: Task> Task for Shared<T> {
    const NAME: &'static str = T::NAME;
    const QUEUE: &'static str = T::QUEUE;
    type Payload = T::Payload;
    async fn run(&self, p: T::Payload, ctx: &JobContext) -> Result<(), TaskError> {
        self.0.run(p, ctx).await
    }
    fn timeout(&self) -> Duration {
        self.0.timeout()
    }
}

fn db_err(e: sqlx::Error) -> TaskError {
    TaskError::Retryable(format!("database: {e}"))
}

/// One attempt; see the module docs.
async fn renew<P: RenewalProvider>(
    h: &Renewal<P>,
    p: RenewalPayload,
    ctx: &JobContext,
) -> Result<(), TaskError> {
    let db = &ctx.db;
    if p.attempt == 0 {
        return Err(TaskError::Permanent(
            "payload at $.attempt: must be 1 or more".into(),
        ));
    }
    let Some(sub) = load(db, p.subscription_id).await.map_err(db_err)? else {
        return Err(TaskError::Permanent(format!(
            "payload at $.subscription_id: subscription {} does not exist",
            p.subscription_id
        )));
    };
    if sub.provider != P::DB {
        return Err(TaskError::Permanent(format!(
            "subscription {} is billed by {}, not {}",
            sub.id,
            sub.provider,
            P::DB
        )));
    }
    if let Some(why) = skip_reason(&sub, &p) {
        tracing::info!(job_id = %ctx.job_id, subscription = %sub.id, reason = why, "renewal skipped");
        count(P::LABEL, "skipped");
        return Ok(());
    }
    let key = renewal_key(sub.id, p.period_end, p.attempt);
    let ev = Event {
        sub: sub.id,
        period_end: p.period_end,
        attempt: p.attempt,
        key: &key,
        job_id: &ctx.job_id,
    };

    let interval = match interval(&sub, P::INTERVAL_REQUIRED) {
        Ok(i) => i,
        Err(reason) => return precondition_failed::<P>(db, &ev, reason).await,
    };
    let prepared = match h.provider.prepare(&sub, db).await {
        Ok(prep) => prep,
        Err(PrepareError::Precondition(reason)) => {
            return precondition_failed::<P>(db, &ev, reason).await
        }
        Err(PrepareError::Db(e)) => return Err(db_err(e)),
    };

    // The limiter first, so the lease is never spent waiting in it.
    let permit = h.api.admit().await;
    let owner = format!(
        "{}@{}#{}",
        ctx.job_id,
        *INSTANCE,
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let lease_length = h.policy.lease;
    let lease = Lease::new(db.clone(), &key, owner, lease_length);
    let new = NewRow {
        sub: sub.id,
        provider: &sub.provider,
        amount_cents: sub.amount_cents,
        currency: &sub.currency,
        period_end: p.period_end,
        attempt: p.attempt,
    };
    let mut claimed = lease.claim(&new).await.map_err(db_err)?;
    if let Claim::Busy { remaining } = claimed {
        // Another attempt holds the key: it is charging, or it died (kill -9) and its
        // lease runs out. Wait that out once rather than snooze at once.
        if remaining <= lease_length {
            tokio::time::sleep(remaining + Duration::from_millis(100)).await;
            claimed = lease.claim(&new).await.map_err(db_err)?;
        }
    }
    let row = match claimed {
        Claim::Held(row) => row,
        Claim::Busy { remaining } => {
            return Err(TaskError::Snooze {
                after: remaining.max(Duration::from_secs(1)),
                reason: format!("another worker holds the lease of {key}"),
            })
        }
    };
    let _renewing = lease.keep_alive();
    let mut attempt = Attempt {
        h,
        db,
        ev: &ev,
        lease: &lease,
        prepared: &prepared,
        sub: &sub,
        interval,
        ctx,
        permit: Some(permit),
    };
    attempt.run(row).await
}

/// One attempt that holds its key's lease.
struct Attempt<'a, P: RenewalProvider> {
    h: &'a Renewal<P>,
    db: &'a PgPool,
    ev: &'a Event<'a>,
    lease: &'a Lease,
    prepared: &'a P::Prepared,
    sub: &'a Subscription,
    interval: Interval,
    ctx: &'a JobContext,
    /// The rate-limit permit taken before the lease, for the first request.
    permit: Option<Permit>,
}

impl<P: RenewalProvider> Attempt<'_, P> {
    async fn run(&mut self, row: Row) -> Result<(), TaskError> {
        match row.status.as_str() {
            // The finish did not land (or this is a late copy): finish again, idempotent.
            "paid" => {
                let paid = Charge::Paid {
                    order_id: row.order_id.unwrap_or_default(),
                    charge_id: row.charge_id,
                };
                return self.record(paid).await;
            }
            "duplicate_charge" => {
                record::release_lease(self.db, self.ev.key, self.lease.owner())
                    .await
                    .map_err(db_err)?;
                return Ok(());
            }
            _ => {}
        }
        if row.may_have_charged() {
            return self.reconcile(&row).await;
        }
        self.charge(row.order_id).await
    }

    /// A charge request is outstanding: record what the provider decided, repeat the
    /// request where that is harmless, or wait and look again.
    async fn reconcile(&mut self, row: &Row) -> Result<(), TaskError> {
        match self.lookup(row.order_id.as_deref()).await {
            Ok(Some(c @ (Charge::Paid { .. } | Charge::Failed { .. }))) => self.record(c).await,
            Ok(Some(Charge::Pending { order_id })) => {
                self.wait(format!("order {order_id} is still pending at the provider"))
                    .await
            }
            Ok(None) if self.may_repeat(row) => {
                tracing::info!(job_id = %self.ctx.job_id, key = self.ev.key,
                    "the provider shows no charge; repeating the request under its idempotency key");
                self.charge(row.order_id.clone()).await
            }
            Ok(None) => {
                self.wait("the provider does not show the charge request's order yet".into())
                    .await
            }
            Err(e) => self.wait(format!("looking the key up failed: {e}")).await,
        }
    }

    /// Whether repeating the charge request is harmless and due: inside the provider's
    /// idempotency window (counted from the first request), after lookups showed nothing for
    /// `resend_after` since the last request, and for at least half the time since the first
    /// (so repeats to a provider that keeps failing thin out: 1, 2, 4, 8 … × `resend_after`).
    fn may_repeat(&self, row: &Row) -> bool {
        let (Some(window), Some(first), Some(last)) = (
            self.h.provider.idempotency_window(),
            row.since_first_request,
            row.since_last_request,
        ) else {
            return false;
        };
        first < window && last >= self.h.policy.resend_after.max(first / 2)
    }

    /// Opens the order if the provider needs one, records the intent, sends the one
    /// charging request and records or reconciles what it answered.
    async fn charge(&mut self, order: Option<String>) -> Result<(), TaskError> {
        let order = match order {
            Some(o) => Some(o),
            None if P::OPENS_ORDER => {
                let opened = self
                    .h
                    .api
                    .call(
                        self.permit.take(),
                        "open",
                        charge_label,
                        self.h.provider.open(self.prepared, self.sub, self.ev.key),
                    )
                    .await;
                match opened {
                    Ok(Charge::Pending { order_id }) => {
                        if !self.lease.order_opened(&order_id).await.map_err(db_err)? {
                            return self.lost_lease().await;
                        }
                        Some(order_id)
                    }
                    // The reference was decided before: record that, charge nothing.
                    Ok(decided) => return self.record(decided).await,
                    Err(e) => return self.failed(e).await,
                }
            }
            None => None,
        };
        let mut waited_inline = false;
        loop {
            if !self.lease.intend_charge().await.map_err(db_err)? {
                return self.lost_lease().await;
            }
            let answer = self
                .h
                .api
                .call(
                    self.permit.take(),
                    "charge",
                    charge_label,
                    self.h
                        .provider
                        .charge(self.prepared, self.sub, self.ev.key, order.as_deref()),
                )
                .await;
            let e = match answer {
                Ok(c @ (Charge::Paid { .. } | Charge::Failed { .. })) => {
                    return self.record(c).await
                }
                Ok(Charge::Pending { order_id }) => {
                    return self
                        .wait(format!("order {order_id} is pending at the provider"))
                        .await
                }
                Err(ProviderError::Declined { message }) => {
                    return self.declined(order.as_deref(), &message).await
                }
                Err(e) if refused(&e) => e,
                Err(e) => {
                    // The charge may exist: ask at once, then wait.
                    return match self.lookup(order.as_deref()).await {
                        Ok(Some(c @ (Charge::Paid { .. } | Charge::Failed { .. }))) => {
                            self.record(c).await
                        }
                        Ok(_) => self.wait(e.to_string()).await,
                        Err(l) => self.wait(format!("{e}; looking it up failed: {l}")).await,
                    };
                }
            };
            // Refused: nothing was charged.
            self.lease.refused().await.map_err(db_err)?;
            match e.retry_after() {
                Some(d) if !waited_inline && d <= MAX_INLINE_RETRY_AFTER => {
                    waited_inline = true;
                    tokio::time::sleep(d).await;
                }
                _ => return self.failed(e).await,
            }
        }
    }

    /// Looks the key up; of several orders, the one this key opened, else the first decided.
    async fn lookup(&mut self, ours: Option<&str>) -> Result<Option<Charge>, ProviderError> {
        let found = self
            .h
            .api
            .call(
                self.permit.take(),
                "lookup",
                |f: &Vec<Charge>| lookup_label(f),
                self.h.provider.lookup(self.prepared, self.ev.key),
            )
            .await?;
        Ok(pick(found, ours))
    }

    /// A decision: paid or declined.
    async fn record(&self, c: Charge) -> Result<(), TaskError> {
        match c {
            Charge::Paid {
                order_id,
                charge_id,
            } => {
                let next = self
                    .interval
                    .advance(self.ev.period_end)
                    .map_err(|e| TaskError::Permanent(e.to_string()))?;
                let how = record::paid(
                    self.db,
                    self.ev,
                    self.lease.owner(),
                    &order_id,
                    charge_id.as_deref(),
                    next,
                )
                .await
                .map_err(db_err)?;
                let sub = self.ev.sub;
                let key = self.ev.key;
                match how {
                    record::Paid::Recorded => {
                        count(P::LABEL, "paid");
                        tracing::info!(job_id = %self.ctx.job_id, subscription = %sub, order_id, key, "renewal paid");
                    }
                    record::Paid::Duplicate => {
                        count(P::LABEL, "duplicate_charge");
                        tracing::error!(job_id = %self.ctx.job_id, subscription = %sub, order_id, key,
                            "duplicate charge: the period was already paid by another transaction; refund it (warren billing anomalies)");
                    }
                }
                Ok(())
            }
            Charge::Failed { order_id, message } => self.declined(Some(&order_id), &message).await,
            Charge::Pending { order_id } => {
                self.wait(format!("order {order_id} is pending at the provider"))
                    .await
            }
        }
    }

    /// Declined: the job succeeds; the subscription waits for its next dunning attempt.
    async fn declined(&self, order_id: Option<&str>, message: &str) -> Result<(), TaskError> {
        let next_at = self
            .h
            .dunning
            .after_decline(self.ev.attempt)
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| Utc::now() + d);
        record::declined(
            self.db,
            self.ev,
            self.lease.owner(),
            order_id,
            message,
            next_at,
        )
        .await
        .map_err(db_err)?;
        let what = if next_at.is_some() {
            "declined"
        } else {
            "unpaid"
        };
        count(P::LABEL, what);
        tracing::info!(job_id = %self.ctx.job_id, subscription = %self.ev.sub, key = self.ev.key,
            reason = message, next_attempt_at = ?next_at, "renewal {what}");
        Ok(())
    }

    /// The outcome is not known yet: release the lease and look again later without
    /// spending an attempt; past the bound, dead-letter `unknown-outcome`.
    async fn wait(&self, reason: String) -> Result<(), TaskError> {
        let (db, ev) = (self.db, self.ev);
        let since = record::since_first_request(db, ev.key)
            .await
            .map_err(db_err)?
            .unwrap_or_default();
        record::settle(db, ev, self.lease.owner(), Undecided::Unknown, &reason)
            .await
            .map_err(db_err)?;
        let bound = self.h.policy.unknown_outcome_after;
        if since >= bound {
            let why = format!(
                "the outcome of charge {} is still unknown {} after the request: {reason}",
                ev.key,
                humantime::format_duration(Duration::from_secs(since.as_secs()))
            );
            record::flag(
                db,
                ev,
                "renewal.unknown_outcome",
                &why,
                json!({ "unknownChargeKey": ev.key }),
            )
            .await
            .map_err(db_err)?;
            count(P::LABEL, "unknown_outcome");
            tracing::error!(job_id = %self.ctx.job_id, subscription = %ev.sub, key = ev.key, %why,
                "renewal outcome unknown; an operator decides (docs/operations.md)");
            return Err(TaskError::UnknownOutcome(format!(
                "{why}; check the charge at the provider, then replay this job once it \
                 shows the outcome (docs/operations.md)"
            )));
        }
        count(P::LABEL, "unknown");
        let after = (since / 2).clamp(Duration::from_secs(1), MAX_LOOK_AGAIN);
        tracing::info!(job_id = %self.ctx.job_id, key = ev.key, %reason, ?after,
            "renewal outcome not known yet; looking again later");
        Err(TaskError::Snooze {
            after,
            reason: format!(
                "outcome of {} not known yet ({reason}); will look again",
                ev.key
            ),
        })
    }

    /// The lease ran out before a request could be recorded: nothing was sent.
    async fn lost_lease(&self) -> Result<(), TaskError> {
        Err(TaskError::Snooze {
            after: Duration::from_secs(1),
            reason: format!(
                "lost the lease of {} before sending (nothing sent); another attempt holds it",
                self.ev.key
            ),
        })
    }

    /// A request that decided nothing (refused, or an order that could not be opened).
    async fn failed(&self, e: ProviderError) -> Result<(), TaskError> {
        let (db, ev, owner) = (self.db, self.ev, self.lease.owner());
        match e {
            ProviderError::Unknown { message } => self.wait(message).await,
            ProviderError::Declined { message } => self.declined(None, &message).await,
            ProviderError::Permanent { .. } => {
                let message = e.to_string();
                record::settle(db, ev, owner, Undecided::Rejected, &message)
                    .await
                    .map_err(db_err)?;
                count(P::LABEL, "rejected");
                Err(TaskError::Permanent(message))
            }
            ProviderError::Retryable { .. } => {
                let message = e.to_string();
                let last = self.ctx.attempt >= self.ctx.max_attempts;
                record::settle(db, ev, owner, Undecided::Retry { last }, &message)
                    .await
                    .map_err(db_err)?;
                count(P::LABEL, "retry");
                Err(TaskError::Retryable(message))
            }
        }
    }
}

/// Whether a failed charge request certainly charged nothing: a 429 or a connection that
/// never opened ([`ProviderError::Retryable`]), or a 4xx refusal. A `5xx`, a timeout, a
/// reset or an answer of the wrong shape may come after a charge.
fn refused(e: &ProviderError) -> bool {
    match e {
        ProviderError::Retryable { .. } => true,
        ProviderError::Permanent { status, .. } => status.is_some_and(|s| (400..500).contains(&s)),
        ProviderError::Declined { .. } | ProviderError::Unknown { .. } => false,
    }
}

/// Of the orders a lookup found: the one this key opened, else the first decided one, else
/// the first.
fn pick(found: Vec<Charge>, ours: Option<&str>) -> Option<Charge> {
    if let Some(c) = ours.and_then(|o| found.iter().find(|c| c.order_id() == o)) {
        return Some(c.clone());
    }
    found
        .iter()
        .find(|c| !matches!(c, Charge::Pending { .. }))
        .cloned()
        .or_else(|| found.into_iter().next())
}

fn count(provider: &'static str, outcome: &'static str) {
    metrics::counter!(names::RENEWALS, "provider" => provider, "outcome" => outcome).increment(1);
}

/// Step 2 failed: flag the subscription, record the event, dead-letter as permanent.
async fn precondition_failed<P: RenewalProvider>(
    db: &PgPool,
    ev: &Event<'_>,
    reason: Precondition,
) -> Result<(), TaskError> {
    let reason = reason.to_string();
    record::flag(db, ev, "renewal.precondition_failed", &reason, json!({}))
        .await
        .map_err(db_err)?;
    count(P::LABEL, "precondition_failed");
    Err(TaskError::Permanent(format!(
        "subscription {} cannot be renewed: {reason}",
        ev.sub
    )))
}

/// A subscription as the handlers read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Subscription {
    pub id: Uuid,
    pub provider: String,
    pub status: String,
    pub current_period_end: DateTime<Utc>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub dunning_attempt: i16,
    pub metadata: serde_json::Value,
    pub amount_cents: i64,
    pub currency: String,
    pub merchant_id: Option<Uuid>,
    pub provider_subscription_id: Option<String>,
    /// `customer_payment_methods.provider_payment_method_id` of the vaulted card, when
    /// `vault_payment_method_id` points to a card of the subscription's provider.
    pub vault_card: Option<String>,
}

impl Subscription {
    /// A non-empty string in `metadata`.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// The vaulted card, else `metadata.<fallback>`.
    pub fn card(&self, fallback: &str) -> Option<&str> {
        self.vault_card
            .as_deref()
            .filter(|c| !c.is_empty())
            .or_else(|| self.meta_str(fallback))
    }
}

/// Why this job has nothing to do, if so.
fn skip_reason(sub: &Subscription, p: &RenewalPayload) -> Option<&'static str> {
    if sub.canceled_at.is_some() || sub.status == "CANCELED" {
        return Some("canceled");
    }
    if sub.status == "UNPAID" {
        return Some("unpaid: dunning is over");
    }
    if sub.current_period_end > p.period_end {
        return Some("already renewed past this period");
    }
    if sub.current_period_end < p.period_end {
        return Some("not the subscription's current period");
    }
    let due_attempt = if sub.status == "PAST_DUE" {
        sub.dunning_attempt.max(0) as u16 + 1
    } else {
        1
    };
    if p.attempt < due_attempt {
        return Some("this attempt was already decided");
    }
    if p.attempt > due_attempt {
        return Some("this attempt is not due");
    }
    None
}

/// The billing interval; without metadata, one month when not required.
fn interval(sub: &Subscription, required: bool) -> Result<Interval, Precondition> {
    let unit = sub.metadata.get("intervalUnit");
    let count = sub.metadata.get("intervalCount");
    match (unit, count) {
        (None, None) if !required => Ok(Interval {
            unit: warren_core::billing::IntervalUnit::Month,
            count: 1,
        }),
        (None, _) => Err(Precondition::Missing("metadata.intervalUnit")),
        (_, None) => Err(Precondition::Missing("metadata.intervalCount")),
        (Some(u), Some(c)) => Ok(Interval::from_metadata(u, c)?),
    }
}

async fn load(db: &PgPool, id: Uuid) -> Result<Option<Subscription>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.id, s.provider::text AS provider, s.status::text AS status,
                s.current_period_end, s.canceled_at, s.dunning_attempt, s.metadata,
                s.amount_cents, s.currency, s.merchant_id, s.provider_subscription_id,
                pm.provider_payment_method_id AS vault_card
           FROM customer_subscriptions s
           LEFT JOIN customer_payment_methods pm
             ON pm.id = s.vault_payment_method_id AND pm.provider = s.provider
          WHERE s.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(status: &str, end: &str, dunning: i16) -> Subscription {
        Subscription {
            id: Uuid::nil(),
            provider: "PAGARME".into(),
            status: status.into(),
            current_period_end: end.parse().unwrap(),
            canceled_at: None,
            dunning_attempt: dunning,
            metadata: json!({ "intervalUnit": "MONTH" }),
            amount_cents: 990,
            currency: "BRL".into(),
            merchant_id: None,
            provider_subscription_id: None,
            vault_card: None,
        }
    }

    fn payload(end: &str, attempt: u16) -> RenewalPayload {
        RenewalPayload {
            subscription_id: Uuid::nil(),
            period_end: end.parse().unwrap(),
            attempt,
        }
    }

    #[test]
    fn only_the_due_attempt_of_the_current_period_runs() {
        let end = "2026-11-01T00:00:00Z";
        assert_eq!(skip_reason(&sub("ACTIVE", end, 0), &payload(end, 1)), None);
        assert_eq!(
            skip_reason(&sub("PAST_DUE", end, 1), &payload(end, 2)),
            None
        );
        assert!(skip_reason(&sub("PAST_DUE", end, 1), &payload(end, 1)).is_some());
        assert!(skip_reason(&sub("ACTIVE", end, 0), &payload(end, 2)).is_some());
        assert!(skip_reason(&sub("UNPAID", end, 3), &payload(end, 4)).is_some());
        assert!(skip_reason(&sub("ACTIVE", "2026-12-01T00:00:00Z", 0), &payload(end, 1)).is_some());
        let mut canceled = sub("ACTIVE", end, 0);
        canceled.canceled_at = Some(Utc::now());
        assert_eq!(skip_reason(&canceled, &payload(end, 1)), Some("canceled"));
    }

    #[test]
    fn interval_is_required_where_the_provider_needs_it() {
        let s = sub("ACTIVE", "2026-11-01T00:00:00Z", 0);
        assert_eq!(
            interval(&s, true).unwrap_err().to_string(),
            "metadata.intervalCount is missing"
        );
        let mut bare = s.clone();
        bare.metadata = json!({});
        assert_eq!(interval(&bare, false).unwrap().count, 1);
        assert_eq!(
            interval(&bare, true).unwrap_err().to_string(),
            "metadata.intervalUnit is missing"
        );
    }
}
