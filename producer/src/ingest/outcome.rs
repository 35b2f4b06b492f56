//! What became of a request's jobs, and the answer that says so truthfully.
//!
//! A publish ends in one of three ways. Every job confirmed: `202`. Nothing reached the
//! broker (no connection, RabbitMQ blocking publishes before anything was sent, a refusal
//! of every job): an error that says the jobs were *not accepted*. Anything else (the
//! connection dropped, or RabbitMQ blocked it, after the messages were sent; no confirm in
//! time; some jobs confirmed and some not): Warren cannot know whether the broker took the
//! jobs, so the answer is `503` with `"outcome": "unknown"` and every job's id. Publishing
//! again under the same ids (or the same `Idempotency-Key`, which reuses them) is harmless:
//! a worker runs each job id once.

use super::ApiError;
use axum::http::StatusCode;
use serde_json::{json, Value};

/// Seconds a client is asked to wait (`Retry-After`) before retrying after a `503`.
pub(super) const RETRY_AFTER_SECS: u64 = 5;

/// One job of the request and, once published, whether the broker confirmed it.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub id: String,
    pub task: String,
    pub state: JobState,
}

/// What is known of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobState {
    /// Confirmed by the broker (or held in the outbox): it runs.
    Accepted,
    /// Refused before or by the broker (returned unroutable, nacked, invalid): it does not run.
    Refused,
    /// Sent without a confirm: it may run.
    Unknown,
}

impl JobState {
    fn word(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Unknown => "unknown",
        }
    }
}

/// The end of a publish.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Every job runs.
    Accepted(Vec<Sent>),
    /// No job was published; the error says why.
    Refused(ApiError),
    /// Some or all jobs may run; `why` says what went wrong.
    Unknown { jobs: Vec<Sent>, why: String },
}

impl Outcome {
    /// The status and JSON body of the answer.
    pub fn answer(&self) -> (StatusCode, String) {
        match self {
            Self::Accepted(jobs) => {
                let jobs: Vec<Value> = jobs
                    .iter()
                    .map(|j| json!({"id": j.id, "task": j.task}))
                    .collect();
                (StatusCode::ACCEPTED, json!({ "jobs": jobs }).to_string())
            }
            Self::Refused(e) => (e.status, e.body()),
            Self::Unknown { jobs, why } => {
                (StatusCode::SERVICE_UNAVAILABLE, unknown_body(jobs, why))
            }
        }
    }
}

/// The `503` body of an unknown outcome.
pub(super) fn unknown_body(jobs: &[Sent], why: &str) -> String {
    let listed: Vec<Value> = jobs
        .iter()
        .map(|j| json!({"id": j.id, "task": j.task, "outcome": j.state.word()}))
        .collect();
    json!({
        "error": "outcome_unknown",
        "outcome": "unknown",
        "message": format!(
            "{why}: the jobs may still run. Retry with the same job ids (listed in `jobs`) or \
             the same Idempotency-Key: a job id runs once, so a retry is harmless"
        ),
        "jobs": listed,
    })
    .to_string()
}

/// The jobs of an earlier answer (`jobs[]`, in order), all of unknown outcome: a retry of a
/// request whose outcome was unknown publishes under their ids again, and a retry that was
/// not published knows nothing more of them.
pub(super) fn earlier_jobs(body: &str) -> Vec<Sent> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let field = |j: &Value, name: &str| {
        j.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    v.get("jobs")
        .and_then(Value::as_array)
        .map(|jobs| {
            jobs.iter()
                .map(|j| Sent {
                    id: field(j, "id"),
                    task: field(j, "task"),
                    state: JobState::Unknown,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `503`: RabbitMQ blocks publishing (a memory or disk alarm); nothing was sent.
pub(super) fn broker_blocked() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_blocked",
        "the job was not accepted: RabbitMQ is refusing publishes (a memory or disk alarm) and \
         nothing was sent. Retry later (with the same Idempotency-Key or job ids, a retry is \
         harmless)",
    )
}

/// `503`: no connection to RabbitMQ; nothing was sent.
pub(super) fn broker_down(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        format!(
            "the job was not accepted: {why}. Retry later (with the same Idempotency-Key or job \
             ids, a retry is harmless)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(id: &str, state: JobState) -> Sent {
        Sent {
            id: id.into(),
            task: "demo.noop".into(),
            state,
        }
    }

    #[test]
    fn an_unknown_outcome_lists_every_job_and_says_a_retry_is_harmless() {
        let jobs = vec![sent("a", JobState::Accepted), sent("b", JobState::Unknown)];
        let out = Outcome::Unknown {
            jobs,
            why: "the connection was lost".into(),
        };
        let (status, body) = out.answer();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "outcome_unknown");
        assert_eq!(v["outcome"], "unknown");
        assert_eq!(v["jobs"][0]["outcome"], "accepted");
        assert_eq!(v["jobs"][1]["outcome"], "unknown");
        assert!(v["message"].as_str().unwrap().contains("harmless"));
        let ids: Vec<String> = earlier_jobs(&body).into_iter().map(|j| j.id).collect();
        assert_eq!(ids, vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn earlier_jobs_of_a_body_without_jobs_is_empty() {
        assert!(earlier_jobs("not json").is_empty());
        assert!(earlier_jobs(r#"{"error":"x"}"#).is_empty());
    }
}
