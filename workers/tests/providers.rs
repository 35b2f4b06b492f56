//! Provider clients against wiremock: the request each sends and how each answer is classified.

use std::time::Duration;

use serde_json::{json, Value};
use warren_workers::providers::{
    AppmaxClient, Charge, PagarmeClient, ProviderError, RenewalCharge, Secret,
};
use wiremock::matchers::{body_json, body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "renewal:42:2026-11-23T19:15:16+00:00";
const SECRET: &str = "sk_test_s3cr3t";
/// base64("sk_test_s3cr3t:")
const BASIC: &str = "Basic c2tfdGVzdF9zM2NyM3Q6";
const TOKEN: &str = "appmax_t0ken";
const TIMEOUT: Duration = Duration::from_millis(500);

fn pagarme(server: &MockServer) -> PagarmeClient {
    PagarmeClient::new(server.uri(), Secret::new(SECRET), TIMEOUT).unwrap()
}

fn renewal() -> RenewalCharge {
    RenewalCharge {
        key: KEY.into(),
        customer_id: "cus_1".into(),
        card_id: "card_ok".into(),
        amount_cents: 4990,
        description: "Subscription renewal".into(),
    }
}

fn order(status: &str, charge_status: &str, tx: &str, message: &str) -> Value {
    json!({
        "id": "or_1", "code": KEY, "amount": 4990, "status": status,
        "charges": [{ "id": "ch_1", "status": charge_status,
                      "last_transaction": { "status": tx, "acquirer_message": message } }]
    })
}

async fn pagarme_answers(response: ResponseTemplate) -> Result<Charge, ProviderError> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/core/v5/orders"))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    pagarme(&server).create_order(&renewal()).await
}

#[tokio::test]
async fn pagarme_sends_the_documented_request_and_reads_paid() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/core/v5/orders"))
        .and(header("idempotency-key", KEY))
        .and(header("authorization", BASIC))
        .and(body_json(json!({
            "code": KEY,
            "customer_id": "cus_1",
            "items": [{ "amount": 4990, "description": "Subscription renewal", "quantity": 1, "code": "renewal" }],
            "payments": [{
                "payment_method": "credit_card",
                "credit_card": { "card_id": "card_ok", "installments": 1, "recurrence_cycle": "subsequent" }
            }]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(order("paid", "paid", "captured", "Approved")))
        .expect(1)
        .mount(&server)
        .await;

    let charge = pagarme(&server).create_order(&renewal()).await.unwrap();
    assert_eq!(
        charge,
        Charge::Paid {
            order_id: "or_1".into(),
            charge_id: Some("ch_1".into())
        }
    );
}

#[tokio::test]
async fn pagarme_created_201_is_read_like_200() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(
            json!({ "code": KEY, "payments": [{ "credit_card": { "card_id": "card_ok" } }] }),
        ))
        .respond_with(
            ResponseTemplate::new(201).set_body_json(order("pending", "pending", "captured", "")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let charge = pagarme(&server).create_order(&renewal()).await.unwrap();
    assert_eq!(
        charge,
        Charge::Pending {
            order_id: "or_1".into()
        }
    );
    assert!(charge.into_result().unwrap_err().is_unknown());
}

#[tokio::test]
async fn pagarme_failed_surfaces_the_acquirer_message() {
    let charge = pagarme_answers(ResponseTemplate::new(200).set_body_json(order(
        "failed",
        "failed",
        "not_authorized",
        "Insufficient funds",
    )))
    .await
    .unwrap();
    assert_eq!(
        charge,
        Charge::Failed {
            order_id: "or_1".into(),
            message: "Insufficient funds".into()
        }
    );
    assert_eq!(
        charge.into_result(),
        Err(ProviderError::Declined {
            message: "Insufficient funds".into()
        })
    );
}

#[tokio::test]
async fn pagarme_400_is_permanent_with_the_body_message() {
    let err = pagarme_answers(
        ResponseTemplate::new(400)
            .set_body_json(json!({ "message": "The request is invalid.", "errors": {} })),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        ProviderError::Permanent {
            status: Some(400),
            message: "The request is invalid.".into()
        }
    );
}

#[tokio::test]
async fn pagarme_401_is_permanent() {
    let err = pagarme_answers(
        ResponseTemplate::new(401)
            .set_body_json(json!({ "message": "Authorization has been denied." })),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Permanent {
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable() && !err.is_unknown());
}

#[tokio::test]
async fn pagarme_429_is_retryable_after_retry_after() {
    let err = pagarme_answers(
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "7")
            .set_body_json(json!({ "message": "Too many requests" })),
    )
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert!(matches!(
        err,
        ProviderError::Retryable {
            status: Some(429),
            ..
        }
    ));
}

/// A gateway can approve the card and still answer 5xx: the outcome of a charge request
/// that got one is unknown, never "nothing charged".
#[tokio::test]
async fn pagarme_5xx_to_a_charge_is_unknown() {
    let err = pagarme_answers(ResponseTemplate::new(502).set_body_string("upstream broke"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProviderError::Unknown {
            message:
                "HTTP 502 to a charge request (the card may have been charged): upstream broke"
                    .into()
        }
    );
}

#[tokio::test]
async fn pagarme_a_lookup_that_times_out_is_retryable() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/core/v5/orders"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "data": [] }))
                .set_delay(TIMEOUT * 4),
        )
        .mount(&server)
        .await;
    let err = pagarme(&server).find_orders_by_code(KEY).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn pagarme_5xx_to_a_lookup_is_retryable() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/core/v5/orders"))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .expect(1)
        .mount(&server)
        .await;
    let err = pagarme(&server).find_orders_by_code(KEY).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Retryable {
            status: Some(503),
            retry_after: None,
            message: "busy".into()
        }
    );
}

#[tokio::test]
async fn pagarme_timeout_is_unknown() {
    let err = pagarme_answers(
        ResponseTemplate::new(200)
            .set_body_json(order("paid", "paid", "captured", ""))
            .set_delay(TIMEOUT * 4),
    )
    .await
    .unwrap_err();
    assert!(err.is_unknown(), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn pagarme_invalid_body_is_permanent() {
    let err = pagarme_answers(ResponseTemplate::new(200).set_body_string("<html>"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Permanent {
                status: Some(200),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn pagarme_unreachable_is_retryable() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // The listener is dropped: nothing listens on `addr` any more.
    let client =
        PagarmeClient::new(format!("http://{addr}"), Secret::new(SECRET), TIMEOUT).unwrap();
    let err = client.create_order(&renewal()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn pagarme_find_by_code_url_encodes_the_key() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/core/v5/orders"))
        .and(header("authorization", BASIC))
        .and(|req: &Request| {
            req.url.query() == Some("code=renewal%3A42%3A2026-11-23T19%3A15%3A16%2B00%3A00")
        })
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "data": [order("paid", "paid", "captured", "")] })),
        )
        .expect(1)
        .mount(&server)
        .await;
    let found = pagarme(&server).find_orders_by_code(KEY).await.unwrap();
    assert_eq!(
        found,
        vec![Charge::Paid {
            order_id: "or_1".into(),
            charge_id: Some("ch_1".into())
        }]
    );
}

#[tokio::test]
async fn pagarme_find_by_code_is_empty_on_empty_data() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/core/v5/orders"))
        .and(query_param("code", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "data": [] })))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        pagarme(&server).find_orders_by_code(KEY).await.unwrap(),
        vec![]
    );
}

#[test]
fn secrets_never_appear_in_debug() {
    let client = PagarmeClient::new("http://localhost", Secret::new(SECRET), TIMEOUT).unwrap();
    let printed = format!("{client:?} {:?}", renewal());
    assert!(!printed.contains(SECRET), "{printed}");
    assert!(printed.contains("Secret(***)"), "{printed}");
    assert_eq!(format!("{:?}", Secret::new(TOKEN)), "Secret(***)");
    let from_json: Secret = serde_json::from_value(json!(TOKEN)).unwrap();
    assert_eq!(from_json.expose(), TOKEN);
}

// ---------------------------------------------------------------- Appmax

fn appmax(server: &MockServer) -> AppmaxClient {
    AppmaxClient::new(server.uri(), TIMEOUT).unwrap()
}

fn token() -> Secret {
    Secret::new(TOKEN)
}

async fn mount_create(server: &MockServer, status: &str, times: u64) {
    Mock::given(method("POST"))
        .and(path("/api/v3/order"))
        .and(header("access-token", TOKEN))
        .and(body_json(
            json!({ "reference": KEY, "subscription_id": "sub_9", "amount_cents": 4990 }),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "id": 123, "reference": KEY, "status": status })),
        )
        .expect(times)
        .mount(server)
        .await;
}

async fn appmax_charge_answers(response: ResponseTemplate) -> Result<Charge, ProviderError> {
    let server = MockServer::start().await;
    mount_create(&server, "pending", 1).await;
    Mock::given(method("POST"))
        .and(path("/api/v3/payment/credit-card"))
        .and(header("access-token", TOKEN))
        .and(body_json(
            json!({ "order_id": 123, "token": "tok_ok", "installments": 1 }),
        ))
        .respond_with(response)
        .expect(1)
        .mount(&server)
        .await;
    let client = appmax(&server);
    let order = client
        .create_order(&token(), KEY, "sub_9", 4990)
        .await
        .unwrap();
    assert_eq!(order.id, 123);
    client.charge_card(&token(), order.id, "tok_ok").await
}

#[tokio::test]
async fn appmax_creates_then_charges_approved() {
    let charge = appmax_charge_answers(
        ResponseTemplate::new(200)
            .set_body_json(json!({ "order_id": 123, "status": "approved", "message": "ok" })),
    )
    .await
    .unwrap();
    assert_eq!(
        charge,
        Charge::Paid {
            order_id: "123".into(),
            charge_id: None
        }
    );
}

#[tokio::test]
async fn appmax_declined_surfaces_the_message() {
    let charge = appmax_charge_answers(ResponseTemplate::new(200).set_body_json(
        json!({ "order_id": 123, "status": "declined", "message": "Insufficient funds" }),
    ))
    .await
    .unwrap();
    assert_eq!(
        charge,
        Charge::Failed {
            order_id: "123".into(),
            message: "Insufficient funds".into()
        }
    );
}

#[tokio::test]
async fn appmax_an_existing_reference_answers_its_decided_order() {
    let server = MockServer::start().await;
    mount_create(&server, "approved", 1).await;
    let order = appmax(&server)
        .create_order(&token(), KEY, "sub_9", 4990)
        .await
        .unwrap();
    assert_eq!(
        order.charge,
        Charge::Paid {
            order_id: "123".into(),
            charge_id: None
        }
    );
}

#[tokio::test]
async fn appmax_400_is_permanent_with_the_body_message() {
    let err = appmax_charge_answers(
        ResponseTemplate::new(400).set_body_json(json!({ "message": "Invalid token" })),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        ProviderError::Permanent {
            status: Some(400),
            message: "Invalid token".into()
        }
    );
}

#[tokio::test]
async fn appmax_401_on_create_is_permanent_and_charges_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/order"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({ "message": "Unauthenticated" })),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/api/v3/payment/credit-card"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let err = appmax(&server)
        .create_order(&token(), KEY, "sub_9", 4990)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProviderError::Permanent {
            status: Some(401),
            message: "Unauthenticated".into()
        }
    );
}

#[tokio::test]
async fn appmax_429_is_retryable_after_retry_after() {
    let err = appmax_charge_answers(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn appmax_5xx_to_a_charge_is_unknown() {
    let err = appmax_charge_answers(ResponseTemplate::new(503))
        .await
        .unwrap_err();
    assert!(err.is_unknown(), "{err:?}");
}

#[tokio::test]
async fn appmax_5xx_to_an_order_is_retryable() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v3/order"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let err = appmax(&server)
        .create_order(&token(), KEY, "sub_9", 4990)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Retryable {
                status: Some(503),
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn appmax_timeout_is_unknown() {
    let err = appmax_charge_answers(
        ResponseTemplate::new(200)
            .set_body_json(json!({ "order_id": 123, "status": "approved", "message": "ok" }))
            .set_delay(TIMEOUT * 4),
    )
    .await
    .unwrap_err();
    assert!(err.is_unknown(), "{err:?}");
}

#[tokio::test]
async fn appmax_find_by_reference_url_encodes_and_reads_the_order() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v3/order"))
        .and(header("access-token", TOKEN))
        .and(|req: &Request| {
            req.url.query() == Some("reference=renewal%3A42%3A2026-11-23T19%3A15%3A16%2B00%3A00")
        })
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [{ "id": 123, "reference": KEY, "status": "declined", "message": "Insufficient funds" }]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let found = appmax(&server)
        .find_orders_by_reference(&token(), KEY)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let found = &found[0];
    assert_eq!(found.id, 123);
    assert_eq!(found.reference, KEY);
    assert_eq!(
        found.charge,
        Charge::Failed {
            order_id: "123".into(),
            message: "Insufficient funds".into()
        }
    );
}

#[tokio::test]
async fn appmax_find_by_reference_is_empty_on_empty_data() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v3/order"))
        .and(query_param("reference", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "data": [] })))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        appmax(&server)
            .find_orders_by_reference(&token(), KEY)
            .await
            .unwrap(),
        vec![]
    );
}

#[test]
fn appmax_client_debug_has_no_token() {
    let client = AppmaxClient::new("http://localhost", TIMEOUT).unwrap();
    assert!(!format!("{client:?}").contains(TOKEN));
}
