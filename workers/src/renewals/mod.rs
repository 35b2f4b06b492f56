//! The renewal handlers `renewal.pagarme` and `renewal.appmax`: charge one subscription for
//! one period (and dunning attempt), exactly once, whatever crashes and redeliveries happen.
//!
//! One attempt of one period, in order (design and states: `docs/providers.md`):
//!
//! 1. Load the subscription. Canceled, UNPAID, already renewed past this period, or a
//!    different attempt than the one due → acked as a no-op.
//! 2. Preconditions (card, customer, interval, merchant integration). Missing → permanent
//!    error naming the field; the reason goes to `metadata.renewalError` and an event row;
//!    no provider call.
//! 3. Insert the `payment_transactions` row (`pending`, unique idempotency key) in its own
//!    commit **before** calling the provider, taking the key's lease (`charging_until`), so
//!    one worker at a time calls the provider for a key. A row that exists means an earlier
//!    try got this far: unless it is `paid`, ask the provider what happened to the key
//!    (reconcile) before charging.
//! 4. Charge with the key. Paid → transaction `paid`, period advanced, `ACTIVE`, event.
//!    Declined → transaction `failed`, `PAST_DUE` with the next dunning attempt (or `UNPAID`
//!    after the last), event; the job succeeds. Retryable → the runtime retries (a short
//!    `Retry-After` is honoured in place). Unknown (timeout) → reconcile at once; still
//!    unknown → retry, which reconciles first.
//!
//! Every provider call goes through [`Api`]: the per-process rate limit and the provider
//! metrics.

mod appmax;
mod pagarme;

pub use appmax::Appmax;
pub use pagarme::Pagarme;

use crate::providers::{Charge, ProviderError};
use crate::{JobContext, Registry, Task, TaskError};
use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::json;
use sqlx::PgPool;
use std::future::Future;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};
use uuid::Uuid;
use warren_core::billing::{renewal_key, DunningSchedule, Interval};
use warren_core::task::{RenewalPayload, RENEWAL_APPMAX, RENEWAL_PAGARME};
use warren_core::telemetry::names;

/// A `Retry-After` up to this long is waited out inside the attempt; longer ones go back
/// to the runtime's delay tiers.
const MAX_INLINE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Rate limit and metrics around one provider's API calls.
pub struct Api {
    provider: &'static str,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Api {
    /// `rate_limit`: most requests per second from this process (`None`: unlimited).
    pub fn new(provider: &'static str, rate_limit: Option<u32>) -> Self {
        Self {
            provider,
            limiter: rate_limit
                .and_then(NonZeroU32::new)
                .map(|r| RateLimiter::direct(Quota::per_second(r))),
        }
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        outcome: impl Fn(&T) -> &'static str,
        request: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let started = Instant::now();
        let result = request.await;
        let label = match &result {
            Ok(v) => outcome(v),
            Err(ProviderError::Declined { .. }) => "failed",
            Err(ProviderError::Retryable { .. }) => "retryable",
            Err(ProviderError::Permanent { .. }) => "permanent",
            Err(ProviderError::Unknown { .. }) => "unknown",
        };
        metrics::histogram!(names::PROVIDER_REQUEST_DURATION,
            "provider" => self.provider, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
        metrics::counter!(names::PROVIDER_REQUESTS,
            "provider" => self.provider, "operation" => operation, "outcome" => label)
        .increment(1);
        result
    }

    async fn charge(
        &self,
        request: impl Future<Output = Result<Charge, ProviderError>>,
    ) -> Result<Charge, ProviderError> {
        self.call("charge", charge_label, request).await
    }

    async fn lookup(
        &self,
        request: impl Future<Output = Result<Option<Charge>, ProviderError>>,
    ) -> Result<Option<Charge>, ProviderError> {
        self.call(
            "lookup",
            |found: &Option<Charge>| match found {
                Some(c) => charge_label(c),
                None => "not_found",
            },
            request,
        )
        .await
    }
}

fn charge_label(c: &Charge) -> &'static str {
    match c {
        Charge::Paid { .. } => "paid",
        Charge::Failed { .. } => "failed",
        Charge::Pending { .. } => "pending",
    }
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

/// What differs between the providers.
pub trait Provider: Send + Sync + 'static {
    /// `pagarme` / `appmax`: metric label.
    const LABEL: &'static str;
    /// `PAGARME` / `APPMAX`: the database enum.
    const DB: &'static str;
    /// Whether `metadata.intervalUnit`/`intervalCount` must be present (else one month).
    const INTERVAL_REQUIRED: bool;
    /// What a charge needs, checked before any call.
    type Prepared: Send + Sync;

    /// Checks the preconditions; `Err` names the missing or invalid field.
    fn prepare(
        &self,
        sub: &Subscription,
        db: &PgPool,
    ) -> impl Future<Output = Result<Result<Self::Prepared, String>, sqlx::Error>> + Send;

    /// Charges `key` (the provider never charges one key twice).
    fn charge(
        &self,
        p: &Self::Prepared,
        sub: &Subscription,
        key: &str,
    ) -> impl Future<Output = Result<Charge, ProviderError>> + Send;

    /// What the provider knows about `key`.
    fn lookup(
        &self,
        p: &Self::Prepared,
        key: &str,
    ) -> impl Future<Output = Result<Option<Charge>, ProviderError>> + Send;
}

/// A renewal handler for provider `P`.
pub struct Renewal<P> {
    provider: P,
    dunning: DunningSchedule,
    /// How long one worker owns a key's provider calls before another may take over.
    lease: Duration,
}

impl<P: Provider> Renewal<P> {
    /// `request_timeout` is the provider client's: the key lease covers a charge, a
    /// reconcile and an inline `Retry-After` with room to spare.
    pub fn new(provider: P, dunning: DunningSchedule, request_timeout: Duration) -> Self {
        Self {
            provider,
            dunning,
            lease: request_timeout * 3 + MAX_INLINE_RETRY_AFTER + Duration::from_secs(2),
        }
    }
}

impl<P> Renewal<P> {
    /// An attempt may wait out a dead worker's lease, then hold its own.
    fn attempt_timeout(&self) -> Duration {
        self.lease * 2 + Duration::from_secs(5)
    }
}

impl Task for Renewal<Pagarme> {
    const NAME: &'static str = RENEWAL_PAGARME;
    type Payload = RenewalPayload;
    async fn run(&self, p: RenewalPayload, ctx: &JobContext) -> Result<(), TaskError> {
        renew(self, p, ctx).await
    }
    fn timeout(&self) -> Duration {
        self.attempt_timeout()
    }
}

impl Task for Renewal<Appmax> {
    const NAME: &'static str = RENEWAL_APPMAX;
    type Payload = RenewalPayload;
    async fn run(&self, p: RenewalPayload, ctx: &JobContext) -> Result<(), TaskError> {
        renew(self, p, ctx).await
    }
    fn timeout(&self) -> Duration {
        self.attempt_timeout()
    }
}

/// Registers whichever handlers are configured.
pub fn register(
    registry: &mut Registry,
    pagarme: Option<Renewal<Pagarme>>,
    appmax: Option<Renewal<Appmax>>,
) -> Result<(), crate::DuplicateTask> {
    if let Some(h) = pagarme {
        registry.register(h)?;
    }
    if let Some(h) = appmax {
        registry.register(h)?;
    }
    Ok(())
}

fn db_err(e: sqlx::Error) -> TaskError {
    TaskError::Retryable(format!("database: {e}"))
}

/// One attempt; see the module docs.
async fn renew<P: Provider>(
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
    let prepared = match h.provider.prepare(&sub, db).await.map_err(db_err)? {
        Ok(prep) => prep,
        Err(reason) => return precondition_failed::<P>(db, &ev, reason).await,
    };

    let lease = h.lease;
    let mut claimed = claim(db, &sub, &p, &key, lease).await.map_err(db_err)?;
    if let Claim::Busy { remaining } = claimed {
        // Another worker holds the key: it is charging, or it died (kill -9) and its
        // lease runs out. Wait that out once rather than burn attempts.
        if remaining <= lease {
            tokio::time::sleep(remaining + Duration::from_millis(100)).await;
            claimed = claim(db, &sub, &p, &key, lease).await.map_err(db_err)?;
        }
    }
    let decided = match claimed {
        Claim::Fresh => None,
        Claim::Busy { .. } => {
            return Err(TaskError::Retryable(format!(
                "another worker is charging {key}; retrying later"
            )))
        }
        Claim::Paid {
            order_id,
            charge_id,
        } => Some(Charge::Paid {
            order_id: order_id.unwrap_or_default(),
            charge_id,
        }),
        Claim::Undecided { status } => {
            // An earlier try reached the provider or may have: ask before charging.
            match h.provider.lookup(&prepared, &key).await {
                Ok(Some(Charge::Pending { order_id })) if status == "unknown" => {
                    // A charge may be in flight on this order: never charge it again blind.
                    return unknown::<P>(
                        db,
                        &ev,
                        format!("order {order_id} is still pending after an unknown outcome"),
                    )
                    .await;
                }
                // Known to be undecided and uncharged (the last call was refused): charge;
                // the provider's key (Pagar.me) or reference (Appmax) keeps it one order.
                Ok(Some(Charge::Pending { .. })) => None,
                Ok(found) => found,
                Err(e) => return provider_failed::<P>(db, &ev, ctx, e).await,
            }
        }
    };

    let outcome = match decided {
        Some(charge) => Ok(charge),
        None => charge_once_more_after_short_wait(&h.provider, &prepared, &sub, &key).await,
    };
    let outcome = match outcome {
        Err(ProviderError::Unknown { message }) => {
            mark_unknown(db, &key, &message).await.map_err(db_err)?;
            // Reconcile now: the provider may have charged before the connection broke.
            match h.provider.lookup(&prepared, &key).await {
                Ok(Some(c @ (Charge::Paid { .. } | Charge::Failed { .. }))) => Ok(c),
                Ok(_) => return unknown::<P>(db, &ev, message).await,
                Err(e) => {
                    return unknown::<P>(db, &ev, format!("{message}; reconcile failed: {e}")).await
                }
            }
        }
        other => other,
    };
    match outcome {
        Ok(Charge::Paid {
            order_id,
            charge_id,
        }) => {
            let next = interval
                .advance(p.period_end)
                .map_err(|e| TaskError::Permanent(e.to_string()))?;
            paid(db, &ev, &order_id, charge_id.as_deref(), next)
                .await
                .map_err(db_err)?;
            count(P::LABEL, "paid");
            tracing::info!(job_id = %ctx.job_id, subscription = %sub.id, order_id, key, "renewal paid");
            Ok(())
        }
        Ok(Charge::Failed { order_id, message }) => {
            on_declined::<P>(h, db, &ev, ctx, Some(&order_id), &message).await
        }
        Err(ProviderError::Declined { message }) => {
            on_declined::<P>(h, db, &ev, ctx, None, &message).await
        }
        Ok(Charge::Pending { order_id }) => {
            unknown::<P>(db, &ev, format!("order {order_id} is still pending")).await
        }
        Err(e) => provider_failed::<P>(db, &ev, ctx, e).await,
    }
}

/// Declined: the job succeeds; the subscription waits for its next dunning attempt.
async fn on_declined<P: Provider>(
    h: &Renewal<P>,
    db: &PgPool,
    ev: &Event<'_>,
    ctx: &JobContext,
    order_id: Option<&str>,
    message: &str,
) -> Result<(), TaskError> {
    let next_at = h
        .dunning
        .after_decline(ev.attempt)
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| Utc::now() + d);
    declined(db, ev, order_id, message, next_at)
        .await
        .map_err(db_err)?;
    let what = if next_at.is_some() {
        "declined"
    } else {
        "unpaid"
    };
    count(P::LABEL, what);
    tracing::info!(job_id = %ctx.job_id, subscription = %ev.sub, key = ev.key, reason = message,
        next_attempt_at = ?next_at, "renewal {what}");
    Ok(())
}

/// Charges; a `429`/`5xx` whose `Retry-After` is short is waited out and tried once more.
async fn charge_once_more_after_short_wait<P: Provider>(
    provider: &P,
    prepared: &P::Prepared,
    sub: &Subscription,
    key: &str,
) -> Result<Charge, ProviderError> {
    match provider.charge(prepared, sub, key).await {
        Err(e) if e.retry_after().is_some_and(|d| d <= MAX_INLINE_RETRY_AFTER) => {
            tokio::time::sleep(e.retry_after().unwrap_or_default()).await;
            provider.charge(prepared, sub, key).await
        }
        other => other,
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
fn interval(sub: &Subscription, required: bool) -> Result<Interval, String> {
    let unit = sub.metadata.get("intervalUnit");
    let count = sub.metadata.get("intervalCount");
    match (unit, count) {
        (None, None) if !required => Ok(Interval {
            unit: warren_core::billing::IntervalUnit::Month,
            count: 1,
        }),
        (None, _) => Err("metadata.intervalUnit is missing".into()),
        (_, None) => Err("metadata.intervalCount is missing".into()),
        (Some(u), Some(c)) => Interval::from_metadata(u, c).map_err(|e| e.to_string()),
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

/// Who may call the provider for a key now.
enum Claim {
    /// The row was created by this attempt: charge.
    Fresh,
    /// Another worker holds the key's lease, for `remaining` more.
    Busy { remaining: Duration },
    /// Already paid (the finish did not land): finish again.
    Paid {
        order_id: Option<String>,
        charge_id: Option<String>,
    },
    /// An earlier try may have reached the provider: reconcile first. `status` is the row's.
    Undecided { status: String },
}

/// Step 3: the `pending` row and the key's lease, committed before any provider call.
async fn claim(
    db: &PgPool,
    sub: &Subscription,
    p: &RenewalPayload,
    key: &str,
    lease: Duration,
) -> Result<Claim, sqlx::Error> {
    let lease_secs = lease.as_secs_f64();
    let inserted = sqlx::query(
        "INSERT INTO payment_transactions
                (subscription_id, provider, idempotency_key, status, amount_cents, currency,
                 period_end, attempt, charging_until)
         VALUES ($1, $2::billing_provider, $3, 'pending', $4, $5, $6, $7,
                 now() + make_interval(secs => $8))
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(sub.id)
    .bind(&sub.provider)
    .bind(key)
    .bind(sub.amount_cents)
    .bind(&sub.currency)
    .bind(p.period_end)
    .bind(p.attempt as i16)
    .bind(lease_secs)
    .execute(db)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Fresh);
    }
    let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "UPDATE payment_transactions
            SET charging_until = now() + make_interval(secs => $2), updated_at = now()
          WHERE idempotency_key = $1 AND (charging_until IS NULL OR charging_until < now())
         RETURNING status, provider_order_id, provider_charge_id",
    )
    .bind(key)
    .bind(lease_secs)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        None => {
            let secs: Option<f64> = sqlx::query_scalar(
                "SELECT GREATEST(0, EXTRACT(EPOCH FROM charging_until - now()))::float8
                   FROM payment_transactions WHERE idempotency_key = $1",
            )
            .bind(key)
            .fetch_optional(db)
            .await?
            .flatten();
            Claim::Busy {
                remaining: Duration::from_secs_f64(secs.unwrap_or(0.0)),
            }
        }
        Some((status, order_id, charge_id)) if status == "paid" => Claim::Paid {
            order_id,
            charge_id,
        },
        Some((status, _, _)) => Claim::Undecided { status },
    })
}

/// The audit row's identity.
struct Event<'a> {
    sub: Uuid,
    period_end: DateTime<Utc>,
    attempt: u16,
    key: &'a str,
    job_id: &'a str,
}

const INSERT_EVENT: &str = "INSERT INTO subscription_events
        (subscription_id, kind, period_end, attempt, idempotency_key, job_id, detail)
    VALUES ($1, $2, $3, $4, $5, $6, $7)";

async fn event<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    ev: &Event<'_>,
    kind: &str,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(INSERT_EVENT)
        .bind(ev.sub)
        .bind(kind)
        .bind(ev.period_end)
        .bind(ev.attempt as i16)
        .bind(ev.key)
        .bind(ev.job_id)
        .bind(detail)
        .execute(db)
        .await
        .map(|_| ())
}

fn count(provider: &'static str, outcome: &'static str) {
    metrics::counter!(names::RENEWALS, "provider" => provider, "outcome" => outcome).increment(1);
}

/// Step 2 failed: flag the subscription, record the event, dead-letter as permanent.
async fn precondition_failed<P: Provider>(
    db: &PgPool,
    ev: &Event<'_>,
    reason: String,
) -> Result<(), TaskError> {
    let mut tx = db.begin().await.map_err(db_err)?;
    sqlx::query(
        "UPDATE customer_subscriptions
            SET metadata = metadata || jsonb_build_object('renewalError', $2::text,
                                                         'renewalErrorAt', now()),
                updated_at = now()
          WHERE id = $1",
    )
    .bind(ev.sub)
    .bind(&reason)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    event(
        &mut *tx,
        ev,
        "renewal.precondition_failed",
        json!({ "reason": reason }),
    )
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    count(P::LABEL, "precondition_failed");
    Err(TaskError::Permanent(format!(
        "subscription {} cannot be renewed: {reason}",
        ev.sub
    )))
}

/// Paid: transaction, period and event in one commit. The period moves only if it is
/// still the one charged, so finishing twice changes nothing.
async fn paid(
    db: &PgPool,
    ev: &Event<'_>,
    order_id: &str,
    charge_id: Option<&str>,
    next_end: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE payment_transactions
            SET status = 'paid', provider_order_id = $2, provider_charge_id = $3,
                failure_reason = NULL, charging_until = NULL, updated_at = now()
          WHERE idempotency_key = $1",
    )
    .bind(ev.key)
    .bind(order_id)
    .bind(charge_id)
    .execute(&mut *tx)
    .await?;
    let renewed = sqlx::query(
        "UPDATE customer_subscriptions
            SET current_period_start = $2, current_period_end = $3, status = 'ACTIVE',
                dunning_attempt = 0, next_attempt_at = NULL,
                metadata = metadata - 'renewalError' - 'renewalErrorAt' - 'lastDeclineReason',
                updated_at = now()
          WHERE id = $1 AND current_period_end = $2",
    )
    .bind(ev.sub)
    .bind(ev.period_end)
    .bind(next_end)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if renewed == 1 {
        event(
            &mut *tx,
            ev,
            "renewal.paid",
            json!({ "order_id": order_id, "charge_id": charge_id, "next_period_end": next_end }),
        )
        .await?;
    }
    tx.commit().await
}

/// Declined: transaction `failed`; the subscription `PAST_DUE` until `next_at`, or `UNPAID`.
async fn declined(
    db: &PgPool,
    ev: &Event<'_>,
    order_id: Option<&str>,
    message: &str,
    next_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE payment_transactions
            SET status = 'failed', provider_order_id = COALESCE($2, provider_order_id),
                failure_reason = $3, charging_until = NULL, updated_at = now()
          WHERE idempotency_key = $1",
    )
    .bind(ev.key)
    .bind(order_id)
    .bind(message)
    .execute(&mut *tx)
    .await?;
    let moved = sqlx::query(
        "UPDATE customer_subscriptions
            SET status = CASE WHEN $4::timestamptz IS NULL THEN 'UNPAID'
                              ELSE 'PAST_DUE' END::\"SubscriptionStatus\",
                dunning_attempt = $3, next_attempt_at = $4,
                metadata = metadata || jsonb_build_object('lastDeclineReason', $5::text),
                updated_at = now()
          WHERE id = $1 AND current_period_end = $2 AND dunning_attempt = $3 - 1",
    )
    .bind(ev.sub)
    .bind(ev.period_end)
    .bind(ev.attempt as i16)
    .bind(next_at)
    .bind(message)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 1 {
        let kind = if next_at.is_some() {
            "renewal.declined"
        } else {
            "renewal.unpaid"
        };
        event(
            &mut *tx,
            ev,
            kind,
            json!({ "order_id": order_id, "reason": message, "next_attempt_at": next_at }),
        )
        .await?;
    }
    tx.commit().await
}

async fn mark_unknown(db: &PgPool, key: &str, message: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payment_transactions SET status = 'unknown', failure_reason = $2, updated_at = now()
          WHERE idempotency_key = $1 AND status <> 'paid'",
    )
    .bind(key)
    .bind(message)
    .execute(db)
    .await
    .map(|_| ())
}

/// How an attempt that decided nothing leaves its transaction row.
#[derive(Clone, Copy)]
enum Undecided {
    /// The charge may exist: reconcile before charging again.
    Unknown,
    /// The provider refused the request (4xx): nothing was charged.
    Rejected,
    /// Nothing was charged and a retry follows; on the job's last attempt a `pending` row
    /// becomes `failed` so it says why it stopped (a replay reconciles first anyway).
    Retry { last: bool },
}

impl Undecided {
    /// The new `status`, as SQL over the old one.
    fn status_sql(self) -> &'static str {
        match self {
            Self::Unknown => "'unknown'",
            Self::Rejected => "'rejected'",
            Self::Retry { last: true } => {
                "CASE WHEN status = 'pending' THEN 'failed' ELSE status END"
            }
            Self::Retry { last: false } => "status",
        }
    }

    fn event(self) -> &'static str {
        match self {
            Self::Unknown => "renewal.unknown",
            Self::Rejected => "renewal.rejected",
            Self::Retry { .. } => "renewal.retry",
        }
    }
}

/// Ends an undecided attempt in one transaction: the row's status and reason (a `paid` row
/// keeps its own), the key's lease released, and the event.
async fn settle(
    db: &PgPool,
    ev: &Event<'_>,
    how: Undecided,
    message: &str,
) -> Result<(), TaskError> {
    let mut tx = db.begin().await.map_err(db_err)?;
    sqlx::query(&format!(
        "UPDATE payment_transactions
            SET status = CASE WHEN status = 'paid' THEN status ELSE {} END,
                failure_reason = CASE WHEN status = 'paid' THEN failure_reason ELSE $2 END,
                charging_until = NULL, updated_at = now()
          WHERE idempotency_key = $1",
        how.status_sql()
    ))
    .bind(ev.key)
    .bind(message)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    event(&mut *tx, ev, how.event(), json!({ "reason": message }))
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)
}

/// The outcome is not known yet: release the lease and retry (the retry reconciles first).
async fn unknown<P: Provider>(
    db: &PgPool,
    ev: &Event<'_>,
    message: String,
) -> Result<(), TaskError> {
    settle(db, ev, Undecided::Unknown, &message).await?;
    count(P::LABEL, "unknown");
    Err(TaskError::Retryable(format!(
        "outcome of {} unknown ({message}); will reconcile before charging again",
        ev.key
    )))
}

/// A provider error that decided nothing.
async fn provider_failed<P: Provider>(
    db: &PgPool,
    ev: &Event<'_>,
    ctx: &JobContext,
    e: ProviderError,
) -> Result<(), TaskError> {
    match e {
        ProviderError::Unknown { message } => unknown::<P>(db, ev, message).await,
        ProviderError::Permanent { .. } => {
            let message = e.to_string();
            settle(db, ev, Undecided::Rejected, &message).await?;
            count(P::LABEL, "rejected");
            Err(TaskError::Permanent(message))
        }
        e => {
            let message = e.to_string();
            let last = ctx.attempt >= ctx.max_attempts;
            settle(db, ev, Undecided::Retry { last }, &message).await?;
            count(P::LABEL, "retry");
            Err(TaskError::Retryable(message))
        }
    }
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

    #[tokio::test]
    async fn api_calls_wait_for_the_rate_limit() {
        // 5/s allows a burst of 5, then one call per 200 ms: 10 calls take at least 1 s.
        let api = Api::new("test", Some(5));
        let started = Instant::now();
        for _ in 0..10 {
            api.charge(async {
                Ok(Charge::Pending {
                    order_id: "o".into(),
                })
            })
            .await
            .unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(950),
            "{:?}",
            started.elapsed()
        );
        // 0 means unlimited.
        let unlimited = Api::new("test", Some(0));
        assert!(unlimited.limiter.is_none());
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
            interval(&s, true).unwrap_err(),
            "metadata.intervalCount is missing"
        );
        let mut bare = s.clone();
        bare.metadata = json!({});
        assert_eq!(interval(&bare, false).unwrap().count, 1);
        assert_eq!(
            interval(&bare, true).unwrap_err(),
            "metadata.intervalUnit is missing"
        );
    }
}
