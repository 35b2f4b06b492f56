//! `warren migrate`: create the database if missing and apply `migrations/`; `--check` tells
//! a deploy pipeline whether a release needs a schema change, `--down VERSION` reverts
//! applied migrations for a rollback.

use super::{Format, Global};
use anyhow::{bail, Context};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use warren_core::config::redact_url;
use warren_core::db::{self, DbError};
use warren_core::migrations::{self, Known, MigrationError, Status, Step};

/// Exit status of `--check`: every migration of this release is applied, nothing else is.
pub const EXIT_UP_TO_DATE: u8 = 0;
/// Exit status of `--check`: migrations of this release are not applied yet.
pub const EXIT_PENDING: u8 = 3;
/// Exit status of `--check`: the database has migrations this release does not know.
pub const EXIT_UNKNOWN_APPLIED: u8 = 4;
/// Exit status of `--check`: an applied migration differs from this release's or failed.
pub const EXIT_DIVERGED: u8 = 5;

/// Shown under `warren migrate -h`.
pub const AFTER_HELP: &str = "\
Exit status of --check:
  0  up to date: every migration of this release is applied, and nothing else
  1  could not check: PostgreSQL unreachable, the database missing, a bad DATABASE_URL
  3  migrations pending: run `warren migrate` before (or as part of) this release
  4  the database has migrations this release does not know: a newer release migrated it;
     roll them back with that newer release's `warren migrate --down <VERSION>`, VERSION
     being the newest migration of this release (printed by --check)
  5  an applied migration differs from this release's, or failed partway: fix by hand
(2 is a usage error, as for every command.) With several findings the highest code wins.

What --down loses: each down script drops what its migration created, with its rows; the
plan printed before reverting names the data of every step. Take a backup first
(pg_dump), and stop the roles that use the tables.";

/// Shown under `warren migrate --help`: [`AFTER_HELP`] and every migration of this release
/// with what reverting it loses.
pub fn after_long_help() -> String {
    let mut s = format!("{AFTER_HELP}\n\nMigrations of this release, and what --down loses:\n");
    for k in migrations::known() {
        s.push_str(&format!(
            "  {} {}\n      {}\n",
            k.up.version,
            k.up.description,
            k.loses().unwrap_or("(not stated)")
        ));
    }
    s
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Apply nothing: list the pending migrations (version and description, one per line),
    /// and migrations the database has that this release does not know; exit 0 when up to
    /// date, 3 when migrations are pending, 4 or 5 otherwise (see below).
    #[arg(long, conflicts_with = "down")]
    pub check: bool,
    /// Revert every applied migration newer than VERSION, newest first, each in its own
    /// transaction; 0 reverts them all. Drops data: see below.
    #[arg(long, value_name = "VERSION")]
    pub down: Option<i64>,
    /// Revert without asking. Without it, --down asks on a terminal and refuses when stdin is
    /// not one (CI).
    #[arg(long, requires = "down")]
    pub yes: bool,
    /// Output format of --check.
    #[arg(long, env = "WARREN_MIGRATE_FORMAT", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub async fn run(g: &Global, a: MigrateArgs) -> anyhow::Result<ExitCode> {
    if a.check {
        return check(g, a.format).await;
    }
    if let Some(target) = a.down {
        down(g, target, a.yes).await?;
        return Ok(ExitCode::SUCCESS);
    }
    for step in apply(g).await? {
        println!("applied {} {}", step.version, step.description);
    }
    println!("migrations applied to {}", redact_url(&g.database_url));
    Ok(ExitCode::SUCCESS)
}

/// Creates the database if missing and applies the pending migrations; returns them.
/// Refuses a database that a newer release migrated. Shared with `warren dev` and others.
pub async fn apply(g: &Global) -> anyhow::Result<Vec<Step>> {
    let url = redact_url(&g.database_url);
    let created = db::ensure_database(&g.database_url)
        .await
        .map_err(|e| explain(e, &g.database_url))
        .with_context(|| format!("preparing database {url}"))?;
    if created {
        tracing::info!(database = %url, "created database");
    }
    let mut conn = connect(g).await?;
    let before = migrations::status(&mut conn)
        .await
        .with_context(|| format!("migrating {url}"))?;
    if !before.unknown.is_empty() {
        return Err(MigrationError::UnknownApplied {
            unknown: before.unknown,
            latest_known: before.latest_known,
        })
        .with_context(|| format!("migrating {url}"));
    }
    migrations::migrator()
        .run(&mut conn)
        .await
        .with_context(|| format!("migrating {url}"))?;
    let _ = sqlx::Connection::close(conn).await;
    Ok(before.pending)
}

async fn connect(g: &Global) -> anyhow::Result<sqlx::PgConnection> {
    db::connect(&g.database_url)
        .await
        .map_err(|e| explain(e, &g.database_url))
}

/// A connection error that names DATABASE_URL and says what to do.
fn explain(e: DbError, url: &str) -> anyhow::Error {
    let shown = redact_url(url);
    match e {
        DbError::Missing(name) => anyhow::anyhow!(
            "database \"{name}\" does not exist at {shown} (DATABASE_URL): check DATABASE_URL, \
             or run `warren migrate` to create it and apply every migration"
        ),
        DbError::Connect(e) => anyhow::anyhow!(
            "cannot reach PostgreSQL at {shown} (DATABASE_URL): {e}; is PostgreSQL running, and \
             does DATABASE_URL (or --database-url) point at it?"
        ),
        other => anyhow::Error::new(other),
    }
}

#[derive(serde::Serialize)]
struct CheckReport<'a> {
    database: String,
    /// up_to_date | pending | unknown_applied | diverged
    state: &'static str,
    exit_code: u8,
    #[serde(flatten)]
    status: &'a Status,
}

fn verdict(s: &Status) -> (&'static str, u8) {
    if !s.diverged.is_empty() {
        ("diverged", EXIT_DIVERGED)
    } else if !s.unknown.is_empty() {
        ("unknown_applied", EXIT_UNKNOWN_APPLIED)
    } else if !s.pending.is_empty() {
        ("pending", EXIT_PENDING)
    } else {
        ("up_to_date", EXIT_UP_TO_DATE)
    }
}

async fn check(g: &Global, format: Format) -> anyhow::Result<ExitCode> {
    let url = redact_url(&g.database_url);
    let mut conn = connect(g).await?;
    let status = migrations::status(&mut conn)
        .await
        .with_context(|| format!("checking {url}"))?;
    let _ = sqlx::Connection::close(conn).await;
    let (state, code) = verdict(&status);
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&CheckReport {
                database: url,
                state,
                exit_code: code,
                status: &status,
            })?
        ),
        Format::Table => print_check(&url, &status),
    }
    Ok(ExitCode::from(code))
}

fn print_check(url: &str, s: &Status) {
    for m in &s.pending {
        println!("pending  {} {}", m.version, m.description);
    }
    for m in &s.unknown {
        println!(
            "unknown  {} {} (applied by a newer release)",
            m.version, m.description
        );
    }
    for m in &s.diverged {
        println!(
            "diverged {} {} (applied with another script, or failed partway)",
            m.version, m.description
        );
    }
    let n = |v: &[Step]| match v.len() {
        1 => "1 migration".to_owned(),
        n => format!("{n} migrations"),
    };
    if !s.diverged.is_empty() {
        println!(
            "{url}: {} differ from this release's: the schema is not what either release \
             expects; fix it by hand before migrating or reverting",
            n(&s.diverged)
        );
    } else if !s.unknown.is_empty() {
        println!(
            "{url}: {} this release does not know: a newer release migrated this database. \
             To roll back to this release, run the newer release's \
             `warren migrate --down {} --yes` (this release's newest migration), then deploy \
             this release",
            n(&s.unknown),
            s.latest_known
        );
    } else if !s.pending.is_empty() {
        println!(
            "{url}: {} pending; `warren migrate` applies them",
            n(&s.pending)
        );
    } else {
        println!(
            "{url}: up to date ({} applied, newest {})",
            n(&s.applied),
            s.latest_applied
        );
    }
}

async fn down(g: &Global, target: i64, yes: bool) -> anyhow::Result<()> {
    let url = redact_url(&g.database_url);
    let mut conn = connect(g).await?;
    let status = migrations::status(&mut conn)
        .await
        .with_context(|| format!("reading {url}"))?;
    let plan = migrations::plan_down(&status, target).map_err(|e| match e {
        MigrationError::NoSuchVersion(v) => anyhow::anyhow!(
            "--down {v}: this release has no migration {v}; give 0 (before the first migration) \
             or a version that `warren migrate --check` lists as applied"
        ),
        e => e.into(),
    })?;
    if plan.is_empty() {
        println!("{url}: nothing to revert, no migration newer than {target} is applied");
        return Ok(());
    }
    println!(
        "{url}: reverting {} migration{} newer than {target}, newest first:",
        plan.len(),
        if plan.len() == 1 { "" } else { "s" }
    );
    for k in &plan {
        println!("  {} {}", k.up.version, k.up.description);
        println!("      loses: {}", k.loses().unwrap_or("(not stated)"));
    }
    if !yes {
        confirm()?;
    }
    migrations::revert(&mut conn, target, &plan, |k: &Known, took| match took {
        None => println!("reverting {} {}", k.up.version, k.up.description),
        Some(t) => println!(
            "reverted  {} {} in {} ms",
            k.up.version,
            k.up.description,
            t.as_millis()
        ),
    })
    .await
    .with_context(|| format!("reverting {url} (the failed step was rolled back)"))?;
    let after = migrations::status(&mut conn).await?;
    let _ = sqlx::Connection::close(conn).await;
    match after.applied.last() {
        Some(m) => println!(
            "{url}: now at {} {}; {} pending for this release",
            m.version,
            m.description,
            after.pending.len()
        ),
        None => println!("{url}: no migration applied"),
    }
    Ok(())
}

/// Asks on a terminal; refuses when stdin is not one.
fn confirm() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("refusing to revert without --yes: stdin is not a terminal (nothing was reverted)");
    }
    print!("Revert these migrations and drop that data? Type yes to continue: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed: nothing was reverted");
    }
    Ok(())
}
