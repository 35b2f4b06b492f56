//! The payload JSON Schemas in `schemas/`: they match the Rust types they are generated from
//! (`warren schemas --check`), `--check` names what drifted, and sample payloads are judged
//! the same way by the schema (the `jsonschema` crate, formats checked) and by the worker's
//! decoding of the Rust type (serde).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_warren")
}

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn schemas(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("schemas")
        .args(args)
        .env_remove("WARREN_CONFIG")
        .output()
        .expect("warren runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const TASKS: [&str; 7] = [
    "cron.fail-stale-payments",
    "cron.prune-job-runs",
    "demo.fail",
    "demo.noop",
    "demo.sleep",
    "renewal.appmax",
    "renewal.pagarme",
];

#[test]
fn checked_in_schemas_match_the_rust_types() {
    let dir = schemas_dir();
    let out = schemas(&["--check", "--out", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "schemas/ drifted from the Rust payload types; run `cargo run -- schemas` and commit \
         the result.\n{}",
        text(&out.stderr)
    );
    for task in TASKS {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{task}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(v["$id"], task);
        assert_eq!(v["title"], task);
        assert!(
            v["description"].as_str().is_some_and(|d| d.contains(task)),
            "{task}: description should name the task: {}",
            v["description"]
        );
        assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    }
}

#[test]
fn check_names_stale_missing_and_orphaned_files() {
    let tmp = std::env::temp_dir().join(format!("warren-schemas-{}", uuid::Uuid::new_v4()));
    let out = schemas(&["--out", tmp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = schemas(&["--check", "--out", tmp.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "fresh output is up to date: {}",
        text(&out.stderr)
    );

    // Drift: one schema edited, one removed, one left over from a renamed task.
    let sleep = tmp.join("demo.sleep.json");
    let edited = std::fs::read_to_string(&sleep)
        .unwrap()
        .replace("\"ms\"", "\"millis\"");
    std::fs::write(&sleep, edited).unwrap();
    std::fs::remove_file(tmp.join("renewal.appmax.json")).unwrap();
    std::fs::write(tmp.join("demo.renamed.json"), "{}\n").unwrap();

    let out = schemas(&["--check", "--out", tmp.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "--check must fail on drift");
    assert!(err.contains("3 stale schema file(s)"), "{err}");
    assert!(
        err.contains("demo.sleep.json: differs from the Rust types"),
        "{err}"
    );
    assert!(err.contains("renewal.appmax.json: missing"), "{err}");
    assert!(
        err.contains("demo.renamed.json: no built-in task of that name"),
        "{err}"
    );
    assert!(
        !err.contains("demo.fail.json"),
        "only the stale files are named: {err}"
    );

    // Regenerating repairs the edited and missing files.
    let out = schemas(&["--out", tmp.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("updated") && stdout.contains("demo.sleep.json"),
        "{stdout}"
    );
    assert!(
        stdout.contains("created") && stdout.contains("renewal.appmax.json"),
        "{stdout}"
    );
    std::fs::remove_file(tmp.join("demo.renamed.json")).unwrap();
    let out = schemas(&["--check", "--out", tmp.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&tmp);
}

fn validator(task: &str) -> jsonschema::Validator {
    let path = schemas_dir().join(format!("{task}.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{}: not a valid JSON Schema: {e}", path.display()))
}

/// Whether the worker's decoding accepts the body: the task's Rust payload type through
/// `warren_core::payload::decode`, the decoder the worker uses.
fn serde_accepts(task: &str, body: &[u8]) -> bool {
    use warren_core::payload::decode;
    use warren_core::task::*;
    use warren_workers::maintenance::Prune;
    use warren_workers::renewals::stale::FailStale;
    match task {
        "demo.noop" => decode::<DemoNoop>(body).is_ok(),
        "demo.sleep" => decode::<DemoSleep>(body).is_ok(),
        "demo.fail" => decode::<DemoFail>(body).is_ok(),
        "renewal.pagarme" | "renewal.appmax" => decode::<RenewalPayload>(body).is_ok(),
        "cron.fail-stale-payments" => decode::<FailStale>(body).is_ok(),
        "cron.prune-job-runs" => decode::<Prune>(body).is_ok(),
        other => panic!("no payload type for {other}"),
    }
}

/// The samples `(task, payload, valid)` that the schema or the Rust type judges otherwise.
fn misjudged(samples: &[(&str, Value, bool)]) -> Vec<String> {
    let mut wrong = Vec::new();
    for (task, payload, valid) in samples {
        let by_schema = validator(task).is_valid(payload);
        let by_serde = serde_accepts(task, payload.to_string().as_bytes());
        if by_schema != *valid || by_serde != *valid {
            wrong.push(format!(
                "{task} {payload}: expected valid={valid}, schema says {by_schema}, Rust type says {by_serde}"
            ));
        }
    }
    wrong
}

#[test]
fn samples_are_judged_alike_by_schema_and_rust_type() {
    const SUB: &str = "0196a3c5-6f1e-7c2a-9b1d-2f4e5a6b7c8d";
    const END: &str = "2026-05-01T00:00:00Z";
    // (task, payload, valid)
    let samples: Vec<(&str, Value, bool)> = vec![
        ("demo.noop", json!({}), true),
        ("demo.noop", json!({"hello": "world", "n": [1, 2]}), true),
        ("demo.noop", json!([]), false),
        ("demo.noop", json!("hello"), false),
        ("demo.noop", json!(null), false),
        ("demo.sleep", json!({"ms": 50}), true),
        ("demo.sleep", json!({"ms": 0}), true),
        ("demo.sleep", json!({}), false),
        ("demo.sleep", json!({"ms": -1}), false),
        ("demo.sleep", json!({"ms": "50"}), false),
        ("demo.sleep", json!({"ms": 1.5}), false),
        ("demo.sleep", json!({"ms": 50, "extra": true}), false),
        ("demo.fail", json!({"mode": "permanent"}), true),
        (
            "demo.fail",
            json!({"mode": "retryable", "until": END}),
            true,
        ),
        ("demo.fail", json!({"mode": "panic", "until": null}), true),
        ("demo.fail", json!({"mode": "explode"}), false),
        ("demo.fail", json!({"mode": "Permanent"}), false),
        ("demo.fail", json!({}), false),
        (
            "demo.fail",
            json!({"mode": "retryable", "until": "tomorrow"}),
            false,
        ),
        ("demo.fail", json!({"mode": "permanent", "x": 1}), false),
        (
            "renewal.pagarme",
            json!({"subscription_id": SUB, "period_end": END}),
            true,
        ),
        (
            "renewal.pagarme",
            json!({"subscription_id": SUB, "period_end": END, "attempt": 1}),
            true,
        ),
        (
            "renewal.appmax",
            json!({"subscription_id": SUB, "period_end": "2026-05-01T03:00:00-03:00", "attempt": 3}),
            true,
        ),
        ("renewal.pagarme", json!({"subscription_id": SUB}), false),
        ("renewal.appmax", json!({"period_end": END}), false),
        (
            "renewal.pagarme",
            json!({"subscription_id": "not-a-uuid", "period_end": END}),
            false,
        ),
        (
            "renewal.appmax",
            json!({"subscription_id": SUB, "period_end": "last tuesday"}),
            false,
        ),
        (
            "renewal.pagarme",
            json!({"subscription_id": SUB, "period_end": END, "attempt": 70000}),
            false,
        ),
        (
            "renewal.appmax",
            json!({"subscription_id": SUB, "period_end": END, "attempt": -1}),
            false,
        ),
        (
            "renewal.pagarme",
            json!({"subscription_id": SUB, "period_end": END, "merchant": "m1"}),
            false,
        ),
        ("cron.fail-stale-payments", json!({}), true),
        ("cron.fail-stale-payments", json!({"max_age": "45m"}), true),
        ("cron.fail-stale-payments", json!({"max_age": 2}), false),
        ("cron.fail-stale-payments", json!({"maxAge": "2h"}), false),
        ("cron.prune-job-runs", json!({}), true),
        ("cron.prune-job-runs", json!({"older_than": "30d"}), true),
        ("cron.prune-job-runs", json!({"older_than": null}), false),
        (
            "cron.prune-job-runs",
            json!({"older_than": "30d", "dry_run": true}),
            false,
        ),
    ];
    let wrong = misjudged(&samples);
    assert!(wrong.is_empty(), "disagreements:\n{}", wrong.join("\n"));
    for task in TASKS {
        assert!(
            samples.iter().any(|(t, _, v)| *t == task && *v)
                && samples.iter().any(|(t, _, v)| *t == task && !*v),
            "{task} needs a valid and an invalid sample"
        );
    }
}

/// The one place the schema is stricter than the payload type: `attempt` 0 decodes, but the
/// renewal handler dead-letters it as permanent ("must be 1 or more"), so the schema (which
/// documents what can succeed) rejects it. `attempt` omitted means 1.
#[test]
fn renewal_attempt_defaults_to_one_and_must_be_positive() {
    for task in ["renewal.pagarme", "renewal.appmax"] {
        let v = validator(task);
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(schemas_dir().join(format!("{task}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(schema["properties"]["attempt"]["default"], 1);
        assert_eq!(schema["properties"]["attempt"]["minimum"], 1);
        assert!(!schema["required"]
            .as_array()
            .unwrap()
            .contains(&json!("attempt")));
        let zero = json!({"subscription_id": "0196a3c5-6f1e-7c2a-9b1d-2f4e5a6b7c8d",
                          "period_end": "2026-05-01T00:00:00Z", "attempt": 0});
        assert!(!v.is_valid(&zero));
        assert!(serde_accepts(task, zero.to_string().as_bytes()));
    }
    let p: warren_core::task::RenewalPayload = serde_json::from_value(json!({
        "subscription_id": "0196a3c5-6f1e-7c2a-9b1d-2f4e5a6b7c8d",
        "period_end": "2026-05-01T00:00:00Z"
    }))
    .unwrap();
    assert_eq!(p.attempt, 1);
}

/// Edge cases where JSON Schema and serde's defaults used to part ways, fixed at the source
/// (`warren_core::payload`): integer-valued floats are integers, a UUID is the hyphenated
/// form only, a date-time is strict RFC 3339, a struct payload is a JSON object.
#[test]
fn edge_cases_are_judged_alike_by_schema_and_rust_type() {
    const SUB: &str = "0196a3c5-6f1e-7c2a-9b1d-2f4e5a6b7c8d";
    const END: &str = "2026-05-01T00:00:00Z";
    let r = |sub: &str, end: &str| json!({"subscription_id": sub, "period_end": end});
    let attempt = |a: Value| json!({"subscription_id": SUB, "period_end": END, "attempt": a});
    let over_u64: Value = serde_json::from_str(r#"{"ms": 18446744073709551616}"#).unwrap();
    // (task, payload, valid)
    let samples: Vec<(&str, Value, bool)> = vec![
        // Numbers: JSON Schema's `integer` is any number with no fractional part.
        ("demo.sleep", json!({"ms": 50.0}), true),
        ("demo.sleep", json!({"ms": 1e2}), true),
        ("demo.sleep", json!({"ms": -0.0}), true),
        ("demo.sleep", json!({"ms": u64::MAX}), true),
        ("demo.sleep", over_u64, false),
        ("demo.sleep", json!({"ms": -50.0}), false),
        ("demo.sleep", json!({"ms": 50.5}), false),
        ("demo.sleep", json!({"ms": null}), false),
        ("demo.sleep", json!({"ms": true}), false),
        ("demo.sleep", json!({"MS": 50}), false),
        ("renewal.pagarme", attempt(json!(2.0)), true),
        ("renewal.pagarme", attempt(json!(65535)), true),
        ("renewal.pagarme", attempt(json!(65536.0)), false),
        ("renewal.pagarme", attempt(json!(2.5)), false),
        ("renewal.pagarme", attempt(json!("2")), false),
        ("renewal.pagarme", attempt(json!(null)), false),
        // UUIDs: hyphenated, either case; not the simple, braced or URN forms.
        ("renewal.pagarme", r(&SUB.to_uppercase(), END), true),
        (
            "renewal.appmax",
            r("00000000-0000-0000-0000-000000000000", END),
            true,
        ),
        ("renewal.pagarme", r(&SUB.replace('-', ""), END), false),
        ("renewal.pagarme", r(&format!("{{{SUB}}}"), END), false),
        ("renewal.pagarme", r(&format!("urn:uuid:{SUB}"), END), false),
        ("renewal.pagarme", r(&format!(" {SUB}"), END), false),
        (
            "renewal.pagarme",
            r("0196a3c5-6f1e-7c2a-9b1d-2f4e5a6b7c8", END),
            false,
        ),
        (
            "renewal.pagarme",
            r("0196a3c5-6f1e-7c2a-9b1d-2f4e5a6b7c8g", END),
            false,
        ),
        (
            "renewal.pagarme",
            r("0196a3c56f1e-7c2a-9b1d-2f4e-5a6b7c8d", END),
            false,
        ),
        // Date-times: RFC 3339 with an offset.
        ("renewal.pagarme", r(SUB, "2026-05-01t00:00:00z"), true),
        (
            "renewal.pagarme",
            r(SUB, "2026-05-01T00:00:00.123456789Z"),
            true,
        ),
        ("renewal.pagarme", r(SUB, "2026-05-01T03:00:00+03:00"), true),
        ("renewal.pagarme", r(SUB, "2026-06-30T23:59:60Z"), true),
        ("renewal.pagarme", r(SUB, "2026-05-01 00:00:00Z"), false),
        ("renewal.pagarme", r(SUB, "2026-05-01T00:00:00+0300"), false),
        ("renewal.pagarme", r(SUB, "2026-05-01T00:00:00+03"), false),
        ("renewal.pagarme", r(SUB, "2026-05-01T00:00:00"), false),
        ("renewal.pagarme", r(SUB, "2026-05-01"), false),
        ("renewal.pagarme", r(SUB, "2026-02-30T00:00:00Z"), false),
        ("renewal.pagarme", r(SUB, "2026-05-01T24:00:00Z"), false),
        (
            "renewal.pagarme",
            json!({"subscription_id": SUB, "period_end": 1777593600}),
            false,
        ),
        (
            "demo.fail",
            json!({"mode": "permanent", "until": "2030-01-01 00:00:00Z"}),
            false,
        ),
        (
            "demo.fail",
            json!({"mode": "permanent", "until": "2030-01-01"}),
            false,
        ),
        (
            "demo.fail",
            json!({"mode": "permanent", "until": "2030-01-01T00:00:00-03:00"}),
            true,
        ),
        // Types and shapes.
        ("demo.fail", json!({"mode": null}), false),
        ("demo.fail", json!({"mode": ["permanent"]}), false),
        ("cron.fail-stale-payments", json!({"max_age": null}), false),
        ("cron.prune-job-runs", json!(null), false),
        ("demo.noop", json!({"": null}), true),
        // A struct payload is an object: serde alone also takes its fields as an array.
        ("demo.sleep", json!([50]), false),
        ("cron.prune-job-runs", json!([]), false),
        ("cron.fail-stale-payments", json!(["2h"]), false),
        ("demo.fail", json!(["permanent"]), false),
        ("renewal.appmax", json!([SUB, END]), false),
    ];
    let wrong = misjudged(&samples);
    assert!(wrong.is_empty(), "disagreements:\n{}", wrong.join("\n"));
}

/// Refusals name the field and what it should be.
#[test]
fn strict_fields_say_what_they_expect() {
    use warren_core::payload::decode;
    use warren_core::task::{DemoSleep, RenewalPayload};
    let e = decode::<DemoSleep>(br#"{"ms": 1.5}"#).unwrap_err();
    assert_eq!(e.path.as_deref(), Some("ms"));
    assert!(e.message.contains("a whole number from 0 to"), "{e}");
    let e = decode::<RenewalPayload>(
        br#"{"subscription_id": "0196a3c56f1e7c2a9b1d2f4e5a6b7c8d", "period_end": "2026-05-01T00:00:00Z"}"#,
    )
    .unwrap_err();
    assert_eq!(e.path.as_deref(), Some("subscription_id"));
    assert!(e.message.contains("hyphenated form"), "{e}");
    let e = decode::<RenewalPayload>(
        br#"{"subscription_id": "0196a3c5-6f1e-7c2a-9b1d-2f4e5a6b7c8d", "period_end": "2026-05-01 00:00:00Z"}"#,
    )
    .unwrap_err();
    assert_eq!(e.path.as_deref(), Some("period_end"));
    assert!(e.message.contains("RFC 3339"), "{e}");
    let e = decode::<DemoSleep>(b"[50]").unwrap_err();
    assert!(e.message.contains("as a JSON object"), "{e}");
    let e = decode::<DemoSleep>(br#"{"ms": 1, "ms": 2}"#).unwrap_err();
    assert!(e.message.contains("duplicate field `ms`"), "{e}");
}
