//! Leader election: one scheduler replica acts, the others stand by.
//!
//! The leader holds a session-level PostgreSQL advisory lock on a dedicated connection (not
//! a pooled one: the lock belongs to the session). If the leader dies, its connection closes
//! and PostgreSQL releases the lock at once; a standby's next attempt (every
//! `retry_every`) wins. A leader that loses its connection steps down immediately, before
//! anything else runs. Leadership decides who *scans*; double publishes are prevented by
//! the enqueue records (see [`crate::due`]), not by the lock alone.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::str::FromStr;

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

/// Held leadership: the connection that owns the lock.
pub struct Leadership {
    conn: PgConnection,
}

impl Leadership {
    /// Tries once to become leader. `Ok(None)`: another replica leads.
    pub async fn try_acquire(database_url: &str, key: i64) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = PgConnectOptions::from_str(database_url)?
            .application_name("warren-scheduler-leader")
            .connect()
            .await?;
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if won {
            Ok(Some(Self { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Whether the lock's connection is still alive (and so the lock still held).
    pub async fn still_held(&mut self) -> bool {
        self.conn.ping().await.is_ok()
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
    use super::lock_key;

    #[test]
    fn keys_are_stable_and_per_namespace() {
        assert_eq!(lock_key("warren"), lock_key("warren"));
        assert_ne!(lock_key("warren"), lock_key("wt-1"));
    }
}
