//! `warren reference` (hidden): prints the generated references as Markdown, so the docs
//! come from the code that defines them. `config` walks the clap definitions (every flag and
//! environment variable of every command, with defaults and help) into docs/configuration.md;
//! `metrics` renders `warren_core::telemetry::CATALOGUE` into docs/metrics.md.
//! `scripts/gen-docs.sh` writes both files; tests/reference_docs.rs fails when they differ.

use clap::{Arg, ArgAction, Args, Command, CommandFactory, Subcommand};
use std::fmt::Write;
use warren_core::telemetry::{MetricKind, CATALOGUE};

#[derive(Args, Debug)]
pub struct ReferenceArgs {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// docs/configuration.md: every flag and environment variable of every command.
    Config,
    /// docs/metrics.md: every metric in the catalogue.
    Metrics,
}

pub fn run(a: ReferenceArgs) -> anyhow::Result<()> {
    let text = match a.what {
        What::Config => config(),
        What::Metrics => metrics(),
    };
    print!("{text}");
    Ok(())
}

const GENERATED: &str =
    "<!-- Generated from the code by scripts/gen-docs.sh; do not edit by hand. -->\n";

/// The configuration reference, from `Cli::command()`.
pub fn config() -> String {
    let root = super::Cli::command();
    let mut out = String::from(GENERATED);
    out += "# Configuration reference\n\n\
        Every option of the `warren` binary is a flag and an environment variable; the flag \
        wins. `warren <command> --help` prints the same with the defaults. The optional TOML \
        file (`--config`) with queues, delay tiers, providers, dunning and cron schedules is \
        described in [config-file.md](config-file.md).\n\n\
        Read from the environment only: `RUST_LOG` (log filter in tracing `EnvFilter` syntax; \
        default `info,lapin=error,sqlx=warn`) and `HOSTNAME` (shown in the RabbitMQ connection \
        name `warren-<role>@<HOSTNAME>`; default `warren`).\n\n";
    out += "## Global options\n\nAccepted by every command; each command uses those it needs.\n\n";
    table(&mut out, root.get_arguments().filter(|a| a.is_global_set()));
    let root_globals: Vec<&str> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().as_str())
        .collect();
    let mut commands = Vec::new();
    collect(&root, "warren", &mut commands);
    out += "\n## Commands\n\n";
    for (path, cmd) in &commands {
        let about = help_line(cmd.get_about().map(ToString::to_string));
        let anchor = path.replace(' ', "-");
        let _ = writeln!(out, "- [`{path}`](#{anchor}): {about}");
    }
    for (path, cmd) in commands {
        let _ = write!(out, "\n### `{path}`\n\n");
        if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
            let _ = writeln!(out, "{}\n", paragraphs(&about.to_string()));
        }
        // The root's global options are listed once, above; a subcommand's own global
        // options (e.g. `warren dlq --max-scan`) are listed here and apply below it too.
        let own: Vec<&Arg> = cmd
            .get_arguments()
            .filter(|a| !root_globals.contains(&a.get_id().as_str()))
            .filter(|a| !a.is_hide_set() && !is_builtin(a))
            .collect();
        if own.iter().any(|a| a.is_global_set()) {
            let _ = writeln!(
                out,
                "Options of `{path}` apply to each of its subcommands too (`{path} <command> \
                 --flag`).\n"
            );
        }
        if own.is_empty() {
            out += "No options of its own.\n";
        } else {
            table(&mut out, own.into_iter());
        }
    }
    out
}

/// Every visible command below `cmd`, depth first, with its full name.
fn collect(cmd: &Command, path: &str, into: &mut Vec<(String, Command)>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let p = format!("{path} {}", sub.get_name());
        into.push((p.clone(), sub.clone()));
        collect(sub, &p, into);
    }
}

fn is_builtin(a: &Arg) -> bool {
    matches!(a.get_id().as_str(), "help" | "version")
}

fn table<'a>(out: &mut String, args: impl Iterator<Item = &'a Arg>) {
    out.push_str("| Flag | Environment variable | Default | Description |\n|---|---|---|---|\n");
    for a in args.filter(|a| !is_builtin(a)) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            flag(a),
            a.get_env()
                .map(|e| format!("`{}`", e.to_string_lossy()))
                .unwrap_or_default(),
            default(a),
            description(a)
        );
    }
}

fn flag(a: &Arg) -> String {
    match (a.get_long(), a.get_short()) {
        (Some(l), Some(s)) => format!("`--{l}`, `-{s}`"),
        (Some(l), None) => format!("`--{l}`"),
        (None, Some(s)) => format!("`-{s}`"),
        (None, None) => {
            let name = a
                .get_value_names()
                .and_then(|v| v.first())
                .map(|v| v.to_string())
                .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
            format!("`<{name}>`")
        }
    }
}

fn default(a: &Arg) -> String {
    let values: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| format!("`{}`", v.to_string_lossy()))
        .collect();
    if !values.is_empty() {
        return values.join(", ");
    }
    if a.is_required_set() {
        return "required".into();
    }
    if matches!(a.get_action(), ArgAction::SetTrue) {
        return "`false`".into();
    }
    String::new()
}

fn description(a: &Arg) -> String {
    let mut text = help_line(a.get_long_help().or(a.get_help()).map(ToString::to_string));
    // Clap drops a one-line help's final period; the table reads as sentences.
    if !text.is_empty() && !text.ends_with(['.', '!', '?', ']']) {
        text.push('.');
    }
    let values: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    // Booleans taking a value list true/false; that needs no saying.
    if !values.is_empty() && values != ["`true`", "`false`"] {
        let _ = write!(text, " One of: {}.", values.join(", "));
    }
    if matches!(a.get_action(), ArgAction::Append) || a.get_value_delimiter().is_some() {
        text += " Repeatable";
        if let Some(d) = a.get_value_delimiter() {
            let _ = write!(text, "; or separate values with `{d}`");
        }
        text += ".";
    }
    text
}

/// Help text on one table line: paragraphs joined, pipes escaped.
fn help_line(text: Option<String>) -> String {
    let text = text.unwrap_or_default();
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Long help as Markdown paragraphs (blank-line separated), lines re-joined.
fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The metrics reference, from the catalogue.
pub fn metrics() -> String {
    let mut out = String::from(GENERATED);
    out += "# Metrics reference\n\n\
        Served in the Prometheus text format on `/metrics` by `warren worker`, \
        `warren scheduler`, `warren ingest`, `warren relay` and `warren dev` (address: \
        `--metrics-addr` / `WARREN_METRICS_ADDR`, default `0.0.0.0:9477`). A labelled family \
        appears once its first sample is recorded. Every metric is defined once, in \
        `warren_core::telemetry::CATALOGUE`; `tests/contract_snapshot.rs` records which \
        families each role exports in a normal run (`tests/snapshots/metrics.txt`).\n\n\
        Queue depths come from RabbitMQ's own Prometheus plugin (`rabbitmq_prometheus`); the \
        dashboard and alerts built on both are described in [operations.md](operations.md).\n\n\
        | Metric | Type | Labels | Exported by | Meaning |\n|---|---|---|---|---|\n";
    for m in CATALOGUE {
        let labels: Vec<String> = m
            .labels
            .iter()
            .map(|l| format!("`{}`: {}", l.name, l.values))
            .collect();
        let kind = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let meaning = if m.notes.is_empty() {
            format!("{}.", m.help)
        } else {
            format!("{}. {}", m.help, m.notes)
        };
        let _ = writeln!(
            out,
            "| `{}` | {kind} | {} | {} | {} |",
            m.name,
            labels.join("; ").replace('|', "\\|"),
            m.roles,
            meaning.replace('|', "\\|")
        );
    }
    out
}
