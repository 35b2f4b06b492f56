//! `warren migrate`: create the database if missing, apply `migrations/`.

use super::Global;
use anyhow::Context;
use warren_core::{config::redact_url, db};

pub async fn run(g: &Global) -> anyhow::Result<()> {
    apply(g).await?;
    println!("migrations applied to {}", redact_url(&g.database_url));
    Ok(())
}

/// Shared with `warren dev`.
pub async fn apply(g: &Global) -> anyhow::Result<()> {
    let url = redact_url(&g.database_url);
    let created = db::ensure_database(&g.database_url)
        .await
        .with_context(|| format!("preparing database {url}"))?;
    if created {
        tracing::info!(database = %url, "created database");
    }
    let pool = db::lazy_pool(&g.database_url, 2)?;
    db::migrate(&pool)
        .await
        .with_context(|| format!("migrating {url}"))?;
    pool.close().await;
    Ok(())
}
