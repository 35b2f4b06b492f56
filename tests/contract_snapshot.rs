//! The public contract, snapshotted: the topology `warren topology` declares for the default
//! configuration, and the metric families (`role name type`) that a normal run of a worker,
//! `warren ingest` and the scheduler exports. Both are compared with committed files under
//! `tests/snapshots/`, so a change to either shows up in review as a diff of those files.
//!
//! `WARREN_UPDATE_SNAPSHOTS=1 cargo test --test contract_snapshot` rewrites the files;
//! otherwise a difference fails with a diff.
//!
//! The metric set is made deterministic: only names and types are kept (no labels or
//! values), every event that creates a family is triggered and waited for before the scrape,
//! and families that appear only after a fault are left out (see [`FAULT_ONLY`]). Every
//! scraped `warren_*` family must also be in `warren_core::telemetry::CATALOGUE`, with the
//! same type, so docs/metrics.md lists it.

mod common;

use common::ingest::Ingest;
use common::*;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Families a normal run never creates; they appear only after a fault, at a time the test
/// does not control, so they are not part of the snapshot (they are in the catalogue and
/// docs/metrics.md): a broker connection re-established after a loss, a job-ledger write
/// retried after a PostgreSQL error.
const FAULT_ONLY: &[&str] = &[
    "warren_broker_reconnects_total",
    "warren_ledger_errors_total",
];

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name)
}

/// Compares `actual` with the committed snapshot, or rewrites it when
/// `WARREN_UPDATE_SNAPSHOTS=1`.
fn check_snapshot(name: &str, actual: &str) {
    let path = snapshot_path(name);
    if std::env::var("WARREN_UPDATE_SNAPSHOTS").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        eprintln!("updated {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        panic!(
            "{} differs from what the code produces (- committed, + now):\n{}\n\
             If the change is intended, rewrite it with \
             `WARREN_UPDATE_SNAPSHOTS=1 cargo test --test contract_snapshot` and commit it.",
            path.display(),
            diff(&expected, actual)
        );
    }
}

/// A line diff (longest common subsequence), unchanged lines prefixed with two spaces.
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        } else {
            out += &format!("- {}\n", a[i]);
            i += 1;
        }
    }
    out
}

/// `warren topology` output with the test namespace replaced by `<ns>` and runs of spaces
/// collapsed (column widths follow the namespace's length).
fn normalise_topology(out: &str, ns: &str) -> String {
    out.lines()
        .map(|l| {
            let l = l.replace(ns, "<ns>");
            let indent = if l.starts_with(' ') { "  " } else { "" };
            format!(
                "{indent}{}\n",
                l.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn topology_of_the_default_config() {
    let env = TestEnv::new("").await;
    let out = env.run(&["topology"]);
    assert!(out.status.success(), "topology failed: {}", stderr(&out));
    let text = normalise_topology(&stdout(&out), &env.ns);
    env.cleanup().await;
    check_snapshot("topology.txt", &text);
}

/// `(name, type)` of every `warren_*` family in a Prometheus text exposition.
fn families(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .filter(|(name, _)| name.starts_with("warren_"))
        .collect()
}

/// Scrapes `/metrics` until every family in `want` is there.
async fn scrape_once_present(w: &Worker, role: &str, want: &[&str]) -> String {
    let mut last = String::new();
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Ok(r) = reqwest::get(w.url("/metrics")).await {
            last = r.text().await.unwrap_or_default();
            let have = families(&last);
            if want.iter().all(|n| have.iter().any(|(h, _)| h == n)) {
                return last;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{role} did not export all of {want:?} within {T:?}; last scrape:\n{last}\nlog:\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fast retry tiers, and one cron schedule ticking every second so the cron families are
/// created deterministically (a tick is waited for).
const METRICS_CONFIG: &str = r#"
[retry]
tiers = ["200ms", "600ms"]

[[cron]]
name = "snapshot-tick"
every = "1s"
task = "cron.prune-job-runs"
payload = { older_than = "30d" }
"#;

const TOKEN: &str = "tok-contract-snapshot-secret";

#[tokio::test(flavor = "multi_thread")]
async fn metric_families_of_a_normal_run() {
    let env = TestEnv::new(METRICS_CONFIG).await;
    // Provider URLs only so the renewal queues can be consumed; no renewal job is sent.
    let mut worker = env.spawn(
        &[
            "worker",
            "--queue",
            "default,renewals.pagarme,renewals.appmax,cron",
        ],
        &[
            ("WARREN_PAGARME_BASE_URL", "http://127.0.0.1:9"),
            ("WARREN_PAGARME_SECRET_KEY", "sk_test_snapshot"),
            ("WARREN_APPMAX_BASE_URL", "http://127.0.0.1:9"),
        ],
    );
    worker.wait_ready(T).await;
    let ingest = Ingest::spawn(&env, &[("WARREN_INGEST_TOKENS", TOKEN)]).await;
    let mut scheduler = env.scheduler(&[("WARREN_APPMAX_DRY_RUN", "false")]);
    scheduler.wait_ready(T).await;

    // A success, a retry followed by a dead letter (exhausted), an ingest request.
    let ok = env
        .publish_json("demo.noop", serde_json::json!({}), &id())
        .await;
    let failing = id();
    let props = lapin::BasicProperties::default()
        .with_message_id(failing.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers({
            let mut h = lapin::types::FieldTable::default();
            h.insert("x-max-attempts".into(), lapin::types::AMQPValue::LongInt(2));
            h
        });
    env.publish("demo.fail", br#"{"mode":"retryable"}"#, props)
        .await;
    let r = ingest
        .http
        .post(ingest.url("/v1/jobs/demo.noop"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(r.status().as_u16(), 202, "ingest refused the job");
    let v: serde_json::Value = r.json().await.unwrap();
    let ingested = v["id"]
        .as_str()
        .or_else(|| v["jobs"][0]["id"].as_str())
        .unwrap_or_else(|| panic!("no job id in {v}"))
        .to_owned();

    env.wait_status(&ok, "succeeded", T).await;
    env.wait_status(&ingested, "succeeded", T).await;
    env.wait_status(&failing, "dead_lettered", T).await;

    let mut snapshot = BTreeSet::new();
    let roles: [(&str, &Worker, &[&str]); 3] = [
        (
            "worker",
            &worker,
            &[
                "warren_jobs_processed_total",
                "warren_job_duration_seconds",
                "warren_ledger_batch_size",
                "warren_published_total",
            ],
        ),
        (
            "ingest",
            &ingest.proc,
            &[
                "warren_ingest_requests_total",
                "warren_ingest_request_duration_seconds",
                "warren_published_total",
            ],
        ),
        (
            "scheduler",
            &scheduler,
            &[
                "warren_scheduler_scan_duration_seconds",
                "warren_scheduler_published_total",
                "warren_cron_runs_total",
                "warren_broker_connected",
            ],
        ),
    ];
    let catalogue: BTreeSet<(&str, &str)> = warren_core::telemetry::CATALOGUE
        .iter()
        .map(|m| (m.name, m.kind.as_str()))
        .collect();
    for (role, proc, want) in roles {
        let text = scrape_once_present(proc, role, want).await;
        for (name, kind) in families(&text) {
            assert!(
                catalogue.contains(&(name.as_str(), kind.as_str())),
                "{role} exports {name} ({kind}), which is not in \
                 warren_core::telemetry::CATALOGUE with that type"
            );
            if !FAULT_ONLY.contains(&name.as_str()) {
                snapshot.insert(format!("{role} {name} {kind}"));
            }
        }
    }
    scheduler.kill9();
    worker.kill9();
    drop(ingest);
    env.cleanup().await;
    let text: String = snapshot.into_iter().map(|l| l + "\n").collect();
    check_snapshot("metrics.txt", &text);
}
