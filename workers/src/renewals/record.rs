//! The renewal's rows: the `payment_transactions` row of a key with its lease and its
//! recorded intent, the subscription's period, and the `subscription_events` audit trail.
//!
//! Every write that decides money is one transaction. The lease (`charging_until`,
//! `lease_owner`) says which attempt may send requests for a key; [`Lease::intend_charge`]
//! records a charge request *before* it is sent and only while the lease is held, so an
//! attempt that lost its lease can never send one.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// The audit row's identity.
pub(super) struct Event<'a> {
    pub sub: Uuid,
    pub period_end: DateTime<Utc>,
    pub attempt: u16,
    pub key: &'a str,
    pub job_id: &'a str,
}

/// What the row says about a key when an attempt takes its lease.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub status: String,
    pub order_id: Option<String>,
    pub charge_id: Option<String>,
    /// Charge requests recorded as about to be sent.
    pub requests: i32,
    /// Of those, how many the provider positively refused (429, 4xx, never connected).
    pub refusals: i32,
    /// Since the first / the last charge request, by the database's clock.
    pub since_first_request: Option<Duration>,
    pub since_last_request: Option<Duration>,
}

impl Row {
    /// A charge request was sent and not refused: a charge may exist.
    pub fn may_have_charged(&self) -> bool {
        self.requests > self.refusals
    }
}

/// Who may call the provider for a key now.
pub(super) enum Claim {
    /// This attempt holds the lease.
    Held(Row),
    /// Another attempt holds the lease, for `remaining` more.
    Busy { remaining: Duration },
}

/// The right to send requests for one key: held by one attempt ("owner"), renewed while
/// the attempt runs (see [`Lease::keep_alive`]), released by that owner only.
pub(super) struct Lease {
    db: PgPool,
    key: String,
    owner: String,
    length: Duration,
}

const ROW_COLUMNS: &str = "status, provider_order_id, provider_charge_id, charge_requests,
    charge_refusals,
    EXTRACT(EPOCH FROM now() - first_charge_sent_at)::float8,
    EXTRACT(EPOCH FROM now() - last_charge_sent_at)::float8";

type RowTuple = (
    String,
    Option<String>,
    Option<String>,
    i32,
    i32,
    Option<f64>,
    Option<f64>,
);

fn row((status, order_id, charge_id, requests, refusals, first, last): RowTuple) -> Row {
    let secs = |s: Option<f64>| s.map(|s| Duration::from_secs_f64(s.max(0.0)));
    Row {
        status,
        order_id,
        charge_id,
        requests,
        refusals,
        since_first_request: secs(first),
        since_last_request: secs(last),
    }
}

/// What the key's row needs when it is first written.
pub(super) struct NewRow<'a> {
    pub sub: Uuid,
    pub provider: &'a str,
    pub amount_cents: i64,
    pub currency: &'a str,
    pub period_end: DateTime<Utc>,
    pub attempt: u16,
}

impl Lease {
    pub fn new(db: PgPool, key: &str, owner: String, length: Duration) -> Self {
        Self {
            db,
            key: key.to_owned(),
            owner,
            length,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Writes the key's `pending` row with this lease, or takes the lease of the existing
    /// row if it is free (expired, released, or already this owner's).
    pub async fn claim(&self, new: &NewRow<'_>) -> Result<Claim, sqlx::Error> {
        let secs = self.length.as_secs_f64();
        let inserted = sqlx::query(
            "INSERT INTO payment_transactions
                    (subscription_id, provider, idempotency_key, status, amount_cents, currency,
                     period_end, attempt, charging_until, lease_owner)
             VALUES ($1, $2::billing_provider, $3, 'pending', $4, $5, $6, $7,
                     now() + make_interval(secs => $8), $9)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(new.sub)
        .bind(new.provider)
        .bind(&self.key)
        .bind(new.amount_cents)
        .bind(new.currency)
        .bind(new.period_end)
        .bind(new.attempt as i16)
        .bind(secs)
        .bind(&self.owner)
        .execute(&self.db)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Claim::Held(Row {
                status: "pending".into(),
                order_id: None,
                charge_id: None,
                requests: 0,
                refusals: 0,
                since_first_request: None,
                since_last_request: None,
            }));
        }
        let taken: Option<RowTuple> = sqlx::query_as(&format!(
            "UPDATE payment_transactions
                SET charging_until = now() + make_interval(secs => $2), lease_owner = $3,
                    updated_at = now()
              WHERE idempotency_key = $1
                AND (charging_until IS NULL OR charging_until < now() OR lease_owner = $3)
             RETURNING {ROW_COLUMNS}"
        ))
        .bind(&self.key)
        .bind(secs)
        .bind(&self.owner)
        .fetch_optional(&self.db)
        .await?;
        if let Some(t) = taken {
            return Ok(Claim::Held(row(t)));
        }
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT GREATEST(0, EXTRACT(EPOCH FROM charging_until - now()))::float8
               FROM payment_transactions WHERE idempotency_key = $1",
        )
        .bind(&self.key)
        .fetch_optional(&self.db)
        .await?
        .flatten();
        Ok(Claim::Busy {
            remaining: Duration::from_secs_f64(secs.unwrap_or(0.0)),
        })
    }

    /// Takes the lease of an existing row if it is free; `false` when another attempt
    /// holds it or the row is gone.
    pub async fn take(&self) -> Result<bool, sqlx::Error> {
        self.update_own(
            "UPDATE payment_transactions
                SET charging_until = now() + make_interval(secs => $3), lease_owner = $2
              WHERE idempotency_key = $1
                AND (charging_until IS NULL OR charging_until < now() OR lease_owner = $2)",
            self.length.as_secs_f64(),
        )
        .await
    }

    /// Extends the lease while it is still this owner's; `false` once it is not.
    pub async fn renew(&self) -> Result<bool, sqlx::Error> {
        self.update_own(
            "UPDATE payment_transactions
                SET charging_until = now() + make_interval(secs => $3)
              WHERE idempotency_key = $1 AND lease_owner = $2",
            self.length.as_secs_f64(),
        )
        .await
    }

    /// Runs an `UPDATE` of this key's row with `$1` the key, `$2` this attempt's owner and
    /// `$3` `value`; whether it changed the row (the lease or its fence held).
    async fn update_own<'q, T>(&'q self, sql: &'q str, value: T) -> Result<bool, sqlx::Error>
    where
        T: 'q + Send + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        let n = sqlx::query(sql)
            .bind(&self.key)
            .bind(&self.owner)
            .bind(value)
            .execute(&self.db)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Renews the lease every third of its length until the returned guard is dropped (the
    /// attempt ended, or its future was dropped by the attempt timeout). A renewal that
    /// fails is logged; the lease then runs out by itself.
    pub fn keep_alive(&self) -> tokio_util::task::AbortOnDropHandle<()> {
        let lease = Lease {
            db: self.db.clone(),
            key: self.key.clone(),
            owner: self.owner.clone(),
            length: self.length,
        };
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut every = tokio::time::interval(lease.length / 3);
            every.tick().await;
            loop {
                every.tick().await;
                match lease.renew().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            key = lease.key,
                            "lost the key's lease; no request will be sent under it"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(key = lease.key, error = %e, "renewing the key's lease failed")
                    }
                }
            }
        }))
    }

    /// Records the Appmax order the charge request will charge. Fenced like
    /// [`Lease::intend_charge`].
    pub async fn order_opened(&self, order_id: &str) -> Result<bool, sqlx::Error> {
        self.update_own(
            "UPDATE payment_transactions SET provider_order_id = $3, updated_at = now()
              WHERE idempotency_key = $1 AND lease_owner = $2 AND charging_until > now()",
            order_id,
        )
        .await
    }

    /// Records, and commits, that a charge request is about to be sent. `false` (nothing
    /// recorded, so nothing may be sent) when this attempt no longer holds the lease.
    pub async fn intend_charge(&self) -> Result<bool, sqlx::Error> {
        self.update_own(
            "UPDATE payment_transactions
                SET charge_requests = charge_requests + 1,
                    first_charge_sent_at = COALESCE(first_charge_sent_at, now()),
                    last_charge_sent_at = now(),
                    charging_until = now() + make_interval(secs => $3),
                    updated_at = now()
              WHERE idempotency_key = $1 AND lease_owner = $2 AND charging_until > now()",
            self.length.as_secs_f64(),
        )
        .await
    }

    /// The provider positively refused the last charge request (a 429, a 4xx, a connection
    /// that never opened): it charged nothing.
    pub async fn refused(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE payment_transactions SET charge_refusals = charge_refusals + 1, updated_at = now()
              WHERE idempotency_key = $1 AND charge_refusals < charge_requests",
        )
        .bind(&self.key)
        .execute(&self.db)
        .await
        .map(|_| ())
    }
}

/// SQL that releases the lease when `$owner` (the given parameter) holds it.
fn release(owner_param: &str) -> String {
    format!(
        "charging_until = CASE WHEN lease_owner = {owner_param} THEN NULL ELSE charging_until END,
         lease_owner = CASE WHEN lease_owner = {owner_param} THEN NULL ELSE lease_owner END"
    )
}

const INSERT_EVENT: &str = "INSERT INTO subscription_events
        (subscription_id, kind, period_end, attempt, idempotency_key, job_id, detail)
    VALUES ($1, $2, $3, $4, $5, $6, $7)";

pub(super) async fn event<'e, E: sqlx::PgExecutor<'e>>(
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

/// Flags the subscription with `reason` in `metadata.renewalError` (and `extra` keys) and
/// records the event `kind`, in one commit.
pub(super) async fn flag(
    db: &PgPool,
    ev: &Event<'_>,
    kind: &str,
    reason: &str,
    extra: serde_json::Value,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE customer_subscriptions
            SET metadata = metadata || jsonb_build_object('renewalError', $2::text,
                                                         'renewalErrorAt', now()) || $3,
                updated_at = now()
          WHERE id = $1",
    )
    .bind(ev.sub)
    .bind(reason)
    .bind(&extra)
    .execute(&mut *tx)
    .await?;
    let mut detail = json!({ "reason": reason });
    if let (Some(d), Some(e)) = (detail.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    event(&mut *tx, ev, kind, detail).await?;
    tx.commit().await
}

/// How recording a paid charge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Paid {
    /// The period's one paid transaction.
    Recorded,
    /// The period was already paid by another key: recorded as `duplicate_charge`.
    Duplicate,
}

/// Paid: transaction, period and event in one commit. The period moves only if it is
/// still the one charged, so finishing twice changes nothing. A second paid key for one
/// period is refused by the unique index and recorded as `duplicate_charge` instead.
pub(super) async fn paid(
    db: &PgPool,
    ev: &Event<'_>,
    owner: &str,
    order_id: &str,
    charge_id: Option<&str>,
    next_end: DateTime<Utc>,
) -> Result<Paid, sqlx::Error> {
    let mut tx = db.begin().await?;
    let marked = sqlx::query(&format!(
        "UPDATE payment_transactions
            SET status = 'paid', provider_order_id = $2, provider_charge_id = $3,
                failure_reason = NULL, {}, updated_at = now()
          WHERE idempotency_key = $1 AND status <> 'duplicate_charge'",
        release("$4")
    ))
    .bind(ev.key)
    .bind(order_id)
    .bind(charge_id)
    .bind(owner)
    .execute(&mut *tx)
    .await;
    match marked {
        Err(sqlx::Error::Database(e))
            if e.constraint() == Some("payment_transactions_one_paid_per_period") =>
        {
            drop(tx);
            return duplicate(db, ev, owner, order_id, charge_id).await;
        }
        Err(e) => return Err(e),
        Ok(r) if r.rows_affected() == 0 => return Ok(Paid::Duplicate),
        Ok(_) => {}
    }
    let renewed = sqlx::query(
        "UPDATE customer_subscriptions
            SET current_period_start = $2, current_period_end = $3, status = 'ACTIVE',
                dunning_attempt = 0, next_attempt_at = NULL,
                metadata = metadata - 'renewalError' - 'renewalErrorAt' - 'lastDeclineReason'
                                    - 'unknownChargeKey',
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
    tx.commit().await?;
    Ok(Paid::Recorded)
}

/// The provider charged a period another key already paid: kept as `duplicate_charge` for
/// a refund, with its event.
async fn duplicate(
    db: &PgPool,
    ev: &Event<'_>,
    owner: &str,
    order_id: &str,
    charge_id: Option<&str>,
) -> Result<Paid, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(&format!(
        "UPDATE payment_transactions
            SET status = 'duplicate_charge', provider_order_id = $2, provider_charge_id = $3,
                failure_reason = 'charged for a period another transaction already paid: refund it',
                {}, updated_at = now()
          WHERE idempotency_key = $1",
        release("$4")
    ))
    .bind(ev.key)
    .bind(order_id)
    .bind(charge_id)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    event(
        &mut *tx,
        ev,
        "renewal.duplicate_charge",
        json!({ "order_id": order_id, "charge_id": charge_id }),
    )
    .await?;
    tx.commit().await?;
    Ok(Paid::Duplicate)
}

/// Declined: transaction `failed`; the subscription `PAST_DUE` until `next_at`, or `UNPAID`.
pub(super) async fn declined(
    db: &PgPool,
    ev: &Event<'_>,
    owner: &str,
    order_id: Option<&str>,
    message: &str,
    next_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(&format!(
        "UPDATE payment_transactions
            SET status = 'failed', provider_order_id = COALESCE($2, provider_order_id),
                failure_reason = $3, {}, updated_at = now()
          WHERE idempotency_key = $1 AND status NOT IN ('paid', 'duplicate_charge')",
        release("$4")
    ))
    .bind(ev.key)
    .bind(order_id)
    .bind(message)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    let moved = sqlx::query(
        "UPDATE customer_subscriptions
            SET status = CASE WHEN $4::timestamptz IS NULL THEN 'UNPAID'
                              ELSE 'PAST_DUE' END::\"SubscriptionStatus\",
                dunning_attempt = $3, next_attempt_at = $4,
                metadata = (metadata - 'unknownChargeKey')
                           || jsonb_build_object('lastDeclineReason', $5::text),
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

/// How an attempt that decided nothing leaves its transaction row.
#[derive(Clone, Copy)]
pub(super) enum Undecided {
    /// A charge may exist: reconcile before anything else.
    Unknown,
    /// The provider refused the request (4xx): nothing was charged.
    Rejected,
    /// Nothing was charged and a retry follows; on the job's last attempt a `pending` row
    /// with no request outstanding becomes `failed` so it says why it stopped.
    Retry { last: bool },
    /// The stale sweep found no trace of the key at the provider: `failed`.
    Stale,
}

impl Undecided {
    /// The new `status`, as SQL over the old one.
    fn status_sql(self) -> &'static str {
        match self {
            Self::Unknown => "'unknown'",
            Self::Rejected => {
                "CASE WHEN charge_requests > charge_refusals THEN status ELSE 'rejected' END"
            }
            Self::Retry { last: true } => {
                "CASE WHEN status = 'pending' AND charge_requests <= charge_refusals
                      THEN 'failed' ELSE status END"
            }
            Self::Retry { last: false } => "status",
            Self::Stale => "'failed'",
        }
    }

    fn event(self) -> &'static str {
        match self {
            Self::Unknown => "renewal.unknown",
            Self::Rejected => "renewal.rejected",
            Self::Retry { .. } => "renewal.retry",
            Self::Stale => "renewal.stale_failed",
        }
    }
}

/// Ends an undecided attempt in one transaction: the row's status and reason (a decided
/// row keeps its own), the lease released if this owner holds it, and the event.
pub(super) async fn settle(
    db: &PgPool,
    ev: &Event<'_>,
    owner: &str,
    how: Undecided,
    message: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(&format!(
        "UPDATE payment_transactions
            SET status = CASE WHEN status IN ('paid', 'duplicate_charge') THEN status ELSE {} END,
                failure_reason = CASE WHEN status IN ('paid', 'duplicate_charge')
                                      THEN failure_reason ELSE $2 END,
                {}, updated_at = now()
          WHERE idempotency_key = $1",
        how.status_sql(),
        release("$3")
    ))
    .bind(ev.key)
    .bind(message)
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    event(&mut *tx, ev, how.event(), json!({ "reason": message })).await?;
    tx.commit().await
}

/// Releases the lease without touching the row otherwise (the attempt waits for another
/// worker, or snoozes without having written anything).
pub(super) async fn release_lease(db: &PgPool, key: &str, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE payment_transactions SET {} WHERE idempotency_key = $1 AND lease_owner = $2",
        release("$2")
    ))
    .bind(key)
    .bind(owner)
    .execute(db)
    .await
    .map(|_| ())
}

/// Time since the key's first charge request, by the database's clock (`None`: none sent).
pub(super) async fn since_first_request(
    db: &PgPool,
    key: &str,
) -> Result<Option<Duration>, sqlx::Error> {
    let secs: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - first_charge_sent_at)::float8
           FROM payment_transactions WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(db)
    .await?
    .flatten();
    Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
}
