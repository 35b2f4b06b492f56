//! The simulator over real HTTP: every scripted outcome on both providers, idempotent
//! replays, the "once" outcomes, the timeout-then-reconcile path, auth, the ledger of charge
//! requests and every misbehaviour modifier.

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use warren_providersim::{
    serve, Charge, ChargeStatus, Provider, SimConfig, KNOWN_SUFFIXES, MODIFIERS,
};

const AMOUNT: i64 = 4990;

struct Sim {
    base: String,
    http: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(cfg: SimConfig) -> Sim {
    let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap();
    assert_ne!(addr.port(), 0, "serve must return the bound port");
    Sim {
        base: format!("http://{addr}"),
        http: Client::new(),
        task,
    }
}

async fn start_default() -> Sim {
    start(SimConfig::default()).await
}

fn key(name: &str) -> String {
    format!("renewal:{name}:2026-11-01T00:00:00+00:00")
}

fn pagarme_body(code: &str, card_id: &str) -> Value {
    json!({
        "code": code,
        "customer_id": "cus_1",
        "items": [{ "amount": AMOUNT, "description": "Subscription renewal", "quantity": 1, "code": "renewal" }],
        "payments": [{
            "payment_method": "credit_card",
            "credit_card": { "card_id": card_id, "installments": 1, "recurrence_cycle": "subsequent" }
        }]
    })
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /core/v5/orders` with Basic auth and `Idempotency-Key = code`.
    async fn pagarme_create(&self, code: &str, card_id: &str) -> Response {
        self.pagarme_create_with(&self.http, code, code, card_id)
            .await
            .unwrap()
    }

    async fn pagarme_create_with(
        &self,
        client: &Client,
        idempotency_key: &str,
        code: &str,
        card_id: &str,
    ) -> reqwest::Result<Response> {
        client
            .post(self.url("/core/v5/orders"))
            .basic_auth("sk_test_sim", Some(""))
            .header("Idempotency-Key", idempotency_key)
            .json(&pagarme_body(code, card_id))
            .send()
            .await
    }

    async fn pagarme_find_raw(&self, code: &str) -> Response {
        self.http
            .get(self.url("/core/v5/orders"))
            .basic_auth("sk_test_sim", Some(""))
            .query(&[("code", code)])
            .send()
            .await
            .unwrap()
    }

    async fn pagarme_find(&self, code: &str) -> Vec<Value> {
        let r = self.pagarme_find_raw(code).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["data"].as_array().unwrap().clone()
    }

    async fn appmax_create(&self, reference: &str) -> Value {
        let r = self
            .http
            .post(self.url("/api/v3/order"))
            .header("access-token", "tok_merchant")
            .json(&json!({ "reference": reference, "subscription_id": "sub_1", "amount_cents": AMOUNT }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    async fn appmax_charge_with(
        &self,
        client: &Client,
        order_id: u64,
        token: &str,
    ) -> reqwest::Result<Response> {
        client
            .post(self.url("/api/v3/payment/credit-card"))
            .header("access-token", "tok_merchant")
            .json(&json!({ "order_id": order_id, "token": token, "installments": 1 }))
            .send()
            .await
    }

    async fn appmax_charge(&self, order_id: u64, token: &str) -> Response {
        self.appmax_charge_with(&self.http, order_id, token)
            .await
            .unwrap()
    }

    /// Creates the order for `reference`, returns its id.
    async fn appmax_order(&self, reference: &str) -> u64 {
        self.appmax_create(reference).await["id"].as_u64().unwrap()
    }

    async fn appmax_find_raw(&self, reference: &str) -> Response {
        self.http
            .get(self.url("/api/v3/order"))
            .header("access-token", "tok_merchant")
            .query(&[("reference", reference)])
            .send()
            .await
            .unwrap()
    }

    async fn appmax_find(&self, reference: &str) -> Vec<Value> {
        let r = self.appmax_find_raw(reference).await;
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["data"].as_array().unwrap().clone()
    }

    /// Every ledger row (every charge request), oldest first.
    async fn ledger(&self) -> Vec<Charge> {
        let r = self
            .http
            .get(self.url("/__sim/charges"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// The ledger rows of `key` (`?key=`).
    async fn ledger_of(&self, key: &str) -> Vec<Charge> {
        let r = self
            .http
            .get(self.url("/__sim/charges"))
            .query(&[("key", key)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// The charges made: the rows with `charged`, without the per-request fields.
    async fn charged(&self) -> Vec<Made> {
        self.ledger()
            .await
            .into_iter()
            .filter(|c| c.charged)
            .map(|c| Made {
                provider: c.provider,
                key: c.key,
                card: c.card,
                amount_cents: c.amount_cents,
                status: c.status.expect("a charged row has a status"),
            })
            .collect()
    }
}

/// A charge made, as [`Sim::charged`] lists it.
#[derive(Debug, PartialEq, Eq)]
struct Made {
    provider: Provider,
    key: String,
    card: String,
    amount_cents: i64,
    status: ChargeStatus,
}

fn charge(provider: Provider, key: &str, card: &str, status: ChargeStatus) -> Made {
    Made {
        provider,
        key: key.to_owned(),
        card: card.to_owned(),
        amount_cents: AMOUNT,
        status,
    }
}

/// A full ledger row.
#[allow(clippy::too_many_arguments)]
fn row(
    provider: Provider,
    key: &str,
    card: &str,
    call: u32,
    status: Option<ChargeStatus>,
    answer: &str,
    order_id: Option<&str>,
) -> Charge {
    Charge {
        provider,
        key: key.to_owned(),
        card: card.to_owned(),
        amount_cents: AMOUNT,
        call,
        charged: status.is_some(),
        status,
        answer: answer.to_owned(),
        order_id: order_id.map(str::to_owned),
    }
}

async fn json_of(r: Response) -> Value {
    r.json().await.unwrap()
}

// ---------------------------------------------------------------- Pagar.me

#[tokio::test]
async fn pagarme_ok_is_paid_recorded_and_findable() {
    let sim = start_default().await;
    let k = key("pg-ok");
    let r = sim.pagarme_create(&k, "card_abc_ok").await;
    assert_eq!(r.status(), StatusCode::OK);
    let order = json_of(r).await;
    assert_eq!(order["status"], "paid");
    assert_eq!(order["code"], k.as_str());
    assert_eq!(order["amount"], AMOUNT);
    assert!(order["id"].as_str().unwrap().starts_with("or_"));
    assert_eq!(order["charges"][0]["status"], "paid");
    assert_eq!(
        order["charges"][0]["last_transaction"]["status"],
        "captured"
    );

    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Pagarme,
            &k,
            "card_abc_ok",
            ChargeStatus::Paid
        )]
    );
    let found = sim.pagarme_find(&k).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], order["id"]);
    assert!(sim.pagarme_find(&key("other")).await.is_empty());
}

#[tokio::test]
async fn pagarme_decline_is_failed_with_acquirer_message() {
    let sim = start_default().await;
    let k = key("pg-decline");
    let r = sim.pagarme_create(&k, "card_decline").await;
    assert_eq!(r.status(), StatusCode::OK);
    let order = json_of(r).await;
    assert_eq!(order["status"], "failed");
    assert_eq!(order["charges"][0]["status"], "failed");
    let tx = &order["charges"][0]["last_transaction"];
    assert_eq!(tx["status"], "not_authorized");
    assert_eq!(tx["acquirer_message"], "Insufficient funds");
    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Pagarme,
            &k,
            "card_decline",
            ChargeStatus::Failed
        )]
    );
}

#[tokio::test]
async fn pagarme_500_every_time_and_nothing_charged() {
    let sim = start_default().await;
    let k = key("pg-500");
    for _ in 0..3 {
        let r = sim.pagarme_create(&k, "card_500").await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(json_of(r).await["message"].is_string());
    }
    assert!(sim.charged().await.is_empty());
    assert!(sim.pagarme_find(&k).await.is_empty());
}

#[tokio::test]
async fn pagarme_500once_then_paid() {
    let sim = start_default().await;
    let k = key("pg-500once");
    let r = sim.pagarme_create(&k, "card_500once").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(sim.charged().await.is_empty(), "a 500 is not a charge");

    let r = sim.pagarme_create(&k, "card_500once").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["status"], "paid");
    // A third attempt is a replay: still one charge.
    let r = sim.pagarme_create(&k, "card_500once").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Pagarme,
            &k,
            "card_500once",
            ChargeStatus::Paid
        )]
    );

    // "once" is per key: another key fails first too.
    let r = sim
        .pagarme_create(&key("pg-500once-2"), "card_500once")
        .await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn pagarme_429_with_retry_after_then_paid() {
    let sim = start_default().await;
    let k = key("pg-429");
    let r = sim.pagarme_create(&k, "card_429").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(sim.charged().await.is_empty(), "a 429 is not a charge");

    let r = sim.pagarme_create(&k, "card_429").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("retry-after").is_none());
    assert_eq!(json_of(r).await["status"], "paid");
    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Pagarme,
            &k,
            "card_429",
            ChargeStatus::Paid
        )]
    );
}

#[tokio::test]
async fn pagarme_timeout_records_paid_and_reconciles_by_code() {
    let sim = start(SimConfig {
        timeout_hang: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let impatient = Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let k = key("pg-timeout");
    let err = sim
        .pagarme_create_with(&impatient, &k, &k, "card_timeout")
        .await
        .expect_err("the simulator must answer only after timeout_hang");
    assert!(err.is_timeout(), "{err}");

    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Pagarme,
            &k,
            "card_timeout",
            ChargeStatus::Paid
        )]
    );
    let found = sim.pagarme_find(&k).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["status"], "paid");

    // A replay does not hang (well under the 300 ms hang) and does not charge again.
    let started = Instant::now();
    let r = sim.pagarme_create(&k, "card_timeout").await;
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(json_of(r).await["id"], found[0]["id"]);
    assert_eq!(sim.charged().await.len(), 1);

    // With a patient client the first answer arrives after the hang.
    let k2 = key("pg-timeout-2");
    let started = Instant::now();
    let r = sim.pagarme_create(&k2, "card_timeout").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(json_of(r).await["status"], "paid");
}

#[tokio::test]
async fn pagarme_slow_is_paid_after_200ms() {
    let sim = start_default().await;
    let k = key("pg-slow");
    let started = Instant::now();
    let r = sim.pagarme_create(&k, "card_slow").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(json_of(r).await["status"], "paid");
    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Pagarme,
            &k,
            "card_slow",
            ChargeStatus::Paid
        )]
    );
}

#[tokio::test]
async fn pagarme_replay_by_key_or_code_returns_first_order_and_charges_once() {
    let sim = start_default().await;
    let k = key("pg-replay");
    let first = json_of(sim.pagarme_create(&k, "card_ok").await).await;
    // Same key, even with a card that would decline: the first order, unchanged.
    let again = json_of(sim.pagarme_create(&k, "card_decline").await).await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["status"], "paid");
    // Same code under another Idempotency-Key: still the first order.
    let by_code = sim
        .pagarme_create_with(&sim.http, "another-header-key", &k, "card_ok")
        .await
        .unwrap();
    assert_eq!(json_of(by_code).await["id"], first["id"]);
    // A concurrent burst of replays.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, url, k) = (sim.http.clone(), sim.url("/core/v5/orders"), k.clone());
        burst.spawn(async move {
            let r = http
                .post(url)
                .basic_auth("sk_test_sim", Some(""))
                .header("Idempotency-Key", &k)
                .json(&pagarme_body(&k, "card_ok"))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        });
    }
    while let Some(order) = burst.join_next().await {
        assert_eq!(order.unwrap()["id"], first["id"]);
    }
    assert_eq!(
        sim.charged().await,
        vec![charge(Provider::Pagarme, &k, "card_ok", ChargeStatus::Paid)]
    );
    assert_eq!(sim.pagarme_find(&k).await.len(), 1);
}

#[tokio::test]
async fn pagarme_requires_basic_auth() {
    let sim = start_default().await;
    let k = key("pg-auth");
    let r = sim
        .http
        .post(sim.url("/core/v5/orders"))
        .header("Idempotency-Key", &k)
        .json(&pagarme_body(&k, "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = sim
        .http
        .post(sim.url("/core/v5/orders"))
        .bearer_auth("sk_test")
        .json(&pagarme_body(&k, "card_ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = sim
        .http
        .get(sim.url("/core/v5/orders"))
        .query(&[("code", &k)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(sim.charged().await.is_empty());
}

#[tokio::test]
async fn pagarme_unknown_suffix_is_400_naming_the_known_ones() {
    let sim = start_default().await;
    let k = key("pg-unknown");
    let r = sim.pagarme_create(&k, "card_mystery").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let message = json_of(r).await["message"].as_str().unwrap().to_owned();
    assert!(message.contains("card_mystery"), "{message}");
    for (suffix, _) in KNOWN_SUFFIXES {
        assert!(message.contains(suffix), "{message} lacks {suffix}");
    }
    for modifier in MODIFIERS {
        assert!(message.contains(modifier), "{message} lacks {modifier}");
    }
    assert!(sim.charged().await.is_empty());
    assert_eq!(
        sim.ledger().await,
        vec![row(
            Provider::Pagarme,
            &k,
            "card_mystery",
            1,
            None,
            "400",
            None
        )]
    );
    // Malformed JSON is a 422 with Pagar.me's error shape.
    let r = sim
        .http
        .post(sim.url("/core/v5/orders"))
        .basic_auth("sk", Some(""))
        .header("Idempotency-Key", &k)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = json_of(r).await;
    assert!(body["message"].is_string() && body["errors"].is_object());
}

// ---------------------------------------------------------------- Appmax

#[tokio::test]
async fn appmax_order_is_unique_by_reference() {
    let sim = start_default().await;
    let k = key("ax-order");
    let a = sim.appmax_create(&k).await;
    assert_eq!(a["status"], "pending");
    assert_eq!(a["reference"], k.as_str());
    let b = sim.appmax_create(&k).await;
    assert_eq!(a["id"], b["id"]);
    let other = sim.appmax_create(&key("ax-order-2")).await;
    assert_ne!(other["id"], a["id"]);
    let found = sim.appmax_find(&k).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], a["id"]);
    assert!(
        sim.charged().await.is_empty(),
        "creating an order charges nothing"
    );
}

#[tokio::test]
async fn appmax_ok_is_approved_and_findable() {
    let sim = start_default().await;
    let k = key("ax-ok");
    let id = sim.appmax_order(&k).await;
    let r = sim.appmax_charge(id, "tok_ok").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = json_of(r).await;
    assert_eq!(body["order_id"], id);
    assert_eq!(body["status"], "approved");
    assert_eq!(
        sim.charged().await,
        vec![charge(Provider::Appmax, &k, "tok_ok", ChargeStatus::Paid)]
    );
    let found = sim.appmax_find(&k).await;
    assert_eq!(found[0]["status"], "approved");
    // Creating the order again answers the existing, approved one.
    assert_eq!(sim.appmax_create(&k).await["status"], "approved");
}

#[tokio::test]
async fn appmax_decline_is_declined_with_message() {
    let sim = start_default().await;
    let k = key("ax-decline");
    let id = sim.appmax_order(&k).await;
    let body = json_of(sim.appmax_charge(id, "tok_decline").await).await;
    assert_eq!(body["status"], "declined");
    assert_eq!(body["message"], "Insufficient funds");
    let found = sim.appmax_find(&k).await;
    assert_eq!(found[0]["status"], "declined");
    assert_eq!(found[0]["message"], "Insufficient funds");
    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Appmax,
            &k,
            "tok_decline",
            ChargeStatus::Failed
        )]
    );
}

#[tokio::test]
async fn appmax_500_every_time_and_nothing_charged() {
    let sim = start_default().await;
    let k = key("ax-500");
    let id = sim.appmax_order(&k).await;
    for _ in 0..3 {
        let r = sim.appmax_charge(id, "tok_500").await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert!(sim.charged().await.is_empty());
    assert_eq!(sim.appmax_find(&k).await[0]["status"], "pending");
}

#[tokio::test]
async fn appmax_500once_then_approved() {
    let sim = start_default().await;
    let k = key("ax-500once");
    let id = sim.appmax_order(&k).await;
    let r = sim.appmax_charge(id, "tok_500once").await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(sim.charged().await.is_empty());
    let r = sim.appmax_charge(id, "tok_500once").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["status"], "approved");
    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Appmax,
            &k,
            "tok_500once",
            ChargeStatus::Paid
        )]
    );
}

#[tokio::test]
async fn appmax_429_with_retry_after_then_approved() {
    let sim = start_default().await;
    let k = key("ax-429");
    let id = sim.appmax_order(&k).await;
    let r = sim.appmax_charge(id, "tok_429").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(sim.charged().await.is_empty());
    let r = sim.appmax_charge(id, "tok_429").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["status"], "approved");
    assert_eq!(sim.charged().await.len(), 1);
}

#[tokio::test]
async fn appmax_timeout_records_approved_and_reconciles_by_reference() {
    let sim = start(SimConfig {
        timeout_hang: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let impatient = Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let k = key("ax-timeout");
    let id = sim.appmax_order(&k).await;
    let err = sim
        .appmax_charge_with(&impatient, id, "tok_timeout")
        .await
        .expect_err("the simulator must answer only after timeout_hang");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Appmax,
            &k,
            "tok_timeout",
            ChargeStatus::Paid
        )]
    );
    let found = sim.appmax_find(&k).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["status"], "approved");
    // Charging the decided order again answers at once and charges nothing.
    let started = Instant::now();
    let r = sim.appmax_charge(id, "tok_timeout").await;
    assert!(started.elapsed() < Duration::from_millis(250));
    assert_eq!(json_of(r).await["status"], "approved");
    assert_eq!(sim.charged().await.len(), 1);
}

#[tokio::test]
async fn appmax_slow_is_approved_after_200ms() {
    let sim = start_default().await;
    let id = sim.appmax_order(&key("ax-slow")).await;
    let started = Instant::now();
    let body = json_of(sim.appmax_charge(id, "tok_slow").await).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(body["status"], "approved");
    assert_eq!(sim.charged().await.len(), 1);
}

#[tokio::test]
async fn appmax_recharge_of_decided_reference_charges_once() {
    let sim = start_default().await;
    let k = key("ax-replay");
    let id = sim.appmax_order(&k).await;
    assert_eq!(
        json_of(sim.appmax_charge(id, "tok_ok").await).await["status"],
        "approved"
    );
    // A worker that lost the answer creates the order again (same reference) and charges.
    let id2 = sim.appmax_order(&k).await;
    assert_eq!(id2, id);
    let body = json_of(sim.appmax_charge(id2, "tok_decline").await).await;
    assert_eq!(body["status"], "approved");
    assert_eq!(
        sim.charged().await,
        vec![charge(Provider::Appmax, &k, "tok_ok", ChargeStatus::Paid)]
    );
}

#[tokio::test]
async fn appmax_requires_access_token() {
    let sim = start_default().await;
    let k = key("ax-auth");
    let r = sim
        .http
        .post(sim.url("/api/v3/order"))
        .json(&json!({ "reference": k, "subscription_id": "sub_1", "amount_cents": AMOUNT }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(json_of(r).await["message"].is_string());

    let id = sim.appmax_order(&k).await;
    let r = sim
        .http
        .post(sim.url("/api/v3/payment/credit-card"))
        .json(&json!({ "order_id": id, "token": "tok_ok", "installments": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = sim
        .http
        .get(sim.url("/api/v3/order"))
        .query(&[("reference", &k)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(sim.charged().await.is_empty());
    assert_eq!(sim.appmax_find(&k).await[0]["status"], "pending");
}

#[tokio::test]
async fn appmax_unknown_suffix_and_unknown_order() {
    let sim = start_default().await;
    let id = sim.appmax_order(&key("ax-unknown")).await;
    let r = sim.appmax_charge(id, "tok_whatever").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let message = json_of(r).await["message"].as_str().unwrap().to_owned();
    for (suffix, _) in KNOWN_SUFFIXES {
        assert!(message.contains(suffix), "{message} lacks {suffix}");
    }
    let r = sim.appmax_charge(id + 1000, "tok_ok").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(sim.charged().await.is_empty());
}

// ---------------------------------------------------------------- ledger, health, latency

#[tokio::test]
async fn delete_resets_ledger_orders_and_once_state() {
    let sim = start_default().await;
    let pk = key("reset-pg");
    let ak = key("reset-ax");
    assert_eq!(
        sim.pagarme_create(&pk, "card_500once").await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        sim.pagarme_create(&pk, "card_500once").await.status(),
        StatusCode::OK
    );
    let id = sim.appmax_order(&ak).await;
    assert_eq!(
        sim.appmax_charge(id, "tok_ok").await.status(),
        StatusCode::OK
    );
    assert_eq!(sim.charged().await.len(), 2);

    let r = sim
        .http
        .delete(sim.url("/__sim/charges"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(sim.charged().await.is_empty());
    assert!(sim.pagarme_find(&pk).await.is_empty());
    assert!(sim.appmax_find(&ak).await.is_empty());
    // Per-key state is gone: the "first attempt" fails again, and the old order id is unknown.
    assert_eq!(
        sim.pagarme_create(&pk, "card_500once").await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        sim.appmax_charge(id, "tok_ok").await.status(),
        StatusCode::NOT_FOUND
    );
    // A new order after the reset never reuses an old id.
    assert_ne!(sim.appmax_order(&ak).await, id);
}

#[tokio::test]
async fn ledger_is_the_documented_json() {
    let sim = start_default().await;
    let k = key("ledger");
    let order = json_of(sim.pagarme_create(&k, "card_decline").await).await;
    let id = order["id"].as_str().unwrap();
    sim.pagarme_create(&k, "card_decline").await;
    let k500 = key("ledger-500");
    sim.pagarme_create(&k500, "card_500").await;
    let ka = key("ledger-ax");
    let oid = sim.appmax_order(&ka).await;
    sim.appmax_charge(oid, "tok_ok").await;
    let raw: Value = sim
        .http
        .get(sim.url("/__sim/charges"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw,
        json!([
            { "provider": "pagarme", "key": k, "card": "card_decline", "amount_cents": AMOUNT,
              "call": 1, "charged": true, "status": "failed", "answer": "200", "order_id": id },
            { "provider": "pagarme", "key": k, "card": "card_decline", "amount_cents": AMOUNT,
              "call": 2, "charged": false, "status": null, "answer": "200", "order_id": id },
            { "provider": "pagarme", "key": k500, "card": "card_500", "amount_cents": AMOUNT,
              "call": 1, "charged": false, "status": null, "answer": "500", "order_id": null },
            { "provider": "appmax", "key": ka, "card": "tok_ok", "amount_cents": AMOUNT,
              "call": 1, "charged": true, "status": "paid", "answer": "200",
              "order_id": oid.to_string() },
        ])
    );
}

#[tokio::test]
async fn ledger_rows_every_request_and_filters_by_key() {
    let sim = start_default().await;
    let k = key("rows-pg");
    assert_eq!(
        sim.pagarme_create(&k, "card_429").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let order = json_of(sim.pagarme_create(&k, "card_429").await).await;
    let id = order["id"].as_str().unwrap();
    sim.pagarme_create(&k, "card_429").await;
    let ka = key("rows-ax");
    let oid = sim.appmax_order(&ka).await;
    let o = oid.to_string();
    for _ in 0..3 {
        sim.appmax_charge(oid, "tok_500once").await;
    }
    let p = Provider::Pagarme;
    let a = Provider::Appmax;
    let paid = Some(ChargeStatus::Paid);
    assert_eq!(
        sim.ledger_of(&k).await,
        vec![
            row(p, &k, "card_429", 1, None, "429", None),
            row(p, &k, "card_429", 2, paid, "200", Some(id)),
            row(p, &k, "card_429", 3, None, "200", Some(id)),
        ]
    );
    assert_eq!(
        sim.ledger_of(&ka).await,
        vec![
            row(a, &ka, "tok_500once", 1, None, "500", Some(&o)),
            row(a, &ka, "tok_500once", 2, paid, "200", Some(&o)),
            row(a, &ka, "tok_500once", 3, None, "200", Some(&o)),
        ]
    );
    assert_eq!(sim.ledger().await.len(), 6);
    assert!(sim.ledger_of("no-such-key").await.is_empty());
    // One charge per key.
    assert_eq!(sim.charged().await.len(), 2);
}

// ---------------------------------------------------------------- modifiers

/// Lets `ms` milliseconds pass.
async fn pass(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test]
async fn pagarme_then502_charges_answers_502_and_replays_normally() {
    let sim = start_default().await;
    let k = key("pg-then502");
    let card = "card_ab12_then502_ok";
    let r = sim.pagarme_create(&k, card).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(json_of(r).await["message"].is_string());
    let ledger = sim.ledger().await;
    assert_eq!(ledger.len(), 1);
    assert!(ledger[0].charged);
    assert_eq!(ledger[0].status, Some(ChargeStatus::Paid));
    assert_eq!(ledger[0].answer, "502");
    let id = ledger[0].order_id.clone().unwrap();
    // The order exists and is paid.
    let found = sim.pagarme_find(&k).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], id.as_str());
    assert_eq!(found[0]["status"], "paid");
    // The same key again is a normal replay of that order.
    let r = sim.pagarme_create(&k, card).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["id"], id.as_str());
    assert_eq!(
        sim.ledger_of(&k).await[1],
        row(Provider::Pagarme, &k, card, 2, None, "200", Some(&id))
    );
    assert_eq!(sim.charged().await.len(), 1);

    // Another status and a decline: charged failed, answered 503.
    let k2 = key("pg-then503");
    let r = sim.pagarme_create(&k2, "card_then503_decline").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let rows = sim.ledger_of(&k2).await;
    assert_eq!(
        (rows[0].charged, rows[0].status, rows[0].answer.as_str()),
        (true, Some(ChargeStatus::Failed), "503")
    );
}

#[tokio::test]
async fn appmax_then502_charges_answers_502_and_replays_normally() {
    let sim = start_default().await;
    let k = key("ax-then502");
    let id = sim.appmax_order(&k).await;
    let r = sim.appmax_charge(id, "tok_then502_ok").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(json_of(r).await["message"].is_string());
    assert_eq!(sim.appmax_find(&k).await[0]["status"], "approved");
    // Charging the decided order again (also through a re-created order) replays.
    assert_eq!(sim.appmax_order(&k).await, id);
    let r = sim.appmax_charge(id, "tok_then502_ok").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["status"], "approved");
    let o = id.to_string();
    assert_eq!(
        sim.ledger().await,
        vec![
            row(
                Provider::Appmax,
                &k,
                "tok_then502_ok",
                1,
                Some(ChargeStatus::Paid),
                "502",
                Some(&o)
            ),
            row(
                Provider::Appmax,
                &k,
                "tok_then502_ok",
                2,
                None,
                "200",
                Some(&o)
            ),
        ]
    );
}

/// Asserts that a request failed the way a dropped connection does: not a timeout, not a
/// connect error, and either no response or a body that cannot be read.
async fn assert_reset(result: reqwest::Result<Response>) {
    let err = match result {
        Err(e) => e,
        Ok(r) => {
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.expect_err("the body must break off")
        }
    };
    assert!(!err.is_timeout() && !err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn thenreset_charges_and_breaks_the_answer() {
    let sim = start_default().await;
    let k = key("pg-reset");
    assert_reset(
        sim.pagarme_create_with(&sim.http, &k, &k, "card_thenreset_ok")
            .await,
    )
    .await;
    let rows = sim.ledger().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].charged, rows[0].status, rows[0].answer.as_str()),
        (true, Some(ChargeStatus::Paid), "reset")
    );
    let r = sim.pagarme_create(&k, "card_thenreset_ok").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["status"], "paid");

    let ka = key("ax-reset");
    let id = sim.appmax_order(&ka).await;
    assert_reset(
        sim.appmax_charge_with(&sim.http, id, "tok_thenreset_decline")
            .await,
    )
    .await;
    let rows = sim.ledger_of(&ka).await;
    assert_eq!(
        (rows[0].charged, rows[0].status, rows[0].answer.as_str()),
        (true, Some(ChargeStatus::Failed), "reset")
    );
    let r = sim.appmax_charge(id, "tok_thenreset_decline").await;
    assert_eq!(json_of(r).await["status"], "declined");
    assert_eq!(sim.charged().await.len(), 2);
}

#[tokio::test]
async fn pagarme_pending_settles_after_n() {
    let sim = start_default().await;
    let k = key("pg-pending");
    let order = json_of(sim.pagarme_create(&k, "card_pending300ms_ok").await).await;
    assert_eq!(order["status"], "pending");
    assert_eq!(order["charges"][0]["status"], "pending");
    assert_eq!(sim.pagarme_find(&k).await[0]["status"], "pending");
    assert_eq!(sim.ledger().await[0].status, Some(ChargeStatus::Pending));
    // A replay before it settles: still pending, still one charge.
    let again = json_of(sim.pagarme_create(&k, "card_pending300ms_ok").await).await;
    assert_eq!(
        (again["id"].clone(), again["status"].clone()),
        (order["id"].clone(), json!("pending"))
    );
    pass(350).await;
    assert_eq!(sim.pagarme_find(&k).await[0]["status"], "paid");
    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Pagarme,
            &k,
            "card_pending300ms_ok",
            ChargeStatus::Paid
        )]
    );

    let k2 = key("pg-pending-decline");
    let order = json_of(sim.pagarme_create(&k2, "card_pending300ms_decline").await).await;
    assert_eq!(order["status"], "pending");
    pass(350).await;
    let found = sim.pagarme_find(&k2).await;
    assert_eq!(found[0]["status"], "failed");
    assert_eq!(
        found[0]["charges"][0]["last_transaction"]["acquirer_message"],
        "Insufficient funds"
    );
    assert_eq!(
        sim.ledger_of(&k2).await[0].status,
        Some(ChargeStatus::Failed)
    );
}

#[tokio::test]
async fn appmax_pending_settles_after_n() {
    let sim = start_default().await;
    let k = key("ax-pending");
    let id = sim.appmax_order(&k).await;
    let body = json_of(sim.appmax_charge(id, "tok_pending300ms_decline").await).await;
    assert_eq!(body["status"], "pending");
    assert_eq!(sim.appmax_find(&k).await[0]["status"], "pending");
    assert_eq!(sim.ledger().await[0].status, Some(ChargeStatus::Pending));
    // Charging it again while pending replays: no second charge.
    let body = json_of(sim.appmax_charge(id, "tok_pending300ms_decline").await).await;
    assert_eq!(body["status"], "pending");
    pass(350).await;
    assert_eq!(sim.appmax_find(&k).await[0]["status"], "declined");
    assert_eq!(
        sim.charged().await,
        vec![charge(
            Provider::Appmax,
            &k,
            "tok_pending300ms_decline",
            ChargeStatus::Failed
        )]
    );
    assert_eq!(sim.ledger().await.len(), 2);
}

#[tokio::test]
async fn lag_hides_the_charge_from_lookups_then_shows_it() {
    let sim = start_default().await;
    let k = key("pg-lag");
    let order = json_of(sim.pagarme_create(&k, "card_lag300ms_ok").await).await;
    assert_eq!(order["status"], "paid", "the charge answer is not affected");
    assert!(sim.pagarme_find(&k).await.is_empty());
    assert_eq!(sim.charged().await.len(), 1);
    pass(350).await;
    let found = sim.pagarme_find(&k).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], order["id"]);

    let ka = key("ax-lag");
    let id = sim.appmax_order(&ka).await;
    let body = json_of(sim.appmax_charge(id, "tok_lag300ms_ok").await).await;
    assert_eq!(body["status"], "approved");
    assert_eq!(sim.appmax_find(&ka).await[0]["status"], "pending");
    pass(350).await;
    assert_eq!(sim.appmax_find(&ka).await[0]["status"], "approved");
}

#[tokio::test]
async fn then502_with_lag_is_charged_answered_502_and_invisible() {
    let sim = start_default().await;
    let k = key("pg-502-lag");
    let r = sim.pagarme_create(&k, "card_x_then502_lag300ms_ok").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(sim.pagarme_find(&k).await.is_empty());
    assert_eq!(sim.charged().await.len(), 1);
    pass(350).await;
    assert_eq!(sim.pagarme_find(&k).await[0]["status"], "paid");
}

#[tokio::test]
async fn lookuperr_fails_lookups_then_answers() {
    let sim = start_default().await;
    let k = key("pg-lookuperr");
    let order = json_of(sim.pagarme_create(&k, "card_lookuperr300ms_ok").await).await;
    let r = sim.pagarme_find_raw(&k).await;
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(json_of(r).await["message"].is_string());
    // Only that key's lookups fail.
    assert!(sim.pagarme_find(&key("pg-other")).await.is_empty());
    pass(350).await;
    assert_eq!(sim.pagarme_find(&k).await[0]["id"], order["id"]);

    let ka = key("ax-lookuperr");
    let id = sim.appmax_order(&ka).await;
    sim.appmax_charge(id, "tok_lookuperr300ms_ok").await;
    assert_eq!(
        sim.appmax_find_raw(&ka).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    pass(350).await;
    assert_eq!(sim.appmax_find(&ka).await[0]["status"], "approved");
}

#[tokio::test]
async fn pagarme_forget_charges_the_same_key_twice() {
    let sim = start_default().await;
    let k = key("pg-forget");
    let first = json_of(sim.pagarme_create(&k, "card_forget_ok").await).await;
    let second = json_of(sim.pagarme_create(&k, "card_forget_ok").await).await;
    assert_ne!(first["id"], second["id"], "a second order");
    assert_eq!(second["status"], "paid");
    let rows = sim.ledger_of(&k).await;
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r.charged && r.status == Some(ChargeStatus::Paid)));
    assert_eq!((rows[0].call, rows[1].call), (1, 2));
    let found = sim.pagarme_find(&k).await;
    assert_eq!(found.len(), 2);
    assert_eq!(found[0]["id"], second["id"], "newest first");
    assert_eq!(found[1]["id"], first["id"]);
}

#[tokio::test]
async fn appmax_duporder_makes_two_orders_both_chargeable() {
    let sim = start_default().await;
    let k = key("ax-duporder");
    let first = sim.appmax_order(&k).await;
    assert_eq!(
        json_of(sim.appmax_charge(first, "tok_duporder_ok").await).await["status"],
        "approved"
    );
    // The reference is no longer unique: a new order, pending, chargeable.
    let again = sim.appmax_create(&k).await;
    let second = again["id"].as_u64().unwrap();
    assert_ne!(second, first);
    assert_eq!(again["status"], "pending");
    assert_eq!(
        json_of(sim.appmax_charge(second, "tok_duporder_ok").await).await["status"],
        "approved"
    );
    let found = sim.appmax_find(&k).await;
    let ids: Vec<u64> = found.iter().map(|o| o["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![second, first], "every order, newest first");
    let rows = sim.ledger_of(&k).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.charged));
    assert_eq!(
        rows.iter()
            .map(|r| r.order_id.clone().unwrap())
            .collect::<Vec<_>>(),
        vec![first.to_string(), second.to_string()]
    );
}

#[tokio::test]
async fn healthz_and_latency() {
    let sim = start(SimConfig {
        latency: Duration::from_millis(150),
        ..SimConfig::default()
    })
    .await;
    let started = Instant::now();
    let r = sim.http.get(sim.url("/healthz")).send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok");

    let started = Instant::now();
    let r = sim.pagarme_create(&key("latency"), "card_slow").await;
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "latency + slow"
    );
    assert_eq!(r.status(), StatusCode::OK);
}
