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

/// What a stalled client saw: everything the server sent, and how long after the client's
/// last own write of the head the server closed the connection (`None`: still open after
/// [`STALL_LIMIT`]).
struct Stalled {
    answer: String,
    closed_after: Option<Duration>,
}

/// How long a stalled client waits for the server to close. Generous: the longest case is
/// a 2 s timeout plus the at most 10 s the server reads and discards a refused body.
const STALL_LIMIT: Duration = Duration::from_secs(40);

/// Connects to `addr`, writes `head`, then either goes silent (keeping its side open) or,
/// with `trickle`, writes it every 200 ms until the server closes; reads all the server
/// sends until it closes the connection.
async fn stall(addr: String, head: Vec<u8>, trickle: Option<&'static [u8]>) -> Stalled {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    wr.write_all(&head).await.unwrap();
    let started = Instant::now();
    // Dropping the write half would send FIN, which a server reads as the client leaving:
    // keep it for as long as the read lasts.
    let mut silent = None;
    let writer = match trickle {
        Some(piece) => Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if wr.write_all(piece).await.is_err() {
                    return;
                }
            }
        })),
        None => {
            silent = Some(wr);
            None
        }
    };
    let mut out = Vec::new();
    let read = tokio::time::timeout(STALL_LIMIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let closed_after = read.is_ok().then(|| started.elapsed());
    if let Some(w) = writer {
        w.abort();
    }
    drop(silent);
    Stalled {
        answer: String::from_utf8_lossy(&out).into_owned(),
        closed_after,
    }
}

/// The status and JSON body of the one answer in `s`, which must say `Connection: close`.
fn closing_json_answer(what: &str, s: &Stalled) -> (u16, Value) {
    let (head, body) = s
        .answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no answer: {:?}", s.answer));
    let head = head.to_ascii_lowercase();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    assert!(
        head.contains("content-type: application/json") && head.contains("connection: close"),
        "{what}: {head}"
    );
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body:?}"));
    assert_error_shape(&v);
    (status, v)
}

/// 200 stalled connections against an ingest with 2 s header and body timeouts and a 4 s
/// idle timeout: a partial head, a body that never comes, a chunked body trickling without
/// end, a `Content-Length` of 100 MB with no body, a kept-alive connection gone quiet after
/// one request. Each is answered where an answer is possible (408 or 413, JSON) and every
/// one is closed within its timeout plus the bounded drain of a refused body; a normal
/// client is served meanwhile, and the connections gauge comes back to zero.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_clients_are_answered_or_closed_in_time() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::spawn(
        &env,
        &[
            ("WARREN_INGEST_TOKENS", TOKEN),
            ("RUST_LOG", "info"),
            ("WARREN_INGEST_HEADER_TIMEOUT", "2s"),
            ("WARREN_INGEST_BODY_TIMEOUT", "2s"),
            ("WARREN_INGEST_IDLE_TIMEOUT", "4s"),
        ],
    )
    .await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let addr = ingest.base.trim_start_matches("http://").to_owned();
    let post = |extra: &str| {
        format!(
            "POST /v1/jobs/demo.noop HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    // What each kind of client writes first, and what it then trickles, if anything.
    let opening = |what: &str| -> (Vec<u8>, Option<&'static [u8]>) {
        match what {
            "partial head" => (
                format!("POST /v1/jobs/demo.noop HTTP/1.1\r\nHost: {addr}\r\nAuthori").into_bytes(),
                None,
            ),
            "body never sent" => (post("Content-Length: 100\r\n"), None),
            "endless chunked body" => (post("Transfer-Encoding: chunked\r\n"), Some(b"1\r\n \r\n")),
            "100 MB declared, no body" => (post("Content-Length: 100000000\r\n"), None),
            "idle keep-alive" => (
                format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(),
                None,
            ),
            other => unreachable!("{other}"),
        }
    };
    let kinds = [
        "partial head",
        "body never sent",
        "endless chunked body",
        "100 MB declared, no body",
        "idle keep-alive",
    ];
    const EACH: usize = 40;
    let mut clients = Vec::new();
    for what in kinds {
        let (head, trickle) = opening(what);
        for _ in 0..EACH {
            let c = tokio::spawn(stall(addr.clone(), head.clone(), trickle));
            clients.push((what, c));
        }
    }
    // Served while 200 stalled connections are open.
    ingest.still_serves(&env).await;

    for (what, c) in clients {
        let s = c.await.unwrap();
        let closed = s.closed_after.unwrap_or_else(|| {
            panic!(
                "{what}: still open after {STALL_LIMIT:?}; it read {:?}",
                s.answer
            )
        });
        match what {
            "partial head" => assert_eq!(s.answer, "", "{what}: closed without an answer"),
            "body never sent" | "endless chunked body" => {
                let (status, v) = closing_json_answer(what, &s);
                assert_eq!(
                    (status, v["error"].as_str()),
                    (408, Some("request_timeout"))
                );
            }
            "100 MB declared, no body" => {
                // Decided on the declared length alone: without that, no body byte ever
                // arrives to exceed the limit and the answer could only be a 408.
                let (status, v) = closing_json_answer(what, &s);
                assert_eq!(
                    (status, v["error"].as_str()),
                    (413, Some("payload_too_large"))
                );
            }
            "idle keep-alive" => {
                assert!(
                    s.answer.starts_with("HTTP/1.1 200 "),
                    "{what}: {}",
                    s.answer
                );
                assert_eq!(s.answer.matches("HTTP/1.1").count(), 1, "{}", s.answer);
                // Closed by the idle timeout (4 s after the answer), not the header one.
                assert!(
                    closed >= Duration::from_secs(3),
                    "{what}: closed after {closed:?}"
                );
            }
            _ => unreachable!(),
        }
    }
    let m = ingest.proc.metrics().await;
    let timeouts = |phase: &str| {
        metric(
            &m,
            "warren_ingest_timeouts_total",
            &[&format!("phase=\"{phase}\"")],
        )
    };
    assert!(timeouts("head") >= EACH as f64, "{m}");
    assert!(timeouts("idle") >= EACH as f64, "{m}");
    assert!(timeouts("body") >= 2.0 * EACH as f64, "{m}");
    eventually(T, "no connection left open", || async {
        metric(
            &ingest.proc.metrics().await,
            "warren_ingest_connections",
            &[],
        ) == 0.0
    })
    .await;
    ingest.still_serves(&env).await;
    drop(w);
    drop(ingest);
    env.cleanup().await;
}

/// With --max-connections 3 and three clients stalled in their head (the header timeout is
/// a minute), a fourth client's request waits: the ingest stops accepting at the cap. Once
/// a stalled client goes away, the waiting request is served. The metrics port still
/// answers meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn at_the_connection_cap_new_clients_wait_for_a_free_slot() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::spawn(
        &env,
        &[
            ("WARREN_INGEST_TOKENS", TOKEN),
            ("RUST_LOG", "info"),
            ("WARREN_INGEST_MAX_CONNECTIONS", "3"),
            ("WARREN_INGEST_HEADER_TIMEOUT", "60s"),
            ("WARREN_INGEST_IDLE_TIMEOUT", "1s"),
        ],
    )
    .await;
    // The readiness check's kept-alive connection closes after the 1 s idle timeout.
    eventually(T, "the readiness connection closed", || async {
        metric(
            &ingest.proc.metrics().await,
            "warren_ingest_connections",
            &[],
        ) == 0.0
    })
    .await;
    let addr = ingest.base.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/jobs/demo.noop HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(s);
    }
    // A client of its own, so no pooled connection of the ingest's is reused.
    let mut fourth = tokio::spawn({
        let url = ingest.url("/v1/jobs/demo.noop");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(TOKEN)
                .body("{}")
                .send()
                .await
                .unwrap_or_else(|e| panic!("no answer to the fourth client: {e}"));
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    });
    // The three stalled connections hold every slot for a minute: an answer now could only
    // mean the cap is not enforced.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut fourth)
            .await
            .is_err(),
        "a fourth connection was served past --max-connections 3"
    );
    assert_eq!(ingest.proc.readyz_status().await, Some(200));
    let m = ingest.proc.metrics().await;
    assert_eq!(metric(&m, "warren_ingest_connections", &[]), 3.0, "{m}");

    drop(stalled.remove(0));
    let (status, body) = tokio::time::timeout(T, fourth)
        .await
        .expect("the fourth client is served once a slot frees")
        .unwrap();
    assert_eq!(status, 202, "{body}");
    assert!(
        ingest.proc.logs().contains("connection limit reached"),
        "{}",
        ingest.proc.logs()
    );
    drop(stalled);
    drop(ingest);
    env.cleanup().await;
}
