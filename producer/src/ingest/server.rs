//! The ingest's HTTP/1 server: an accept loop over hyper with the bounds a reverse proxy
//! would put in front of it, so no client can hold a connection open for free.
//!
//! - **Head.** A new connection must send a complete request head within the header
//!   timeout; a kept-alive connection must send its next complete head within the idle
//!   timeout of the previous answer. Either is closed without an answer otherwise. Both are
//!   hyper's `header_read_timeout`: hyper arms it when a connection starts and again each
//!   time the connection goes idle after an answer, and [`HeadTimer`] gives that idle wait
//!   its own length.
//! - **Body.** Bounded by the handlers (`RequestBody` in the parent module): 408 when it
//!   does not arrive in time.
//! - **Connections.** At most `max_connections` are open at once. At the cap the loop stops
//!   accepting: further clients wait in the kernel's listen backlog (the connect succeeds,
//!   the answer comes once a slot frees) rather than being accepted and refused.
//! - **Shutdown.** Stops accepting, closes idle connections, lets requests in flight finish
//!   (each one bounded by the timeouts above), then returns.
//!
//! Every connection's writes pass through [`JsonErrors`], so the parser's own error answers
//! carry JSON bodies.

use super::wire::JsonErrors;
use axum::Router;
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// gauge: open connections of the ingest API listener (help text in the catalogue).
pub const CONNECTIONS: &str = warren_core::telemetry::names::INGEST_CONNECTIONS;
/// counter {phase}: connections or requests cut off by a timeout (help text in the catalogue).
pub const TIMEOUTS: &str = warren_core::telemetry::names::INGEST_TIMEOUTS;

/// How long the listener waits after an accept error that is not about one connection
/// (out of file descriptors, say) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// At most one "connection limit reached" warning per this long.
const CAP_WARN_EVERY: Duration = Duration::from_secs(10);

/// The connection bounds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// A new connection's request head must be complete within this.
    pub header_timeout: Duration,
    /// A kept-alive connection's next request head must be complete within this of the
    /// previous answer.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` completes, then finishes the requests in
/// flight.
pub(super) async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut warned: Option<Instant> = None;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() >= CAP_WARN_EVERY) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: new connections wait in the listen backlog \
                         until one closes (WARREN_INGEST_MAX_CONNECTIONS)"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    _ = stop.cancelled() => break,
                }
            }
        };
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        connections.spawn(serve_connection(
            tcp,
            app.clone(),
            limits,
            slot,
            stop.clone(),
        ));
    }
    drop(listener);
    connections.close();
    tracing::debug!(
        open = connections.len(),
        "stopped accepting; waiting for open connections"
    );
    connections.wait().await;
}

/// An error of one connection (reset before it was accepted) is skipped; any other (out of
/// file descriptors) would come back at once, so the loop pauses first.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// One connection, from accept to close. `slot` is its place under the connection cap.
async fn serve_connection(
    tcp: TcpStream,
    app: Router,
    limits: Limits,
    slot: OwnedSemaphorePermit,
    stop: CancellationToken,
) {
    let _open = OpenConnection::new(slot);
    let served = Arc::new(AtomicBool::new(false));
    let service = hyper::service::service_fn({
        let served = served.clone();
        move |req: hyper::Request<Incoming>| {
            served.store(true, Ordering::Relaxed);
            let mut app = app.clone();
            tower_service::Service::call(&mut app, req.map(axum::body::Body::new))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(HeadTimer {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
            served: served.clone(),
        })
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(JsonErrors::new(tcp)), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            // Closes the connection if idle, else after the answer in progress.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match result {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            let phase = if served.load(Ordering::Relaxed) {
                "idle"
            } else {
                "head"
            };
            tracing::debug!(phase, "connection closed: no request head in time");
            metrics::counter!(TIMEOUTS, "phase" => phase).increment(1);
        }
        Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
    }
}

/// Counts an open connection in [`CONNECTIONS`] and holds its slot until dropped (a panic
/// included).
struct OpenConnection {
    _slot: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(slot: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(CONNECTIONS).increment(1.0);
        Self { _slot: slot }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(CONNECTIONS).decrement(1.0);
    }
}

/// hyper's timer for one connection. hyper (1.x) uses it on a server connection only for
/// `header_read_timeout`, which it arms when the connection starts and again each time it
/// goes idle after an answer, asking for `now + header timeout`. Once the connection has
/// served a request, the wait is a keep-alive one and gets the idle timeout instead.
#[derive(Clone)]
struct HeadTimer {
    header: Duration,
    idle: Duration,
    /// Set when the connection's first request head was read.
    served: Arc<AtomicBool>,
}

impl HeadTimer {
    fn deadline(&self, asked: Instant) -> Instant {
        if !self.served.load(Ordering::Relaxed) {
            return asked;
        }
        asked
            .checked_sub(self.header)
            .map_or(asked, |armed| armed + self.idle)
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        TokioTimer::new().sleep_until(self.deadline(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        TokioTimer::new().reset(sleep, self.deadline(new_deadline));
    }

    fn now(&self) -> Instant {
        TokioTimer::new().now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_for_a_kept_alive_connections_next_head_is_the_idle_timeout() {
        let timer = HeadTimer {
            header: Duration::from_secs(30),
            idle: Duration::from_secs(75),
            served: Arc::new(AtomicBool::new(false)),
        };
        let now = Instant::now();
        let asked = now + Duration::from_secs(30);
        assert_eq!(
            timer.deadline(asked),
            asked,
            "a new connection: the header timeout"
        );
        timer.served.store(true, Ordering::Relaxed);
        assert_eq!(timer.deadline(asked), now + Duration::from_secs(75));
    }
}
