//! The global job invariants, checked after every fault case: every confirmed job
//! ends `succeeded`, or `dead_lettered` and sitting in its queue's DLQ with a reason; no job
//! ran without bound. [`assert_invariants`] checks both; money cases add
//! `money::assert_money`.
#![allow(dead_code)]

use super::TestEnv;
use lapin::options::BasicGetOptions;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use warren_core::config::{FileConfig, DEFAULT_DELIVERY_LIMIT};
use warren_core::topology::Topology;

/// A task's default attempt budget (`RetryPolicy::default().max_attempts` in workers/).
pub const MAX_ATTEMPTS: i32 = 5;

/// A dead letter as seen in a DLQ, without taking it off the queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub queue: String,
    pub kind: Option<String>,
    pub error: Option<String>,
    pub attempts: Option<String>,
}

fn topology(env: &TestEnv) -> Topology {
    let file = FileConfig::load(Some(&env.config_path)).unwrap();
    Topology::new(&env.ns, &file).unwrap()
}

/// Every message in every DLQ of the namespace, by message id. Reads with `basic.get` on a
/// throwaway channel and closes it without acking, so the messages return to their DLQs.
pub async fn dead_letters(env: &TestEnv) -> HashMap<String, DeadLetter> {
    let topo = topology(env);
    let mut out = HashMap::new();
    for q in topo.queues() {
        let ch = env.conn.create_channel().await.unwrap();
        let dlq = topo.dlq_name(&q.name);
        while let Some(m) = ch
            .basic_get(dlq.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()
        {
            let d = m.delivery;
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            out.insert(
                id,
                DeadLetter {
                    queue: q.name.clone(),
                    kind: super::header(&d, "x-error-kind"),
                    error: super::header(&d, "x-error"),
                    attempts: super::header(&d, "x-attempts"),
                },
            );
        }
        let _ = ch.close(200, "peeked".into()).await;
    }
    out
}

/// Rows of `job_runs` for the given ids: id -> (status, attempts, queue).
async fn rows(env: &TestEnv, ids: &[String]) -> HashMap<String, (String, i32, String)> {
    sqlx::query_as::<_, (String, String, i32, String)>(
        "SELECT job_id, status::text, attempts, queue FROM job_runs WHERE job_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, s, a, q)| (id, (s, a, q)))
    .collect()
}

/// Waits up to `within` until every id is `succeeded`, or `dead_lettered` and present in
/// its queue's DLQ with `x-error-kind` and `x-error`; then asserts it, naming the first
/// jobs that are not. Returns the dead letters among `ids`.
pub async fn assert_jobs_settled(
    env: &TestEnv,
    ids: &[String],
    within: Duration,
) -> HashMap<String, DeadLetter> {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate ids given");
    let deadline = Instant::now() + within;
    loop {
        let rows = rows(env, ids).await;
        let dl = dead_letters(env).await;
        let mut problems = Vec::new();
        for id in ids {
            match rows.get(id) {
                None => problems.push(format!("{id}: no job_runs row")),
                Some((s, _, _)) if s == "succeeded" => {
                    if dl.contains_key(id) {
                        problems.push(format!("{id}: succeeded but also dead-lettered"));
                    }
                }
                Some((s, _, q)) if s == "dead_lettered" => match dl.get(id) {
                    None => problems.push(format!("{id}: dead_lettered but not in any DLQ")),
                    Some(d) if &d.queue != q => {
                        problems.push(format!("{id}: in {}.dlq, ran on {q}", d.queue))
                    }
                    Some(d) if d.kind.is_none() || d.error.as_deref().unwrap_or("").is_empty() => {
                        problems.push(format!("{id}: dead letter without a reason: {d:?}"))
                    }
                    Some(_) => {}
                },
                Some(r) => problems.push(format!("{id}: {r:?}")),
            }
        }
        if problems.is_empty() {
            return dl
                .into_iter()
                .filter(|(id, _)| unique.contains(id))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} jobs not settled after {within:?}; first: {:?}",
            problems.len(),
            ids.len(),
            &problems[..problems.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The most executions a job may start: every retry is one (up to [`MAX_ATTEMPTS`]), and
/// the broker redelivers one delivery at most up to the queue's delivery limit (crash loops,
/// lost connections) before the worker or RabbitMQ dead-letters it.
pub fn attempts_bound(env: &TestEnv) -> i32 {
    let limit = topology(env)
        .queues()
        .iter()
        .map(|q| q.delivery_limit)
        .max()
        .unwrap_or(DEFAULT_DELIVERY_LIMIT);
    MAX_ATTEMPTS + limit as i32
}

/// No `job_runs` row has more attempts than [`attempts_bound`], and no dead letter says
/// `x-attempts` above [`MAX_ATTEMPTS`].
pub async fn assert_bounded_attempts(env: &TestEnv) {
    let bound = attempts_bound(env);
    let over: Vec<(String, i32)> =
        sqlx::query_as("SELECT job_id, attempts FROM job_runs WHERE attempts > $1 LIMIT 5")
            .bind(bound)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(over.is_empty(), "attempts above {bound}: {over:?}");
    for (id, d) in dead_letters(env).await {
        if let Some(n) = d.attempts.as_deref().and_then(|a| a.parse::<i32>().ok()) {
            assert!(n <= MAX_ATTEMPTS, "{id} dead-lettered after {n} attempts");
        }
    }
}

/// Every job id the system knows of besides the test's own `published` ids: each
/// `job_runs` row (whoever published it) and each renewal the scheduler enqueued
/// (`renewal_enqueues`, written once the broker confirmed the publish).
pub async fn known_job_ids(env: &TestEnv, published: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = published.to_vec();
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT job_id FROM job_runs
         UNION SELECT job_id::text FROM renewal_enqueues",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let mut seen: HashSet<String> = ids.iter().cloned().collect();
    for id in found {
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    ids
}

/// The global invariants after a fault case: every job the test published (`published`)
/// and every other job the ledger or the scheduler knows of settled within `within`
/// ([`assert_jobs_settled`]), and none ran without bound ([`assert_bounded_attempts`]).
/// Returns the dead letters.
pub async fn assert_invariants(
    env: &TestEnv,
    published: &[String],
    within: Duration,
) -> HashMap<String, DeadLetter> {
    let ids = known_job_ids(env, published).await;
    let dead = assert_jobs_settled(env, &ids, within).await;
    assert_bounded_attempts(env).await;
    dead
}
