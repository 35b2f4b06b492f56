//! The publisher examples in `examples/` run: each publishes `demo.sleep {"ms": 50}` with its
//! language's ordinary AMQP client into a fresh namespace, prints the job id, and a real
//! `warren worker --queue default` records that job `succeeded`. An unknown task makes each
//! example exit non-zero (mandatory publish, the broker returns the message).
//!
//! The ten-line Python and Node examples of `docs/wire-contract.md` are copied out of the
//! document and run the same way, so the document cannot drift from code that works.
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

/// The job id a successful example printed.
fn printed_job_id(out: &std::process::Output, script: &str) -> String {
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        stdout(out),
        stderr(out)
    );
    let id = stdout(out).trim().to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "{script} should print the job id (a UUID), printed {id:?}; stderr: {}",
        stderr(out)
    );
    id
}

/// The worker ran the job once, as `demo.sleep`, and it succeeded.
async fn succeeded_once(env: &TestEnv, id: &str) {
    let row = env.wait_status(id, "succeeded", T).await;
    assert_eq!(row.attempts, 1);
    let task: String = sqlx::query_scalar("SELECT task FROM job_runs WHERE job_id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(task, "demo.sleep");
}

async fn example_job_succeeds(interpreter: PathBuf, script: &str) {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;

    let out = run_example(&env, &interpreter, script, &[]);
    succeeded_once(&env, &printed_job_id(&out, script)).await;

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

/// The fenced code block that follows `<!-- example: NAME -->` in docs/wire-contract.md,
/// exactly as written there.
fn doc_example(name: &str) -> String {
    let doc = std::fs::read_to_string(repo().join("docs/wire-contract.md")).unwrap();
    let marker = format!("<!-- example: {name} -->");
    let (_, after) = doc
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/wire-contract.md has no {marker}"));
    let after = after.trim_start();
    assert!(
        after.starts_with("```"),
        "{marker} must be followed by a fenced code block"
    );
    let (_, block) = after.split_once('\n').unwrap();
    let (code, _) = block
        .split_once("\n```")
        .unwrap_or_else(|| panic!("the code block after {marker} is not closed"));
    format!("{code}\n")
}

/// The ten-line example `name` of docs/wire-contract.md, copied out of the document into
/// `dir/<ns>-<name>.<ext>`, runs against a fresh namespace and its job succeeds; the same code
/// publishing a task no queue is bound to fails (it uses `mandatory`).
async fn doc_example_job_succeeds(interpreter: PathBuf, name: &str, dir: PathBuf, ext: &str) {
    let code = doc_example(name);
    let lines = code.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(
        lines <= 10,
        "{name} in docs/wire-contract.md is {lines} lines; the contract promises ten:\n{code}"
    );
    for must in [
        "demo.sleep",
        "mandatory",
        "WARREN_NAMESPACE",
        "application/json",
    ] {
        assert!(code.contains(must), "{name} should mention {must}:\n{code}");
    }
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;

    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join(format!("{}-{name}.{ext}", env.ns));
    let path = script.to_str().unwrap();
    std::fs::write(&script, &code).unwrap();
    let out = run_example(&env, &interpreter, path, &[]);
    succeeded_once(&env, &printed_job_id(&out, name)).await;

    let unroutable = code.replace("\"demo.sleep\"", "\"nosuch.task\"");
    assert_ne!(unroutable, code, "{name} should publish \"demo.sleep\"");
    std::fs::write(&script, &unroutable).unwrap();
    let out = run_example(&env, &interpreter, path, &[]);
    assert!(
        !out.status.success() && stdout(&out).trim().is_empty(),
        "{name} publishing nosuch.task should fail without printing a job id; printed {:?}, \
         stderr: {}",
        stdout(&out),
        stderr(&out)
    );

    let _ = std::fs::remove_file(&script);
    drop(w);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_ten_line_doc_example_job_succeeds() {
    let dir = std::env::temp_dir();
    doc_example_job_succeeds(python(), "python-ten-lines", dir, "py").await;
}

/// Written below examples/node/node_modules so that `import "amqplib"` resolves there.
#[tokio::test(flavor = "multi_thread")]
async fn node_ten_line_doc_example_job_succeeds() {
    let node = node();
    let dir = repo().join("examples/node/node_modules/.warren-doc-examples");
    doc_example_job_succeeds(node, "node-ten-lines", dir, "mjs").await;
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
