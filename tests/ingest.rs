//! `warren ingest`: the HTTP API against the real RabbitMQ and PostgreSQL.
//!
//! One test stops RabbitMQ. Like tests/faults.rs it runs alone: every test here holds a
//! process-wide lock (shared by the ordinary tests, exclusive for the outage), and cargo
//! runs test binaries one after another, so no other binary's tests see the outage.

mod common;

use common::ingest::Ingest;
use common::*;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "tok-3f9a1c7e-ingest-secret";
const OTHER_TOKEN: &str = "tok-other-5b2d-secret";
const FILE_TOKEN: &str = "tok-from-file-77aa-secret";

/// Ordinary tests share it; the RabbitMQ outage takes it exclusively.
static SERIAL: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

impl Ingest {
    /// `warren ingest` with the test tokens (env and file) and `envs`.
    async fn start(env: &TestEnv, envs: &[(&str, &str)]) -> Self {
        let tokens_file = std::env::temp_dir().join(format!("{}-tokens", env.ns));
        std::fs::write(&tokens_file, format!("# test tokens\n{FILE_TOKEN}\n")).unwrap();
        let mut all = vec![
            ("WARREN_INGEST_TOKENS", format!("{TOKEN},{OTHER_TOKEN}")),
            (
                "WARREN_INGEST_TOKENS_FILE",
                tokens_file.display().to_string(),
            ),
            ("RUST_LOG", "debug".to_owned()),
        ];
        all.extend(envs.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Self::spawn(env, &all).await
    }

    /// POSTs `body` (raw bytes) with the token and extra headers; returns status, headers
    /// and the JSON answer.
    async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("ingest answers");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {status} {text:?}"));
        (status, headers, v)
    }

    async fn job(&self, task: &str, payload: Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let (s, _, v) = self
            .post(
                &format!("/v1/jobs/{task}"),
                Some(TOKEN),
                headers,
                payload.to_string(),
            )
            .await;
        (s, v)
    }

    /// POSTs `body` with `Transfer-Encoding: chunked` (no Content-Length) over a plain
    /// socket; returns the status code.
    fn chunked_status(&self, path: &str, body: &str) -> u16 {
        let addr = self.base.trim_start_matches("http://");
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n"
        );
        for c in body.as_bytes().chunks(100) {
            req.push_str(&format!(
                "{:x}\r\n{}\r\n",
                c.len(),
                std::str::from_utf8(c).unwrap()
            ));
        }
        req.push_str("0\r\n\r\n");
        self.raw_status(&req)
    }

    /// Sends only the head of a POST announcing a `Content-Length` body of `len` bytes,
    /// with `token` if any, and returns the status the server answers with before any of
    /// the body arrives (a server that waited for the body would time this out).
    fn status_before_body(&self, path: &str, token: Option<&str>, len: usize) -> u16 {
        let addr = self.base.trim_start_matches("http://");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        self.raw_status(&format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        ))
    }

    /// POSTs a `len`-byte body over a plain socket, writing all of it before reading, as a
    /// simple client does, and returns the status. A server that answered early and closed
    /// on the unread body would make the write fail (broken pipe, reset) or the read.
    fn status_after_whole_body(&self, path: &str, token: Option<&str>, len: usize) -> u16 {
        use std::io::Write;
        let (mut sock, addr) = self.socket();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).unwrap();
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            if let Err(e) = sock.write_all(&chunk[..n]) {
                panic!("the server cut the body off after {sent} of {len} bytes: {e}");
            }
            sent += n;
        }
        read_status(&mut sock)
    }

    /// Writes `request` as is over a plain socket and returns the answer's status code. The
    /// server may answer and close before reading everything: write errors are ignored.
    fn raw_status(&self, request: &str) -> u16 {
        use std::io::Write;
        let (mut sock, _) = self.socket();
        let _ = sock.write_all(request.as_bytes());
        read_status(&mut sock)
    }

    /// A plain TCP connection to the ingest (reads and writes time out after `T`), and the
    /// address it connected to.
    fn socket(&self) -> (std::net::TcpStream, &str) {
        let addr = self.base.trim_start_matches("http://");
        let sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(T)).unwrap();
        sock.set_write_timeout(Some(T)).unwrap();
        (sock, addr)
    }

    /// No token of any kind appears in the log file.
    fn assert_no_tokens_logged(&self) {
        let logs = self.proc.logs();
        assert!(!logs.is_empty(), "the ingest wrote no log");
        for t in [TOKEN, OTHER_TOKEN, FILE_TOKEN, "tok-"] {
            assert!(
                !logs.contains(t),
                "a token appears in the ingest log:\n{logs}"
            );
        }
    }
}

/// The status code of the HTTP answer on `sock`.
fn read_status(sock: &mut std::net::TcpStream) -> u16 {
    use std::io::Read;
    let mut head = [0u8; 12];
    sock.read_exact(&mut head)
        .unwrap_or_else(|e| panic!("no answer from the ingest: {e}"));
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

fn job_id(v: &Value, i: usize) -> String {
    v["jobs"][i]["id"].as_str().expect("a job id").to_owned()
}

/// 202 once confirmed; the message carries the id, tenant and body; a worker runs it.
#[tokio::test(flavor = "multi_thread")]
async fn accepted_job_is_on_the_queue_and_runs() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env, &[]).await;

    let (s, v) = ingest
        .job(
            "demo.sleep",
            json!({"ms": 1}),
            &[("X-Tenant", "acme"), ("Idempotency-Key", "k-accept-1")],
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(v["jobs"][0]["task"], "demo.sleep");
    let id = job_id(&v, 0);
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    let d = env.take(&env.queue("default"), T).await;
    assert_eq!(d.properties.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(d.properties.delivery_mode(), &Some(2));
    assert_eq!(header(&d, "x-tenant").as_deref(), Some("acme"));
    assert_eq!(
        header(&d, "x-idempotency-key").as_deref(),
        Some("k-accept-1")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&d.data).unwrap(),
        json!({"ms": 1})
    );

    // A caller-chosen id, run by a real worker.
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let (s, v) = ingest
        .job(
            "demo.noop",
            json!({"hello": "world"}),
            &[("X-Job-Id", "ingest-job-1")],
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(job_id(&v, 0), "ingest-job-1");
    env.wait_status("ingest-job-1", "succeeded", T).await;

    // The token from the file works too.
    let (s, _, v) = ingest
        .post("/v1/jobs/demo.noop", Some(FILE_TOKEN), &[], "{}")
        .await;
    assert_eq!(s, 202, "{v}");
    env.wait_status(&job_id(&v, 0), "succeeded", T).await;

    let m = reqwest::get(ingest.proc.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(&m, "warren_ingest_requests_total", &["status=\"202\""]) >= 3.0,
        "{m}"
    );
    assert!(metric(&m, "warren_ingest_request_duration_seconds_count", &[]) >= 3.0);
    assert_eq!(metric(&m, "warren_broker_connected", &[]), 1.0);

    ingest.assert_no_tokens_logged();
    drop(w);
    drop(ingest);
    env.cleanup().await;
}

/// 401 without a token, 403 with a wrong one; nothing is published either way.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_required_and_checked() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env, &[]).await;

    let (s, h, v) = ingest.post("/v1/jobs/demo.noop", None, &[], "{}").await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"], "unauthorized");
    assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
    let (s, _, v) = ingest
        .post(
            "/v1/jobs/demo.noop",
            None,
            &[("Authorization", &format!("Basic {TOKEN}"))],
            "{}",
        )
        .await;
    assert_eq!(s, 401, "{v}");
    let (s, _, v) = ingest
        .post("/v1/jobs/demo.noop", Some("not-a-token"), &[], "{}")
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"], "forbidden");
    let almost = &TOKEN[..TOKEN.len() - 1];
    let (s, _, _) = ingest.post("/v1/jobs", Some(almost), &[], "[]").await;
    assert_eq!(s, 403);
    // Auth comes before the body: an oversized body without a token is a 401, answered
    // before the body is read. (A client that sends the body anyway still reads the answer:
    // refused_requests_are_answered_to_clients_that_send_the_whole_body.)
    let status = tokio::task::block_in_place(|| {
        ingest.status_before_body("/v1/jobs/demo.noop", None, 2 << 20)
    });
    assert_eq!(status, 401);
    // With a token, the declared length alone is a 413, at once: none of the body is sent,
    // so a server that waited for it would time this out (or answer 408 after a minute).
    let status = tokio::task::block_in_place(|| {
        ingest.status_before_body("/v1/jobs/demo.noop", Some(TOKEN), 2 << 20)
    });
    assert_eq!(status, 413);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.ready(&env.queue("default")).await, 0);
    ingest.assert_no_tokens_logged();
    drop(ingest);
    env.cleanup().await;
}

/// A client that writes its whole body before reading gets the 401 or 413 the server
/// decided on before reading it, not a broken pipe or a reset (the server drains what a
/// refused request still sends, within bounds), and the server goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_are_answered_to_clients_that_send_the_whole_body() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env, &[]).await;
    // 16 MiB: far more than the socket buffers hold, so the client is still writing when
    // the answer comes; WARREN_MAX_BODY is 1 MiB.
    const LEN: usize = 16 << 20;
    let unauthenticated = tokio::task::block_in_place(|| {
        ingest.status_after_whole_body("/v1/jobs/demo.noop", None, LEN)
    });
    assert_eq!(unauthenticated, 401);
    let oversized = tokio::task::block_in_place(|| {
        ingest.status_after_whole_body("/v1/jobs/demo.noop", Some(TOKEN), LEN)
    });
    assert_eq!(oversized, 413);

    let (s, v) = ingest.job("demo.noop", json!({}), &[]).await;
    assert_eq!(s, 202, "{v}");
    drop(ingest);
    env.cleanup().await;
}

/// 400 malformed JSON, 413 too large, 404 unknown task, 422 schema-invalid with the path,
/// for one job and in a batch; nothing is published.
#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_refused_with_json_errors() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env, &[("WARREN_MAX_BODY", "1024")]).await;

    let (s, _, v) = ingest
        .post("/v1/jobs/demo.noop", Some(TOKEN), &[], "{not json")
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "malformed_json");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("body is not valid JSON"));

    let big = json!({"pad": "x".repeat(2000)}).to_string();
    let (s, _, v) = ingest
        .post("/v1/jobs/demo.noop", Some(TOKEN), &[], big.clone())
        .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"], "payload_too_large");
    assert!(v["message"].as_str().unwrap().contains("1024"), "{v}");
    // Chunked, without a Content-Length, too.
    assert_eq!(ingest.chunked_status("/v1/jobs/demo.noop", &big), 413);

    let (s, v) = ingest.job("nope.unknown", json!({}), &[]).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"], "unknown_task");
    assert_eq!(v["path"], "task");
    assert!(v["message"].as_str().unwrap().contains("nope.unknown"));

    let (s, v) = ingest.job("demo.sleep", json!({"ms": "x"}), &[]).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "invalid_payload");
    assert_eq!(v["path"], "ms");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("payload at $.ms: invalid type"));
    let (s, v) = ingest
        .job("demo.fail", json!({"mode": "explode"}), &[])
        .await;
    assert_eq!((s, v["path"].as_str()), (422, Some("mode")), "{v}");

    let batch = json!([
        {"task": "demo.noop", "payload": {}},
        {"task": "demo.sleep", "payload": {"ms": "x"}},
    ]);
    let (s, _, v) = ingest
        .post("/v1/jobs", Some(TOKEN), &[], batch.to_string())
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["path"], "[1].payload.ms");
    let batch = json!([{"task": "nope.unknown", "payload": {}}]);
    let (s, _, v) = ingest
        .post("/v1/jobs", Some(TOKEN), &[], batch.to_string())
        .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["path"], "[0].task");
    let (s, _, v) = ingest
        .post("/v1/jobs", Some(TOKEN), &[], r#"[{"task":"demo.noop"}]"#)
        .await;
    assert_eq!(s, 422, "{v}");
    let (s, _, v) = ingest.post("/v1/jobs", Some(TOKEN), &[], "[").await;
    assert_eq!(s, 400, "{v}");
    let (s, _, v) = ingest.post("/v1/jobs", Some(TOKEN), &[], "[]").await;
    assert_eq!(s, 422, "{v}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.ready(&env.queue("default")).await, 0);
    drop(ingest);
    env.cleanup().await;
}

/// The batch endpoint publishes every item, each with its own id and headers.
#[tokio::test(flavor = "multi_thread")]
async fn batch_publishes_every_item() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env, &[]).await;

    let batch = json!([
        {"task": "demo.noop", "payload": {"n": 1}},
        {"task": "demo.sleep", "payload": {"ms": 5}, "id": "batch-2", "idempotency_key": "ik-2"},
        {"task": "cron.prune-job-runs", "payload": {}},
    ]);
    let (s, _, v) = ingest
        .post(
            "/v1/jobs",
            Some(TOKEN),
            &[("X-Tenant", "globex")],
            batch.to_string(),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs[1], json!({"id": "batch-2", "task": "demo.sleep"}));
    assert_eq!(jobs[2]["task"], "cron.prune-job-runs");

    let first = env.take(&env.queue("default"), T).await;
    let second = env.take(&env.queue("default"), T).await;
    assert_eq!(
        first.properties.message_id().as_ref().unwrap().as_str(),
        job_id(&v, 0)
    );
    assert_eq!(header(&first, "x-tenant").as_deref(), Some("globex"));
    assert_eq!(
        second.properties.message_id().as_ref().unwrap().as_str(),
        "batch-2"
    );
    assert_eq!(
        header(&second, "x-idempotency-key").as_deref(),
        Some("ik-2")
    );
    let cron = env.take(&env.queue("cron"), T).await;
    assert_eq!(
        cron.properties.message_id().as_ref().unwrap().as_str(),
        job_id(&v, 2)
    );
    drop(ingest);
    env.cleanup().await;
}

/// A replayed Idempotency-Key answers the first response and publishes once; a different
/// body under the key is refused; concurrent requests with one key publish once.
#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_replays_the_first_answer() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env, &[]).await;
    let queue = env.queue("default");
    let key = [("Idempotency-Key", "order-42")];

    let (s1, h1, v1) = ingest
        .post("/v1/jobs/demo.sleep", Some(TOKEN), &key, r#"{"ms":3}"#)
        .await;
    assert_eq!(s1, 202, "{v1}");
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, h2, v2) = ingest
        .post("/v1/jobs/demo.sleep", Some(TOKEN), &key, r#"{"ms":3}"#)
        .await;
    assert_eq!((s2, &v2), (202, &v1), "the replay answers the first body");
    assert_eq!(h2.get("idempotent-replayed").unwrap(), "true");

    let (s, _, v) = ingest
        .post("/v1/jobs/demo.sleep", Some(TOKEN), &key, r#"{"ms":4}"#)
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "idempotency_key_reused");
    // Keys are per token: another token's "order-42" is a new request.
    let (s, _, v) = ingest
        .post(
            "/v1/jobs/demo.sleep",
            Some(OTHER_TOKEN),
            &key,
            r#"{"ms":3}"#,
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_ne!(job_id(&v, 0), job_id(&v1, 0));
    // The batch endpoint replays too.
    let batch = r#"[{"task":"demo.noop","payload":{}},{"task":"demo.noop","payload":{}}]"#;
    let bkey = [("Idempotency-Key", "batch-key")];
    let (_, _, b1) = ingest.post("/v1/jobs", Some(TOKEN), &bkey, batch).await;
    let (_, _, b2) = ingest.post("/v1/jobs", Some(TOKEN), &bkey, batch).await;
    assert_eq!(b1, b2);

    // Ten concurrent requests with one new key: one publish, one answer for all.
    let answers = futures::future::join_all((0..10).map(|_| {
        ingest.post(
            "/v1/jobs/demo.noop",
            Some(TOKEN),
            &[("Idempotency-Key", "burst")],
            r#"{"burst":true}"#,
        )
    }))
    .await;
    let bodies: Vec<&Value> = answers
        .iter()
        .map(|(s, _, v)| {
            assert_eq!(*s, 202, "{v}");
            v
        })
        .collect();
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");

    // order-42 once per token (2), the batch once (2), the burst once (1).
    eventually(T, "5 messages on the queue", || async {
        env.ready(&queue).await == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.ready(&queue).await, 5);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_idempotency")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, 4);
    drop(ingest);
    env.cleanup().await;
}

/// /openapi.json parses and names both POST paths; /healthz; unknown paths are JSON 404s.
#[tokio::test(flavor = "multi_thread")]
async fn openapi_and_health_endpoints() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env, &[]).await;
    let doc: Value = ingest
        .http
        .get(ingest.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("openapi.json is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/jobs/{task}"]["post"].is_object());
    assert!(doc["paths"]["/v1/jobs"]["post"].is_object());
    let h = ingest
        .http
        .get(ingest.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let r: Value = ingest
        .http
        .get(ingest.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"broker": true, "flow": true}));
    let (s, _, v) = ingest.post("/v2/nothing", Some(TOKEN), &[], "{}").await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
    // The metrics listener is the role's usual one.
    assert_eq!(ingest.proc.readyz_status().await, Some(200));
    drop(ingest);
    env.cleanup().await;
}

/// No tokens: refuses to start, naming both variables. SIGTERM: exits cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn startup_needs_tokens_and_sigterm_stops() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let out = env
        .command(&["ingest", "--listen", "127.0.0.1:0"])
        .env_remove("WARREN_INGEST_TOKENS")
        .env_remove("WARREN_INGEST_TOKENS_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("WARREN_INGEST_TOKENS") && err.contains("WARREN_INGEST_TOKENS_FILE"),
        "{err}"
    );
    let help = stdout(&env.run(&["ingest", "--help"]));
    for flag in [
        "--listen",
        "WARREN_INGEST_LISTEN",
        "--tokens",
        "--tokens-file",
        "--idempotency-window",
        "WARREN_INGEST_IDEMPOTENCY_WINDOW",
        "--header-timeout",
        "WARREN_INGEST_HEADER_TIMEOUT",
        "--body-timeout",
        "WARREN_INGEST_BODY_TIMEOUT",
        "--idle-timeout",
        "WARREN_INGEST_IDLE_TIMEOUT",
        "--max-connections",
        "WARREN_INGEST_MAX_CONNECTIONS",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    // hide_env_values: a token set in the environment is not echoed by --help.
    let help = stdout(
        &env.command(&["ingest", "--help"])
            .env("WARREN_INGEST_TOKENS", TOKEN)
            .output()
            .unwrap(),
    );
    assert!(!help.contains(TOKEN));

    let mut ingest = Ingest::start(&env, &[]).await;
    ingest.proc.signal("TERM");
    let status = ingest.proc.wait_exit(T).await;
    assert!(status.success(), "{status}:\n{}", ingest.proc.logs());
    ingest.assert_no_tokens_logged();
    env.cleanup().await;
}

/// 503 while RabbitMQ is down (and /readyz 503), 202 again once it is back, without a
/// restart of the ingest. A keyed request that got 503 can be retried with the same key.
#[tokio::test(flavor = "multi_thread")]
async fn broker_outage_answers_503_and_recovers() {
    let _serial = SERIAL.write().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut ingest = Ingest::start(&env, &[]).await;
    let (s, v) = ingest.job("demo.noop", json!({}), &[]).await;
    assert_eq!(s, 202, "{v}");
    {
        let _down = Outage::rabbitmq();
        eventually(T, "/readyz 503 while the broker is down", || async {
            ingest
                .http
                .get(ingest.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 503)
        })
        .await;
        let (s, v) = ingest
            .job(
                "demo.noop",
                json!({"n": 2}),
                &[("Idempotency-Key", "outage-1")],
            )
            .await;
        assert_eq!(s, 503, "{v}");
        assert_eq!(v["error"], "broker_unavailable");
        let (s, _, v) = ingest
            .post(
                "/v1/jobs",
                Some(TOKEN),
                &[],
                r#"[{"task":"demo.noop","payload":{}}]"#,
            )
            .await;
        assert_eq!(s, 503, "{v}");
        assert_eq!(ingest.proc.readyz_status().await, Some(503));
    }
    let env = env.reconnect().await;
    ingest.wait_ready().await;
    let (s, v) = ingest
        .job(
            "demo.noop",
            json!({"n": 2}),
            &[("Idempotency-Key", "outage-1")],
        )
        .await;
    assert_eq!(s, 202, "the key was released by the 503: {v}");
    let id = job_id(&v, 0);
    let d = env.take(&env.queue("default"), T).await; // the job from before the outage
    let d2 = env.take(&env.queue("default"), T).await;
    assert!(
        [&d, &d2]
            .iter()
            .any(|d| d.properties.message_id().as_ref().unwrap().as_str() == id),
        "the job accepted after recovery is on the queue"
    );
    let m = reqwest::get(ingest.proc.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metric(&m, "warren_ingest_requests_total", &["status=\"503\""]) >= 2.0);
    assert!(metric(&m, "warren_broker_reconnects_total", &[]) >= 1.0);
    assert!(
        ingest.proc.child.try_wait().unwrap().is_none(),
        "ingest exited"
    );
    ingest.assert_no_tokens_logged();
    drop(ingest);
    env.cleanup().await;
}

/// `?delay=` waits in a delay tier (no sooner than asked); a batch item's far `run_at` is
/// held in the outbox; a bad delay is a 422 naming it.
#[tokio::test(flavor = "multi_thread")]
async fn delays_wait_in_a_tier_or_in_the_outbox() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env, &[]).await;
    let started = std::time::Instant::now();
    let (s, _, v) = ingest
        .post(
            "/v1/jobs/demo.noop?delay=2",
            Some(TOKEN),
            &[],
            json!({}).to_string(),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.ready(&env.queue("default")).await, 0, "arrived early");
    let d = env.take(&env.queue("default"), T).await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        d.properties.message_id().as_ref().unwrap().as_str(),
        job_id(&v, 0)
    );

    let far = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let batch = json!([{"task": "demo.noop", "payload": {}, "id": "far-1", "run_at": far}]);
    let (s, _, v) = ingest
        .post("/v1/jobs", Some(TOKEN), &[], batch.to_string())
        .await;
    assert_eq!(s, 202, "{v}");
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM warren_outbox WHERE id = 'far-1' AND published_at IS NULL
            AND run_at > now() + interval '1 hour'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(held, 1);

    let (s, _, v) = ingest
        .post(
            "/v1/jobs/demo.noop?delay=-1",
            Some(TOKEN),
            &[],
            json!({}).to_string(),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["path"], "delay");
    drop(ingest);
    env.cleanup().await;
}

/// `examples/curl/publish.sh` as a user runs it: 202 and a job a worker runs.
#[tokio::test(flavor = "multi_thread")]
async fn the_curl_example_is_accepted() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let ingest = Ingest::start(&env, &[]).await;
    let mut worker = env.worker(&["--queue", "default"]);
    worker.wait_ready(T).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/curl/publish.sh");
    let out = Command::new(script)
        .env("WARREN_INGEST_URL", &ingest.base)
        .env("WARREN_INGEST_TOKEN", TOKEN)
        .output()
        .expect("the example runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    env.wait_status(&job_id(&v, 0), "succeeded", T).await;
    drop(ingest);
    env.cleanup().await;
}

/// Ten clients of normal load while ingest's broker connection is cut ten times: a job
/// answered 202 runs, a job answered "not accepted" (`broker_unavailable`) never runs, and a
/// job whose publish was cut after it was sent is answered `outcome_unknown` with its id;
/// retried under that id it runs once.
#[tokio::test(flavor = "multi_thread")]
async fn connection_drops_never_report_a_job_that_runs_as_not_accepted() {
    let _serial = SERIAL.read().await;
    let env = TestEnv::new(FAST_CONFIG).await;
    let proxy = common::proxy::Proxy::rabbitmq().await;
    let url = proxy.amqp_url("");
    let ingest = Ingest::start(&env, &[("AMQP_URL", url.as_str())]).await;
    let mut w = env.worker(&["--queue", "default"]);
    w.wait_ready(T).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..10 {
        let stop = stop.clone();
        let (http, url) = (ingest.http.clone(), ingest.url("/v1/jobs/demo.noop"));
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let job = id();
                let r = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("X-Job-Id", &job)
                    .json(&json!({"c": c, "n": n}))
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap();
                seen.push((job, status, body));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    let of = |code: &str| -> Vec<&(String, u16, Value)> {
        seen.iter().filter(|(_, _, b)| b["error"] == code).collect()
    };
    let accepted: Vec<&String> = seen
        .iter()
        .filter(|(_, s, _)| *s == 202)
        .map(|(j, _, _)| j)
        .collect();
    let (refused, unknown) = (of("broker_unavailable"), of("outcome_unknown"));
    eprintln!(
        "{} requests: 202 {}, not accepted {}, outcome unknown {}; {} connections",
        seen.len(),
        accepted.len(),
        refused.len(),
        unknown.len(),
        proxy.accepted()
    );
    for (job, status, body) in &seen {
        assert!(
            *status == 202
                || (*status == 503
                    && (body["error"] == "broker_unavailable"
                        || body["error"] == "outcome_unknown")),
            "{job}: {status} {body}"
        );
    }
    assert!(proxy.accepted() >= 5, "the connection was not cut");
    for (job, _, body) in &unknown {
        assert_eq!(body["jobs"][0]["id"], json!(job), "{body}");
        let (s, v) = ingest
            .job("demo.noop", json!({"retry": job}), &[("X-Job-Id", job)])
            .await;
        assert_eq!(s, 202, "{v}");
    }
    for job in accepted
        .iter()
        .copied()
        .chain(unknown.iter().map(|(j, _, _)| j))
    {
        env.wait_status(job, "succeeded", T).await;
    }
    eventually(T, "the queue drained", || async {
        env.ready(&env.queue("default")).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused_ids: Vec<String> = refused.iter().map(|(j, _, _)| j.clone()).collect();
    let ran = env.ran(&refused_ids).await;
    assert!(
        ran.is_empty(),
        "jobs answered \"not accepted\" ran: {ran:?}"
    );
    let twice: Vec<(String, i32)> =
        sqlx::query_as("SELECT job_id, attempts FROM job_runs WHERE attempts <> 1")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    drop(w);
    drop(ingest);
    env.cleanup().await;
}
