//! `cron.fail-stale-payments`: reconciles payment transactions left undecided (`pending`
//! or `unknown` longer than `max_age`, no live lease) with the provider, one by one:
//!
//! - paid at the provider → recorded `paid` and the period advanced (or `duplicate_charge`
//!   when another transaction already paid that period);
//! - declined at the provider → recorded `failed`, with dunning as for any decline;
//! - never seen by the provider → `failed`, with the reason;
//! - still pending, a lookup that fails, or a provider this worker has no client for →
//!   left as it is, and counted.
//!
//! It never charges: it only asks.

use super::{
    db_err, interval, load, record, Appmax, Attempt, Pagarme, PrepareError, Renewal,
    RenewalProvider,
};
use crate::maintenance::age;
use crate::providers::Charge;
use crate::{JobContext, ResultExt, Task, TaskError};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;
use warren_core::telemetry::names;

/// Most rows one run reconciles; the next run takes the rest.
const BATCH: i64 = 500;

/// Payload of `cron.fail-stale-payments`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailStale {
    /// An undecided (`pending` or `unknown`) payment transaction older than this is
    /// reconciled with its provider ("2h", "45m").
    #[serde(default = "default_max_age")]
    pub max_age: String,
}

fn default_max_age() -> String {
    "2h".into()
}

/// The sweep, with the renewal handlers of the providers this worker can reach.
pub struct FailStalePayments {
    pagarme: Option<Arc<Renewal<Pagarme>>>,
    appmax: Option<Arc<Renewal<Appmax>>>,
}

impl FailStalePayments {
    pub fn new(
        pagarme: Option<Arc<Renewal<Pagarme>>>,
        appmax: Option<Arc<Renewal<Appmax>>>,
    ) -> Self {
        Self { pagarme, appmax }
    }
}

/// One stale row.
#[derive(sqlx::FromRow)]
struct Stale {
    idempotency_key: String,
    subscription_id: Option<Uuid>,
    provider: String,
    period_end: Option<DateTime<Utc>>,
    attempt: i16,
    provider_order_id: Option<String>,
}

/// What the sweep did with one row (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    Paid,
    Declined,
    Failed,
    Left,
}

impl Reconciled {
    fn as_str(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Left => "left",
        }
    }
}

impl Task for FailStalePayments {
    const NAME: &'static str = "cron.fail-stale-payments";
    const QUEUE: &'static str = "cron";
    type Payload = FailStale;
    async fn run(&self, p: FailStale, ctx: &JobContext) -> Result<(), TaskError> {
        let max_age = age("max_age", &p.max_age)?;
        let rows: Vec<Stale> = sqlx::query_as(
            "SELECT idempotency_key, subscription_id, provider::text AS provider, period_end,
                    attempt, provider_order_id
               FROM payment_transactions
              WHERE status IN ('pending', 'unknown')
                AND created_at < now() - make_interval(secs => $1)
                AND (charging_until IS NULL OR charging_until < now())
              ORDER BY created_at
              LIMIT $2",
        )
        .bind(max_age.as_secs_f64())
        .bind(BATCH)
        .fetch_all(&ctx.db)
        .await
        .retryable()?;
        let mut tally = std::collections::BTreeMap::<&str, u64>::new();
        for row in &rows {
            let done = match row.provider.as_str() {
                "PAGARME" => reconcile(self.pagarme.as_deref(), row, &p.max_age, ctx).await?,
                "APPMAX" => reconcile(self.appmax.as_deref(), row, &p.max_age, ctx).await?,
                _ => Reconciled::Left,
            };
            let label = if row.provider == "PAGARME" {
                "pagarme"
            } else {
                "appmax"
            };
            metrics::counter!(names::STALE_PAYMENTS, "provider" => label,
                "outcome" => done.as_str())
            .increment(1);
            *tally.entry(done.as_str()).or_default() += 1;
        }
        tracing::info!(max_age = %p.max_age, ?tally, "stale payment transactions reconciled");
        Ok(())
    }
}

/// Reconciles one row with provider `P`, when this worker has its client.
async fn reconcile<P: RenewalProvider>(
    h: Option<&Renewal<P>>,
    row: &Stale,
    max_age: &str,
    ctx: &JobContext,
) -> Result<Reconciled, TaskError> {
    let key = row.idempotency_key.as_str();
    let Some(h) = h else {
        tracing::warn!(key, provider = P::LABEL,
            "stale payment left: this worker has no client for its provider (configure the provider on the cron worker)");
        return Ok(Reconciled::Left);
    };
    let db = &ctx.db;
    let (Some(sub_id), Some(period_end)) = (row.subscription_id, row.period_end) else {
        tracing::warn!(
            key,
            "stale payment left: it names no subscription period to reconcile"
        );
        return Ok(Reconciled::Left);
    };
    let Some(sub) = load(db, sub_id).await.map_err(db_err)? else {
        return Ok(Reconciled::Left);
    };
    let prepared = match h.provider.prepare(&sub, db).await {
        Err(PrepareError::Db(e)) => return Err(db_err(e)),
        prepared => prepared,
    };
    let (Ok(interval), Ok(prepared)) = (interval(&sub, P::INTERVAL_REQUIRED), prepared) else {
        tracing::warn!(
            key,
            "stale payment left: the subscription no longer meets the preconditions"
        );
        return Ok(Reconciled::Left);
    };
    let attempt = u16::try_from(row.attempt).unwrap_or(1);
    let ev = record::Event {
        sub: sub.id,
        period_end,
        attempt,
        key,
        job_id: &ctx.job_id,
    };
    let owner = format!("{}@{}#stale", ctx.job_id, *super::INSTANCE);
    let lease = record::Lease::new(db.clone(), key, owner, h.policy.lease);
    if !lease.take().await.map_err(db_err)? {
        return Ok(Reconciled::Left);
    }
    let _renewing = lease.keep_alive();
    let mut a = Attempt {
        h,
        db,
        ev: &ev,
        lease: &lease,
        prepared: &prepared,
        sub: &sub,
        interval,
        ctx,
        permit: None,
    };
    let found = a.lookup(row.provider_order_id.as_deref()).await;
    let release = || async {
        record::release_lease(db, key, lease.owner())
            .await
            .map_err(db_err)
    };
    match found {
        Ok(Some(c @ Charge::Paid { .. })) => {
            a.record(c).await?;
            Ok(Reconciled::Paid)
        }
        Ok(Some(c @ Charge::Failed { .. })) => {
            a.record(c).await?;
            Ok(Reconciled::Declined)
        }
        Ok(None) => {
            let reason =
                format!("stale: undecided longer than {max_age} and the provider never saw it");
            record::settle(db, &ev, lease.owner(), record::Undecided::Stale, &reason)
                .await
                .map_err(db_err)?;
            Ok(Reconciled::Failed)
        }
        Ok(Some(Charge::Pending { .. })) => {
            release().await?;
            Ok(Reconciled::Left)
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "stale payment left: the lookup failed");
            release().await?;
            Ok(Reconciled::Left)
        }
    }
}
