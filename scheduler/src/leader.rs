//! Leader election: one scheduler replica acts, the others stand by.
//!
//! **Leadership is a lease.** The leader holds a session-level PostgreSQL advisory lock on a
//! dedicated connection (not a pooled one: the lock belongs to the session), opened with
//! session settings that make PostgreSQL itself end a silent session ([`LeaseConfig`]):
//! `idle_session_timeout` and `idle_in_transaction_session_timeout` (a frozen or stuck leader
//! stops talking to its session), `tcp_user_timeout` and TCP keepalives (a vanished host or
//! network). The healthy leader uses its session at least once a second, so only a leader
//! that has stopped acting loses it; when the session ends, PostgreSQL releases the lock and a
//! standby's next attempt (every `retry_every`) wins.
//!
//! **Fencing.** Every enqueue transaction (due pages, cron ticks) runs *on the lease's own
//! session* and, before it publishes, proves in that transaction that this session holds the
//! lock: `pg_try_advisory_xact_lock` on the same key is true in the session holding the
//! lock and false wherever another session holds it, so a standby that took over makes it
//! fail. Its commit can only succeed while the session, and so the lock, lives. Between that proof and the publishes the leader trusts
//! its lease on its monotonic clock only: a publish starts only while less than
//! `lease - margin` has passed since the proof was sent, a span in which PostgreSQL cannot
//! have ended the session for silence. A process frozen for longer finds, when it resumes,
//! that its lease ran out and publishes nothing more.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The advisory-lock key for a namespace: replicas of one namespace compete, different
/// namespaces (tests, tenants) on one database do not.
pub fn lock_key(namespace: &str) -> i64 {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("warren-scheduler:{namespace}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// The lease's bounds (`warren scheduler --leader-lease`, `--scan-lock-timeout`,
/// `--scan-statement-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long PostgreSQL lets the leader's session be silent (idle, idle in a transaction,
    /// or with data the client does not acknowledge) before it ends the session and so
    /// releases the lock.
    pub lease: Duration,
    /// `lock_timeout` of the lease session's statements: an enqueue never waits longer on
    /// another transaction's rows.
    pub lock_timeout: Duration,
    /// `statement_timeout` of the lease session's statements.
    pub statement_timeout: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

impl LeaseConfig {
    /// How long after a proof the leader still trusts its lease: the lease less a fifth
    /// (at least 500 ms) for scheduling delays between reading the clock and publishing.
    pub fn trusted_for(&self) -> Duration {
        let margin = (self.lease / 5).max(Duration::from_millis(500));
        self.lease.saturating_sub(margin)
    }

    /// The session settings, as `(name, value)` startup options.
    pub fn session_settings(&self) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| d.as_millis().max(1).to_string();
        let secs = self.lease.as_secs().max(2);
        vec![
            ("idle_session_timeout", ms(self.lease)),
            ("idle_in_transaction_session_timeout", ms(self.lease)),
            ("tcp_user_timeout", ms(self.lease)),
            // Silent peer found dead after lease/2 + 3 probes 1 s apart (TCP connections only).
            ("tcp_keepalives_idle", (secs / 2).to_string()),
            ("tcp_keepalives_interval", "1".to_owned()),
            ("tcp_keepalives_count", "3".to_owned()),
            ("lock_timeout", ms(self.lock_timeout)),
            ("statement_timeout", ms(self.statement_timeout)),
        ]
    }
}

/// The database's clock as one replica read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbClock {
    /// `clock_timestamp()` on the database.
    pub now: DateTime<Utc>,
    /// This replica's clock minus the database's, in seconds (positive: the replica is
    /// fast), measured against the midpoint of the round trip.
    pub skew_seconds: f64,
}

impl DbClock {
    fn measure(before: DateTime<Utc>, db: DateTime<Utc>, after: DateTime<Utc>) -> Self {
        let mid = before + (after - before) / 2;
        let skew = (mid - db).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        Self {
            now: db,
            skew_seconds: skew,
        }
    }
}

/// Why the lease cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the leader lock is not held by this session")]
    NotHeld,
    #[error("the lease ran out: last proof {0:?} ago")]
    Expired(Duration),
    #[error("the lease session did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the lease session failed: {0}")]
    Db(#[from] sqlx::Error),
}

/// What lets an enqueue transaction publish: the lock key and the last proof that the lease
/// session held it.
#[derive(Debug)]
pub struct Fence {
    key: i64,
    trusted_for: Duration,
    /// When the last successful proof was *sent* (PostgreSQL's silence timers cannot have
    /// started before).
    proven_at: Instant,
}

impl Fence {
    /// Whether a publish may start now.
    pub fn valid(&self) -> bool {
        self.proven_at.elapsed() < self.trusted_for
    }

    /// `Err(Expired)` unless [`Fence::valid`].
    pub fn check_local(&self) -> Result<(), LeaseError> {
        if self.valid() {
            Ok(())
        } else {
            Err(self.expired())
        }
    }

    /// The error for a lease no longer trusted.
    pub fn expired(&self) -> LeaseError {
        LeaseError::Expired(self.proven_at.elapsed())
    }

    /// Proves, inside the caller's transaction on the lease session, that this session holds
    /// the lock, and renews the local trust from the moment the proof was sent.
    pub async fn prove(&mut self, tx: &mut PgConnection) -> Result<(), LeaseError> {
        let sent = Instant::now();
        let held: bool = tokio::time::timeout(
            self.trusted_for,
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(self.key)
                .fetch_one(tx),
        )
        .await
        .map_err(|_| LeaseError::Timeout(self.trusted_for))??;
        if !held {
            return Err(LeaseError::NotHeld);
        }
        self.proven_at = sent;
        Ok(())
    }
}

/// Held leadership: the connection that owns the lock, and its fence.
pub struct Leadership {
    conn: PgConnection,
    fence: Fence,
}

impl Leadership {
    /// Tries once to become leader, reading the database clock on the way. `None`: another
    /// replica leads.
    pub async fn try_acquire(
        database_url: &str,
        key: i64,
        cfg: &LeaseConfig,
    ) -> Result<(Option<Self>, DbClock), sqlx::Error> {
        let settings = cfg.session_settings();
        let mut conn = PgConnectOptions::from_str(database_url)?
            .application_name("warren-scheduler-leader")
            .options(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .connect()
            .await?;
        let sent = Instant::now();
        let before = Utc::now();
        let (won, db): (bool, DateTime<Utc>) =
            sqlx::query_as("SELECT pg_try_advisory_lock($1), clock_timestamp()")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
        let clock = DbClock::measure(before, db, Utc::now());
        if won {
            let fence = Fence {
                key,
                trusted_for: cfg.trusted_for(),
                proven_at: sent,
            };
            Ok((Some(Self { conn, fence }), clock))
        } else {
            let _ = conn.close().await;
            Ok((None, clock))
        }
    }

    /// One round trip on the lease session: proves it alive (and so the lock held), renews
    /// the local trust and reads the database clock. An error means leadership is lost.
    pub async fn renew(&mut self) -> Result<DbClock, LeaseError> {
        let sent = Instant::now();
        let before = Utc::now();
        let limit = self.fence.trusted_for;
        let db: DateTime<Utc> = tokio::time::timeout(
            limit,
            sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut self.conn),
        )
        .await
        .map_err(|_| LeaseError::Timeout(limit))??;
        let clock = DbClock::measure(before, db, Utc::now());
        // A reply that took longer than the trust span proves nothing about now.
        self.fence.proven_at = sent;
        self.fence.check_local()?;
        Ok(clock)
    }

    /// Renews only when the last proof is older than a quarter of the trust span: long passes
    /// keep the session talking and stop as soon as leadership is gone.
    pub async fn keep_alive(&mut self) -> Result<(), LeaseError> {
        if self.fence.proven_at.elapsed() > self.fence.trusted_for / 4 {
            self.renew().await?;
        }
        Ok(())
    }

    /// The lease session and its fence, for an enqueue transaction.
    pub fn parts(&mut self) -> (&mut PgConnection, &mut Fence) {
        (&mut self.conn, &mut self.fence)
    }

    /// Releases the lock (closing the connection releases it too).
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}

/// The replica holding a namespace's leader lock, as PostgreSQL sees its session.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct LeaderSession {
    pub pid: i32,
    pub application_name: String,
    /// The replica's address (`None` over a Unix socket).
    pub client_addr: Option<String>,
    /// When the lock's connection opened: leader since (about) then.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// Who leads `namespace` now: the session granted its advisory lock (`pg_locks` splits
/// the 64-bit key into `classid` = high and `objid` = low 32 bits), if any.
pub async fn current(
    pool: &sqlx::PgPool,
    namespace: &str,
) -> Result<Option<LeaderSession>, sqlx::Error> {
    let key = lock_key(namespace) as u64;
    sqlx::query_as(
        "SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr,
                a.backend_start AS since
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
            AND l.classid::text::bigint = $1 AND l.objid::text::bigint = $2
          LIMIT 1",
    )
    .bind((key >> 32) as i64)
    .bind((key & 0xffff_ffff) as i64)
    .fetch_optional(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_per_namespace() {
        assert_eq!(lock_key("warren"), lock_key("warren"));
        assert_ne!(lock_key("warren"), lock_key("wt-1"));
    }

    #[test]
    fn lease_settings_and_trust_span() {
        let cfg = LeaseConfig::default();
        assert_eq!(cfg.trusted_for(), Duration::from_secs(8));
        let s = cfg.session_settings();
        let get = |k: &str| s.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("idle_session_timeout").as_deref(), Some("10000"));
        assert_eq!(
            get("idle_in_transaction_session_timeout").as_deref(),
            Some("10000")
        );
        assert_eq!(get("tcp_user_timeout").as_deref(), Some("10000"));
        assert_eq!(get("lock_timeout").as_deref(), Some("5000"));
        assert_eq!(get("statement_timeout").as_deref(), Some("30000"));
        let short = LeaseConfig {
            lease: Duration::from_secs(2),
            ..cfg
        };
        assert_eq!(short.trusted_for(), Duration::from_millis(1500));
    }

    #[test]
    fn skew_is_replica_minus_database_at_the_midpoint() {
        let db: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let before = db + chrono::TimeDelta::seconds(299);
        let after = db + chrono::TimeDelta::seconds(301);
        let c = DbClock::measure(before, db, after);
        assert_eq!(c.skew_seconds, 300.0);
        assert_eq!(c.now, db);
    }
}
