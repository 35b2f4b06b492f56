//! Error answers in the providers' shapes: `{ "message": … }` (Pagar.me adds `errors`).

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;
use std::time::Duration;

use crate::outcome::unknown_suffix_message;
use crate::script::Script;
use crate::state::{ChargeStatus, Step};

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// Pagar.me's `errors` object; omitted when `None` (Appmax has none).
    errors: Option<serde_json::Value>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: None,
            retry_after: None,
        }
    }

    pub(crate) fn with_errors(mut self, errors: serde_json::Value) -> Self {
        self.errors = Some(errors);
        self
    }

    pub(crate) fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// The scripted `_500` / `_500once` answer.
    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "provider simulator: scripted internal server error (nothing charged)",
        )
    }

    /// The scripted `then<NNN>` answer: the charge was made, the client is told `status`.
    pub(crate) fn after_charge(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        Self::new(
            status,
            format!(
                "provider simulator: scripted {} after the charge was made",
                status.as_u16()
            ),
        )
    }

    /// The scripted `lookuperr<N>` answer.
    pub(crate) fn lookup_failed() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "provider simulator: scripted lookup error",
        )
    }

    /// The HTTP status, as the ledger's `answer` says it.
    pub(crate) fn answer(&self) -> String {
        self.status.as_u16().to_string()
    }

    /// The scripted `_429` answer, `Retry-After: 1`.
    pub(crate) fn too_many_requests() -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "provider simulator: scripted rate limit (nothing charged)",
        );
        e.retry_after = Some(1);
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.errors {
            Some(errors) => json!({ "message": self.message, "errors": errors }),
            None => json!({ "message": self.message }),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The script a card id or token asks for, or a 400 naming the known suffixes.
pub(crate) fn script_for(field: &str, card: &str) -> Result<Script, ApiError> {
    Script::from_card(card)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, unknown_suffix_message(field, card)))
}

/// A decided attempt's status and wait, or the error answer of one that reached no decision.
pub(crate) fn decided(step: Step) -> Result<(ChargeStatus, Duration), ApiError> {
    match step {
        Step::Fail500 => Err(ApiError::internal()),
        Step::Throttle => Err(ApiError::too_many_requests()),
        Step::Charge { status, wait } => Ok((status, wait)),
    }
}
