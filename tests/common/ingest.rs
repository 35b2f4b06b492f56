//! `warren ingest` as a test process: started on a free port with the given environment,
//! waited for until `/readyz` answers 200. Test files add their own request helpers in
//! `impl Ingest` blocks of their own.

use super::{free_port, TestEnv, Worker};
use std::time::{Duration, Instant};

/// A running `warren ingest` and its API base URL.
pub struct Ingest {
    pub proc: Worker,
    pub base: String,
    pub http: reqwest::Client,
}

impl Ingest {
    /// Starts `warren ingest --listen 127.0.0.1:<free port>` with `envs` (tokens among them)
    /// and waits until it is ready.
    pub async fn spawn(env: &TestEnv, envs: &[(&str, &str)]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let proc = env.spawn(&["ingest", "--listen", &listen], envs);
        let me = Self {
            proc,
            base: format!("http://{listen}"),
            http: reqwest::Client::new(),
        };
        me.wait_ready().await;
        me
    }

    /// Waits (30 s at most) until `/readyz` answers 200; panics with the process's log.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "ingest not ready:\n{}",
                self.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
