//! A loopback TCP proxy the test controls, to cut worker↔broker traffic without touching
//! the shared RabbitMQ: in blackhole mode it stops forwarding bytes both ways but keeps every
//! socket open (what a dead network path looks like: no RST, no FIN, just silence); `cut`
//! closes every open connection at once (what a broker restart or a dropped link looks like
//! to the client), mid-frame or not.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; stops accepting when dropped (open pumps end with their sockets).
pub struct Proxy {
    pub port: u16,
    blackhole: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    /// Bumped by `cut`: pumps of an older generation close their sockets.
    generation: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let generation = Arc::new(AtomicUsize::new(0));
        let (bh, acc, gen) = (blackhole.clone(), accepted.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue; // dropping `client` closes it, like a refused connection
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let mine = gen.load(Ordering::SeqCst);
                tokio::spawn(pump(cr, sw, bh.clone(), gen.clone(), mine));
                tokio::spawn(pump(sr, cw, bh.clone(), gen.clone(), mine));
            }
        });
        Self {
            port,
            blackhole,
            accepted,
            generation,
            task,
        }
    }

    /// To RabbitMQ on this machine.
    pub async fn rabbitmq() -> Self {
        Self::start("127.0.0.1:5672").await
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` plus `query` (e.g. `?heartbeat=2`).
    pub fn amqp_url(&self, query: &str) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f{query}", self.port)
    }

    /// Stops (true) or resumes (false) forwarding on every connection, old and new. Bytes
    /// not yet read stay in the kernel buffers and flow on resume.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }

    /// Closes every connection open now (within 100 ms); new ones are forwarded as before.
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections accepted so far (a reconnect shows up here).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction; while blackholed it neither reads nor writes; after a `cut` of
/// its generation it drops both sockets.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
    generation: Arc<AtomicUsize>,
    mine: usize,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if generation.load(Ordering::SeqCst) != mine {
            return; // dropping both halves closes both sockets
        }
        while blackhole.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Re-check after each short wait for data so a blackhole starting now holds the next
        // chunk instead of forwarding it.
        let n = match tokio::time::timeout(Duration::from_millis(100), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            // Read just as the blackhole began: hold it until it ends, then deliver in order.
            while blackhole.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
