//! Lingering on refused requests, so the client reads the answer.
//!
//! The API refuses some requests before it reads their body: 401/403 (checked first, so an
//! unauthenticated client cannot make the server read megabytes) and 413 (a `Content-Length`
//! over the limit). A server that then closed the connection with the body still arriving
//! would make the kernel reset it, and a client still writing would see a broken pipe or a
//! reset instead of the answer. Every API request body is wrapped in [`Lingering`]: when
//! the handler drops it unread, a task keeps reading and discarding it for a while (nginx's
//! "lingering close"), so the answer goes out first and the connection closes cleanly.
//! What it will read is bounded ([`MAX_BYTES`], [`MAX_TIME`], [`IDLE`]); a client that sends
//! more than that is cut off, as before.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use futures::StreamExt;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most bytes read and discarded from one refused request.
const MAX_BYTES: usize = 64 << 20;
/// Longest time spent draining one refused request (a graceful stop waits for it too).
const MAX_TIME: Duration = Duration::from_secs(10);
/// Longest wait for the next piece of a refused request's body.
const IDLE: Duration = Duration::from_secs(5);

/// `middleware::map_request` step: wraps the body.
pub(super) async fn wrap(req: Request) -> Request {
    req.map(|body| Body::new(Lingering(Some(body))))
}

/// A request body that, dropped before its end, is drained in the background.
struct Lingering(Option<Body>);

impl HttpBody for Lingering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(body) = self.0.take() else { return };
        if body.is_end_stream() {
            return;
        }
        // Dropped outside a runtime (nothing serves then): nothing to drain for.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}

/// Reads and discards `body` until it ends or a bound is reached; dropping it then lets the
/// server close the connection.
async fn drain(body: Body) {
    let mut data = body.into_data_stream();
    let mut read = 0usize;
    let _ = tokio::time::timeout(MAX_TIME, async {
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(IDLE, data.next()).await {
            read += chunk.len();
            if read > MAX_BYTES {
                break;
            }
        }
    })
    .await;
}
