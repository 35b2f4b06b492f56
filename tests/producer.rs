//! The Rust producer survives connection loss: a batch published through
//! `SharedBroker::publish_many` has its connection closed by the broker
//! (`rabbitmqctl close_connection`) mid-batch, reconnects, republishes only the jobs that were
//! not confirmed, with their original ids, and every job runs. The delivery guarantee checked
//! is at least once: only ids the producer reports as resent (unconfirmed at the cut) may be
//! delivered twice, and the worker's ledger runs each id to `succeeded`.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warren_core::config::FileConfig;
use warren_core::telemetry::Health;
use warren_core::topology::Topology;
use warren_producer::broker::SharedBroker;
use warren_producer::{PublishOptions, RepublishPolicy};

const T: Duration = Duration::from_secs(180);

/// The broker-side pid (`<rabbit@host.1.2.0>`, what `close_connection` takes) of the
/// connection whose client properties contain `marker` (our connection_name), waiting for it
/// to appear.
async fn connection_named(marker: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .expect("rabbitmqctl runs");
        let text = stdout(&out);
        if let Some(line) = text.lines().find(|l| l.contains(marker)) {
            return line.split('\t').next().unwrap().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no connection named {marker} in rabbitmqctl list_connections:\n{text}{}",
            stderr(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counts every delivery the consumer receives, by job id, until the task is aborted.
fn count_deliveries(
    mut spy: lapin::Consumer,
) -> (
    Arc<Mutex<HashMap<String, u32>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counter = seen.clone();
    let task = tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(Ok(d)) = spy.next().await {
            let id = d.properties.message_id().as_ref().unwrap().to_string();
            *counter.lock().unwrap().entry(id).or_default() += 1;
        }
    });
    (seen, task)
}

fn close_connection(pid: &str) {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "close_connection", pid, "warren test: cut mid-batch"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "close_connection {pid}: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_survives_a_closed_connection_without_resending_confirmed_jobs() {
    const N: usize = 20_000;
    const CUT_AFTER: usize = 100;
    let env = TestEnv::new(FAST_CONFIG).await;
    // The connection name carries the namespace so the test closes only its own connection.
    let role: &'static str = Box::leak(format!("producer-test-{}", env.ns).into_boxed_str());
    let file = FileConfig::load(Some(&env.config_path)).unwrap();
    let topology = Topology::new(&env.ns, &file).unwrap();
    let broker = Arc::new(SharedBroker::new(
        AMQP_URL.into(),
        role,
        topology,
        Health::new(&["broker"]),
    ));
    broker.link().await.expect("connects");
    let pid = connection_named(&format!("warren-{role}@")).await;

    // Every delivery of every copy, counted by job id (an exclusive no-ack queue on the
    // exchange, next to the work queue).
    let (seen, spy_task) = count_deliveries(env.spy("demo.noop").await);

    // Confirmed ids in arrival order; the CUT_AFTER-th confirm asks for the cut.
    let confirmed: Arc<Mutex<Vec<String>>> = Arc::default();
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<()>();
    let mut cut_tx = Some(cut_tx);
    let publisher = {
        let (broker, confirmed) = (broker.clone(), confirmed.clone());
        tokio::spawn(async move {
            let jobs = (0..N).map(|i| {
                let body = serde_json::to_vec(&serde_json::json!({ "n": i })).unwrap();
                (body, PublishOptions::default())
            });
            broker
                .publish_many("demo.noop", jobs, 256, &RepublishPolicy::default(), |id| {
                    let mut c = confirmed.lock().unwrap();
                    c.push(id.to_owned());
                    if c.len() == CUT_AFTER {
                        let _ = cut_tx.take().unwrap().send(());
                    }
                })
                .await
        })
    };
    cut_rx.await.expect("the batch reached the cut point");
    tokio::task::spawn_blocking(move || close_connection(&pid))
        .await
        .unwrap();
    // Confirmed before the connection was gone: these must never be sent again.
    let before_cut: HashSet<String> = confirmed.lock().unwrap().iter().cloned().collect();

    let report = publisher
        .await
        .unwrap()
        .expect("the batch completes after the reconnect");
    let confirmed = confirmed.lock().unwrap().clone();
    eprintln!(
        "cut after {} confirms; {} retried round(s); {} job(s) resent",
        before_cut.len(),
        report.retries,
        report.resent.len()
    );
    assert!(
        before_cut.len() < N,
        "the batch finished before the cut; the test did not cut anything (raise N)"
    );
    assert!(report.retries >= 1, "no reconnect happened: {report:?}");
    assert_eq!(report.ids.len(), N);
    assert_eq!(
        report.ids.iter().collect::<HashSet<_>>().len(),
        N,
        "ids are distinct"
    );
    // Every job was confirmed exactly once, and none confirmed before the cut was resent.
    assert_eq!(confirmed.len(), N, "one confirm per job");
    assert_eq!(
        confirmed.iter().collect::<HashSet<_>>(),
        report.ids.iter().collect::<HashSet<_>>()
    );
    let resent: HashSet<String> = report.resent.iter().cloned().collect();
    assert!(
        resent.is_disjoint(&before_cut),
        "a job confirmed before the cut was published again"
    );
    assert!(
        resent.len() <= 256,
        "only the jobs in flight at the cut (window 256) can be unconfirmed: {}",
        resent.len()
    );

    // A real worker runs them all: one succeeded row per id.
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    eventually(T, "every job succeeded", || async {
        env.count_status("succeeded").await == N as i64
    })
    .await;
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT job_id, status::text, attempts FROM job_runs")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), N, "one ledger row per job id");
    let ids: HashSet<&String> = report.ids.iter().collect();
    for (id, status, attempts) in &rows {
        assert!(ids.contains(id), "unexpected job {id}");
        assert_eq!(status, "succeeded");
        // Two copies of a resent id in one prefetch window may both run (documented).
        let most = if resent.contains(id) { 2 } else { 1 };
        assert!((1..=most).contains(attempts), "{id} ran {attempts} times");
    }

    // Every id arrived; only resent ids arrived twice.
    eventually(T, "the spy saw every job", || async {
        seen.lock().unwrap().len() == N
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    eprintln!("{} job id(s) delivered twice", twice.len());
    for id in &twice {
        assert!(
            resent.contains(*id),
            "{id} was delivered {} times but was never resent",
            seen[*id]
        );
        assert!(seen[*id] <= 2, "{id} delivered {} times", seen[*id]);
    }
    assert!(report.ids.iter().all(|id| seen.contains_key(id)));

    spy_task.abort();
    broker.close().await;
    drop(w);
    env.cleanup().await;
}

/// `warren publish --count` rides out the same cut: it reconnects, says how many unconfirmed
/// jobs it published again, exits 0, and every one of its distinct job ids reaches the work
/// queue. The work queue itself is drained and counted: a spy queue is no proxy for it, since a
/// message the broker routed when the channel was cut can reach the (classic) spy but not the
/// quorum work queue — unconfirmed, so resent, so the spy sees two copies and the work queue one.
#[tokio::test(flavor = "multi_thread")]
async fn publish_count_survives_a_closed_connection() {
    const N: usize = 60_000;
    let env = TestEnv::new(FAST_CONFIG).await;
    // HOSTNAME names the connection `warren-publish@<ns>`: only this test's publisher.
    let log = std::env::temp_dir().join(format!("{}-publish.log", env.ns));
    let mut child = env
        .command(&["publish", "demo.noop", "--count", &N.to_string()])
        .env("HOSTNAME", &env.ns)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = connection_named(&format!("warren-publish@{}", env.ns)).await;
    tokio::task::spawn_blocking(move || close_connection(&pid))
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "publish failed:\n{err}");
    assert!(
        err.contains(&format!("published {N} demo.noop jobs")),
        "{err}"
    );
    let resent: usize = err
        .split("the connection was lost 1 time(s); ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("publish finished before the cut or did not report it:\n{err}"));

    // Every publish was confirmed before the process exited: the queue's depth is final.
    let queue = env.queue("default");
    let depth = env.ready(&queue).await as usize;
    let (seen, drain_task) = count_deliveries(env.drain(&queue).await);
    eventually(T, "every message of the work queue drained", || async {
        seen.lock().unwrap().values().sum::<u32>() as usize == depth
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let twice = depth - seen.len();
    eprintln!("{resent} job(s) resent, {twice} in the work queue twice");
    assert_eq!(seen.len(), N, "every distinct job id is in the work queue");
    assert!(
        twice <= resent,
        "{twice} duplicates but only {resent} resent"
    );
    assert!(
        seen.values().all(|&n| n <= 2),
        "a job id is in the work queue more than twice"
    );
    drain_task.abort();
    let _ = std::fs::remove_file(&log);
    env.cleanup().await;
}

/// The retry deadline counts from the connection loss, not from the start of the batch: a
/// batch that has been publishing longer than its deadline and then loses its connection
/// reconnects and completes, instead of giving up at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_retry_deadline_counts_from_the_loss() {
    const N: usize = 150_000;
    const DEADLINE: Duration = Duration::from_secs(1);
    let env = TestEnv::new(FAST_CONFIG).await;
    let role: &'static str = Box::leak(format!("producer-late-{}", env.ns).into_boxed_str());
    let file = FileConfig::load(Some(&env.config_path)).unwrap();
    let topology = Topology::new(&env.ns, &file).unwrap();
    let broker = Arc::new(SharedBroker::new(
        AMQP_URL.into(),
        role,
        topology,
        Health::new(&["broker"]),
    ));
    broker.link().await.expect("connects");
    let pid = connection_named(&format!("warren-{role}@")).await;
    let confirmed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<usize>();
    let mut cut_tx = Some(cut_tx);
    let started = std::time::Instant::now();
    let publisher = {
        let (broker, confirmed) = (broker.clone(), confirmed.clone());
        tokio::spawn(async move {
            let jobs = (0..N).map(|i| {
                let body = serde_json::to_vec(&serde_json::json!({ "n": i })).unwrap();
                (body, PublishOptions::default())
            });
            let policy = RepublishPolicy {
                deadline: DEADLINE,
                ..RepublishPolicy::default()
            };
            broker
                .publish_many("demo.noop", jobs, 256, &policy, |_| {
                    let n = confirmed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    // Cut once the batch has run twice as long as its deadline.
                    if started.elapsed() >= DEADLINE * 2 {
                        if let Some(tx) = cut_tx.take() {
                            let _ = tx.send(n);
                        }
                    }
                })
                .await
        })
    };
    let at = cut_rx
        .await
        .expect("the batch ran past twice its deadline (raise N)");
    tokio::task::spawn_blocking(move || close_connection(&pid))
        .await
        .unwrap();
    let report = publisher.await.unwrap().unwrap_or_else(|e| {
        panic!("the batch must reconnect and complete (the deadline counts from the loss): {e}")
    });
    eprintln!(
        "cut after {at} confirms and {:?}; {} retried round(s)",
        DEADLINE * 2,
        report.retries
    );
    assert!(at < N, "the batch finished before the cut (raise N)");
    assert!(report.retries >= 1, "no reconnect happened: {report:?}");
    assert_eq!(report.ids.len(), N);
    env.cleanup().await;
}
