//! `warren due`: what is due now and why, publishing nothing.

use super::scheduler::ProviderArgs;
use super::{Format, Global};
use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use warren_core::config::FileConfig;
use warren_core::db;
use warren_scheduler::due::{self, DueKind, ProviderFlags};

#[derive(Args, Debug)]
pub struct DueArgs {
    /// Only this kind: pagarme (prepaid, charged by Warren), pagarme_native (billed by
    /// Pagar.me, observed only) or appmax.
    #[arg(long, env = "WARREN_DUE_PROVIDER")]
    pub provider: Option<String>,
    /// Most subscriptions listed per kind (the totals count them all).
    #[arg(long, env = "WARREN_DUE_LIMIT", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Output format.
    #[arg(long, env = "WARREN_DUE_FORMAT", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(flatten)]
    pub providers: ProviderArgs,
}

#[derive(Serialize)]
struct Row {
    provider: &'static str,
    subscription_id: uuid::Uuid,
    status: String,
    current_period_end: chrono::DateTime<chrono::Utc>,
    overdue: String,
    enqueued: bool,
    action: &'static str,
    reason: String,
}

#[derive(Serialize)]
struct Summary {
    provider: &'static str,
    due: i64,
    action: &'static str,
}

/// What the scheduler does with due subscriptions of `kind` under `flags`.
pub(super) fn action(kind: DueKind, flags: ProviderFlags) -> &'static str {
    match (flags.enabled, kind.task(), flags.dry_run) {
        (false, _, _) => "disabled",
        (true, None, _) => "observe",
        (true, Some(_), true) => "dry-run",
        (true, Some(_), false) => "publish",
    }
}

pub async fn run(g: &Global, a: DueArgs) -> anyhow::Result<()> {
    let kinds: Vec<DueKind> = match &a.provider {
        None => DueKind::ALL.to_vec(),
        Some(p) => match DueKind::parse(p) {
            Some(k) => vec![k],
            None => bail!(
                "--provider {p:?} is not a due kind; use one of: {}",
                DueKind::ALL.map(DueKind::label).join(", ")
            ),
        },
    };
    let file = FileConfig::load(g.config.as_deref())?;
    let (pagarme, appmax) = a.providers.resolve(&file);
    let pool = db::lazy_pool(&g.database_url, 2)?;
    // The scheduler judges what is due by the database's clock; so does this report.
    let now = due::database_now(&pool)
        .await
        .context("reading the database's clock (is PostgreSQL reachable at DATABASE_URL?)")?;
    let mut rows = Vec::new();
    let mut summaries = Vec::new();
    for kind in kinds {
        let flags = if kind.provider() == "appmax" {
            appmax
        } else {
            pagarme
        };
        let act = action(kind, flags);
        let count = due::count_due(&pool, kind, now)
            .await
            .context("counting due subscriptions (has `warren migrate` run?)")?;
        summaries.push(Summary {
            provider: kind.label(),
            due: count,
            action: act,
        });
        let page = due::due_page(&pool, kind, now, due::scan_start(), a.limit.into()).await?;
        let ids: Vec<uuid::Uuid> = page.iter().map(|p| p.subscription_id).collect();
        let details: Vec<(uuid::Uuid, String, chrono::DateTime<chrono::Utc>, bool)> =
            sqlx::query_as(
                "SELECT s.id, s.status::text, s.current_period_end, e.subscription_id IS NOT NULL
               FROM customer_subscriptions s
               LEFT JOIN renewal_enqueues e
                 ON e.subscription_id = s.id AND e.period_end = s.current_period_end
                AND e.attempt = CASE WHEN s.status = 'PAST_DUE'
                                     THEN s.dunning_attempt + 1 ELSE 1 END
              WHERE s.id = ANY($1)
              ORDER BY s.current_period_end, s.id",
            )
            .bind(&ids)
            .fetch_all(&pool)
            .await?;
        for (id, status, end, enqueued) in details {
            let overdue = humantime::format_duration(std::time::Duration::from_secs(
                (now - end).num_seconds().max(0) as u64,
            ))
            .to_string();
            let mut reason = format!("period ended {} ago, status {status}", overdue);
            if status == "PAST_DUE" {
                reason.push_str(" (dunning retry due)");
            }
            if kind == DueKind::PagarmeNative {
                reason.push_str("; Pagar.me bills it (counted, never published)");
            }
            if enqueued {
                reason.push_str("; already enqueued for this attempt");
            }
            rows.push(Row {
                provider: kind.label(),
                subscription_id: id,
                status,
                current_period_end: end,
                overdue,
                enqueued,
                action: act,
                reason,
            });
        }
    }
    match a.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "now": now, "summary": summaries, "due": rows
            }))?
        ),
        Format::Table => {
            for s in &summaries {
                println!("{:<15} {:>8} due   action: {}", s.provider, s.due, s.action);
            }
            if !rows.is_empty() {
                println!();
                println!(
                    "{:<15} {:<36} {:<9} {:<25} REASON",
                    "PROVIDER", "SUBSCRIPTION", "STATUS", "PERIOD END"
                );
            }
            for r in &rows {
                println!(
                    "{:<15} {:<36} {:<9} {:<25} {}",
                    r.provider,
                    r.subscription_id,
                    r.status,
                    r.current_period_end
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r.reason
                );
            }
        }
    }
    Ok(())
}
