//! The deployment files cannot run on our machines (no Docker engine, no Kubernetes), so
//! these tests keep them honest another way, against the real binary:
//! - `docker-compose.yml` and `deploy/k8s/*.yaml`: every `warren` subcommand, flag and
//!   environment variable they use is accepted; workers get a stop/termination grace above
//!   their drain grace (WARREN_GRACE);
//! - compose: every published and every Prometheus-scraped metrics port is the port the
//!   service's WARREN_METRICS_ADDR binds, and every role serving metrics is scraped;
//! - Kubernetes: probes hit /healthz and /readyz on the metrics port, each KEDA ScaledObject
//!   targets a real Deployment's queue with a value equal to its prefetch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use yaml_rust2::{Yaml, YamlLoader};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

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

fn load(rel: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(rel)).expect(rel);
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: invalid YAML: {e}"))
}

fn words(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|w| w.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        _ => None,
    }
}

/// The `warren` invocations of a container: `entrypoint` (compose) or `command` (k8s)
/// overrides the image's `warren` entrypoint; with `sh -c`, each `warren …` in the script.
fn invocations(entrypoint: &[String], command: &[String]) -> Vec<Vec<String>> {
    if entrypoint.first().map(String::as_str) == Some("sh") {
        return command
            .iter()
            .flat_map(|script| script.split("&&"))
            .filter_map(|part| {
                let w: Vec<String> = part.split_whitespace().map(str::to_owned).collect();
                (w.first().map(String::as_str) == Some("warren")).then(|| w[1..].to_vec())
            })
            .collect();
    }
    assert!(
        entrypoint.is_empty(),
        "unexpected entrypoint {entrypoint:?}"
    );
    vec![command.to_vec()]
}

/// Checks one invocation's subcommand, flags and env vars against `warren SUB --help`;
/// returns the help text.
fn check_invocation<'a>(
    what: &str,
    args: &[String],
    env: impl IntoIterator<Item = &'a String>,
) -> String {
    let sub = args
        .first()
        .unwrap_or_else(|| panic!("{what}: empty command"));
    let h = help(sub);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        assert!(
            h.contains(&format!("{flag} ")),
            "{what}: `warren {sub}` has no {flag}"
        );
    }
    for key in env {
        assert!(
            h.contains(&format!("[env: {key}]")) || h.contains(&format!("[env: {key}=")),
            "{what}: `warren {sub}` reads no env var {key}"
        );
    }
    h
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

/// The drain grace a worker runs with: WARREN_GRACE, else the default its help shows.
fn worker_grace(env: &BTreeMap<String, String>, help: &str) -> Duration {
    let text = env.get("WARREN_GRACE").cloned().unwrap_or_else(|| {
        let after = &help[help.find("[env: WARREN_GRACE").expect("--grace")..];
        let d = &after[after.find("[default: ").expect("grace default") + 10..];
        d[..d.find(']').unwrap()].to_owned()
    });
    humantime::parse_duration(&text).unwrap_or_else(|e| panic!("WARREN_GRACE {text:?}: {e}"))
}

#[test]
fn compose_uses_only_real_commands_flags_env_vars_and_ports() {
    let doc = &load("docker-compose.yml")[0];
    let services = doc["services"].as_hash().expect("services");
    let mut checked = 0;
    // service → metrics port, for every Warren role serving /metrics
    let mut metrics_ports: BTreeMap<String, u16> = BTreeMap::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        assert!(
            svc["container_name"].is_badvalue(),
            "{name}: container_name breaks scaling"
        );
        let replicated = svc["deploy"]["replicas"].as_i64().unwrap_or(1) > 1;
        let ports = words(&svc["ports"]);
        if replicated {
            for p in &ports {
                assert!(
                    !p.contains(':'),
                    "{name} is scaled but publishes fixed host port {p}"
                );
            }
        }
        for vol in words(&svc["volumes"]) {
            if let Some(src) = vol.strip_prefix("./") {
                let src = src.split(':').next().unwrap();
                assert!(
                    Path::new(ROOT).join(src).exists(),
                    "{name}: mounts missing {src}"
                );
            }
        }
        if svc["image"].as_str() != Some("warren:local") {
            continue;
        }
        let env: BTreeMap<String, String> = svc["environment"]
            .as_hash()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.as_str().unwrap().to_owned(), scalar(v).unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        let command = words(&svc["command"]);
        for args in invocations(&words(&svc["entrypoint"]), &command) {
            let h = check_invocation(name, &args, env.keys());
            if args[0] == "worker" {
                let grace = worker_grace(&env, &h);
                let stop = svc["stop_grace_period"]
                    .as_str()
                    .map(|s| humantime::parse_duration(s).unwrap())
                    .unwrap_or(Duration::from_secs(10)); // Docker's default
                assert!(
                    stop > grace,
                    "{name}: stop_grace_period {stop:?} must exceed the drain grace {grace:?}"
                );
            }
            checked += 1;
        }
        if name != "setup" && command.first().map(String::as_str) != Some("provider-sim") {
            for dep in ["rabbitmq", "postgres"] {
                assert_eq!(
                    svc["depends_on"][dep]["condition"].as_str(),
                    Some("service_healthy"),
                    "{name} must wait for a healthy {dep}"
                );
            }
            assert_eq!(
                svc["depends_on"]["setup"]["condition"].as_str(),
                Some("service_completed_successfully"),
                "{name} must wait for migrate + topology"
            );
        }
        // A published container port that serves metrics must be the one the role binds.
        if let Some(addr) = env.get("WARREN_METRICS_ADDR") {
            let port = port_of(addr);
            assert!(
                ports
                    .iter()
                    .any(|p| p.rsplit(':').next() == Some(&port.to_string())),
                "{name}: metrics on port {port} but ports {ports:?}"
            );
            metrics_ports.insert(name.to_owned(), port);
        }
    }
    assert!(checked >= 8, "only {checked} warren invocations found");

    // RabbitMQ serves the Prometheus endpoint only with the plugin enabled.
    let plugins = std::fs::read_to_string(Path::new(ROOT).join("deploy/rabbitmq/enabled_plugins"))
        .expect("deploy/rabbitmq/enabled_plugins");
    assert!(plugins.contains("rabbitmq_prometheus") && plugins.contains("rabbitmq_management"));

    // Every scrape target is a compose service on its metrics port; every role is scraped.
    let prom = &load("deploy/prometheus/prometheus.yml")[0];
    let mut scraped = BTreeSet::new();
    for job in prom["scrape_configs"].as_vec().expect("scrape_configs") {
        let job_name = job["job_name"].as_str().unwrap();
        let mut targets: Vec<(String, u16)> = Vec::new();
        for sd in job["dns_sd_configs"].as_vec().into_iter().flatten() {
            let port = sd["port"].as_i64().expect("dns_sd port") as u16;
            targets.extend(words(&sd["names"]).into_iter().map(|n| (n, port)));
        }
        for sc in job["static_configs"].as_vec().into_iter().flatten() {
            for t in words(&sc["targets"]) {
                let (host, port) = t.rsplit_once(':').expect("host:port");
                targets.push((host.to_owned(), port.parse().unwrap()));
            }
        }
        assert!(!targets.is_empty(), "job {job_name} scrapes nothing");
        for (host, port) in targets {
            assert!(
                !doc["services"][host.as_str()].is_badvalue(),
                "job {job_name}: no compose service {host}"
            );
            if host == "rabbitmq" {
                assert_eq!(port, 15692, "rabbitmq_prometheus listens on 15692");
                assert_eq!(job["metrics_path"].as_str(), Some("/metrics/per-object"));
                continue;
            }
            assert_eq!(
                metrics_ports.get(&host),
                Some(&port),
                "job {job_name} scrapes {host}:{port}; its WARREN_METRICS_ADDR says otherwise"
            );
            scraped.insert(host);
        }
    }
    let unscraped: Vec<_> = metrics_ports
        .keys()
        .filter(|s| !scraped.contains(*s))
        .collect();
    assert!(
        unscraped.is_empty(),
        "roles serving metrics but not scraped: {unscraped:?}"
    );
}

/// Every document of every `deploy/k8s/*.yaml`, with its file name.
fn k8s_docs() -> Vec<(String, Yaml)> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|f| {
            load(&format!("deploy/k8s/{f}"))
                .into_iter()
                .map(move |d| (f.clone(), d))
        })
        .collect()
}

/// `data`/`stringData` of the ConfigMaps and Secrets, by kind and name.
fn k8s_maps(docs: &[(String, Yaml)]) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    let mut maps = BTreeMap::new();
    for (_, d) in docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        if kind != "ConfigMap" && kind != "Secret" {
            continue;
        }
        let name = d["metadata"]["name"].as_str().unwrap().to_owned();
        let mut kv = BTreeMap::new();
        for section in ["data", "stringData"] {
            for (k, v) in d[section].as_hash().into_iter().flatten() {
                kv.insert(k.as_str().unwrap().to_owned(), scalar(v).unwrap());
            }
        }
        maps.insert((kind.to_owned(), name), kv);
    }
    maps
}

#[test]
fn kubernetes_manifests_use_real_flags_env_probes_and_queues() {
    let docs = k8s_docs();
    let maps = k8s_maps(&docs);
    let kustomization = docs
        .iter()
        .find(|(_, d)| d["kind"].as_str() == Some("Kustomization"))
        .expect("kustomization.yaml");
    for r in words(&kustomization.1["resources"]) {
        assert!(
            Path::new(ROOT).join("deploy/k8s").join(&r).exists(),
            "kustomization lists missing {r}"
        );
    }
    // Deployment name → (env, `--queue` values)
    let mut deployments: BTreeMap<String, (BTreeMap<String, String>, Vec<String>)> =
        BTreeMap::new();
    let mut checked = 0;
    for (file, d) in &docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        if kind != "Deployment" && kind != "Job" {
            continue;
        }
        let name = d["metadata"]["name"].as_str().unwrap().to_owned();
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let what = format!("{file}: {kind} {name}");
        let mut env = BTreeMap::new();
        for from in c["envFrom"].as_vec().into_iter().flatten() {
            let (kind, r) = if from["configMapRef"].is_badvalue() {
                ("Secret", &from["secretRef"])
            } else {
                ("ConfigMap", &from["configMapRef"])
            };
            let src = r["name"].as_str().unwrap().to_owned();
            let kv = maps
                .get(&(kind.to_owned(), src.clone()))
                .unwrap_or_else(|| panic!("{what}: envFrom {kind} {src} is defined nowhere"));
            env.extend(kv.clone());
        }
        for e in c["env"].as_vec().into_iter().flatten() {
            let key = e["name"].as_str().unwrap().to_owned();
            let value = match scalar(&e["value"]) {
                Some(v) => v,
                None => {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    let (secret, k) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
                    maps.get(&("Secret".into(), secret.into()))
                        .and_then(|kv| kv.get(k))
                        .unwrap_or_else(|| panic!("{what}: {key} from missing secret {secret}/{k}"))
                        .clone()
                }
            };
            env.insert(key, value);
        }
        let mut queues = Vec::new();
        for args in invocations(&words(&c["command"]), &words(&c["args"])) {
            let h = check_invocation(&what, &args, env.keys());
            checked += 1;
            if kind == "Job" {
                continue;
            }
            // Long-running role: probes on its metrics port.
            let port = port_of(env.get("WARREN_METRICS_ADDR").expect("WARREN_METRICS_ADDR"));
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"].as_str(), Some(path), "{what}: {probe} path");
                let probe_port = match &get["port"] {
                    Yaml::Integer(p) => *p,
                    Yaml::String(named) => c["ports"]
                        .as_vec()
                        .unwrap()
                        .iter()
                        .find(|p| p["name"].as_str() == Some(named))
                        .and_then(|p| p["containerPort"].as_i64())
                        .unwrap_or_else(|| panic!("{what}: no container port {named}")),
                    other => panic!("{what}: {probe} port {other:?}"),
                };
                assert_eq!(probe_port, i64::from(port), "{what}: {probe} port");
            }
            if args[0] == "worker" {
                let grace = worker_grace(&env, &h);
                let term = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
                assert!(
                    Duration::from_secs(term as u64) > grace,
                    "{what}: terminationGracePeriodSeconds {term} must exceed the drain grace {grace:?}"
                );
                queues = args
                    .windows(2)
                    .filter(|w| w[0] == "--queue")
                    .flat_map(|w| w[1].split(',').map(str::to_owned).collect::<Vec<_>>())
                    .collect();
            }
        }
        if kind == "Deployment" {
            deployments.insert(name, (env, queues));
        }
    }
    assert!(checked >= 7, "only {checked} warren invocations found");

    let auths: BTreeSet<&str> = docs
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some("TriggerAuthentication"))
        .map(|(_, d)| {
            for s in d["spec"]["secretTargetRef"].as_vec().unwrap() {
                let (secret, key) = (s["name"].as_str().unwrap(), s["key"].as_str().unwrap());
                assert!(
                    maps.get(&("Secret".into(), secret.into()))
                        .is_some_and(|kv| kv.contains_key(key)),
                    "TriggerAuthentication needs secret {secret}/{key}"
                );
            }
            d["metadata"]["name"].as_str().unwrap()
        })
        .collect();
    let mut scaled = BTreeSet::new();
    for (_, d) in docs
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some("ScaledObject"))
    {
        let target = d["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
        let (env, queues) = deployments
            .get(target)
            .unwrap_or_else(|| panic!("ScaledObject targets unknown Deployment {target}"));
        let ns = env.get("WARREN_NAMESPACE").map_or("warren", String::as_str);
        for t in d["spec"]["triggers"].as_vec().unwrap() {
            assert_eq!(t["type"].as_str(), Some("rabbitmq"));
            let m = &t["metadata"];
            assert_eq!(m["mode"].as_str(), Some("QueueLength"), "{target}");
            let queue = m["queueName"].as_str().unwrap();
            assert!(
                queues.iter().any(|q| format!("{ns}.{q}") == queue),
                "{target} scales on {queue} but consumes {queues:?} in namespace {ns}"
            );
            assert_eq!(
                m["value"].as_str(),
                env.get("WARREN_PREFETCH").map(String::as_str),
                "{target}: KEDA value should be the worker's prefetch"
            );
            let auth = t["authenticationRef"]["name"].as_str().unwrap();
            assert!(
                auths.contains(auth),
                "{target}: no TriggerAuthentication {auth}"
            );
        }
        scaled.insert(target.to_owned());
    }
    for provider in ["warren-worker-pagarme", "warren-worker-appmax"] {
        assert!(scaled.contains(provider), "no ScaledObject for {provider}");
        assert!(
            docs.iter()
                .any(|(_, d)| d["metadata"]["name"].as_str() == Some(provider)
                    && d["kind"].as_str() == Some("Deployment")
                    && d["spec"]["replicas"].is_badvalue()),
            "{provider}: leave `replicas` to KEDA"
        );
    }
}
