//! `warren schemas`: the JSON Schema of every built-in task's payload, generated from the Rust
//! payload types (schemars), one `<task>.json` per task. The checked-in copies live in
//! `schemas/`; `--check` tells when they no longer match the types.

use anyhow::{bail, Context};
use clap::Args;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use warren_core::task;
use warren_workers::maintenance::{Prune, PruneJobRuns};
use warren_workers::renewals::stale::{FailStale, FailStalePayments};
use warren_workers::Task;

#[derive(Args, Debug)]
pub struct SchemasArgs {
    /// Directory of the schema files, one `<task>.json` per built-in task.
    #[arg(long, default_value = "schemas")]
    pub out: PathBuf,
    /// Write nothing: compare the files in --out with the types and exit non-zero naming
    /// every stale, missing or orphaned file (for CI).
    #[arg(long)]
    pub check: bool,
}

/// One built-in task: its name (the routing key), what its payload means, and its schema.
struct Entry {
    task: &'static str,
    description: &'static str,
    schema: fn() -> Value,
}

fn schema_of<T: JsonSchema>() -> Value {
    // Subschemas inline: each file stands alone for any validator, no `$defs` to resolve.
    SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

fn entries() -> Vec<Entry> {
    vec![
        Entry {
            task: task::DEMO_NOOP,
            description: "Payload of the task demo.noop: any JSON object. The job does nothing; \
                operators publish it to check a deployment.",
            schema: schema_of::<task::DemoNoop>,
        },
        Entry {
            task: task::DEMO_SLEEP,
            description: "Payload of the task demo.sleep: the job sleeps for `ms` milliseconds.",
            schema: schema_of::<task::DemoSleep>,
        },
        Entry {
            task: task::DEMO_FAIL,
            description: "Payload of the task demo.fail: the job fails on purpose (retryable, \
                permanent or panic), exercising retries and dead-lettering; with `until`, only \
                before that instant.",
            schema: schema_of::<task::DemoFail>,
        },
        Entry {
            task: task::RENEWAL_PAGARME,
            description: "Payload of the task renewal.pagarme: charge one Pagar.me prepaid \
                subscription for the period that ended at `period_end`. `attempt` is the \
                charge attempt of that period: 1 (the default, may be omitted) for the \
                renewal, 2, 3, ... for dunning attempts. The scheduler publishes it.",
            schema: schema_of::<task::RenewalPayload>,
        },
        Entry {
            task: task::RENEWAL_APPMAX,
            description: "Payload of the task renewal.appmax: charge one Appmax subscription \
                for the period that ended at `period_end`. `attempt` is the charge attempt of \
                that period: 1 (the default, may be omitted) for the renewal, 2, 3, ... for \
                dunning attempts. The scheduler publishes it.",
            schema: schema_of::<task::RenewalPayload>,
        },
        Entry {
            task: FailStalePayments::NAME,
            description: "Payload of the cron task cron.fail-stale-payments: marks pending \
                payment transactions older than `max_age` (and not being charged) as failed.",
            schema: schema_of::<FailStale>,
        },
        Entry {
            task: PruneJobRuns::NAME,
            description: "Payload of the cron task cron.prune-job-runs: deletes finished \
                job_runs rows and cron tick records older than `older_than`, keeping each \
                schedule's latest tick.",
            schema: schema_of::<Prune>,
        },
    ]
}

/// Every built-in task's schema file: `(file name, contents)`, in task-name order. The
/// contents are deterministic (object keys sorted, two-space indent, trailing newline), so
/// files can be compared byte for byte.
pub fn files() -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in entries() {
        let mut schema = (e.schema)();
        let obj = schema
            .as_object_mut()
            .context("schemars produced a non-object root schema")?;
        obj.insert("$id".into(), e.task.into());
        obj.insert("title".into(), e.task.into());
        obj.insert("description".into(), e.description.into());
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"  ");
        Sorted(&schema).serialize(&mut serde_json::Serializer::with_formatter(&mut buf, fmt))?;
        buf.push(b'\n');
        out.push((format!("{}.json", e.task), String::from_utf8(buf)?));
    }
    out.sort();
    Ok(out)
}

/// Serializes a JSON value with every object's keys in sorted order, whatever map type
/// serde_json was built with (`preserve_order` may be switched on by another crate).
struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut map = s.serialize_map(Some(keys.len()))?;
                for k in keys {
                    map.serialize_entry(k, &Sorted(&m[k]))?;
                }
                map.end()
            }
            Value::Array(a) => s.collect_seq(a.iter().map(Sorted)),
            other => other.serialize(s),
        }
    }
}

pub fn run(a: SchemasArgs) -> anyhow::Result<()> {
    let files = files()?;
    if a.check {
        return check(&a.out, &files);
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {:?}", a.out))?;
    for (name, text) in &files {
        let path = a.out.join(name);
        let what = match std::fs::read_to_string(&path) {
            Ok(old) if old == *text => "unchanged",
            Ok(_) => "updated",
            Err(_) => "created",
        };
        if what != "unchanged" {
            std::fs::write(&path, text).with_context(|| format!("cannot write {path:?}"))?;
        }
        println!("{what} {}", path.display());
    }
    Ok(())
}

fn check(dir: &Path, files: &[(String, String)]) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(old) if old == *text => {}
            Ok(_) => stale.push(format!("{}: differs from the Rust types", path.display())),
            Err(_) => stale.push(format!("{}: missing", path.display())),
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut orphans: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !files.iter().any(|(f, _)| f == n))
            .collect();
        orphans.sort();
        for n in orphans {
            stale.push(format!(
                "{}: no built-in task of that name",
                dir.join(n).display()
            ));
        }
    }
    if stale.is_empty() {
        println!(
            "{} schema files in {} are up to date",
            files.len(),
            dir.display()
        );
        return Ok(());
    }
    bail!(
        "{} stale schema file(s):\n  {}\nregenerate with `warren schemas --out {}`",
        stale.len(),
        stale.join("\n  "),
        dir.display()
    )
}
