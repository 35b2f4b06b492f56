//! `Idempotency-Key` records in PostgreSQL (`ingest_idempotency`, migration
//! 20261123000006): claim first by insert, answer, then store the answer.
//!
//! A record is one of: claimed (no status, no answer), answered (a status below 500 and its
//! answer, replayed to a repeat), or of unknown outcome (a 5xx status and an answer listing
//! the job ids that may run). A repeat of an unknown outcome resumes the claim with that
//! answer, so it publishes under the same ids; while it runs, the record keeps that answer,
//! and giving the claim up returns it to "unknown outcome" rather than forgetting the ids.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// How long a request that holds a claim may take before another request with the same
/// key may take it over (the first process died between claim and answer).
const ABANDONED_AFTER_SECS: f64 = 120.0;
/// How long a request waits for a concurrent request with the same key to finish.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(10);

/// What a claim found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the key: publish, then [`Store::complete`] or [`Store::release`].
    New,
    /// The key was answered before, within the window: send that answer again.
    Replay { status: u16, body: String },
    /// An earlier request with this key ended with an unknown outcome (its answer,
    /// `earlier`, lists the job ids): this request owns the key again and publishes under
    /// the same ids.
    Resume { earlier: String },
    /// The key was used with a different request.
    Mismatch,
    /// Another request with this key is still running (after waiting for it).
    InProgress,
}

/// A record as [`Store::claim`] reads it: request hash, status, answer, expired, abandoned.
type Record = (String, Option<i16>, Option<String>, bool, bool);

/// The idempotency table and its window.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    window: Duration,
}

/// SHA-256 over the parts that make two requests "the same", hex.
pub fn request_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// The PostgreSQL pool (also holds long-delayed jobs in the outbox).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn new(pool: PgPool, window: Duration) -> Self {
        Self { pool, window }
    }

    fn window_secs(&self) -> f64 {
        self.window.as_secs_f64()
    }

    /// Claims `(scope, key)` for a request with `hash`, or says what an earlier request
    /// with the same key left. Safe under concurrency: exactly one insert wins.
    pub async fn claim(&self, scope: &str, key: &str, hash: &str) -> Result<Claim, sqlx::Error> {
        let deadline = Instant::now() + WAIT_FOR_FIRST;
        loop {
            let inserted = sqlx::query(
                "INSERT INTO ingest_idempotency (scope, key, request_hash) VALUES ($1, $2, $3) \
                 ON CONFLICT (scope, key) DO NOTHING",
            )
            .bind(scope)
            .bind(key)
            .bind(hash)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(Claim::New);
            }
            let row: Option<Record> = sqlx::query_as(
                "SELECT request_hash, status, response, \
                            created_at < now() - make_interval(secs => $3), \
                            status IS NULL AND created_at < now() - make_interval(secs => $4) \
                     FROM ingest_idempotency WHERE scope = $1 AND key = $2",
            )
            .bind(scope)
            .bind(key)
            .bind(self.window_secs())
            .bind(ABANDONED_AFTER_SECS)
            .fetch_optional(&self.pool)
            .await?;
            let Some((stored_hash, status, response, expired, abandoned)) = row else {
                continue; // deleted in between: claim again
            };
            if expired || (abandoned && response.is_none()) {
                // Expired (or abandoned with nothing to resume): remove exactly that row, then
                // claim again.
                sqlx::query(
                    "DELETE FROM ingest_idempotency WHERE scope = $1 AND key = $2 \
                     AND request_hash = $3 AND status IS NOT DISTINCT FROM $4",
                )
                .bind(scope)
                .bind(key)
                .bind(&stored_hash)
                .bind(status)
                .execute(&self.pool)
                .await?;
                continue;
            }
            if stored_hash != hash {
                return Ok(Claim::Mismatch);
            }
            match (status, response) {
                (Some(status), Some(body)) if status < 500 => {
                    return Ok(Claim::Replay {
                        status: status as u16,
                        body,
                    })
                }
                (Some(_), Some(_)) | (None, Some(_)) if abandoned || status.is_some() => {
                    if let Some(earlier) = self.resume(scope, key, status).await? {
                        return Ok(Claim::Resume { earlier });
                    }
                    continue; // another request resumed it first
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Ok(Claim::InProgress);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes over a record of unknown outcome (`status` 5xx, or claimed and abandoned) for
    /// a new attempt; exactly one concurrent caller gets its answer back.
    async fn resume(
        &self,
        scope: &str,
        key: &str,
        status: Option<i16>,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE ingest_idempotency SET status = NULL, created_at = now(), completed_at = NULL \
             WHERE scope = $1 AND key = $2 AND response IS NOT NULL \
               AND ((status IS NULL AND $3::int2 IS NULL \
                     AND created_at < now() - make_interval(secs => $4)) \
                    OR status = $3) \
             RETURNING response",
        )
        .bind(scope)
        .bind(key)
        .bind(status)
        .bind(ABANDONED_AFTER_SECS)
        .fetch_optional(&self.pool)
        .await
    }

    /// Stores the answer of the request that owns the claim.
    pub async fn complete(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE ingest_idempotency SET status = $3, response = $4, completed_at = now() \
             WHERE scope = $1 AND key = $2 AND status IS NULL",
        )
        .bind(scope)
        .bind(key)
        .bind(status as i16)
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives the claim up (nothing was published: the client may retry). A resumed claim
    /// returns to its earlier unknown outcome instead, keeping the job ids that may run.
    pub async fn release(&self, scope: &str, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH forgotten AS ( \
                 DELETE FROM ingest_idempotency WHERE scope = $1 AND key = $2 \
                   AND status IS NULL AND response IS NULL) \
             UPDATE ingest_idempotency SET status = 503, completed_at = now() \
              WHERE scope = $1 AND key = $2 AND status IS NULL AND response IS NOT NULL",
        )
        .bind(scope)
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A guard for a claim this request owns: dropped before [`ClaimGuard::disarm`] (the
    /// request panicked, or was dropped because the client went away), it gives the claim
    /// up in the background, so a retry with the key is not refused until the claim counts as
    /// abandoned.
    pub fn guard(&self, scope: &str, key: &str) -> ClaimGuard {
        ClaimGuard(Some((self.clone(), scope.to_owned(), key.to_owned())))
    }

    /// Deletes records older than the window. Returns how many.
    pub async fn prune(&self) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "DELETE FROM ingest_idempotency WHERE created_at < now() - make_interval(secs => $1)",
        )
        .bind(self.window_secs())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

/// Releases an unfinished claim when dropped; see [`Store::guard`].
#[must_use = "a guard released at once protects nothing"]
pub struct ClaimGuard(Option<(Store, String, String)>);

impl ClaimGuard {
    /// The request finished and stored (or released) its answer itself.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let Some((store, scope, key)) = self.0.take() else {
            return;
        };
        tracing::warn!("a request holding an Idempotency-Key claim ended early; releasing it");
        // Only a claim still without an answer is deleted (`release`).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.release(&scope, &key).await {
                    tracing::warn!(error = %e, "cannot release an abandoned Idempotency-Key claim");
                }
            });
        }
    }
}
