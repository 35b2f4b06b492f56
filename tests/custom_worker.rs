//! A user's own binary built on `warren::App` (`examples/custom-worker`) against the real
//! RabbitMQ and PostgreSQL: its `topology` command declares the queue its task names, its
//! `worker` runs that task and the built-in ones, and a job enqueued typed by the example's
//! `enqueue-welcome` client is recorded `succeeded` in `job_runs` with no config-file entry.

mod common;

use common::*;
use lapin::options::QueueDeleteOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use warren_core::task::DemoSleep;
use warren_producer::Producer;

const T: Duration = Duration::from_secs(30);

/// Builds the example's binaries into this test's target directory and returns that
/// directory (`target/debug`): cargo builds test binaries of the `warren` package only.
fn example_binaries() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/custom_worker-<hash>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    let target_dir = profile_dir.parent().unwrap();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "warren-example-custom-worker",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "building examples/custom-worker failed");
    profile_dir
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The custom binary's `welcomes` queue and its dead-letter queue, which the harness's
/// cleanup (built-in topology plus config file) does not know about.
async fn delete_task_queues(env: &TestEnv) {
    for q in [env.queue("welcomes"), format!("{}.welcomes.dlq", env.ns)] {
        let _ = env
            .ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_binary_routes_runs_and_records_its_own_task() {
    let bins = example_binaries();
    let custom: &Path = &bins.join("custom-worker");
    let enqueue: &Path = &bins.join("enqueue-welcome");
    let env = TestEnv::new(FAST_CONFIG).await;

    // The plain binary does not know the task; the custom one declares its queue.
    let out = env.run(&["topology"]);
    assert!(!stdout(&out).contains("welcome"), "{}", stdout(&out));
    let out = env.command_of(custom, &["topology"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let line = printed
        .lines()
        .find(|l| l.contains(&format!("{}.welcomes ", env.ns)))
        .unwrap_or_else(|| panic!("no welcomes queue in:\n{printed}"));
    assert!(line.trim_end().ends_with("<- welcome.send"), "{line}");

    let mut worker = env.spawn_of(custom, &["worker", "--queue", "welcomes,default"], &[]);
    worker.wait_ready(T).await;

    // Typed enqueue from the example's client, as an application would do it.
    let out = env
        .command_of(enqueue, &["ana@example.com", "Ana"])
        .output()
        .unwrap();
    assert!(out.status.success(), "enqueue failed: {}", stderr(&out));
    let ok = stdout(&out).trim().to_owned();
    let row = env.wait_status(&ok, "succeeded", T).await;
    assert_eq!(row.attempts, 1);

    // The task's own errors take the usual path: a permanent one dead-letters at once.
    let out = env
        .command_of(enqueue, &["nobody", "Nobody"])
        .output()
        .unwrap();
    assert!(out.status.success(), "enqueue failed: {}", stderr(&out));
    let bad = stdout(&out).trim().to_owned();
    let row = env.wait_status(&bad, "dead_lettered", T).await;
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or("")
            .contains("is no address"),
        "{row:?}"
    );

    // The built-in tasks still run in the custom binary; typed enqueue from Rust here too.
    let producer = Producer::new(&env.conn, format!("{}.jobs", env.ns))
        .await
        .unwrap();
    let sleep = producer.enqueue(&DemoSleep { ms: 10 }).await.unwrap();
    env.wait_status(&sleep, "succeeded", T).await;

    let _ = worker.child.kill();
    let _ = worker.child.wait();
    delete_task_queues(&env).await;
    env.cleanup().await;
}
