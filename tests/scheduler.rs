//! Whole-system tests of `warren scheduler` and `warren due`: several replicas against one
//! database and broker, leader failover by SIGKILL, provider flags.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);

/// Seeds `n` subscriptions; `due` ones ended an hour ago, the rest end tomorrow.
async fn seed(
    env: &TestEnv,
    n: usize,
    provider: &str,
    native: bool,
    status: &str,
    due: bool,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let customer = Uuid::new_v4();
        let sub = Uuid::new_v4();
        sqlx::query("INSERT INTO customers (id, email) VALUES ($1, 'c@example.com')")
            .bind(customer)
            .execute(&env.pool)
            .await
            .unwrap();
        let end = if due {
            "now() - interval '1 hour'"
        } else {
            "now() + interval '1 day'"
        };
        let canceled = if status == "CANCELED" {
            "now()"
        } else {
            "NULL"
        };
        sqlx::query(&format!(
            "INSERT INTO customer_subscriptions
               (id, customer_id, provider, is_native, status, current_period_start,
                current_period_end, canceled_at, amount_cents, metadata)
             VALUES ($1, $2, $3::billing_provider, $4, $5::\"SubscriptionStatus\",
                     now() - interval '30 days', {end}, {canceled}, 4990,
                     '{{\"intervalUnit\":\"month\",\"intervalCount\":1}}')"
        ))
        .bind(sub)
        .bind(customer)
        .bind(provider)
        .bind(native)
        .bind(status)
        .execute(&env.pool)
        .await
        .unwrap();
        ids.push(sub);
    }
    ids
}

/// Renewal periods enqueued so far.
async fn enqueued(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM renewal_enqueues")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Drains a queue (acking), returning the deliveries.
async fn drain(env: &TestEnv, queue: &str) -> Vec<lapin::message::Delivery> {
    let mut out = Vec::new();
    while let Some(m) = env
        .ch
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        out.push(m.delivery);
    }
    out
}

async fn leaders(replicas: &[Worker]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        if let Ok(resp) = reqwest::get(r.url("/metrics")).await {
            let text = resp.text().await.unwrap_or_default();
            if metric(&text, "warren_scheduler_is_leader", &[]) == 1.0 {
                out.push(i);
            }
        }
    }
    out
}

/// Acceptance: three replicas, every due subscription published exactly once; native
/// counted, not published; dry-run provider publishes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_publish_each_due_period_exactly_once() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut expected: HashSet<Uuid> = seed(&env, 25, "PAGARME", false, "ACTIVE", true)
        .await
        .into_iter()
        .collect();
    expected.extend(seed(&env, 5, "PAGARME", false, "PAST_DUE", true).await);
    seed(&env, 4, "PAGARME", false, "ACTIVE", false).await; // not due yet
    seed(&env, 3, "PAGARME", false, "CANCELED", true).await;
    seed(&env, 2, "PAGARME", false, "UNPAID", true).await;
    seed(&env, 7, "PAGARME", true, "ACTIVE", true).await; // native: observe only
    seed(&env, 6, "APPMAX", false, "ACTIVE", true).await; // dry run below

    let replicas: Vec<Worker> = (0..3)
        .map(|_| env.scheduler(&[("WARREN_APPMAX_DRY_RUN", "true")]))
        .collect();
    eventually(T, "30 renewals enqueued", || async {
        enqueued(&env).await == 30
    })
    .await;
    // Several more scan intervals: nobody publishes a period twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let more: HashSet<Uuid> = seed(&env, 5, "PAGARME", false, "ACTIVE", true)
        .await
        .into_iter()
        .collect();
    expected.extend(&more);
    eventually(T, "35 renewals enqueued", || async {
        enqueued(&env).await == 35
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let msgs = drain(&env, &env.queue("renewals.pagarme")).await;
    assert_eq!(msgs.len(), 35, "messages published");
    let mut seen = HashSet::new();
    for m in &msgs {
        let p: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        let sub: Uuid = p["subscription_id"].as_str().unwrap().parse().unwrap();
        assert!(seen.insert(sub), "subscription {sub} published twice");
        let key = header(m, "x-idempotency-key").unwrap();
        assert!(key.starts_with(&format!("renewal:{sub}:")), "{key}");
        let id = m.properties.message_id().as_ref().unwrap().to_string();
        assert_eq!(id, warren_core::envelope::job_id_for_key(&key).to_string());
    }
    assert_eq!(seen, expected);
    assert!(
        drain(&env, &env.queue("renewals.appmax")).await.is_empty(),
        "dry run published"
    );

    let l = leaders(&replicas).await;
    assert_eq!(l.len(), 1, "leaders: {l:?}");
    let m = replicas[l[0]].metrics().await;
    assert_eq!(
        metric(&m, "warren_scheduler_due", &["provider=\"pagarme_native\""]),
        7.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "warren_scheduler_due", &["provider=\"appmax\""]),
        6.0,
        "{m}"
    );
    drop(replicas);
    env.cleanup().await;
}

/// Acceptance: SIGKILL of the leader hands over within 15 s; nothing published twice.
#[tokio::test(flavor = "multi_thread")]
async fn killed_leader_is_replaced_within_15s_without_double_publish() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let first = seed(&env, 20, "PAGARME", false, "ACTIVE", true).await;
    let mut replicas: Vec<Worker> = (0..3).map(|_| env.scheduler(&[])).collect();
    eventually(T, "first batch enqueued", || async {
        enqueued(&env).await == 20
    })
    .await;
    let l = leaders(&replicas).await;
    assert_eq!(l.len(), 1, "leaders: {l:?}");
    replicas[l[0]].kill9();
    let killed_at = std::time::Instant::now();
    let second = seed(&env, 20, "PAGARME", false, "ACTIVE", true).await;
    eventually(Duration::from_secs(15), "a new leader", || async {
        let now = leaders(&replicas).await;
        now.len() == 1 && now[0] != l[0]
    })
    .await;
    assert!(killed_at.elapsed() < Duration::from_secs(15));
    eventually(T, "second batch enqueued", || async {
        enqueued(&env).await == 40
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let msgs = drain(&env, &env.queue("renewals.pagarme")).await;
    let subs: Vec<String> = msgs
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.data).unwrap()["subscription_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let distinct: HashSet<&String> = subs.iter().collect();
    assert_eq!(subs.len(), 40, "published {} messages", subs.len());
    assert_eq!(distinct.len(), 40);
    for id in first.iter().chain(&second) {
        assert!(distinct.contains(&id.to_string()));
    }
    drop(replicas);
    env.cleanup().await;
}

/// `warren due` lists what is due with reasons, in table and JSON; bad flags are clear.
#[tokio::test(flavor = "multi_thread")]
async fn due_lists_with_reasons_and_rejects_bad_flags() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let prepaid = seed(&env, 2, "PAGARME", false, "PAST_DUE", true).await;
    let native = seed(&env, 1, "PAGARME", true, "ACTIVE", true).await;
    seed(&env, 1, "APPMAX", false, "CANCELED", true).await;
    let out = env.run(&["due"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains("pagarme                0 due   action: dry-run"),
        "{table}"
    );
    assert!(
        table.contains("pagarme_dunning        2 due   action: dry-run"),
        "{table}"
    );
    assert!(
        table.contains("pagarme_native         1 due   action: observe"),
        "{table}"
    );
    assert!(table.contains("appmax                 0 due"), "{table}");
    assert!(
        table.contains(&prepaid[0].to_string()) && table.contains("(dunning retry due)"),
        "{table}"
    );
    assert!(
        table.contains(&native[0].to_string()) && table.contains("never published"),
        "{table}"
    );

    let out = env.run(&[
        "due",
        "--provider",
        "pagarme_dunning",
        "--format",
        "json",
        "--pagarme-dry-run",
        "false",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["summary"][0]["due"], 2);
    assert_eq!(v["summary"][0]["action"], "publish");
    assert_eq!(v["due"].as_array().unwrap().len(), 2);
    // Nothing was published or recorded.
    assert_eq!(enqueued(&env).await, 0);

    let out = env.run(&["due", "--provider", "stripe"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pagarme, pagarme_dunning, pagarme_native, appmax, appmax_dunning"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["due", "--limit", "0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--limit"), "{}", stderr(&out));
    env.cleanup().await;
}

/// Ticks (from the idempotency keys `cron:{name}:{tick}`) of the messages on the cron queue.
async fn drained_ticks(env: &TestEnv) -> Vec<chrono::DateTime<chrono::Utc>> {
    let mut ticks: Vec<chrono::DateTime<chrono::Utc>> = drain(env, &env.queue("cron"))
        .await
        .iter()
        .map(|m| {
            let key = header(m, "x-idempotency-key").unwrap();
            let tick = key
                .strip_prefix("cron:tick:")
                .unwrap_or_else(|| panic!("{key}"));
            let id = m.properties.message_id().as_ref().unwrap().to_string();
            assert_eq!(id, warren_core::envelope::job_id_for_key(&key).to_string());
            tick.parse().unwrap()
        })
        .collect();
    ticks.sort();
    ticks
}

/// Acceptance: `every = "2s"` run by three replicas for 20 s yields one job per tick, no
/// gaps.
#[tokio::test(flavor = "multi_thread")]
async fn every_2s_with_three_replicas_yields_one_job_per_tick() {
    let config = format!(
        "{FAST_CONFIG}\n[[cron]]\nname = \"tick\"\nevery = \"2s\"\ntask = \"cron.test-tick\"\n\
         overlap = \"allow\"\npayload = {{ hello = \"world\" }}\n"
    );
    let env = TestEnv::new(&config).await;
    let replicas: Vec<Worker> = (0..3).map(|_| env.scheduler(&[])).collect();
    tokio::time::sleep(Duration::from_secs(20)).await;
    drop(replicas);
    let ticks = drained_ticks(&env).await;
    assert!(
        (9..=11).contains(&ticks.len()),
        "{} ticks in 20 s: {ticks:?}",
        ticks.len()
    );
    for pair in ticks.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_seconds(),
            2,
            "gap or duplicate: {ticks:?}"
        );
    }
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cron_ticks WHERE schedule = 'tick' AND status = 'published'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(recorded as usize, ticks.len());
    env.cleanup().await;
}

/// `overlap = "skip"`: while the previous run is unfinished, ticks are recorded as skipped.
#[tokio::test(flavor = "multi_thread")]
async fn overlap_skip_records_skipped_ticks_while_a_run_is_unfinished() {
    let config = format!(
        "{FAST_CONFIG}\n[[cron]]\nname = \"tick\"\nevery = \"1s\"\ntask = \"cron.test-tick\"\n\
         overlap = \"skip\"\n"
    );
    let env = TestEnv::new(&config).await;
    let s = env.scheduler(&[]);
    // No worker runs the first tick's job, so it stays unfinished.
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(s);
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM cron_ticks GROUP BY status ORDER BY status")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows[0], ("published".to_owned(), 1), "{rows:?}");
    assert_eq!(rows[1].0, "skipped", "{rows:?}");
    assert!(rows[1].1 >= 2, "{rows:?}");
    assert_eq!(drained_ticks(&env).await.len(), 1);
    env.cleanup().await;
}

/// The built-in cron tasks: old finished job rows are pruned; the stale-payment sweep never
/// relabels a row it cannot ask a provider about (this worker has no provider client; the
/// sweep's provider answers are tested in `provider_lies`).
#[tokio::test(flavor = "multi_thread")]
async fn builtin_cron_tasks_sweep_stale_payments_and_prune_job_runs() {
    let env = TestEnv::new(FAST_CONFIG).await;
    for (key, age) in [("old", "3 hours"), ("new", "10 minutes")] {
        sqlx::query(&format!(
            "INSERT INTO payment_transactions (provider, idempotency_key, status, amount_cents,
               currency, created_at) VALUES ('PAGARME', $1, 'pending', 100, 'BRL',
               now() - interval '{age}')"
        ))
        .bind(key)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO job_runs (job_id, task, queue, status, updated_at) VALUES
           ('ancient', 'demo.noop', 'default', 'succeeded', now() - interval '40 days'),
           ('recent', 'demo.noop', 'default', 'succeeded', now())",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let mut w = env.worker(&["--queue", "cron"]);
    w.wait_ready(T).await;
    let a = env
        .publish_json(
            "cron.fail-stale-payments",
            serde_json::json!({"max_age": "2h"}),
            &Uuid::now_v7().to_string(),
        )
        .await;
    let b = env
        .publish_json(
            "cron.prune-job-runs",
            serde_json::json!({"older_than": "30d"}),
            &Uuid::now_v7().to_string(),
        )
        .await;
    env.wait_status(&a, "succeeded", T).await;
    env.wait_status(&b, "succeeded", T).await;
    let statuses: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT idempotency_key, status, failure_reason FROM payment_transactions ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(statuses[0].0, "new");
    assert_eq!(statuses[0].1, "pending");
    assert_eq!(
        (statuses[1].0.as_str(), statuses[1].1.as_str()),
        ("old", "pending")
    );
    let left = metric(
        &w.metrics().await,
        "warren_stale_payments_total",
        &["outcome=\"left\""],
    );
    assert_eq!(
        left, 1.0,
        "the stale row is counted as left; the recent one is not stale"
    );
    assert!(env.job("ancient").await.is_none(), "old row not pruned");
    assert!(env.job("recent").await.is_some(), "recent row pruned");
    let bad = env
        .publish_json(
            "cron.prune-job-runs",
            serde_json::json!({"older_than": "soon"}),
            &Uuid::now_v7().to_string(),
        )
        .await;
    let row = env.wait_status(&bad, "dead_lettered", T).await;
    assert!(row.last_error.unwrap().contains("older_than"));
    drop(w);
    env.cleanup().await;
}

/// Seeds `n` ACTIVE Pagar.me subscriptions whose period ends at `end` (SQL, database clock).
async fn seed_ending(env: &TestEnv, n: usize, end: &str) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let customer = Uuid::new_v4();
        let sub = Uuid::new_v4();
        sqlx::query("INSERT INTO customers (id, email) VALUES ($1, 'c@example.com')")
            .bind(customer)
            .execute(&env.pool)
            .await
            .unwrap();
        sqlx::query(&format!(
            "INSERT INTO customer_subscriptions
               (id, customer_id, provider, is_native, status, current_period_start,
                current_period_end, canceled_at, amount_cents, metadata)
             VALUES ($1, $2, 'PAGARME', false, 'ACTIVE', now() - interval '30 days', {end},
                     NULL, 4990, '{{\"intervalUnit\":\"month\",\"intervalCount\":1}}')"
        ))
        .bind(sub)
        .bind(customer)
        .execute(&env.pool)
        .await
        .unwrap();
        ids.push(sub);
    }
    ids
}

/// A replica's metrics, or `None` when it does not answer within a second (a frozen
/// process accepts the connection but never replies).
async fn metrics_within_1s(w: &Worker) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    client
        .get(w.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Replicas reporting `warren_scheduler_is_leader 1`; frozen ones do not answer and are
/// not counted.
async fn answering_leaders(replicas: &[Worker]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        if let Some(text) = metrics_within_1s(r).await {
            if metric(&text, "warren_scheduler_is_leader", &[]) == 1.0 {
                out.push(i);
            }
        }
    }
    out
}

/// (renewals, cron ticks) a replica's log says it published: the `published=N` of its
/// "due scan" lines and its "cron tick published" lines.
fn published_in_log(log: &str) -> (u64, u64) {
    let mut renewals = 0;
    let mut ticks = 0;
    for line in log.lines() {
        if line.contains("cron tick published") {
            ticks += 1;
        }
        if line.contains("due scan") {
            if let Some(n) = line.split(" published=").nth(1) {
                renewals += n
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|d| d.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    (renewals, ticks)
}

async fn db_now(env: &TestEnv) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

const EVERY_2S_ALL: &str =
    "\n[[cron]]\nname = \"tick\"\nevery = \"2s\"\ntask = \"cron.test-tick\"\n\
     overlap = \"allow\"\ncatch_up = \"all\"\n";

/// Acceptance: `kill -STOP` of the leader for 30 s. Its lease runs out (PostgreSQL ends the
/// silent session), a standby publishes due renewals and cron ticks within 15 s, and after
/// `kill -CONT` the old leader publishes nothing: its log shows no publish after the freeze,
/// no renewal is published twice and no tick after the freeze is (the one tick it may have
/// had in flight when frozen is the documented crash window).
#[tokio::test(flavor = "multi_thread")]
async fn frozen_leader_loses_the_lease_and_publishes_nothing_when_it_resumes() {
    let env = TestEnv::new(&format!("{FAST_CONFIG}{EVERY_2S_ALL}")).await;
    seed(&env, 10, "PAGARME", false, "ACTIVE", true).await;
    let replicas: Vec<Worker> = (0..3).map(|_| env.scheduler(&[])).collect();
    eventually(T, "first batch enqueued", || async {
        enqueued(&env).await == 10
    })
    .await;
    let l = answering_leaders(&replicas).await;
    assert_eq!(l.len(), 1, "leaders: {l:?}");
    let old_index = l[0];
    let old = &replicas[old_index];
    // Let a cron tick or two go out, then freeze the leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    old.signal("STOP");
    let frozen = std::time::Instant::now();
    // Everything the old leader logged up to the freeze (a stopped process writes nothing).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logged_before_freeze = old.logs().len();
    let frozen_db = db_now(&env).await;
    seed(&env, 10, "PAGARME", false, "ACTIVE", true).await;

    eventually(
        Duration::from_secs(15),
        "a standby publishes the renewals",
        || async { enqueued(&env).await == 20 },
    )
    .await;
    let standby_renewals = frozen.elapsed();
    eventually(
        Duration::from_secs(15).saturating_sub(frozen.elapsed()),
        "a standby publishes a cron tick",
        || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM cron_ticks WHERE recorded_at > $1")
                    .bind(frozen_db)
                    .fetch_one(&env.pool)
                    .await
                    .unwrap();
            n > 0
        },
    )
    .await;
    eprintln!(
        "standby published renewals {standby_renewals:?} and a cron tick {:?} after the freeze",
        frozen.elapsed()
    );
    let new_leaders = answering_leaders(&replicas).await;
    assert_eq!(
        new_leaders.len(),
        1,
        "leaders while frozen: {new_leaders:?}"
    );
    assert_ne!(new_leaders[0], old_index);

    tokio::time::sleep(Duration::from_secs(30).saturating_sub(frozen.elapsed())).await;
    old.signal("CONT");
    let resumed_db = db_now(&env).await;
    seed(&env, 10, "PAGARME", false, "ACTIVE", true).await;
    eventually(T, "third batch enqueued", || async {
        enqueued(&env).await == 30
    })
    .await;
    // Give the old leader time to act if it were going to.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let logs = old.logs();
    let since_freeze = &logs[logged_before_freeze..];
    let (renewals, ticks) = published_in_log(&logs[..logged_before_freeze]);
    assert!(
        renewals == 10 && ticks >= 1,
        "the log shows what the leader published before the freeze ({renewals}, {ticks})"
    );
    assert_eq!(
        published_in_log(since_freeze),
        (0, 0),
        "the resumed old leader published (renewals, cron ticks); its log since the freeze:\n\
         {since_freeze}"
    );
    let l = answering_leaders(&replicas).await;
    assert_eq!(l.len(), 1, "leaders after the resume: {l:?}");
    assert_ne!(l[0], old_index);
    let late: i64 = sqlx::query_scalar("SELECT count(*) FROM cron_ticks WHERE recorded_at > $1")
        .bind(resumed_db)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(late > 0, "cron ticks go on after the resume");
    drop(replicas);

    let msgs = drain(&env, &env.queue("renewals.pagarme")).await;
    let distinct: HashSet<Vec<u8>> = msgs.iter().map(|m| m.data.clone()).collect();
    assert_eq!(msgs.len(), 30, "renewal messages");
    assert_eq!(distinct.len(), 30, "a renewal was published twice");
    // The one duplicate allowed is the tick the old leader may have had in flight when it
    // froze (published, not yet committed: its record rolled back with the session and the
    // new leader published it again, same job id). Nothing after the freeze is published twice.
    let ticks = drained_ticks(&env).await;
    let twice: Vec<_> = ticks
        .windows(2)
        .filter(|p| p[0] == p[1])
        .map(|p| p[0])
        .collect();
    assert!(
        twice.len() <= 1 && twice.iter().all(|t| *t <= frozen_db),
        "ticks published twice: {twice:?} (frozen at {frozen_db}): {ticks:?}"
    );
    env.cleanup().await;
}

/// libfaketime's preload library (Debian package `faketime`), if installed.
fn libfaketime() -> Option<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
}

/// A replica whose clock is 5 minutes fast (libfaketime) leads without publishing anything
/// early (and `warren due` on that clock reports nothing due early) — renewals only once their period has ended and cron ticks only
/// once their time has come, by the database's clock — reports its skew, and after it fails
/// over to a replica with a correct clock the ticks go on with no gap.
#[tokio::test(flavor = "multi_thread")]
async fn fast_clock_replica_publishes_nothing_early_and_leaves_no_gap() {
    let Some(lib) = libfaketime() else {
        eprintln!(
            "SKIPPED fast_clock_replica_publishes_nothing_early_and_leaves_no_gap: libfaketime \
             is not installed (apt-get install faketime; scripts/test.sh installs it)"
        );
        return;
    };
    let env = TestEnv::new(&format!("{FAST_CONFIG}{EVERY_2S_ALL}")).await;
    // Due in 20 s by the database's clock: a replica 5 minutes fast would take them as due.
    seed_ending(&env, 5, "now() + interval '20 seconds'").await;
    let fast_clock = [
        ("LD_PRELOAD", lib),
        ("FAKETIME", "+300s"),
        // Timers and leases run on the monotonic clock, which a wrong wall clock leaves alone.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    // `warren due` on that clock reports what the scheduler would do: nothing due yet.
    let out = env
        .command(&["due", "--format", "json"])
        .envs(fast_clock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let due: i64 = report["summary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["due"].as_i64().unwrap())
        .sum();
    assert_eq!(due, 0, "`warren due` trusted a fast clock: {report}");
    let mut fast = env.scheduler(&fast_clock);
    eventually(T, "the fast replica leads", || async {
        answering_leaders(std::slice::from_ref(&fast)).await == [0]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;

    let early_renewals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM renewal_enqueues WHERE enqueued_at < period_end")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        early_renewals, 0,
        "renewals enqueued before their period ended"
    );
    let early_ticks: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT tick, recorded_at FROM cron_ticks WHERE recorded_at < tick")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(
        early_ticks.is_empty(),
        "ticks published early: {early_ticks:?}"
    );
    let by_fast: i64 = sqlx::query_scalar("SELECT count(*) FROM cron_ticks")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(
        by_fast >= 3,
        "the fast leader published {by_fast} ticks in 8 s"
    );

    let m = fast.metrics().await;
    let skew = metric(&m, "warren_scheduler_clock_skew_seconds", &[]);
    assert!((295.0..305.0).contains(&skew), "skew gauge {skew}:\n{m}");
    assert!(
        fast.logs().contains("clock differs from the database"),
        "{}",
        fast.logs()
    );
    // Fail over to a replica with a correct clock.
    let normal = env.scheduler(&[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    fast.kill9();
    eventually(T, "the correct replica leads", || async {
        answering_leaders(std::slice::from_ref(&normal)).await == [0]
    })
    .await;
    eventually(T, "the renewals are enqueued once due", || async {
        enqueued(&env).await == 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let end = db_now(&env).await;
    drop(normal);
    drop(fast);

    let early_renewals: i64 =
        sqlx::query_scalar("SELECT count(*) FROM renewal_enqueues WHERE enqueued_at < period_end")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        early_renewals, 0,
        "renewals enqueued before their period ended"
    );
    let ticks = drained_ticks(&env).await;
    assert!(ticks.len() >= 8, "{} ticks: {ticks:?}", ticks.len());
    for pair in ticks.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_seconds(),
            2,
            "gap or duplicate: {ticks:?}"
        );
    }
    let last = *ticks.last().unwrap();
    assert!(last <= end, "tick {last} published before its time ({end})");
    assert!(
        end - last < chrono::TimeDelta::seconds(4),
        "no tick since {last} (now {end}): a gap after failover"
    );
    env.cleanup().await;
}
