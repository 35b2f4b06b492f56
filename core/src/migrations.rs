//! The schema's migrations, embedded at build time from `migrations/`: what a database has
//! applied compared with what this build knows, and reverting applied migrations with their
//! down scripts.
//!
//! Every migration is a pair `<version>_<name>.up.sql` / `<version>_<name>.down.sql`. sqlx
//! records an applied migration in `_sqlx_migrations` by version, description (the name with
//! `_` read as a space) and the SHA-384 of the up script; it checks an applied migration by
//! version and checksum only. So an up script never changes once released, and the down
//! script of a version undoes exactly what its up did. The first line of each down script,
//! `-- Loses: …`, says which data reverting it drops; [`Known::loses`] reads it.
//!
//! PostgreSQL cannot drop a value from an enum type: a migration that adds enum values needs a
//! down script that recreates the type (create the old type under a new name, convert the
//! columns, drop the new type, rename).

use serde::Serialize;
use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};
use sqlx::PgConnection;
use std::collections::HashMap;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The migrations compiled into this build, ups and downs.
pub fn migrator() -> &'static Migrator {
    &MIGRATOR
}

/// Why looking at or changing the schema's migrations failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Reading `_sqlx_migrations` or taking the migration lock failed.
    #[error("reading the applied migrations: {0}")]
    Query(#[source] sqlx::Error),
    /// The database has applied migrations this build does not have: a newer release ran.
    #[error(
        "the database has {} this release does not know ({}): a newer release migrated it; \
         revert them with that release's `warren migrate --down {}` before running this one",
        plural(.unknown.len(), "migration"),
        list(.unknown),
        .latest_known
    )]
    UnknownApplied {
        unknown: Vec<Step>,
        latest_known: i64,
    },
    /// An applied migration's up script differs from this build's, or one failed partway.
    #[error(
        "applied {} differ from this release's or failed partway ({}): the database and \
         this release disagree on what the schema is; fix this by hand",
        plural(.0.len(), "migration"),
        list(.0)
    )]
    Diverged(Vec<Step>),
    /// `--down` to a version this build does not have.
    #[error("this release has no migration {0}: the target must be 0 (before the first migration) or the version of an applied migration")]
    NoSuchVersion(i64),
    /// A known migration without a down script (a build error the unit tests catch).
    #[error("migration {0} has no down script")]
    NoDown(i64),
    /// The applied migrations changed between planning a revert and locking the database.
    #[error("the applied migrations changed while waiting for confirmation (another `warren migrate` ran); run the command again")]
    Changed,
    /// Running a migration script failed; its transaction was rolled back.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn list(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| format!("{} {}", s.version, s.description))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One migration: its version and description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub version: i64,
    pub description: String,
}

/// A migration this build knows, with its up and down scripts.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    pub up: &'static Migration,
    pub down: Option<&'static Migration>,
}

impl Known {
    pub fn step(&self) -> Step {
        Step {
            version: self.up.version,
            description: self.up.description.to_string(),
        }
    }

    /// What reverting this migration drops: the down script's `-- Loses:` line.
    pub fn loses(&self) -> Option<&'static str> {
        let sql: &'static str = match self.down?.sql {
            std::borrow::Cow::Borrowed(s) => s,
            std::borrow::Cow::Owned(_) => return None,
        };
        sql.lines().next()?.strip_prefix("-- Loses:").map(str::trim)
    }
}

/// Every migration this build knows, oldest first.
pub fn known() -> Vec<Known> {
    let downs: HashMap<i64, &'static Migration> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type == MigrationType::ReversibleDown)
        .map(|m| (m.version, m))
        .collect();
    let mut all: Vec<Known> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|up| Known {
            up,
            down: downs.get(&up.version).copied(),
        })
        .collect();
    all.sort_by_key(|k| k.up.version);
    all
}

/// The newest migration this build knows (0 with none).
pub fn latest_known() -> i64 {
    known().last().map_or(0, |k| k.up.version)
}

/// One row of `_sqlx_migrations`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct AppliedRow {
    version: i64,
    description: String,
    success: bool,
    checksum: Vec<u8>,
}

/// A database's migrations compared with this build's.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The newest migration this build knows.
    pub latest_known: i64,
    /// The newest migration the database has applied (0 with none).
    pub latest_applied: i64,
    /// Applied migrations this build knows, with the same up script, oldest first.
    pub applied: Vec<Step>,
    /// Known migrations the database has not applied, oldest first.
    pub pending: Vec<Step>,
    /// Applied migrations this build does not know: a newer release applied them.
    pub unknown: Vec<Step>,
    /// Applied migrations whose up script differs from this build's, or that failed partway.
    pub diverged: Vec<Step>,
}

impl Status {
    pub fn is_up_to_date(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty() && self.diverged.is_empty()
    }
}

/// Reads the database's applied migrations and compares them with this build's. Changes
/// nothing: a database never migrated has every migration pending.
pub async fn status(conn: &mut PgConnection) -> Result<Status, MigrationError> {
    let rows = applied_rows(conn).await?;
    let known = known();
    let by_version: HashMap<i64, &Known> = known.iter().map(|k| (k.up.version, k)).collect();
    let mut status = Status {
        latest_known: known.last().map_or(0, |k| k.up.version),
        latest_applied: rows.iter().map(|r| r.version).max().unwrap_or(0),
        applied: vec![],
        pending: vec![],
        unknown: vec![],
        diverged: vec![],
    };
    let mut seen = std::collections::HashSet::new();
    for row in &rows {
        seen.insert(row.version);
        let step = Step {
            version: row.version,
            description: row.description.clone(),
        };
        match by_version.get(&row.version) {
            None => status.unknown.push(step),
            Some(k) if !row.success || *k.up.checksum != *row.checksum => {
                status.diverged.push(step)
            }
            Some(_) => status.applied.push(step),
        }
    }
    status.pending = known
        .iter()
        .filter(|k| !seen.contains(&k.up.version))
        .map(Known::step)
        .collect();
    Ok(status)
}

async fn applied_rows(conn: &mut PgConnection) -> Result<Vec<AppliedRow>, MigrationError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(MigrationError::Query)?;
    if !exists {
        return Ok(vec![]);
    }
    sqlx::query_as(
        "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(MigrationError::Query)
}

/// What reverting to a version does: the applied migrations newer than it, newest first.
pub fn plan_down(status: &Status, target: i64) -> Result<Vec<Known>, MigrationError> {
    let known = known();
    if target != 0 && !known.iter().any(|k| k.up.version == target) {
        return Err(MigrationError::NoSuchVersion(target));
    }
    if !status.unknown.is_empty() {
        return Err(MigrationError::UnknownApplied {
            unknown: status.unknown.clone(),
            latest_known: status.latest_known,
        });
    }
    let diverged: Vec<Step> = status
        .diverged
        .iter()
        .filter(|s| s.version > target)
        .cloned()
        .collect();
    if !diverged.is_empty() {
        return Err(MigrationError::Diverged(diverged));
    }
    let mut plan = Vec::new();
    for k in known.iter().rev() {
        let v = k.up.version;
        if v > target && status.applied.iter().any(|s| s.version == v) {
            if k.down.is_none() {
                return Err(MigrationError::NoDown(v));
            }
            plan.push(*k);
        }
    }
    Ok(plan)
}

/// Reverts `plan` (from [`plan_down`]) newest first, each down script and the removal of its
/// `_sqlx_migrations` row in one transaction, under the migration lock that `warren migrate`
/// also takes. `progress` is called before each step (`None`) and after it (`Some(elapsed)`).
/// Refuses when the applied migrations no longer match the plan.
pub async fn revert(
    conn: &mut PgConnection,
    target: i64,
    plan: &[Known],
    mut progress: impl FnMut(&Known, Option<Duration>),
) -> Result<(), MigrationError> {
    conn.lock().await?;
    let result = async {
        let now = plan_down(&status(conn).await?, target)?;
        let same = now.len() == plan.len()
            && now
                .iter()
                .zip(plan)
                .all(|(a, b)| a.up.version == b.up.version);
        if !same {
            return Err(MigrationError::Changed);
        }
        for k in plan {
            let down = k.down.ok_or(MigrationError::NoDown(k.up.version))?;
            progress(k, None);
            let took = conn.revert(down).await?;
            progress(k, Some(took));
        }
        Ok(())
    }
    .await;
    let unlocked = conn.unlock().await;
    result?;
    unlocked?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_has_a_down_script_that_says_what_it_loses() {
        let known = known();
        assert!(!known.is_empty());
        for k in &known {
            assert_eq!(
                k.up.migration_type,
                MigrationType::ReversibleUp,
                "{}",
                k.up.version
            );
            let down = k
                .down
                .unwrap_or_else(|| panic!("{} has no down", k.up.version));
            assert_eq!(down.description, k.up.description);
            assert!(
                k.loses().is_some_and(|l| !l.is_empty()),
                "{}: the down script's first line must be `-- Loses: …`",
                k.up.version
            );
        }
        let ups = MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration());
        let downs = MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_down_migration());
        assert_eq!(ups.count(), downs.count(), "a down script without its up");
    }

    #[test]
    fn planning_a_revert_checks_the_target() {
        let known = known();
        let status = Status {
            latest_known: latest_known(),
            latest_applied: latest_known(),
            applied: known.iter().map(Known::step).collect(),
            pending: vec![],
            unknown: vec![],
            diverged: vec![],
        };
        assert!(matches!(
            plan_down(&status, 1),
            Err(MigrationError::NoSuchVersion(1))
        ));
        assert_eq!(plan_down(&status, latest_known()).unwrap().len(), 0);
        let all = plan_down(&status, 0).unwrap();
        assert_eq!(all.len(), known.len());
        assert!(all.windows(2).all(|w| w[0].up.version > w[1].up.version));
        let newer = Status {
            unknown: vec![Step {
                version: 99990101000001,
                description: "from the future".into(),
            }],
            ..status
        };
        let err = plan_down(&newer, 0).unwrap_err();
        assert!(matches!(err, MigrationError::UnknownApplied { .. }));
        assert!(err.to_string().contains("99990101000001 from the future"));
    }
}
