//! Due renewals: which subscriptions must be charged now, and enqueueing each charge
//! attempt once.
//!
//! Each [`DueKind`] is a fixed SQL predicate matching one partial index of
//! `customer_subscriptions` (migrations `..._billing.up.sql`, `..._renewals.up.sql`), read in
//! keyset order in pages, so the scan never holds the whole due set. Period kinds read
//! `(current_period_end, id)` of ACTIVE/TRIALING subscriptions (attempt 1); dunning kinds read
//! `(COALESCE(next_attempt_at, current_period_end), id)` of PAST_DUE ones (attempt
//! `dunning_attempt + 1`; the handler sets both after a decline).
//!
//! **Once per attempt.** For every due page the leader, in one transaction: inserts an
//! enqueue record per subscription, period and attempt (`renewal_enqueues`, primary key
//! `(subscription_id, period_end, attempt)`, `ON CONFLICT DO NOTHING`), publishes a job for each row
//! it inserted, waits for every broker confirm, and only then commits. A crash or a failed
//! publish rolls the records back, so the next scan publishes them again (a lost publish is
//! retried); a committed record is never published again by the scanner, whatever the
//! restarts, overlapping ticks or replicas.
//!
//! **Fenced.** On the leader ([`scan_leased`]) that transaction runs on the lease's own
//! session and proves, after the inserts and before the first publish, that the session
//! still holds the leader lock; every publish then starts only while the lease is trusted
//! ([`crate::leader::Fence`]). A replica that lost the lease (frozen, partitioned, replaced)
//! publishes nothing more and its records roll back.
//!
//! **Database time.** The due cutoff is the database's clock, read once per scan by the
//! caller ([`scan_leased`]) or with `now()` ([`scan`]); a replica's own clock is never used.
//!
//! **What a crash costs.** Only a transaction's published-but-uncommitted messages: a leader
//! that dies (or loses its lease) after publishing part of a page and before its commit
//! leaves those messages in the broker while its records roll back, so the next leader
//! publishes the whole page again. That is at most one page (`--scan-page`, default 1000) of
//! duplicate messages per crash, each with the same deterministic job id and idempotency key
//! as its twin, which the worker's ledger and the handler's idempotency key absorb.
//! Confirms received and the commit lost is the same case with the whole page sent.

use crate::leader::{Fence, Leadership};
use crate::PassError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use std::cell::Cell;
use uuid::Uuid;
use warren_core::envelope::job_id_for_key;
use warren_core::task::RenewalPayload;
use warren_producer::{Producer, PublishOptions};

/// What is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DueKind {
    /// Pagar.me prepaid: Warren charges the stored card when the period ends.
    Pagarme,
    /// Pagar.me prepaid, PAST_DUE: the next dunning attempt of a declined period is due.
    PagarmeDunning,
    /// Pagar.me native: Pagar.me bills itself; counted only (observe mode).
    PagarmeNative,
    /// Appmax: Warren charges through the merchant's integration when the period ends.
    Appmax,
    /// Appmax, PAST_DUE: the next dunning attempt of a declined period is due.
    AppmaxDunning,
}

impl DueKind {
    pub const ALL: [DueKind; 5] = [
        Self::Pagarme,
        Self::PagarmeDunning,
        Self::PagarmeNative,
        Self::Appmax,
        Self::AppmaxDunning,
    ];

    /// The `kind` label and CLI name.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pagarme => "pagarme",
            Self::PagarmeDunning => "pagarme_dunning",
            Self::PagarmeNative => "pagarme_native",
            Self::Appmax => "appmax",
            Self::AppmaxDunning => "appmax_dunning",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.label() == s)
    }

    /// The task its jobs go to; `None` for observe-only kinds.
    pub fn task(self) -> Option<&'static str> {
        match self {
            Self::Pagarme | Self::PagarmeDunning => Some(warren_core::task::RENEWAL_PAGARME),
            Self::PagarmeNative => None,
            Self::Appmax | Self::AppmaxDunning => Some(warren_core::task::RENEWAL_APPMAX),
        }
    }

    /// The provider flags that govern it.
    pub fn provider(self) -> &'static str {
        match self {
            Self::Pagarme | Self::PagarmeDunning | Self::PagarmeNative => "pagarme",
            Self::Appmax | Self::AppmaxDunning => "appmax",
        }
    }

    fn db_provider(self) -> &'static str {
        match self.provider() {
            "pagarme" => "PAGARME",
            _ => "APPMAX",
        }
    }

    /// Dunning kinds read `next_attempt_at`; the others `current_period_end`.
    pub fn is_dunning(self) -> bool {
        matches!(self, Self::PagarmeDunning | Self::AppmaxDunning)
    }

    /// The column that says when a subscription of this kind is due.
    pub fn due_column(self) -> &'static str {
        if self.is_dunning() {
            "COALESCE(next_attempt_at, current_period_end)"
        } else {
            "current_period_end"
        }
    }

    /// The due predicate, written exactly as its partial index's (so the planner uses it).
    pub fn predicate(self) -> &'static str {
        match self {
            Self::Pagarme => {
                "provider = 'PAGARME' AND is_native = false AND canceled_at IS NULL \
                 AND status IN ('ACTIVE', 'TRIALING')"
            }
            Self::PagarmeDunning => {
                "provider = 'PAGARME' AND is_native = false AND canceled_at IS NULL \
                 AND status = 'PAST_DUE'"
            }
            Self::PagarmeNative => {
                "provider = 'PAGARME' AND is_native = true AND canceled_at IS NULL \
                 AND status IN ('ACTIVE', 'PAST_DUE', 'TRIALING')"
            }
            Self::Appmax => {
                "provider = 'APPMAX' AND canceled_at IS NULL \
                 AND status IN ('ACTIVE', 'TRIALING')"
            }
            Self::AppmaxDunning => {
                "provider = 'APPMAX' AND canceled_at IS NULL \
                 AND status = 'PAST_DUE'"
            }
        }
    }

    /// One page of due subscriptions after `after`, in keyset order: rows of
    /// `(id, period end, keyset time, attempt)`.
    pub fn page_sql(self) -> String {
        let at = self.due_column();
        let attempt = if self.is_dunning() {
            "(dunning_attempt + 1)::smallint"
        } else {
            "1::smallint"
        };
        format!(
            "SELECT id, current_period_end, {at}, {attempt} FROM customer_subscriptions \
             WHERE {} AND {at} <= $1 \
               AND ({at}, id) > ($2, $3) \
             ORDER BY {at}, id LIMIT $4",
            self.predicate()
        )
    }
}

/// One due charge attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Due {
    pub subscription_id: Uuid,
    pub period_end: DateTime<Utc>,
    /// Keyset position: the period end, or the dunning attempt's time.
    pub at: DateTime<Utc>,
    /// 1 for the period's renewal, 2, 3, … for dunning attempts.
    pub attempt: i16,
}

/// The idempotency key of one attempt ([`warren_core::billing::renewal_key`]).
pub use warren_core::billing::renewal_key;

/// Per-provider rollout flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderFlags {
    /// Not scanned at all when false.
    pub enabled: bool,
    /// Scanned, counted and logged; nothing published.
    pub dry_run: bool,
}

/// What one scan of one kind did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanReport {
    /// Subscriptions due now.
    pub due: u64,
    /// Jobs published (and recorded) by this scan.
    pub published: u64,
}

/// The keyset position before every subscription (PostgreSQL cannot store chrono's
/// minimum; no billing period ends before year 1).
pub fn scan_start() -> (DateTime<Utc>, Uuid) {
    let year_one = chrono::NaiveDate::from_ymd_opt(1, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date")
        .and_utc();
    (year_one, Uuid::nil())
}

/// A page of due charge attempts.
pub async fn due_page(
    pool: &PgPool,
    kind: DueKind,
    now: DateTime<Utc>,
    after: (DateTime<Utc>, Uuid),
    limit: i64,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as::<_, (Uuid, DateTime<Utc>, DateTime<Utc>, i16)>(&kind.page_sql())
        .bind(now)
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map(|rows| {
            rows.into_iter()
                .map(|(subscription_id, period_end, at, attempt)| Due {
                    subscription_id,
                    period_end,
                    at,
                    attempt,
                })
                .collect()
        })
}

/// How many subscriptions of `kind` are due at `now` (`warren due`, `warren status`).
pub async fn count_due(
    pool: &PgPool,
    kind: DueKind,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM customer_subscriptions WHERE {} AND {} <= $1",
        kind.predicate(),
        kind.due_column()
    ))
    .bind(now)
    .fetch_one(pool)
    .await
}

/// Scans one kind as the leader: everything due at `cutoff` (the database's clock, read by
/// the caller), each page's enqueue fenced by `lease` (see the module docs). Stops with
/// [`PassError::Lease`] as soon as the lease is lost, observe-only kinds included.
pub async fn scan_leased(
    pool: &PgPool,
    lease: &mut Leadership,
    producer: Option<&Producer>,
    kind: DueKind,
    page_size: i64,
    cutoff: DateTime<Utc>,
) -> Result<ScanReport, PassError> {
    scan_with(pool, Some(lease), producer, kind, page_size, cutoff).await
}

/// Scans one kind outside leadership (`warren bench-due`): the cutoff is the database's
/// `now()`, each page's enqueue runs on a pooled connection, unfenced. The records still
/// make each attempt's publish happen once.
pub async fn scan(
    pool: &PgPool,
    producer: Option<&Producer>,
    kind: DueKind,
    page_size: i64,
) -> Result<ScanReport, PassError> {
    let cutoff = database_now(pool).await?;
    scan_with(pool, None, producer, kind, page_size, cutoff).await
}

/// The database's clock: what is due is judged by it, never by a replica's own clock.
pub async fn database_now(pool: &PgPool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(pool).await
}

async fn scan_with(
    pool: &PgPool,
    mut lease: Option<&mut Leadership>,
    producer: Option<&Producer>,
    kind: DueKind,
    page_size: i64,
    cutoff: DateTime<Utc>,
) -> Result<ScanReport, PassError> {
    let mut report = ScanReport::default();
    let mut after = scan_start();
    loop {
        if let Some(l) = lease.as_deref_mut() {
            l.keep_alive().await?;
        }
        let page = due_page(pool, kind, cutoff, after, page_size).await?;
        let Some(last) = page.last() else { break };
        after = (last.at, last.subscription_id);
        report.due += page.len() as u64;
        if let (Some(task), Some(producer)) = (kind.task(), producer) {
            report.published += match lease.as_deref_mut() {
                Some(l) => {
                    let (conn, fence) = l.parts();
                    enqueue(conn, Some(fence), producer, kind, task, &page).await?
                }
                None => {
                    let mut conn = pool.acquire().await?;
                    enqueue(&mut conn, None, producer, kind, task, &page).await?
                }
            };
        }
        if (page.len() as i64) < page_size {
            break;
        }
    }
    Ok(report)
}

/// One page's enqueue transaction on `conn`; with a fence, proven before the first publish
/// and checked before each.
async fn enqueue(
    conn: &mut PgConnection,
    mut fence: Option<&mut Fence>,
    producer: &Producer,
    kind: DueKind,
    task: &str,
    page: &[Due],
) -> Result<u64, PassError> {
    let keys: Vec<String> = page
        .iter()
        .map(|d| renewal_key(d.subscription_id, d.period_end, d.attempt.max(1) as u16))
        .collect();
    let ids: Vec<Uuid> = page.iter().map(|d| d.subscription_id).collect();
    let ends: Vec<DateTime<Utc>> = page.iter().map(|d| d.period_end).collect();
    let attempts: Vec<i16> = page.iter().map(|d| d.attempt).collect();
    let job_ids: Vec<Uuid> = keys.iter().map(|k| job_id_for_key(k)).collect();
    let mut tx = conn.begin().await?;
    let fresh: Vec<(Uuid, DateTime<Utc>, i16, Uuid, String)> = sqlx::query_as(
        "INSERT INTO renewal_enqueues
                (subscription_id, period_end, attempt, provider, job_id, idempotency_key)
         SELECT s, e, a, $3::billing_provider, j, k
           FROM unnest($1::uuid[], $2::timestamptz[], $4::uuid[], $5::text[], $6::smallint[])
                AS u(s, e, j, k, a)
         ON CONFLICT DO NOTHING
         RETURNING subscription_id, period_end, attempt, job_id, idempotency_key",
    )
    .bind(&ids)
    .bind(&ends)
    .bind(kind.db_provider())
    .bind(&job_ids)
    .bind(&keys)
    .bind(&attempts)
    .fetch_all(&mut *tx)
    .await?;
    if fresh.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    if let Some(f) = fence.as_deref_mut() {
        f.prove(&mut tx).await?;
    }
    let fence = fence.as_deref();
    let lapsed = Cell::new(false);
    let bodies = fresh.iter().map_while(|(sub, end, attempt, job, key)| {
        // Checked as publish_many takes each message, before publishing it (it takes at most
        // one window ahead of the confirms).
        if fence.is_some_and(|f| !f.valid()) {
            lapsed.set(true);
            return None;
        }
        let body = serde_json::to_vec(&RenewalPayload {
            subscription_id: *sub,
            period_end: *end,
            attempt: (*attempt).max(1) as u16,
        })
        .expect("a renewal payload serializes");
        let opts = PublishOptions {
            id: Some(job.to_string()),
            idempotency_key: Some(key.clone()),
            ..Default::default()
        };
        Some((body, opts))
    });
    // Every confirm before the commit: a failure rolls the records back for the next scan.
    producer.publish_many(task, bodies, 256, |_| {}).await?;
    if let (true, Some(f)) = (lapsed.get(), fence) {
        let _ = tx.rollback().await;
        return Err(f.expired().into());
    }
    tx.commit().await?;
    Ok(fresh.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_keys_and_ids_are_deterministic() {
        let sub = Uuid::parse_str("0b9a4f7e-52a4-4a1f-9d55-8f6a0c1d2e3f").unwrap();
        let end: DateTime<Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        let key = renewal_key(sub, end, 1);
        assert_eq!(
            key,
            "renewal:0b9a4f7e-52a4-4a1f-9d55-8f6a0c1d2e3f:2026-11-23T12:00:00Z"
        );

        let other = renewal_key(sub, "2026-12-23T12:00:00.5Z".parse().unwrap(), 1);
        assert_eq!(
            other,
            "renewal:0b9a4f7e-52a4-4a1f-9d55-8f6a0c1d2e3f:2026-12-23T12:00:00.500Z"
        );
        assert_ne!(job_id_for_key(&key), job_id_for_key(&other));
        let dunning = renewal_key(sub, end, 2);
        assert_eq!(dunning, format!("{key}:2"));
        assert_ne!(job_id_for_key(&key), job_id_for_key(&dunning));
    }

    #[test]
    fn kinds_round_trip_their_labels() {
        for k in DueKind::ALL {
            assert_eq!(DueKind::parse(k.label()), Some(k));
        }
        assert_eq!(DueKind::parse("stripe"), None);
        assert_eq!(DueKind::PagarmeNative.task(), None);
        assert_eq!(DueKind::AppmaxDunning.task(), DueKind::Appmax.task());
        assert!(DueKind::PagarmeDunning
            .page_sql()
            .contains("COALESCE(next_attempt_at, current_period_end) <= $1"));
    }
}
