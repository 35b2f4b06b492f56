//! `warren status` on the real RabbitMQ and PostgreSQL: the depths it shows are
//! the broker's, the leader is the scheduler replica holding the lock, cron ticks appear.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn status(env: &TestEnv) -> Value {
    let out = env.run(&["status", "--format", "json"]);
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn queue<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in {s:#}"))
}

/// Acceptance: N jobs published to a queue no worker consumes show as exactly N ready and
/// 0 consumers; a dead letter shows in the DLQ column; a running worker shows as a
/// consumer; the scheduler leader and its cron ticks appear.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_real_depths_leader_and_cron_ticks() {
    let config = format!(
        "{FAST_CONFIG}\n[[cron]]\nname = \"tick\"\nevery = \"1s\"\ntask = \"cron.test-tick\"\n\
         overlap = \"allow\"\n"
    );
    let env = TestEnv::new(&config).await;
    for i in 0..37 {
        env.publish_json("demo.noop", json!({ "i": i }), &format!("job-{i}"))
            .await;
    }
    let s = status(&env);
    let d = queue(&s, "default");
    assert_eq!(d["ready"], 37, "{d}");
    assert_eq!(d["consumers"], 0, "{d}");
    assert_eq!(d["dlq"], 0, "{d}");
    assert_eq!(queue(&s, "cron")["ready"], 0);
    assert!(s["leader"].is_null(), "{s:#}");
    let due = s["due"].as_array().unwrap();
    assert_eq!(due.len(), 5, "{s:#}");
    assert!(due.iter().all(|d| d["due"] == 0), "{s:#}");

    // The table says the same, and how to get unacked counts when the API is not there.
    let out = env.run(&["status", "--management-url", "http://127.0.0.1:1"]);
    let table = stdout(&out);
    let line = table
        .lines()
        .find(|l| l.starts_with("default "))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols, ["default", "37", "-", "0", "0"], "{table}");
    assert!(table.contains("unacked: unknown"), "{table}");
    assert!(table.contains("WARREN_MANAGEMENT_URL"), "{table}");

    // A dead letter in default's DLQ, a consumer on cron, a leader with ticks.
    let dlx = format!("{}.dlx", env.ns);
    let c = env
        .ch
        .basic_publish(
            dlx.as_str().into(),
            "default".into(),
            lapin::options::BasicPublishOptions::default(),
            b"{}",
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack());
    let mut worker = env.worker(&["--queue", "cron"]);
    worker.wait_ready(T).await;
    let _scheduler = env.scheduler(&[]);
    eventually(T, "leader, ticks and a consumer in status", || async {
        let s = status(&env);
        queue(&s, "cron")["consumers"] == 1
            && queue(&s, "default")["dlq"] == 1
            && s["leader"]["application_name"] == "warren-scheduler-leader"
            && s["cron"]
                .as_array()
                .is_some_and(|c| c.iter().any(|t| t["schedule"] == "tick"))
    })
    .await;
    let table = stdout(&env.run(&["status"]));
    assert!(table.contains("scheduler leader: pid"), "{table}");
    assert!(table.contains("tick "), "{table}");
    env.cleanup().await;
}

/// `--watch` redraws until interrupted.
#[tokio::test(flavor = "multi_thread")]
async fn status_watch_redraws() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.spawn(&["status", "--watch", "1"], &[]);
    eventually(T, "three screens", || async {
        w.logs().matches("warren status  namespace").count() >= 3
    })
    .await;
    w.signal("INT");
    let st = w.wait_exit(Duration::from_secs(10)).await;
    assert!(st.success(), "{st}: {}", w.logs());
    env.cleanup().await;
}
