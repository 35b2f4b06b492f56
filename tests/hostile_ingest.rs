//! Hostile clients against `warren ingest`, `warren publish` and the producer library, with
//! the real RabbitMQ and PostgreSQL: over-long names and ids, huge headers, bodies that are
//! not UTF-8 or nest without end, delays past the cap, odd methods and paths. Every one gets
//! a JSON 4xx (or a CLI error), nothing reaches the broker, the shared broker connection
//! stays up for everyone else, and the ingest keeps serving.

mod common;

use common::ingest::Ingest;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "tok-hostile-9c1e-secret";

impl Ingest {
    /// `warren ingest` with the test token.
    async fn start(env: &TestEnv) -> Self {
        Self::spawn(
            env,
            &[("WARREN_INGEST_TOKENS", TOKEN), ("RUST_LOG", "info")],
        )
        .await
    }

    /// POSTs `body` with the token and `headers`; returns status, response headers and the
    /// answer, which must be JSON. A dropped connection (a panic in the server) fails here.
    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("no answer to POST {path}: {e}"));
        let status = r.status().as_u16();
        let h = r.headers().clone();
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {status} {text:?}"));
        (status, h, v)
    }

    /// Writes `request` over a plain socket and reads the whole answer (the request says
    /// `Connection: close`): status, head and body.
    fn raw(&self, request: &[u8]) -> (u16, String, String) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(T)).unwrap();
        let _ = sock.write_all(request);
        let mut out = Vec::new();
        let _ = sock.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    async fn reconnects(&self) -> f64 {
        let m = reqwest::get(self.proc.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric(&m, "warren_broker_reconnects_total", &[])
    }

    /// A normal request still gets 202 and its job runs (a worker must be running).
    async fn still_serves(&self, env: &TestEnv) {
        let (s, _, v) = self.post("/v1/jobs/demo.noop", &[], "{}").await;
        assert_eq!(s, 202, "{v}");
        let id = v["jobs"][0]["id"].as_str().unwrap().to_owned();
        env.wait_status(&id, "succeeded", T).await;
    }
}

/// The documented error shape: `{error, message, path?}` and nothing else.
fn assert_error_shape(v: &Value) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    assert!(o["error"].is_string() && o["message"].is_string(), "{v}");
    assert!(
        o.keys()
            .all(|k| ["error", "message", "path"].contains(&k.as_str())),
        "{v}"
    );
}

fn deep(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

/// 256-byte job ids, task names and batch ids, and the long-delay hold path with
/// a body that is not UTF-8 or nests 100,000 deep: 4xx JSON, no panic, no claim left behind.
#[tokio::test(flavor = "multi_thread")]
async fn long_strings_and_bad_held_bodies_are_refused_without_a_panic() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env).await;
    let mut w = env.worker(&["--queue", "default", "--queue", "cron"]);
    w.wait_ready(T).await;
    let long = "a".repeat(256);

    let key = [
        ("Idempotency-Key", "hostile-long-id"),
        ("X-Job-Id", long.as_str()),
    ];
    let (s, _, v) = ingest.post("/v1/jobs/demo.noop", &key, "{}").await;
    assert_eq!(s, 400, "{v}");
    assert_error_shape(&v);
    assert_eq!(v["path"], "X-Job-Id", "{v}");
    assert!(v["message"].as_str().unwrap().contains("256 bytes"), "{v}");
    // Nothing was claimed: the same key with a valid id goes through at once.
    let (s, _, v) = ingest
        .post(
            "/v1/jobs/demo.noop",
            &[
                ("Idempotency-Key", "hostile-long-id"),
                ("X-Job-Id", "ok-id-1"),
            ],
            "{}",
        )
        .await;
    assert_eq!(s, 202, "{v}");

    let task = format!("demo.{}", "t".repeat(251));
    let (s, _, v) = ingest.post(&format!("/v1/jobs/{task}"), &[], "{}").await;
    assert_eq!((s, v["path"].as_str()), (400, Some("task")), "{v}");
    assert_eq!(v["error"], "invalid_task");

    let batch = json!([{"task": "demo.noop", "payload": {}, "id": long}]).to_string();
    let (s, _, v) = ingest.post("/v1/jobs", &[], batch).await;
    assert_eq!((s, v["path"].as_str()), (422, Some("[0].id")), "{v}");
    let batch = json!([{"task": task, "payload": {}}]).to_string();
    let (s, _, v) = ingest.post("/v1/jobs", &[], batch).await;
    assert_eq!((s, v["path"].as_str()), (422, Some("[0].task")), "{v}");

    // The hold path (a delay over the longest tier) of an untyped task.
    for (i, body) in [b"{\"a\":\"\xff\"}".to_vec(), deep(100_000).into_bytes()]
        .into_iter()
        .enumerate()
    {
        let k = format!("hostile-held-{i}");
        for _ in 0..2 {
            let (s, _, v) = ingest
                .post(
                    "/v1/jobs/cron.prune-job-runs?delay=7200",
                    &[("Idempotency-Key", k.as_str())],
                    body.clone(),
                )
                .await;
            assert_eq!(
                (s, v["error"].as_str()),
                (400, Some("malformed_json")),
                "{v}"
            );
        }
    }
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM warren_outbox")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(held, 0);
    assert_eq!(ingest.reconnects().await, 0.0);
    ingest.still_serves(&env).await;
    drop(w);
    drop(ingest);
    env.cleanup().await;
}

/// A 300 KB X-Tenant, a 200 KB batch idempotency_key, a body that is not
/// UTF-8 or nests 100,000 deep for an untyped task: 4xx naming the field; the broker
/// connection is never dropped.
#[tokio::test(flavor = "multi_thread")]
async fn huge_headers_and_bad_untyped_bodies_never_reach_the_broker() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;

    let tenant = "t".repeat(300_000);
    let (s, _, v) = ingest
        .post("/v1/jobs/demo.noop", &[("X-Tenant", tenant.as_str())], "{}")
        .await;
    assert_eq!((s, v["path"].as_str()), (400, Some("X-Tenant")), "{v}");
    assert_eq!(v["error"], "invalid_header");
    let batch =
        json!([{"task": "demo.noop", "payload": {}, "idempotency_key": "k".repeat(200_000)}]);
    let (s, _, v) = ingest.post("/v1/jobs", &[], batch.to_string()).await;
    assert_eq!(
        (s, v["path"].as_str()),
        (422, Some("[0].idempotency_key")),
        "{v}"
    );

    for body in [b"\"\xff\xfe\"".to_vec(), deep(100_000).into_bytes()] {
        let (s, _, v) = ingest.post("/v1/jobs/cron.prune-job-runs", &[], body).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("malformed_json")),
            "{v}"
        );
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .starts_with("body is not valid JSON"),
            "{v}"
        );
    }
    // Within the limit is fine.
    let (s, _, v) = ingest
        .post("/v1/jobs/cron.prune-job-runs", &[], deep(64))
        .await;
    assert_eq!(s, 202, "{v}");
    let (s, _, v) = ingest
        .post("/v1/jobs/cron.prune-job-runs", &[], deep(65))
        .await;
    assert_eq!(s, 400, "{v}");

    assert_eq!(
        ingest.reconnects().await,
        0.0,
        "the broker connection was dropped"
    );
    ingest.still_serves(&env).await;
    drop(w);
    drop(ingest);
    env.cleanup().await;
}

/// The same Idempotency-Key with another delay is a different request;
/// run_at gets the one-year cap that delay has.
#[tokio::test(flavor = "multi_thread")]
async fn delays_are_part_of_the_idempotency_fingerprint_and_capped() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env).await;
    let key = [("Idempotency-Key", "hostile-delay")];
    let (s, _, first) = ingest.post("/v1/jobs/demo.noop?delay=1", &key, "{}").await;
    assert_eq!(s, 202, "{first}");
    let (s, h, v) = ingest.post("/v1/jobs/demo.noop?delay=1", &key, "{}").await;
    assert_eq!((s, &v), (202, &first));
    assert_eq!(h.get("idempotent-replayed").unwrap(), "true");
    // Ten minutes from now, in a form a query string carries as is.
    let soon = (chrono::Utc::now() + chrono::Duration::minutes(10))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    for other in [
        "/v1/jobs/demo.noop?delay=30".to_owned(),
        "/v1/jobs/demo.noop".to_owned(),
        format!("/v1/jobs/demo.noop?run_at={soon}"),
    ] {
        let (s, _, v) = ingest.post(&other, &key, "{}").await;
        assert_eq!(
            (s, v["error"].as_str()),
            (422, Some("idempotency_key_reused")),
            "{other}: {v}"
        );
    }
    // Without a delay, fingerprints are as before: a plain replay still replays.
    let plain = [("Idempotency-Key", "hostile-plain")];
    let (_, _, a) = ingest.post("/v1/jobs/demo.noop", &plain, "{}").await;
    let (_, _, b) = ingest.post("/v1/jobs/demo.noop", &plain, "{}").await;
    assert_eq!(a, b);

    let (s, _, v) = ingest
        .post("/v1/jobs/demo.noop?run_at=9999-12-31T23:59:59Z", &[], "{}")
        .await;
    assert_eq!((s, v["path"].as_str()), (422, Some("run_at")), "{v}");
    let batch = json!([{"task": "demo.noop", "payload": {}, "run_at": "9999-12-31T23:59:59Z"}]);
    let (s, _, v) = ingest.post("/v1/jobs", &[], batch.to_string()).await;
    assert_eq!((s, v["path"].as_str()), (422, Some("[0].run_at")), "{v}");
    let near = (chrono::Utc::now() + chrono::Duration::days(300)).to_rfc3339();
    let batch = json!([{"task": "demo.noop", "payload": {}, "run_at": near}]);
    let (s, _, v) = ingest.post("/v1/jobs", &[], batch.to_string()).await;
    assert_eq!(s, 202, "{v}");
    drop(ingest);
    env.cleanup().await;
}

/// Every error body is the documented JSON, 404, 405, 431, a path that is not
/// UTF-8 and control characters in a header included.
#[tokio::test(flavor = "multi_thread")]
async fn every_error_is_json() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let addr = ingest.base.trim_start_matches("http://").to_owned();
    let head = |line: &str, extra: &str| {
        format!(
            "{line}\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n{extra}\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "bad path encoding",
            head("POST /v1/jobs/demo.%FF HTTP/1.1", ""),
            400,
        ),
        ("unknown route", head("POST /v2/nothing HTTP/1.1", ""), 404),
        ("wrong method", head("GET /v1/jobs HTTP/1.1", ""), 405),
        (
            "wrong method on a task",
            head("DELETE /v1/jobs/demo.noop HTTP/1.1", ""),
            405,
        ),
        (
            "headers too large",
            head(
                "POST /v1/jobs/demo.noop HTTP/1.1",
                &format!("X-Pad: {}\r\n", "p".repeat(500_000)),
            ),
            431,
        ),
        (
            "control character in a header",
            head("POST /v1/jobs/demo.noop HTTP/1.1", "X-Tenant: a\x01b\r\n"),
            400,
        ),
        (
            "NUL in a header",
            head("POST /v1/jobs/demo.noop HTTP/1.1", "X-Job-Id: a\0b\r\n"),
            400,
        ),
    ];
    for (what, req, want) in cases {
        let (status, head, body) = tokio::task::block_in_place(|| ingest.raw(&req));
        assert_eq!(status, want, "{what}: {head}\n{body}");
        assert!(
            head.contains("content-type: application/json"),
            "{what}: {head}"
        );
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body:?}"));
        assert_error_shape(&v);
    }
    ingest.still_serves(&env).await;
    drop(w);
    drop(ingest);
    env.cleanup().await;
}

/// Ten clients of normal load while twenty requests with oversized headers arrive: the
/// oversized ones get 4xx, the normal clients see no error at all, and every accepted job
/// runs.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_do_not_disturb_other_clients() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let normal = (0..10).map(|c| {
        let ingest = &ingest;
        async move {
            let mut ids = Vec::new();
            for i in 0..15 {
                let (s, _, v) = ingest
                    .post(
                        "/v1/jobs/demo.noop",
                        &[("X-Tenant", "acme")],
                        json!({"client": c, "i": i}).to_string(),
                    )
                    .await;
                assert_eq!(s, 202, "client {c} request {i}: {v}");
                ids.push(v["jobs"][0]["id"].as_str().unwrap().to_owned());
            }
            ids
        }
    });
    let hostile = (0..20).map(|i| {
        let ingest = &ingest;
        async move {
            tokio::time::sleep(Duration::from_millis(20 * i)).await;
            let (s, _, v) = if i % 2 == 0 {
                let tenant = "x".repeat(300_000);
                ingest
                    .post("/v1/jobs/demo.noop", &[("X-Tenant", tenant.as_str())], "{}")
                    .await
            } else {
                let batch = json!([{"task": "demo.noop", "payload": {},
                                    "idempotency_key": "k".repeat(200_000)}]);
                ingest.post("/v1/jobs", &[], batch.to_string()).await
            };
            assert!((400..500).contains(&s), "hostile {i}: {s} {v}");
        }
    });
    let (ids, _) = tokio::join!(
        futures::future::join_all(normal),
        futures::future::join_all(hostile)
    );
    let ids: Vec<String> = ids.into_iter().flatten().collect();
    assert_eq!(ids.len(), 150);
    for id in &ids {
        env.wait_status(id, "succeeded", T).await;
    }
    assert_eq!(ingest.reconnects().await, 0.0);
    ingest.still_serves(&env).await;
    drop(w);
    drop(ingest);
    env.cleanup().await;
}

/// `warren publish` refuses out-of-bounds values at once, naming the flag: no panic (exit
/// 101), no retrying until --retry-for.
#[tokio::test(flavor = "multi_thread")]
async fn warren_publish_names_the_flag() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let long = "i".repeat(256);
    let tenant = "t".repeat(131_000);
    for (args, flag) in [
        (vec!["publish", "demo.noop", "--id", long.as_str()], "--id"),
        (
            vec!["publish", "demo.noop", "--tenant", tenant.as_str()],
            "--tenant",
        ),
        (
            vec!["publish", "demo.noop", "--idempotency-key", "a\u{7}b"],
            "--idempotency-key",
        ),
        // Delays past a year, as ingest refuses them.
        (
            vec!["publish", "demo.noop", "--run-at", "9999-12-31T23:59:59Z"],
            "--run-at",
        ),
        (
            vec!["publish", "demo.noop", "--delay", "400days"],
            "--delay",
        ),
    ] {
        let started = Instant::now();
        let out = env
            .command(&args)
            .args(["--retry-for", "20s"])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{flag}: {err}");
        assert!(err.contains(flag), "{flag}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{flag} was retried: {err}"
        );
    }
    env.cleanup().await;
}
