//! The generated references are committed as they are generated: docs/configuration.md
//! (every flag and environment variable, from the clap definitions) and docs/metrics.md (the
//! metric catalogue) must equal what `warren reference config|metrics` prints. Needs no
//! services.

use std::process::Command;

fn check(what: &str, file: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["reference", what])
        .output()
        .expect("warren runs");
    assert!(
        out.status.success(),
        "warren reference {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{file} is out of date with the code (first difference at line {}):\n\
             committed: {:?}\ngenerated: {:?}\n\
             Regenerate it with `scripts/gen-docs.sh` and commit the result.",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end of file>"),
            generated.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn configuration_reference_is_generated() {
    check("config", "docs/configuration.md");
}

#[test]
fn metrics_reference_is_generated() {
    check("metrics", "docs/metrics.md");
}
