//! The dashboard (`deploy/grafana/warren.json`) and the alerts
//! (`deploy/prometheus/alerts.yml`) must query only metrics that exist: every metric name
//! in their PromQL is either scraped from a real running Warren (workers, renewal worker,
//! scheduler with cron, ingest, after real jobs, a dead letter, renewals and a broker
//! reconnect) or one of RabbitMQ's documented names. `promtool` (Debian package
//! `prometheus`; scripts/test.sh installs it) checks the rules, the Prometheus config and
//! the syntax of every dashboard query.

mod common;

use common::sim::*;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use yaml_rust2::YamlLoader;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Metric names of rabbitmq_prometheus that the dashboard and alerts may use: the "Global
/// counters", "Generic" and "Queues" tables of the plugin's metric list,
/// https://github.com/rabbitmq/rabbitmq-server/blob/main/deps/rabbitmq_prometheus/metrics.md
/// (the per-object endpoint, /metrics/per-object, labels the queue metrics by vhost and
/// queue; https://www.rabbitmq.com/docs/prometheus#metric-aggregation).
const RABBITMQ_METRICS: &[&str] = &[
    "rabbitmq_global_messages_acknowledged_total",
    "rabbitmq_global_messages_confirmed_total",
    "rabbitmq_global_messages_delivered_consume_auto_ack_total",
    "rabbitmq_global_messages_delivered_consume_manual_ack_total",
    "rabbitmq_global_messages_delivered_get_auto_ack_total",
    "rabbitmq_global_messages_delivered_get_manual_ack_total",
    "rabbitmq_global_messages_delivered_total",
    "rabbitmq_global_messages_get_empty_total",
    "rabbitmq_global_messages_received_confirm_total",
    "rabbitmq_global_messages_received_total",
    "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_global_messages_routed_total",
    "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_global_messages_unroutable_returned_total",
    "rabbitmq_global_publishers",
    "rabbitmq_global_consumers",
    "rabbitmq_global_messages_dead_lettered_confirmed_total",
    "rabbitmq_global_messages_dead_lettered_delivery_limit_total",
    "rabbitmq_global_messages_dead_lettered_expired_total",
    "rabbitmq_global_messages_dead_lettered_maxlen_total",
    "rabbitmq_global_messages_dead_lettered_rejected_total",
    "rabbitmq_build_info",
    "rabbitmq_consumer_prefetch",
    "rabbitmq_consumers",
    "rabbitmq_disk_space_available_bytes",
    "rabbitmq_disk_space_available_limit_bytes",
    "rabbitmq_identity_info",
    "rabbitmq_process_max_fds",
    "rabbitmq_process_open_fds",
    "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_queue_consumer_utilisation",
    "rabbitmq_queue_consumers",
    "rabbitmq_queue_disk_reads_total",
    "rabbitmq_queue_disk_writes_total",
    "rabbitmq_queue_messages",
    "rabbitmq_queue_messages_bytes",
    "rabbitmq_queue_messages_paged_out",
    "rabbitmq_queue_messages_paged_out_bytes",
    "rabbitmq_queue_messages_persistent",
    "rabbitmq_queue_messages_persistent_bytes",
    "rabbitmq_queue_messages_published_total",
    "rabbitmq_queue_messages_ram",
    "rabbitmq_queue_messages_ram_bytes",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_ready_bytes",
    "rabbitmq_queue_messages_ready_ram",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages_unacked_bytes",
    "rabbitmq_queue_messages_unacked_ram",
    "rabbitmq_queue_process_memory_bytes",
    "rabbitmq_queue_process_reductions_total",
    "rabbitmq_queues",
];

/// Series Prometheus itself writes for every target ("Automatically generated labels and
/// time series", https://prometheus.io/docs/concepts/jobs_instances/).
const PROMETHEUS_SYNTHETIC: &[&str] = &["up"];

/// Modifiers followed by a label list in parentheses (`sum by (task, le)`, `on (instance)`).
const LABEL_LIST_MODIFIERS: &str = "by without on ignoring group_left group_right";

/// PromQL words that are not metric names even when not followed by `(`: operators,
/// modifiers, and aggregations (`sum by (x) (…)` puts the label list between them and `(`).
const KEYWORDS: &str = "and or unless bool offset inf nan start end sum min max avg group \
    stddev stdvar count count_values bottomk topk quantile limitk limit_ratio";

fn is_one_of(word: &str, list: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

/// Metric names in a PromQL expression: identifiers outside `{…}` label matchers, `[…]`
/// ranges and strings that are not functions/aggregations (followed by `(`), keywords,
/// label lists after by/without/on/ignoring/group_*, numbers or durations, or Grafana
/// `$variables`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // Index after the bracketed group opening at `i`, honouring strings inside.
    let close = |mut j: usize, open: char, shut: char| {
        let mut depth = 0;
        while j < b.len() {
            match b[j] {
                '"' | '\'' | '`' => {
                    let q = b[j];
                    j += 1;
                    while j < b.len() && b[j] != q {
                        j += if b[j] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == shut => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        panic!("unbalanced {open} in {expr}")
    };
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < b.len() {
        let c = b[i];
        if c == '{' {
            i = close(i, '{', '}');
        } else if c == '[' {
            i = close(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // Grafana variable, number or duration (`0.95`, `1e3`, `5m`)
            i += 1;
            while i < b.len() && (ident(b[i]) || b[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            let next = skip_ws(i);
            let called = next < b.len() && b[next] == '(';
            if is_one_of(&word, LABEL_LIST_MODIFIERS) {
                if called {
                    i = close(next, '(', ')');
                }
            } else if !called && !is_one_of(&word, KEYWORDS) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// (where, expression) of every alert and dashboard query.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let alerts = std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/alerts.yml"))
        .expect("alerts.yml");
    let doc = &YamlLoader::load_from_str(&alerts).expect("alerts.yml is YAML")[0];
    for group in doc["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("alert name");
            out.push((
                format!("alerts.yml {name}"),
                rule["expr"].as_str().expect("expr").to_owned(),
            ));
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    rule["annotations"][key].as_str().is_some(),
                    "alert {name} lacks annotation {key}"
                );
            }
            let anchor = rule["annotations"]["runbook_url"].as_str().unwrap();
            let (file, section) = anchor.split_once('#').expect("runbook_url has #section");
            let doc = std::fs::read_to_string(Path::new(ROOT).join(file)).expect(file);
            assert!(
                doc.lines().any(|l| l.starts_with('#')
                    && l.trim_start_matches('#').trim().to_lowercase() == section),
                "{name}: runbook_url section #{section} is not a heading of {file}"
            );
        }
    }
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/warren.json"))
            .expect("warren.json"),
    )
    .expect("warren.json is JSON");
    fn walk(v: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                let title = m.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(e) = m.get("expr").and_then(Value::as_str) {
                    out.push((format!("warren.json \"{title}\""), e.to_owned()));
                }
                m.values().for_each(|c| walk(c, title, out));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    walk(&dash, "", &mut out);
    out
}

#[test]
fn metric_names_skips_functions_labels_ranges_and_modifiers() {
    let got = metric_names(
        r#"histogram_quantile(0.95, sum by (task, le) (rate(a_bucket{queue=~"x\"{", b="y"}[$__rate_interval])))
           / on (instance) group_left () b:rec offset 5m > bool 2 or absent(up) unless c"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "b:rec", "up", "c"].map(String::from).into();
    assert_eq!(got, want);
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool not runnable ({e}): install the Debian package `prometheus` \
             (`apt-get install prometheus`; scripts/test.sh does it)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules_the_config_and_every_dashboard_query() {
    let rules = promtool(&[
        "check",
        "rules",
        &format!("{ROOT}/deploy/prometheus/alerts.yml"),
    ]);
    assert!(rules.contains("SUCCESS"), "{rules}");
    promtool(&[
        "check",
        "config",
        &format!("{ROOT}/deploy/prometheus/prometheus.yml"),
    ]);
    // promtool parses PromQL only in rule files: each dashboard query becomes a recording
    // rule, Grafana's interval variables replaced by a duration.
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let dashboard: Vec<_> = expressions()
        .into_iter()
        .filter(|(w, _)| w.starts_with("warren.json"))
        .collect();
    assert!(
        dashboard.len() >= 20,
        "only {} dashboard queries",
        dashboard.len()
    );
    for (i, (_, e)) in dashboard.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        file += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    let path =
        std::env::temp_dir().join(format!("warren-dashboard-rules-{}.yml", std::process::id()));
    std::fs::write(&path, file).unwrap();
    let out = promtool(&["check", "rules", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", dashboard.len())),
        "{out}"
    );
}

/// Names of the samples in a Prometheus text exposition.
fn exported(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
}

const CONFIG: &str = r#"
[retry]
tiers = ["200ms", "600ms", "1500ms", "3s"]

[[cron]]
name = "promql-test"
every = "2s"
task = "cron.fail-stale-payments"
payload = { max_age = "2h" }
"#;

const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn every_queried_metric_is_exported_by_warren_or_documented_by_rabbitmq() {
    let exprs = expressions();
    let mut wanted = BTreeSet::new();
    for (what, e) in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "{what}: no metric in {e}");
        wanted.extend(names);
    }
    let external: BTreeSet<String> = RABBITMQ_METRICS
        .iter()
        .chain(PROMETHEUS_SYNTHETIC)
        .map(|s| s.to_string())
        .collect();
    let wanted: BTreeSet<String> = wanted.difference(&external).cloned().collect();
    assert!(
        wanted.len() >= 15,
        "only {} Warren metrics queried",
        wanted.len()
    );

    let env = TestEnv::new(CONFIG).await;
    seed(&env, "4", "ok,decline");
    let sim = simulator(&env, 0).await;
    // A host name of its own names the worker's broker connection, so the test can close it.
    let host = format!("{}-promql", env.ns);
    let mut worker = env.spawn(
        &["worker", "--queue", "default,cron"],
        &[("HOSTNAME", &host)],
    );
    let mut renewals = renewal_worker_with(&env, &sim, "32", &[]);
    let mut scheduler = env.scheduler(&[("WARREN_APPMAX_DRY_RUN", "false")]);
    let ingest_listen = format!("127.0.0.1:{}", free_port());
    let mut ingest = env.spawn(
        &["ingest", "--listen", &ingest_listen],
        &[("WARREN_INGEST_TOKENS", "promql-token")],
    );
    for p in [&mut worker, &mut renewals, &mut scheduler, &mut ingest] {
        p.wait_ready(T).await;
    }

    // Real jobs: successes, a permanent failure (dead-lettered), one through the ingest API.
    for i in 0..3 {
        env.publish_json("demo.noop", serde_json::json!({}), &format!("noop-{i}"))
            .await;
    }
    env.publish_json(
        "demo.fail",
        serde_json::json!({"mode": "permanent"}),
        "fail-1",
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("http://{ingest_listen}/v1/jobs/demo.noop"))
        .bearer_auth("promql-token")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "ingest answered {}", r.status());
    env.wait_status("fail-1", "dead_lettered", T).await;

    // A broker reconnect: close the worker's connection from the broker side.
    let conn_name = format!("warren-worker@{host}");
    let list = format!(
        "rabbitmqctl -q list_connections --no-table-headers pid client_properties \
         | grep -F '{conn_name}' | awk '{{print $1}}'"
    );
    let mut pid = String::new();
    eventually(T, "the worker's connection listed", || {
        let out = Command::new("bash").args(["-c", &list]).output().unwrap();
        pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let found = !pid.is_empty();
        async move { found }
    })
    .await;
    sh(&format!(
        "rabbitmqctl -q close_connection '{pid}' 'tests/promql.rs reconnect'"
    ));

    let procs = [&worker, &renewals, &scheduler, &ingest];
    let deadline = Instant::now() + T;
    let missing = loop {
        let mut have = BTreeSet::new();
        for p in procs {
            if let Ok(r) = reqwest::get(p.url("/metrics")).await {
                have.extend(exported(&r.text().await.unwrap_or_default()));
            }
        }
        let missing: Vec<String> = wanted.difference(&have).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let using = |name: &String| -> Vec<&str> {
        exprs
            .iter()
            .filter(|(_, e)| metric_names(e).contains(name))
            .map(|(w, _)| w.as_str())
            .collect()
    };
    assert!(
        missing.is_empty(),
        "queried but exported by no running Warren role and not a documented RabbitMQ \
         metric: {:?}",
        missing.iter().map(|m| (m, using(m))).collect::<Vec<_>>()
    );
    env.cleanup().await;
}
