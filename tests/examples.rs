//! The publisher examples in `examples/` run: each publishes `demo.sleep {"ms": 50}` with its
//! language's ordinary AMQP client into a fresh namespace, prints the job id, and a real
//! `warren worker --queue default` records that job `succeeded`. An unknown task makes each
//! example exit non-zero (mandatory publish, the broker returns the message).
//!
//! The interpreters come from `scripts/test.sh`, which prepares them before `cargo test`: a
//! Python venv with pika at `target/example-clients/venv` and `npm ci` in `examples/node`.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

const PREPARE: &str = "prepare the example clients with `scripts/test.sh` (it sets them up \
    before cargo test), or by hand:\n  \
    python3 -m venv target/example-clients/venv && \
    target/example-clients/venv/bin/pip install -r examples/python/requirements.txt\n  \
    (cd examples/node && npm ci)";

/// The venv's Python, with pika importable; fails the test with how to prepare it.
fn python() -> PathBuf {
    let py = repo().join("target/example-clients/venv/bin/python");
    assert!(py.exists(), "{} is missing: {PREPARE}", py.display());
    let ok = Command::new(&py)
        .args(["-c", "import pika"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "pika is not installed in {}: {PREPARE}", py.display());
    py
}

/// `node`, with amqplib installed in examples/node; fails the test with how to prepare it.
fn node() -> PathBuf {
    let lib = repo().join("examples/node/node_modules/amqplib");
    assert!(lib.exists(), "{} is missing: {PREPARE}", lib.display());
    let ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`node` is not on PATH (Node 18 or later is needed)");
    PathBuf::from("node")
}

/// Runs an example against the test's namespace: `interpreter script args…`.
fn run_example(
    env: &TestEnv,
    interpreter: &Path,
    script: &str,
    args: &[&str],
) -> std::process::Output {
    Command::new(interpreter)
        .arg(repo().join(script))
        .args(args)
        .current_dir(repo())
        .env("WARREN_NAMESPACE", &env.ns)
        .env("AMQP_URL", AMQP_URL)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {script}: {e}", interpreter.display()))
}

async fn example_job_succeeds(interpreter: PathBuf, script: &str) {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;

    let out = run_example(&env, &interpreter, script, &[]);
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    let id = stdout(&out).trim().to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "{script} should print the job id (a UUID), printed {id:?}; stderr: {}",
        stderr(&out)
    );
    let row = env.wait_status(&id, "succeeded", T).await;
    assert_eq!(row.attempts, 1);
    let task: String = sqlx::query_scalar("SELECT task FROM job_runs WHERE job_id = $1")
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(task, "demo.sleep");

    // Mandatory publish: a task no queue is bound to is reported, not dropped silently.
    let out = run_example(&env, &interpreter, script, &["nosuch.task", "{}"]);
    assert!(
        !out.status.success(),
        "{script} nosuch.task should fail; printed {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("no queue is bound to task") && stderr(&out).contains("nosuch.task"),
        "{script}: {}",
        stderr(&out)
    );

    drop(w);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_pika_example_job_succeeds() {
    example_job_succeeds(python(), "examples/python/publish.py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_amqplib_example_job_succeeds() {
    example_job_succeeds(node(), "examples/node/publish.js").await;
}

/// The Rust example of docs/wire-contract.md ("Rust (`warren_producer::Producer`)"), as
/// written there.
async fn publish_sleep(amqp_url: &str, ns: &str) -> Result<String, Box<dyn std::error::Error>> {
    use warren_core::task::DemoSleep;
    use warren_producer::{Producer, PublishOptions};

    let conn = warren_core::broker::connect(amqp_url, "my-service").await?;
    let producer = Producer::new(&conn, format!("{ns}.jobs")).await?;
    let opts = PublishOptions {
        tenant: Some("acme".into()), // also: id (the job id), idempotency_key, max_attempts
        ..Default::default()
    };
    // Err(PublishError::Unroutable) when no queue is bound to the task.
    let job_id = producer
        .publish("demo.sleep", &DemoSleep { ms: 50 }, &opts)
        .await?;
    conn.close(200, "done".into()).await?;
    Ok(job_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_producer_example_job_succeeds() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let id = publish_sleep(AMQP_URL, &env.ns).await.unwrap();
    let row = env.wait_status(&id, "succeeded", T).await;
    assert_eq!(row.attempts, 1);
    drop(w);
    env.cleanup().await;
}
