//! Properties of the ingest request parser ([`parse_one`], [`parse_batch`]): whatever the
//! task in the path, the query, the `Idempotency-Key`, `X-Tenant` and `X-Job-Id` headers and
//! the body (or batch) a client sends, nothing panics; every job accepted is within
//! [`warren_core::limits`], routed by the topology, and carries a payload its task accepts;
//! every refusal is a 4xx with the JSON error body the API documents, naming the field.
//!
//! Each property runs 256 cases, or `PROPTEST_CASES`.

use super::*;
use proptest::prelude::*;
use serde_json::Value;
use warren_core::config::FileConfig;

fn topology() -> Topology {
    Topology::new("wt-props", &FileConfig::default()).unwrap()
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        4 => prop::sample::select(vec![
            "demo.noop", "demo.sleep", "demo.fail", "renewal.pagarme", "renewal.appmax",
            "cron.prune-job-runs", "email.send",
        ])
        .prop_map(str::to_owned),
        2 => "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f} a-zé.]{0,12}",
        1 => (250usize..262).prop_map(|n| "a".repeat(n)),
        1 => (120usize..132).prop_map(|n| "é".repeat(n)),
        1 => (1000usize..20_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        hostile_text().prop_map(Value::String),
        prop::sample::select(vec![
            "retryable",
            "permanent",
            "0190c8a4-0000-7000-8000-000000000000",
            "2026-01-01T00:00:00Z",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "ms",
                        "mode",
                        "until",
                        "subscription_id",
                        "period_end",
                        "x"
                    ])
                    .prop_map(str::to_owned),
                    hostile_text(),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value wrapped in `levels` arrays.
fn nested(v: Value, levels: usize) -> Value {
    (0..levels).fold(v, |v, _| Value::Array(vec![v]))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => (json_value(), 60usize..70).prop_map(|(v, n)| {
            serde_json::to_vec(&serde_json::json!({ "x": nested(v, n) })).unwrap_or_default()
        }),
        2 => (json_value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            let mut b = serde_json::to_vec(&v).unwrap_or_default();
            if !b.is_empty() {
                let i = at.index(b.len());
                b[i] = byte;
            }
            b
        }),
        1 => (0usize..50_000, prop_oneof![Just(b'['), Just(b'{')]).prop_map(|(n, c)| vec![c; n]),
        1 => prop::collection::vec(any::<u8>(), 0..128),
    ]
}

/// A task and a body it accepts, as a well-behaved client sends them.
fn good_job() -> impl Strategy<Value = (String, Vec<u8>)> {
    let obj = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
    prop_oneof![
        json_value()
            .prop_map(move |v| ("demo.noop".to_owned(), obj(serde_json::json!({ "v": v })))),
        any::<u64>().prop_map(move |ms| (
            "demo.sleep".to_owned(),
            obj(serde_json::json!({ "ms": ms }))
        )),
        prop::sample::select(vec!["retryable", "permanent", "panic"]).prop_map(move |m| (
            "demo.fail".to_owned(),
            obj(serde_json::json!({ "mode": m }))
        )),
        (
            any::<u128>(),
            prop::sample::select(vec!["renewal.pagarme", "renewal.appmax"])
        )
            .prop_map(move |(id, task)| {
                let body = serde_json::json!({
                    "subscription_id": uuid::Uuid::from_u128(id),
                    "period_end": "2026-01-01T00:00:00Z",
                });
                (task.to_owned(), obj(body))
            }),
        json_value().prop_map(move |v| ("cron.prune-job-runs".to_owned(), obj(v))),
    ]
}

/// A task and a body: well-behaved, or anything.
fn job() -> impl Strategy<Value = (String, Vec<u8>)> {
    prop_oneof![good_job(), (hostile_text(), body())]
}

/// Query strings: `delay` and `run_at` in and out of range, both, neither, junk.
fn query() -> impl Strategy<Value = Option<String>> {
    let delay = prop_oneof![
        (-10.0f64..40_000_000.0).prop_map(|d| d.to_string()),
        prop::sample::select(vec!["NaN", "inf", "-0", "1e400", "", "x", "31536000", "0"])
            .prop_map(str::to_owned),
    ];
    let run_at = prop_oneof![
        (-100_000_000i64..100_000_000)
            .prop_map(|s| { (chrono::Utc::now() + chrono::Duration::seconds(s)).to_rfc3339() }),
        prop::sample::select(vec![
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "tomorrow"
        ])
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        6 => Just(None),
        2 => delay.clone().prop_map(|d| Some(format!("delay={d}"))),
        2 => run_at.clone().prop_map(|a| Some(format!("run_at={}", a.replace('+', "%2B")))),
        1 => (delay, run_at).prop_map(|(d, a)| Some(format!("delay={d}&run_at={a}"))),
        1 => "[a-z=&%0-9]{0,20}".prop_map(Some),
    ]
}

/// `Idempotency-Key`, `X-Tenant` and `X-Job-Id`, each absent or any bytes HTTP lets through.
fn header_map() -> impl Strategy<Value = HeaderMap> {
    let value = prop::option::weighted(
        0.4,
        prop_oneof![
            2 => hostile_text().prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 0..300),
            3 => "[ \\t]{0,2}[a-z0-9-]{1,8}[ \\t]{0,2}".prop_map(String::into_bytes),
        ],
    );
    (value.clone(), value.clone(), value).prop_map(|(idem, tenant, id)| {
        let mut h = HeaderMap::new();
        for (name, v) in [
            ("idempotency-key", idem),
            ("x-tenant", tenant),
            ("x-job-id", id),
        ] {
            if let Some(v) = v.and_then(|v| HeaderValue::from_bytes(&v).ok()) {
                h.insert(name, v);
            }
        }
        h
    })
}

/// A batch: an array of items close to valid ones, or any body.
fn batch() -> impl Strategy<Value = Vec<u8>> {
    let item = (
        prop_oneof![6 => good_job(), 1 => (hostile_text(), body())],
        prop::option::weighted(0.3, hostile_text()),
        prop::option::weighted(0.3, hostile_text()),
        prop::option::weighted(0.2, -10.0f64..40_000_000.0),
        prop::option::weighted(0.1, Just("stray")),
    )
        .prop_map(|((task, body), id, key, delay, stray)| {
            let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut v = serde_json::json!({ "task": task, "payload": payload });
            if let Some(id) = id {
                v["id"] = id.into();
            }
            if let Some(k) = key {
                v["idempotency_key"] = k.into();
            }
            if let Some(d) = delay {
                v["delay"] = d.into();
            }
            if let Some(s) = stray {
                v[s] = 1.into();
            }
            v
        });
    prop_oneof![
        4 => prop::collection::vec(item, 0..4)
            .prop_map(|items| serde_json::to_vec(&items).unwrap_or_default()),
        1 => body(),
    ]
}

/// A refusal is a 4xx whose body is `{error, message, path?}` and which names the field:
/// by `path`, or as the whole body, the query or the batch.
fn assert_refusal(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert!(e.status.is_client_error(), "{:?}", e);
    let v: Value = serde_json::from_str(&e.body()).unwrap();
    prop_assert_eq!(&v["error"], e.code);
    prop_assert_eq!(v["message"].as_str(), Some(e.message.as_str()));
    prop_assert!(!e.message.is_empty());
    prop_assert_eq!(v.get("path").and_then(Value::as_str), e.path.as_deref());
    let names_the_field = e.path.is_some()
        || match e.code {
            "malformed_json" => e.message.starts_with("body is not valid JSON"),
            "bad_request" => e.message.starts_with("query parameters"),
            "invalid_payload" => {
                e.message.starts_with("payload") || e.message.starts_with("the batch is empty")
            }
            _ => false,
        };
    prop_assert!(names_the_field, "{:?}", e);
    Ok(())
}

/// An accepted job is within the limits, routed, and carries a payload its task accepts.
fn assert_publishable(topology: &Topology, job: &Job) -> Result<(), TestCaseError> {
    prop_assert!(limits::check_short("task", &job.task).is_ok());
    prop_assert!(topology.routes(&job.task));
    prop_assert!(warren_core::payload::validate(&job.task, &job.body).is_ok());
    prop_assert!(job.opts.check(&job.task).is_ok());
    prop_assert!(Producer::try_envelope(&job.opts).is_ok());
    if let Some(at) = job.run_at {
        let latest = chrono::Utc::now() + chrono::Duration::seconds(MAX_DELAY_SECS);
        prop_assert!(at <= latest, "{}", at);
    }
    Ok(())
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| std::str::from_utf8(v.as_bytes().trim_ascii()).ok())
        .map(str::to_owned)
}

proptest! {
    /// `POST /v1/jobs/{task}` with anything in the path, query, headers and body.
    #[test]
    fn single_requests_become_publishable_jobs_or_named_refusals(
        (task, body) in job(),
        query in query(),
        headers in header_map(),
    ) {
        let topology = topology();
        let uri: axum::http::Uri = match &query {
            Some(q) => format!("/v1/jobs/x?{q}").parse().unwrap_or_else(|_| "/v1/jobs/x".parse().unwrap()),
            None => "/v1/jobs/x".parse().unwrap(),
        };
        let when = Query::<When>::try_from_uri(&uri).map(|Query(w)| w).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("query parameters: {e}"))
        });
        match parse_one(&topology, Ok(task.clone()), when, &headers, Ok(Bytes::from(body.clone()))) {
            Ok((jobs, idem, hash)) => {
                prop_assert_eq!(jobs.len(), 1);
                let job = &jobs[0];
                assert_publishable(&topology, job)?;
                prop_assert_eq!(&job.task, &task);
                prop_assert_eq!(&job.body, &body);
                prop_assert_eq!(idem, header(&headers, "idempotency-key"));
                prop_assert_eq!(job.opts.tenant.clone(), header(&headers, "x-tenant"));
                prop_assert_eq!(job.opts.id.clone(), header(&headers, "x-job-id"));
                prop_assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
            }
            Err(e) => assert_refusal(&e)?,
        }
    }

    /// `POST /v1/jobs` with anything as the batch and headers.
    #[test]
    fn batches_become_publishable_jobs_or_named_refusals(
        headers in header_map(),
        body in batch(),
    ) {
        let topology = topology();
        match parse_batch(&topology, &headers, Ok(Bytes::from(body.clone()))) {
            Ok((jobs, idem, _)) => {
                let items: Vec<Value> = serde_json::from_slice(&body).unwrap();
                prop_assert_eq!(jobs.len(), items.len());
                prop_assert!(!jobs.is_empty());
                for (job, item) in jobs.iter().zip(&items) {
                    assert_publishable(&topology, job)?;
                    prop_assert_eq!(Some(job.task.as_str()), item["task"].as_str());
                    prop_assert_eq!(&job.body, &serde_json::to_vec(&item["payload"]).unwrap());
                    prop_assert_eq!(job.opts.id.as_deref(), item.get("id").and_then(Value::as_str));
                    prop_assert_eq!(job.opts.tenant.clone(), header(&headers, "x-tenant"));
                }
                prop_assert_eq!(idem, header(&headers, "idempotency-key"));
            }
            Err(e) => assert_refusal(&e)?,
        }
    }
}
