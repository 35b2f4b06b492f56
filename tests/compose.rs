//! `docker-compose.yml` cannot run on our machines (no Docker engine), so this test keeps it
//! honest another way: every `warren` subcommand, flag and environment variable it uses must
//! be accepted by the real binary, and every published metrics port must be the port the
//! service's `WARREN_METRICS_ADDR` binds.

use std::collections::BTreeMap;
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn help(subcommand: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([subcommand, "--help"])
        .output()
        .expect("warren runs");
    assert!(
        out.status.success(),
        "`warren {subcommand}` is not a command: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `warren` invocations of a service: its `command` list, or each `warren …` in an
/// `sh -c` string.
fn invocations(service: &Yaml) -> Vec<Vec<String>> {
    let words = |y: &Yaml| -> Vec<String> {
        y.as_vec()
            .map(|v| {
                v.iter()
                    .filter_map(|w| w.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let command = words(&service["command"]);
    if words(&service["entrypoint"]).first().map(String::as_str) == Some("sh") {
        return command
            .iter()
            .flat_map(|script| script.split("&&"))
            .filter_map(|part| {
                let w: Vec<String> = part.split_whitespace().map(str::to_owned).collect();
                (w.first().map(String::as_str) == Some("warren")).then(|| w[1..].to_vec())
            })
            .collect();
    }
    vec![command]
}

#[test]
fn compose_uses_only_real_commands_flags_and_env_vars() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .expect("docker-compose.yml");
    let doc = &YamlLoader::load_from_str(&text).expect("valid YAML")[0];
    let services = doc["services"].as_hash().expect("services");
    let mut checked = 0;
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if svc["image"].as_str() != Some("warren:local") {
            continue;
        }
        let env: BTreeMap<String, String> = svc["environment"]
            .as_hash()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Yaml::String(s) => s.clone(),
                            Yaml::Integer(i) => i.to_string(),
                            other => format!("{other:?}"),
                        };
                        (k.as_str().unwrap().to_owned(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        for args in invocations(svc) {
            let sub = args
                .first()
                .unwrap_or_else(|| panic!("{name}: empty command"));
            let h = help(sub);
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    h.contains(&format!("{flag} ")),
                    "{name}: `warren {sub}` has no {flag}"
                );
            }
            for key in env.keys() {
                assert!(
                    h.contains(&format!("[env: {key}]")) || h.contains(&format!("[env: {key}=")),
                    "{name}: `warren {sub}` reads no env var {key}"
                );
            }
            checked += 1;
        }
        // A published container port that serves metrics must be the one the role binds.
        if let Some(addr) = env.get("WARREN_METRICS_ADDR") {
            let port = addr.rsplit(':').next().unwrap();
            let ports: Vec<String> = svc["ports"]
                .as_vec()
                .map(|v| {
                    v.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                ports.iter().any(|p| p.rsplit(':').next() == Some(port)),
                "{name}: metrics on port {port} but ports {ports:?}"
            );
        }
    }
    assert!(checked >= 4, "only {checked} warren invocations found");
}
