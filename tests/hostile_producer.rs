//! The producer library and the ingest's idempotency claims under hostile input, with the
//! real RabbitMQ and PostgreSQL: values outside `warren_core::limits` are errors, never a
//! panic or a closed connection; a request that ends early gives its claim up.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// The producer library refuses a huge header with an error before publishing, and its
/// connection stays open for the next publish.
#[tokio::test(flavor = "multi_thread")]
async fn the_producer_library_refuses_instead_of_breaking_the_connection() {
    use warren_producer::{Producer, PublishError, PublishOptions};
    let env = TestEnv::new(FAST_CONFIG).await;
    let conn = warren_core::broker::connect(AMQP_URL, "hostile-test")
        .await
        .unwrap();
    let producer = Producer::new(&conn, format!("{}.jobs", env.ns))
        .await
        .unwrap();
    let cases = [
        PublishOptions {
            tenant: Some("t".repeat(300_000)),
            ..Default::default()
        },
        PublishOptions {
            id: Some("i".repeat(256)),
            ..Default::default()
        },
        PublishOptions {
            idempotency_key: Some("k\0".into()),
            ..Default::default()
        },
    ];
    for opts in &cases {
        let e = producer
            .publish("demo.noop", &json!({}), opts)
            .await
            .unwrap_err();
        assert!(
            matches!(e, PublishError::Invalid(_)) && !e.is_retryable(),
            "{e}"
        );
    }
    let e = producer
        .publish(&"x".repeat(300), &json!({}), &PublishOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::Invalid(_)), "{e}");
    // The one publish path guards too, whatever the caller built.
    let mut h = lapin::types::FieldTable::default();
    warren_core::envelope::set_str(&mut h, "x-pad", &"p".repeat(200_000));
    let props = warren_core::envelope::json_properties("raw-1", h);
    let exchange = format!("{}.jobs", env.ns);
    let e = producer
        .publish_raw(&exchange, "demo.noop", "demo.noop", b"{}", props)
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::Invalid(_)), "{e}");
    assert!(conn.status().connected());
    let id = producer
        .publish("demo.noop", &json!({}), &PublishOptions::default())
        .await
        .expect("the connection still publishes");
    assert!(!id.is_empty());
    conn.close(200, "done".into()).await.unwrap();
    env.cleanup().await;
}

/// A request that ends before it stored its answer (here: a panic while it holds the claim)
/// gives its Idempotency-Key claim up, so a retry is not refused for two minutes.
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_claim_is_released() {
    use warren_producer::ingest::{Claim, Store};
    let env = TestEnv::new(FAST_CONFIG).await;
    let store = Store::new(env.pool.clone(), Duration::from_secs(3600));
    assert_eq!(store.claim("scope", "k", "h").await.unwrap(), Claim::New);
    let s = store.clone();
    let joined = tokio::spawn(async move {
        let _guard = s.guard("scope", "k");
        panic!("a handler bug while holding the claim");
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    let started = Instant::now();
    assert_eq!(store.claim("scope", "k", "h").await.unwrap(), Claim::New);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for the abandoned claim"
    );
    // A finished claim is kept: the guard only releases claims without an answer.
    let g = store.guard("scope", "k");
    store.complete("scope", "k", 202, "{}").await.unwrap();
    drop(g);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        store.claim("scope", "k", "h").await.unwrap(),
        Claim::Replay { status: 202, .. }
    ));
    env.cleanup().await;
}

/// An answer of unknown outcome (503 listing the job ids that may run) is kept, not
/// forgotten: a retry with the key resumes the claim with that answer (so it publishes under
/// the same ids); a retry that publishes nothing gives the claim back to the unknown outcome,
/// even when it dies holding it; only a final answer is replayed.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_outcome_is_resumed_under_the_same_ids() {
    use warren_producer::ingest::{Claim, Store};
    let env = TestEnv::new(FAST_CONFIG).await;
    let store = Store::new(env.pool.clone(), Duration::from_secs(3600));
    let unknown = r#"{"error":"outcome_unknown","outcome":"unknown","jobs":[{"id":"j-1","task":"demo.noop","outcome":"unknown"}]}"#;
    assert_eq!(store.claim("scope", "k", "h").await.unwrap(), Claim::New);
    store.complete("scope", "k", 503, unknown).await.unwrap();
    // Another request with the same key but a different body is still a misuse.
    assert_eq!(
        store.claim("scope", "k", "other").await.unwrap(),
        Claim::Mismatch
    );
    let resumed = Claim::Resume {
        earlier: unknown.to_owned(),
    };
    assert_eq!(store.claim("scope", "k", "h").await.unwrap(), resumed);
    // While the retry runs, a concurrent one waits instead of resuming too.
    let started = Instant::now();
    assert_eq!(
        store.claim("scope", "k", "h").await.unwrap(),
        Claim::InProgress
    );
    assert!(started.elapsed() >= Duration::from_secs(5));
    // The retry published nothing (say the broker was blocked): the ids are kept.
    store.release("scope", "k").await.unwrap();
    assert_eq!(store.claim("scope", "k", "h").await.unwrap(), resumed);
    // The retry dies holding the claim: the guard gives it back to the unknown outcome.
    let s = store.clone();
    let joined = tokio::spawn(async move {
        let _guard = s.guard("scope", "k");
        panic!("a handler bug while holding a resumed claim");
    })
    .await;
    assert!(joined.unwrap_err().is_panic());
    let mut again = None;
    for _ in 0..50 {
        match store.claim("scope", "k", "h").await.unwrap() {
            Claim::InProgress => continue,
            other => {
                again = Some(other);
                break;
            }
        }
    }
    assert_eq!(again, Some(resumed));
    // This time every job was confirmed: the 202 is final and replayed from now on.
    let accepted = r#"{"jobs":[{"id":"j-1","task":"demo.noop"}]}"#;
    store.complete("scope", "k", 202, accepted).await.unwrap();
    assert_eq!(
        store.claim("scope", "k", "h").await.unwrap(),
        Claim::Replay {
            status: 202,
            body: accepted.to_owned()
        }
    );
    env.cleanup().await;
}
