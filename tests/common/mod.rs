//! Harness for whole-system tests: a fresh namespace and database per test, the real
//! `warren` binary, the real RabbitMQ and PostgreSQL on this machine.
#![allow(dead_code)]

pub mod ingest;
pub mod invariants;
pub mod money;
pub mod proxy;
pub mod sim;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh job id (UUIDv7, like the publishers').
pub fn id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_warren")
}

/// One test's world: namespace, database, config file, broker connection.
pub struct TestEnv {
    pub ns: String,
    pub db_name: String,
    pub db_url: String,
    pub config_path: std::path::PathBuf,
    pub conn: Connection,
    pub ch: Channel,
    pub pool: PgPool,
    /// Processes started by [`TestEnv::spawn`], stopped by [`TestEnv::cleanup`] before it
    /// deletes the namespace (a worker still running would redeclare it on reconnect).
    spawned: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    _watchdog: Watchdog,
}

/// How long one test's environment may live (`WARREN_TEST_WATCHDOG_SECS`, default 20 min).
/// The slowest case (a delay tier across a broker restart) needs under 5 minutes; a test still
/// running after this is hung.
pub fn watchdog_limit() -> Duration {
    let secs = std::env::var("WARREN_TEST_WATCHDOG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20 * 60);
    Duration::from_secs(secs)
}

/// Aborts the test binary when a test outlives [`watchdog_limit`], naming the test and its
/// namespace: `cargo test` has no per-test timeout, and a hung test would otherwise hold CI
/// until its own limit with no word of which test it was.
struct Watchdog(std::sync::mpsc::Sender<()>);

impl Watchdog {
    fn start(ns: &str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let test = std::thread::current().name().unwrap_or("?").to_owned();
        let ns = ns.to_owned();
        let limit = watchdog_limit();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                // Straight to stderr: libtest captures eprintln! and would drop it on abort.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "watchdog: test {test} ({ns}) still running after {limit:?}: hung; aborting"
                );
                std::process::abort();
            }
        });
        Self(tx)
    }
}

/// Tiers short enough for tests; a default queue that gives up on crash loops quickly.
pub const FAST_CONFIG: &str = r#"
[retry]
tiers = ["200ms", "600ms", "1500ms", "3s"]
"#;

impl TestEnv {
    /// Creates the namespace's database (through `warren migrate`) and topology (through
    /// `warren topology`), with the given config file contents.
    pub async fn new(config: &str) -> Self {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let ns = format!("wt-{tag}");
        let db_name = format!("wt_{tag}");
        let db_url = format!("{PG_BASE}/{db_name}");
        let config_path = std::env::temp_dir().join(format!("{ns}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (scripts/services.sh starts it)");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut env = Self {
            _watchdog: Watchdog::start(&ns),
            ns,
            db_name,
            db_url,
            config_path,
            conn,
            ch,
            pool: PgPool::connect_lazy("postgres://postgres@127.0.0.1:5432/postgres").unwrap(),
            spawned: Default::default(),
        };
        let out = env.run(&["migrate"]);
        assert!(out.status.success(), "migrate failed: {}", stderr(&out));
        let out = env.run(&["topology"]);
        assert!(out.status.success(), "topology failed: {}", stderr(&out));
        env.pool = PgPool::connect(&env.db_url).await.unwrap();
        env
    }

    /// New broker connection and pool after a service restart; same namespace and database.
    pub async fn reconnect(self) -> Self {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            conn,
            ch,
            pool: PgPool::connect(&self.db_url).await.unwrap(),
            ..self
        }
    }

    /// A `warren` command with this test's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(bin().as_ref(), args)
    }

    /// `program` (a binary built on `warren::App`, or any client reading Warren's env vars)
    /// with this test's environment.
    pub fn command_of(&self, program: &std::path::Path, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .env("AMQP_URL", AMQP_URL)
            .env("DATABASE_URL", &self.db_url)
            .env("WARREN_NAMESPACE", &self.ns)
            .env("WARREN_CONFIG", &self.config_path)
            .env("WARREN_METRICS_ADDR", "127.0.0.1:0")
            .env("WARREN_LOG_FORMAT", "text")
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("warren runs")
    }

    /// Starts `warren worker ARGS` with its telemetry on a free port.
    pub fn worker(&self, args: &[&str]) -> Worker {
        self.spawn(&[&["worker"], args].concat(), &[])
    }

    /// Starts any long-running `warren` role with extra env vars, its telemetry on a free
    /// port and its output in a log file.
    pub fn spawn(&self, args: &[&str], envs: &[(&str, &str)]) -> Worker {
        self.spawn_of(bin().as_ref(), args, envs)
    }

    /// [`TestEnv::spawn`] for another program built on `warren::App`.
    pub fn spawn_of(
        &self,
        program: &std::path::Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Worker {
        let port = free_port();
        let role = args.first().copied().unwrap_or("warren");
        let log = std::env::temp_dir().join(format!("{}-{role}-{port}.log", self.ns));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = self.command_of(program, args);
        cmd.env("WARREN_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("warren starts");
        self.spawned.lock().unwrap().push(child.id());
        Worker { child, port, log }
    }

    /// `warren scheduler` scanning every second, Pagar.me out of dry run; `envs` add to or
    /// override that.
    pub fn scheduler(&self, envs: &[(&str, &str)]) -> Worker {
        let mut all = vec![("WARREN_PAGARME_DRY_RUN", "false")];
        all.extend_from_slice(envs);
        self.spawn(
            &[
                "scheduler",
                "--scan-interval",
                "1s",
                "--leader-retry",
                "500ms",
            ],
            &all,
        )
    }

    pub fn queue(&self, short: &str) -> String {
        format!("{}.{short}", self.ns)
    }

    /// Publishes like any AMQP client would: routing key = task, JSON body, confirmed.
    pub async fn publish(&self, task: &str, body: &[u8], props: BasicProperties) {
        let confirm = self
            .ch
            .basic_publish(
                format!("{}.jobs", self.ns).as_str().into(),
                task.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            confirm,
            lapin::Confirmation::Ack(None),
            "publish of {task} not routed"
        );
    }

    /// Publishes a `demo.fail` job that fails retryably for `secs` seconds (60 attempts), so
    /// its worker keeps publishing retries meanwhile; returns its id.
    pub async fn publish_failing_for(&self, secs: i64) -> String {
        let until = (chrono::Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339();
        let job = id();
        let props = BasicProperties::default()
            .with_message_id(job.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers({
                let mut h = lapin::types::FieldTable::default();
                warren_core::envelope::set_int(&mut h, "x-max-attempts", 60);
                h
            });
        let body = serde_json::json!({ "mode": "retryable", "until": until }).to_string();
        self.publish("demo.fail", body.as_bytes(), props).await;
        job
    }

    /// The ids among `ids` the ledger holds a row for: jobs that ran (or started to).
    pub async fn ran(&self, ids: &[String]) -> Vec<String> {
        sqlx::query_scalar("SELECT job_id FROM job_runs WHERE job_id = ANY($1)")
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Publishes a JSON job with the given id and returns the id.
    pub async fn publish_json(&self, task: &str, payload: serde_json::Value, id: &str) -> String {
        let props = BasicProperties::default()
            .with_message_id(id.into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        self.publish(task, payload.to_string().as_bytes(), props)
            .await;
        id.to_owned()
    }

    /// Publishes `n` `demo.sleep` jobs of `ms` each, confirmed, and returns their ids.
    pub async fn publish_sleeps(&self, n: usize, ms: u64) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let payload = serde_json::json!({ "ms": ms });
            ids.push(self.publish_json("demo.sleep", payload, &id()).await);
        }
        ids
    }

    pub async fn job(&self, id: &str) -> Option<JobRow> {
        sqlx::query_as::<_, (String, i32, Option<String>)>(
            "SELECT status::text, attempts, last_error FROM job_runs WHERE job_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .unwrap()
        .map(|(status, attempts, last_error)| JobRow {
            status,
            attempts,
            last_error,
        })
    }

    /// Rows in the job ledger, whatever their status.
    pub async fn job_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM job_runs")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn count_status(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM job_runs WHERE status::text = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until the job's ledger row has `status`.
    pub async fn wait_status(&self, id: &str, status: &str, within: Duration) -> JobRow {
        let deadline = Instant::now() + within;
        loop {
            let row = self.job(id).await;
            if let Some(r) = &row {
                if r.status == status {
                    return row.unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not {status} within {within:?}; ledger row: {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ready messages in a queue (passive declare).
    pub async fn ready(&self, queue: &str) -> u32 {
        self.queue_counts(queue).await.0
    }

    /// Consumers on a queue (passive declare).
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.queue_counts(queue).await.1
    }

    /// (ready messages, consumers) of a queue (passive declare).
    pub async fn queue_counts(&self, queue: &str) -> (u32, u32) {
        let ch = self.conn.create_channel().await.unwrap();
        let c = warren_core::broker::queue_counts(&ch, queue).await.unwrap();
        let _ = ch.close(200, "".into()).await;
        (c.ready, c.consumers)
    }

    /// Takes one message from a queue (acks it), waiting up to `within` for one.
    pub async fn take(&self, queue: &str, within: Duration) -> lapin::message::Delivery {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self
                .ch
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                m.delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
                return m.delivery;
            }
            assert!(
                Instant::now() < deadline,
                "no message in {queue} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An exclusive queue bound to `<ns>.jobs` with `key`: sees every (re)publish of a task,
    /// including retries coming back from the delay tiers.
    pub async fn spy(&self, key: &str) -> lapin::Consumer {
        let ch = self.conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        ch.queue_bind(
            q.name().clone(),
            format!("{}.jobs", self.ns).as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        consume_no_ack(&ch, q.name().as_str()).await
    }

    /// Consumes (and removes) every message of `queue` without acks, on its own channel.
    pub async fn drain(&self, queue: &str) -> lapin::Consumer {
        let ch = self.conn.create_channel().await.unwrap();
        consume_no_ack(&ch, queue).await
    }

    /// Stops every process [`TestEnv::spawn`] started that is still running with this
    /// namespace (a pid is signalled only while its environment names the namespace, so a
    /// reaped and reused pid is left alone).
    fn stop_spawned(&self) {
        let marker = format!("WARREN_NAMESPACE={}", self.ns);
        for pid in self.spawned.lock().unwrap().drain(..) {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let ours = environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes());
            if ours {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }

    /// Stops the processes this test spawned, deletes the namespace's queues and exchanges
    /// and drops its database.
    pub async fn cleanup(self) {
        self.stop_spawned();
        let file = warren_core_config(&self.config_path);
        let topo = warren_core::topology::Topology::new(&self.ns, &file).unwrap();
        // Every broker step is bounded: a connection that died under the test can leave lapin
        // calls pending forever (CI once hung here). The namespace is then deleted on a fresh
        // connection.
        const STEP: Duration = Duration::from_secs(20);
        if !matches!(
            tokio::time::timeout(STEP, delete_topology(&self.conn, &topo)).await,
            Ok(Ok(()))
        ) {
            eprintln!(
                "cleanup: the test's broker connection failed; deleting {} on a new one",
                self.ns
            );
            let fresh = tokio::time::timeout(STEP, async {
                let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
                let deleted = delete_topology(&conn, &topo).await;
                let _ = conn.close(200, "".into()).await;
                deleted
            })
            .await;
            if !matches!(fresh, Ok(Ok(()))) {
                eprintln!(
                    "cleanup: could not delete {}'s queues and exchanges",
                    self.ns
                );
            }
        }
        let _ = tokio::time::timeout(STEP, self.conn.close(200, "".into())).await;
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&format!("{PG_BASE}/postgres")).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db_name
            ))
            .execute(&admin)
            .await;
        }
        let _ = std::fs::remove_file(&self.config_path);
    }
}

async fn delete_topology(
    conn: &Connection,
    topo: &warren_core::topology::Topology,
) -> Result<(), lapin::Error> {
    topo.delete(&conn.create_channel().await?).await
}

fn warren_core_config(path: &std::path::Path) -> warren_core::config::FileConfig {
    warren_core::config::FileConfig::load(Some(path)).unwrap()
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// A running `warren worker` process.
pub struct Worker {
    pub child: Child,
    pub port: u16,
    pub log: std::path::PathBuf,
}

impl Worker {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `/readyz` answers 200 (broker and database up).
    pub async fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(r) = reqwest::get(self.url("/readyz")).await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("worker exited with {status}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "worker not ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/readyz`'s status and JSON body (which check is down), if it answers.
    pub async fn readyz(&self) -> Option<(u16, serde_json::Value)> {
        let r = reqwest::get(self.url("/readyz")).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.ok()?))
    }

    pub async fn readyz_status(&self) -> Option<u16> {
        reqwest::get(self.url("/readyz"))
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit; panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "worker still running after {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A header as text, for assertions.
pub fn header(d: &lapin::message::Delivery, key: &str) -> Option<String> {
    let h = d.properties.headers().as_ref()?;
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Sum of a Prometheus sample across the label sets containing every `must` fragment.
pub fn metric(text: &str, name: &str, must: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && must.iter().all(|m| l.contains(m)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` until it returns true.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Receives the next message from a spy consumer, with its arrival time.
pub async fn next_arrival(
    c: &mut lapin::Consumer,
    within: Duration,
) -> (Instant, lapin::message::Delivery) {
    let d = tokio::time::timeout(within, c.next())
        .await
        .expect("spy saw nothing in time")
        .expect("spy stream ended")
        .expect("spy delivery");
    (Instant::now(), d)
}

/// Runs a shell command; panics when it fails.
pub fn sh(cmd: &str) {
    let ok = Command::new("bash")
        .args(["-c", cmd])
        .status()
        .expect("bash")
        .success();
    assert!(ok, "`{cmd}` failed");
}

pub fn pg_ctl(action: &str) -> String {
    format!("pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -1) main {action}")
}

/// A service stopped for a test; restored when dropped (also when an assertion fails).
pub struct Outage {
    restore: String,
}

impl Outage {
    pub fn new(stop: &str, restore: String) -> Self {
        sh(stop);
        Self { restore }
    }

    /// PostgreSQL down.
    pub fn postgres() -> Self {
        Self::new(
            &format!("{} -m fast", pg_ctl("stop")),
            format!(
                "{} && for i in $(seq 1 100); do pg_isready -q -h 127.0.0.1 && exit 0; \
                 sleep 0.2; done; exit 1",
                pg_ctl("start")
            ),
        )
    }

    /// The RabbitMQ application stopped: every connection drops.
    pub fn rabbitmq() -> Self {
        Self::new(
            "rabbitmqctl -q stop_app",
            "rabbitmqctl -q start_app && rabbitmqctl -q await_startup".into(),
        )
    }
}

/// Stops RabbitMQ until `w` notices (`/readyz` 503), keeps it down two more seconds, then
/// starts it again. The caller's own connections die with it (`TestEnv::reconnect`).
pub async fn rabbitmq_outage_seen_by(w: &Worker) {
    let _down = Outage::rabbitmq();
    eventually(
        Duration::from_secs(60),
        "/readyz 503 while the broker is down",
        || async { w.readyz_status().await == Some(503) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
}

impl Drop for Outage {
    fn drop(&mut self) {
        sh(&self.restore);
    }
}

async fn consume_no_ack(ch: &lapin::Channel, queue: &str) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
}
