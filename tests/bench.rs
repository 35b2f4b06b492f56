//! `warren bench` runs end to end on a small load: the benchmark program of docs/benchmarks.md
//! drains its jobs through both consumers, prints its figures, records the runtime's jobs in
//! the ledger (and, with the diagnostic `--ledger off`, records none), runs on as many
//! threads as `--threads` says, and cleans up after itself. Speed is never asserted here:
//! the figures are for people to read.

mod common;

use common::*;

/// The number after `label` on the line that starts with it, e.g. `ratio : 43.4%` → 43.4.
fn figure(out: &str, label: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{out}"));
    let after = line.split_once(':').expect("label: value").1.trim();
    let number: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("no number in {line:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_drains_both_consumers_and_the_ledger_scope_is_what_it_says() {
    let env = TestEnv::new("").await;

    let full = env.run(&["bench", "--jobs", "300", "--rounds", "1"]);
    let out = stdout(&full);
    assert!(full.status.success(), "bench failed: {}", stderr(&full));
    assert!(figure(&out, "bare lapin consumer :") > 0.0, "{out}");
    assert!(figure(&out, "warren runtime      :") > 0.0, "{out}");
    assert!(figure(&out, "ratio               :") > 0.0, "{out}");
    // Every runtime job was recorded by group commit, and each was checked first.
    assert_eq!(figure(&out, "job ledger          :"), 300.0, "{out}");
    assert!(out.contains(" checks of "), "{out}");
    assert!(!out.contains("DIAGNOSTIC"), "{out}");

    let off = env.run(&[
        "--threads",
        "1",
        "bench",
        "--jobs",
        "300",
        "--rounds",
        "1",
        "--ledger",
        "off",
    ]);
    let out = stdout(&off);
    assert!(off.status.success(), "bench failed: {}", stderr(&off));
    assert!(
        out.contains(", 1 threads, "),
        "--threads not applied: {out}"
    );
    assert!(out.contains("DIAGNOSTIC: --ledger Off"), "{out}");
    assert!(
        out.contains("(DIAGNOSTIC --ledger Off: not the production runtime)"),
        "{out}"
    );
    assert_eq!(figure(&out, "job ledger          :"), 0.0, "{out}");
    assert!(out.contains("no duplicate checks"), "{out}");

    // Each run deleted its rows and its namespace.
    assert_eq!(env.job_rows().await, 0);
    env.cleanup().await;
}
