//! HTTP clients for the payment providers Warren charges: Pagar.me and Appmax.
//!
//! Each client speaks exactly the subset in `docs/providers.md` and classifies every failure
//! where it happens, so a renewal handler only has to match:
//!
//! - `Ok(`[`Charge::Paid`]`)` — charged; `Ok(`[`Charge::Failed`]`)` — declined, with the
//!   acquirer's message (permanent for this attempt: dunning); `Ok(`[`Charge::Pending`]`)` —
//!   not decided yet;
//! - [`ProviderError::Retryable`] — nothing was charged (a 429, a connect error, a 5xx to a
//!   request that charges nothing): try again later, after [`ProviderError::retry_after`]
//!   when the provider said so;
//! - [`ProviderError::Permanent`] — the request itself is wrong (400/401/403/404/422, an
//!   answer that is not the documented shape): retrying cannot help;
//! - [`ProviderError::Unknown`] — a request that charges may have been acted on (a 5xx, a
//!   timeout, a reset after sending): the charge may exist, so reconcile by code/reference
//!   before charging again. A gateway can approve a card and still answer `502`.
//!
//! Secrets travel as [`Secret`], whose `Debug` never prints them.

pub mod appmax;
pub mod pagarme;

use std::fmt;
use std::time::Duration;

use reqwest::{header::RETRY_AFTER, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use appmax::{AppmaxClient, AppmaxOrder};
pub use pagarme::{PagarmeClient, RenewalCharge};
pub use warren_core::config::Secret;

/// A provider call that did not produce a decision, classified where it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The card was refused: permanent for this attempt. What [`Charge::into_result`] makes
    /// of a [`Charge::Failed`].
    #[error("declined: {message}")]
    Declined { message: String },
    /// Nothing was charged and a later attempt may succeed: a 429 (with the provider's
    /// `Retry-After`), a connection that could not be opened, a 5xx to a request that
    /// charges nothing.
    #[error("retryable provider error{}: {message}", fmt_status(*status))]
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        message: String,
    },
    /// Will never succeed as sent: 400/401/403/404/422, or an answer not of the documented shape.
    #[error("permanent provider error{}: {message}", fmt_status(*status))]
    Permanent {
        status: Option<u16>,
        message: String,
    },
    /// A request that charges may have been processed (a 5xx, a timeout, a reset after
    /// sending): the charge may exist. Reconcile by code/reference before charging again.
    #[error("unknown provider outcome: {message}")]
    Unknown { message: String },
}

fn fmt_status(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

impl ProviderError {
    /// Nothing was charged and trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    /// The charge may exist: reconcile before charging again.
    pub fn is_unknown(&self) -> bool {
        matches!(self, Self::Unknown { .. })
    }

    /// How long the provider asked us to wait (`429` with `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn invalid_response(status: StatusCode, err: impl fmt::Display) -> Self {
        Self::Permanent {
            status: Some(status.as_u16()),
            message: format!("invalid response: {err}"),
        }
    }
}

/// What a provider decided about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// Charged. `charge_id` is Pagar.me's `ch_…`; Appmax has none.
    Paid {
        order_id: String,
        charge_id: Option<String>,
    },
    /// Declined, with the acquirer's message.
    Failed { order_id: String, message: String },
    /// The provider has not decided yet.
    Pending { order_id: String },
}

impl Charge {
    /// The provider's order id.
    pub fn order_id(&self) -> &str {
        match self {
            Self::Paid { order_id, .. }
            | Self::Failed { order_id, .. }
            | Self::Pending { order_id } => order_id,
        }
    }

    /// `Paid` as `Ok`; `Failed` as [`ProviderError::Declined`]; `Pending` as
    /// [`ProviderError::Unknown`] (the charge may still happen: reconcile before charging again).
    pub fn into_result(self) -> Result<Self, ProviderError> {
        match self {
            Self::Paid { .. } => Ok(self),
            Self::Failed { message, .. } => Err(ProviderError::Declined { message }),
            Self::Pending { order_id } => Err(ProviderError::Unknown {
                message: format!("order {order_id} is still pending"),
            }),
        }
    }
}

/// A `reqwest` client with Warren's timeouts. The connect timeout is half the request
/// timeout, so a provider that cannot be reached is reported as a connect error (retryable:
/// nothing was sent) rather than a request timeout (unknown).
fn http_client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(timeout / 2)
        .timeout(timeout)
        .build()
        .map_err(|e| ProviderError::Permanent {
            status: None,
            message: format!("building the HTTP client: {e}"),
        })
}

/// What a request does at the provider, which decides what a failed answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Reads, or creates what a repeat finds again (an order by reference): a `5xx` decided
    /// nothing that matters.
    Repeatable,
    /// May charge a card: a `5xx` can come after the charge was made, so it is unknown.
    Charges,
}

/// Sends `request` and decodes a successful answer as `T`; every failure classified by
/// [`classify_transport`] or [`classify_status`].
async fn send_json<T: DeserializeOwned>(
    request: RequestBuilder,
    effect: Effect,
) -> Result<T, ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| classify_transport(e, effect))?;
    let status = response.status();
    if !status.is_success() {
        return Err(classify_status(response, effect).await);
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| classify_transport(e, effect))?;
    serde_json::from_slice(&body).map_err(|e| ProviderError::invalid_response(status, e))
}

/// A request that produced no response. A connect error means nothing was sent
/// (retryable); anything later — a timeout, a reset, a broken body — may come after the
/// provider acted on the request: unknown for a charge, retryable for a request whose
/// repeat is harmless.
fn classify_transport(err: reqwest::Error, effect: Effect) -> ProviderError {
    // Strip the URL: it is ours, and keeps query strings out of error messages.
    let err = err.without_url();
    if err.is_builder() {
        ProviderError::Permanent {
            status: None,
            message: format!("building the request: {err}"),
        }
    } else if err.is_connect() {
        ProviderError::Retryable {
            status: None,
            retry_after: None,
            message: format!("connecting: {err}"),
        }
    } else if effect == Effect::Repeatable {
        ProviderError::Retryable {
            status: None,
            retry_after: None,
            message: format!("no answer: {err:#}"),
        }
    } else if err.is_timeout() {
        ProviderError::Unknown {
            message: format!("timed out: {err}"),
        }
    } else {
        ProviderError::Unknown {
            message: format!("request failed after it may have been sent: {err:#}"),
        }
    }
}

/// A non-success answer: `429` is retryable (honouring `Retry-After` in seconds); a `5xx` is
/// retryable, or unknown for a request that charges; other `4xx` are permanent with the
/// body's `message`.
async fn classify_status(response: Response, effect: Effect) -> ProviderError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    let message = error_message(status, &body);
    if status.is_server_error() && effect == Effect::Charges {
        ProviderError::Unknown {
            message: format!(
                "HTTP {} to a charge request (the card may have been charged): {message}",
                status.as_u16()
            ),
        }
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        ProviderError::Retryable {
            status: Some(status.as_u16()),
            retry_after,
            message,
        }
    } else {
        ProviderError::Permanent {
            status: Some(status.as_u16()),
            message,
        }
    }
}

/// The body's `message`, else the start of the body, else the status's reason.
fn error_message(status: StatusCode, body: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: String,
    }
    if let Ok(ErrorBody { message }) = serde_json::from_str(body) {
        return message;
    }
    let body = body.trim();
    if body.is_empty() {
        status.canonical_reason().unwrap_or("no body").to_owned()
    } else {
        body.chars().take(200).collect()
    }
}
