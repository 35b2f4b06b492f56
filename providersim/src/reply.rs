//! Answering a charge request once it is decided: after its wait, normally, or the way its
//! script's `then<NNN>` / `thenreset` says.

use crate::error::ApiError;
use crate::script::Then;
use axum::{
    body::{Body, Bytes},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;

/// How long a `thenreset` answer waits between its first half and the reset, so the status
/// line, headers and half a body reach the client before the connection drops.
const RESET_AFTER: Duration = Duration::from_millis(50);

/// A decided charge request's answer, built under the lock and sent after it is released.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The JSON a normal answer carries (snapshot at the moment of the charge).
    pub(crate) body: Value,
    /// `_slow` / `_timeout`.
    pub(crate) wait: Duration,
    /// Misbehaviour of the request that made the charge; `None` for a normal answer.
    pub(crate) then: Option<Then>,
}

impl Reply {
    /// A normal `200` at once (a replay).
    pub(crate) fn ok(body: Value) -> Self {
        Self {
            body,
            wait: Duration::ZERO,
            then: None,
        }
    }

    /// The ledger's `answer` for a charge answered per `then`.
    pub(crate) fn answer(then: Option<Then>) -> String {
        match then {
            None => "200".to_owned(),
            Some(Then::Status(s)) => s.to_string(),
            Some(Then::Reset) => "reset".to_owned(),
        }
    }

    /// Waits, then answers.
    pub(crate) async fn send(self) -> Response {
        if !self.wait.is_zero() {
            tokio::time::sleep(self.wait).await;
        }
        match self.then {
            None => Json(self.body).into_response(),
            Some(Then::Status(s)) => ApiError::after_charge(s).into_response(),
            Some(Then::Reset) => broken(&self.body),
        }
    }
}

/// `thenreset`: `200 OK` with a chunked body that stops half-way; the body stream then
/// fails, so the server drops the connection without the final chunk. The client gets the
/// status and headers and then an error reading the body (for `reqwest`, an error that is
/// neither a timeout nor a connect error).
fn broken(body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let half = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(half) });
    let reset = futures::stream::once(async {
        tokio::time::sleep(RESET_AFTER).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "provider simulator: scripted connection reset after the charge was made",
        ))
    });
    let mut response = Response::new(Body::from_stream(first.chain(reset)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
