//! `warren bench-due`: the scheduler's due scan at scale.
//!
//! Seeds a throwaway database with N subscriptions of which D are Pagar.me prepaid and due,
//! then times one leader scan that enqueues and publishes (with confirms) all D, and reports
//! the process's peak RSS. Prints `EXPLAIN` of each due query first. The database and the
//! bench namespace are removed at the end.

use super::bench::proc_status_kib;
use super::Global;
use anyhow::{ensure, Context};
use clap::Args;
use std::time::Instant;
use warren_core::db;
use warren_producer::Producer;
use warren_scheduler::due::{self, DueKind};

#[derive(Args, Debug)]
pub struct BenchDueArgs {
    /// Subscriptions seeded.
    #[arg(long, env = "WARREN_BENCH_SUBSCRIPTIONS", default_value_t = 1_000_000)]
    pub subscriptions: i64,
    /// How many of them are due (Pagar.me prepaid); the rest are split between not yet due,
    /// canceled, native and Appmax.
    #[arg(long, env = "WARREN_BENCH_DUE", default_value_t = 100_000)]
    pub due: i64,
    /// Subscriptions per scan page (and per enqueue transaction).
    #[arg(long, env = "WARREN_SCAN_PAGE", default_value_t = 1000)]
    pub scan_page: i64,
}

pub async fn run(g: &Global, a: BenchDueArgs) -> anyhow::Result<()> {
    ensure!(
        a.due <= a.subscriptions && a.subscriptions > 0 && a.scan_page > 0,
        "--due must be at most --subscriptions, and both positive"
    );
    let run_id = format!("benchdue-{}", std::process::id());
    let mut g = g.clone();
    g.namespace = format!("{}-{run_id}", g.namespace);
    let base = g
        .database_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .context("DATABASE_URL has no database name")?;
    g.database_url = format!("{base}/warren_{}", run_id.replace('-', "_"));
    super::migrate::apply(&g).await?;
    super::topology::declare(&g).await?;
    let pool = db::lazy_pool(&g.database_url, 4)?;

    let t = Instant::now();
    eprintln!("seeding {} subscriptions ({} due)…", a.subscriptions, a.due);
    let customer = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO customers (id) VALUES ($1)")
        .bind(customer)
        .execute(&pool)
        .await?;
    // Rows 1..=due: Pagar.me prepaid, due. The rest cycle through: not due, canceled, native
    // due, Appmax due.
    sqlx::query(
        "INSERT INTO customer_subscriptions
           (id, customer_id, provider, is_native, status, current_period_start,
            current_period_end, canceled_at, amount_cents)
         SELECT gen_random_uuid(), $1,
                CASE WHEN g > $2 AND g % 4 = 3 THEN 'APPMAX' ELSE 'PAGARME' END::billing_provider,
                g > $2 AND g % 4 = 2,
                'ACTIVE',
                now() - interval '30 days',
                CASE WHEN g <= $2 OR g % 4 >= 2 THEN now() - make_interval(secs => g % 86400)
                     ELSE now() + interval '1 day' END,
                CASE WHEN g > $2 AND g % 4 = 1 THEN now() END,
                4990
           FROM generate_series(1, $3::bigint) AS g",
    )
    .bind(customer)
    .bind(a.due)
    .bind(a.subscriptions)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE customer_subscriptions")
        .execute(&pool)
        .await?;
    eprintln!("seeded in {:.1}s", t.elapsed().as_secs_f64());

    let now = chrono::Utc::now();
    let start = due::scan_start();
    for kind in DueKind::ALL {
        let plan: Vec<(String,)> = sqlx::query_as(&format!("EXPLAIN {}", kind.page_sql()))
            .bind(now)
            .bind(start.0)
            .bind(start.1)
            .bind(a.scan_page)
            .fetch_all(&pool)
            .await?;
        println!("EXPLAIN due page, {}:", kind.label());
        for (line,) in plan {
            println!("  {line}");
        }
    }

    let conn = g.connect("bench-due").await?;
    let topology = g.topology()?;
    let producer = Producer::new(&conn, topology.jobs_exchange()).await?;
    let rss_before = proc_status_kib("VmRSS");
    let t = Instant::now();
    let report = due::scan(&pool, Some(&producer), DueKind::Pagarme, a.scan_page).await?;
    let secs = t.elapsed().as_secs_f64();
    let queued = {
        let ch = conn.create_channel().await?;
        let queue = topology.queue_name("renewals.pagarme");
        warren_core::broker::queue_counts(&ch, &queue).await?.ready
    };
    let again = due::scan(&pool, Some(&producer), DueKind::Pagarme, a.scan_page).await?;
    println!("---");
    println!(
        "scan + enqueue + confirmed publish: {} due, {} published in {secs:.2}s ({:.0}/s)",
        report.due,
        report.published,
        report.published as f64 / secs
    );
    println!(
        "messages on {}: {queued}",
        topology.queue_name("renewals.pagarme")
    );
    println!(
        "second scan: {} due, {} published (each period is enqueued once)",
        again.due, again.published
    );
    println!(
        "process RSS: {:.1} MiB before the scan, peak {:.1} MiB",
        rss_before as f64 / 1024.0,
        proc_status_kib("VmHWM") as f64 / 1024.0
    );

    let ch = conn.create_channel().await?;
    topology.delete(&ch).await?;
    let _ = conn.close(200, "bench done".into()).await;
    pool.close().await;
    let admin = db::lazy_pool(&format!("{base}/postgres"), 1)?;
    sqlx::query(&format!(
        "DROP DATABASE \"warren_{}\" WITH (FORCE)",
        run_id.replace('-', "_")
    ))
    .execute(&admin)
    .await?;
    Ok(())
}
