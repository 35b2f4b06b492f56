//! PostgreSQL: the connection pool, creating the database, applying `migrations/` (see
//! [`crate::migrations`] for what a database has applied and for reverting).

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// Database errors; every one of them is a reason to back off and retry, except a bad URL
/// or a failed migration.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(sqlx::Error),
    #[error("DATABASE_URL names no database")]
    NoDatabaseName,
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("database \"{0}\" does not exist")]
    Missing(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A pool that connects on first use, so a role starts (and waits) while PostgreSQL is down.
pub fn lazy_pool(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let opts = PgConnectOptions::from_str(url).map_err(DbError::BadUrl)?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(opts))
}

/// How long [`connect`] waits for PostgreSQL to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to the database in `url`, now (no retry): for operator commands that must
/// say at once that PostgreSQL is unreachable or the database does not exist.
pub async fn connect(url: &str) -> Result<PgConnection, DbError> {
    let opts = PgConnectOptions::from_str(url).map_err(DbError::BadUrl)?;
    let name = opts.get_database().map(str::to_owned);
    match tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        // invalid_catalog_name: the server answered, the database is not there.
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => {
            Err(DbError::Missing(name.unwrap_or_default()))
        }
        Ok(Err(e)) => Err(DbError::Connect(e)),
        Err(_) => Err(DbError::Connect(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT_TIMEOUT:?}"),
        )))),
    }
}

/// Creates the database named in `url` if it does not exist. Returns whether it was created.
pub async fn ensure_database(url: &str) -> Result<bool, DbError> {
    let opts = PgConnectOptions::from_str(url).map_err(DbError::BadUrl)?;
    let name = opts
        .get_database()
        .ok_or(DbError::NoDatabaseName)?
        .to_owned();
    let mut admin = opts
        .database("postgres")
        .connect()
        .await
        .map_err(DbError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .map_err(DbError::Connect)?;
    let mut created = false;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut admin).await {
            Ok(_) => created = true,
            // Another `warren migrate` created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(DbError::Connect(e)),
        }
    }
    let _ = admin.close().await;
    Ok(created)
}

/// Applies every migration in `migrations/` that has not run yet (idempotent).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    crate::migrations::migrator().run(pool).await?;
    Ok(())
}
