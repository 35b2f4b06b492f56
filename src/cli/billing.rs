//! `warren billing anomalies`: the money an operator must look at by hand — periods charged
//! twice (to refund) and charges whose outcome Warren could not learn (to check at the
//! provider, then replay).

use super::{Format, Global};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use warren_core::db;

#[derive(Args, Debug)]
pub struct BillingArgs {
    #[command(subcommand)]
    pub command: BillingCommand,
}

#[derive(Subcommand, Debug)]
pub enum BillingCommand {
    /// List duplicate charges (a period the provider charged twice: refund one) and charges
    /// whose outcome is unknown (dead-lettered `unknown-outcome`: check the provider, then
    /// `warren dlq replay`). Exits 0 whether or not there are any.
    Anomalies(AnomaliesArgs),
}

#[derive(Args, Debug)]
pub struct AnomaliesArgs {
    /// Output format.
    #[arg(long, env = "WARREN_BILLING_FORMAT", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Most rows listed per kind.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
}

/// One anomaly.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct Anomaly {
    /// `duplicate_charge` or `unknown_outcome`.
    kind: String,
    subscription_id: uuid::Uuid,
    provider: String,
    period_end: Option<chrono::DateTime<chrono::Utc>>,
    idempotency_key: String,
    status: String,
    provider_order_id: Option<String>,
    amount_cents: i64,
    currency: String,
    since: chrono::DateTime<chrono::Utc>,
    /// What to do about it.
    action: String,
}

pub async fn run(g: &Global, a: BillingArgs) -> anyhow::Result<()> {
    match a.command {
        BillingCommand::Anomalies(a) => anomalies(g, a).await,
    }
}

async fn anomalies(g: &Global, a: AnomaliesArgs) -> anyhow::Result<()> {
    let pool = db::lazy_pool(&g.database_url, 1)?;
    let rows: Vec<Anomaly> = sqlx::query_as(
        "(SELECT 'duplicate_charge' AS kind, t.subscription_id, t.provider::text AS provider,
                 t.period_end, t.idempotency_key, t.status, t.provider_order_id, t.amount_cents,
                 t.currency, t.updated_at AS since,
                 'refund order ' || COALESCE(t.provider_order_id, '?')
                   || ': the period was already paid by another transaction' AS action
            FROM payment_transactions t
           WHERE t.status = 'duplicate_charge'
           ORDER BY t.updated_at LIMIT $1)
         UNION ALL
         (SELECT 'unknown_outcome', t.subscription_id, t.provider::text, t.period_end,
                 t.idempotency_key, t.status, t.provider_order_id, t.amount_cents, t.currency,
                 COALESCE(t.first_charge_sent_at, t.created_at),
                 'check the charge at the provider; once it shows paid or declined, '
                   || 'replay the dead letter (warren dlq replay --kind unknown-outcome)'
            FROM customer_subscriptions s
            JOIN payment_transactions t ON t.idempotency_key = s.metadata->>'unknownChargeKey'
           WHERE s.metadata ? 'unknownChargeKey'
             AND t.status NOT IN ('paid', 'failed', 'duplicate_charge')
           ORDER BY t.created_at LIMIT $1)",
    )
    .bind(i64::from(a.limit))
    .fetch_all(&pool)
    .await
    .context("reading payment_transactions (has `warren migrate` run?)")?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table if rows.is_empty() => {
            println!("no anomalies: no period charged twice, no charge of unknown outcome")
        }
        Format::Table => {
            println!(
                "{:<17} {:<36} {:<8} {:<21} {:>10} {:<20} ACTION",
                "KIND", "SUBSCRIPTION", "PROVIDER", "PERIOD END", "AMOUNT", "ORDER"
            );
            for r in &rows {
                println!(
                    "{:<17} {:<36} {:<8} {:<21} {:>10} {:<20} {}",
                    r.kind,
                    r.subscription_id,
                    r.provider,
                    r.period_end
                        .map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                    format!(
                        "{}.{:02} {}",
                        r.amount_cents / 100,
                        r.amount_cents % 100,
                        r.currency
                    ),
                    r.provider_order_id.as_deref().unwrap_or("-"),
                    r.action
                );
                println!("{:<17} key {}", "", r.idempotency_key);
            }
        }
    }
    Ok(())
}
