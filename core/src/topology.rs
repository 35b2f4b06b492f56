//! The broker topology as data, and the one function that applies it.
//!
//! ```text
//!  publisher ──► <ns>.jobs (topic) ──► <ns>.<queue>            quorum, x-delivery-limit
//!                   ▲                        │ retryable error: republish to a tier
//!                   │                        ▼
//!                   └── TTL expires ── <ns>.delay.<d> (fanout exchange + quorum queue)
//!                                            │ permanent / exhausted / malformed / …
//!  <ns>.<queue>.dlq ◄── <ns>.dlx (direct, key = queue short name) ◄┘
//! ```
//!
//! Every name is prefixed by the namespace (`WARREN_NAMESPACE`) so tests and tenants share a
//! broker without colliding. [`Topology::declare`] is idempotent; it runs at `warren
//! topology`, at every worker (re)connect and in every test.

use crate::config::{ConfigError, FileConfig, DEFAULT_DELIVERY_LIMIT};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use std::fmt::{self, Write as _};
use std::time::Duration;

/// A work queue: what it is called, which tasks it receives, its crash-loop limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkQueue {
    /// Short name (`renewals.pagarme`); the broker name is `<ns>.<short>`.
    pub name: String,
    /// Binding keys on `<ns>.jobs` (topic patterns).
    pub bindings: Vec<String>,
    /// Quorum `x-delivery-limit`.
    pub delivery_limit: u32,
}

impl WorkQueue {
    /// Whether a job with routing key `task` lands in this queue (AMQP topic matching:
    /// `*` is one word, `#` zero or more).
    pub fn receives(&self, task: &str) -> bool {
        any_binding_receives(&self.bindings, task)
    }
}

/// Whether one of the topic patterns `bindings` matches routing key `task`.
fn any_binding_receives(bindings: &[String], task: &str) -> bool {
    let words: Vec<&str> = task.split('.').collect();
    bindings.iter().any(|b| {
        let pattern: Vec<&str> = b.split('.').collect();
        topic_match(&pattern, &words)
    })
}

/// A registered task's own route: the work queue its jobs go to, bound to its name.
///
/// [`Topology::with_tasks`] applies it only when nothing else routes the task: a built-in
/// queue that receives the task must be the one it names, and a config-file binding that
/// receives it wins over it (that is how an operator moves a task to another queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRoute {
    /// Task name, bound as the exact routing key.
    pub task: String,
    /// Short name of the work queue; created with the default delivery limit if no built-in
    /// queue or config-file queue has that name.
    pub queue: String,
}

/// Queue short names use a-z, 0-9, '-', '_' and '.'; `field` names the culprit.
fn check_queue_name(name: &str, field: impl FnOnce() -> String) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: field(),
            message: "queue names use a-z, 0-9, '-', '_' and '.'".into(),
        })
    }
}

fn topic_match(pattern: &[&str], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((&"#", rest)) => (0..=words.len()).any(|i| topic_match(rest, &words[i..])),
        Some((p, rest)) => match words.split_first() {
            Some((w, tail)) if *p == "*" || p == w => topic_match(rest, tail),
            _ => false,
        },
    }
}

/// Work queues every deployment has.
pub fn builtin_queues() -> Vec<WorkQueue> {
    [
        ("default", "demo.#"),
        ("renewals.pagarme", crate::task::RENEWAL_PAGARME),
        ("renewals.appmax", crate::task::RENEWAL_APPMAX),
        ("cron", "cron.#"),
    ]
    .into_iter()
    .map(|(name, key)| WorkQueue {
        name: name.into(),
        bindings: vec![key.into()],
        delivery_limit: DEFAULT_DELIVERY_LIMIT,
    })
    .collect()
}

/// The whole topology of one namespace.
#[derive(Debug, Clone)]
pub struct Topology {
    namespace: String,
    queues: Vec<WorkQueue>,
    tiers: Vec<Duration>,
}

/// Errors while resolving or declaring the topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("unknown queue {name:?}; known queues: {}", known.join(", "))]
    UnknownQueue { name: String, known: Vec<String> },
    #[error(
        "{object} already exists on the broker with different arguments ({reply}); \
         Warren wants {wanted}. Delete it (after draining) or change the config to match"
    )]
    Mismatch {
        object: String,
        reply: String,
        wanted: String,
    },
    #[error("broker error while declaring {object}: {source}")]
    Broker {
        object: String,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "task {task:?} declares queue {declared:?}, but the built-in queue {routed_to:?} \
         receives it; give the task that queue or a name outside the built-in patterns"
    )]
    TaskRoute {
        task: String,
        declared: String,
        routed_to: String,
    },
}

impl TopologyError {
    /// A broker/connection problem (worth retrying), as opposed to a configuration problem.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Broker { .. })
    }
}

/// What a declare found on the broker, for printing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredQueue {
    pub name: String,
    pub role: &'static str,
    pub arguments: String,
    pub bindings: String,
    pub messages: u32,
    pub consumers: u32,
}

/// The result of [`Topology::declare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub exchanges: Vec<(String, &'static str)>,
    pub queues: Vec<DeclaredQueue>,
}

impl fmt::Display for Declared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "exchanges:")?;
        for (name, kind) in &self.exchanges {
            writeln!(f, "  {name:<40} {kind}")?;
        }
        writeln!(f, "queues:")?;
        for q in &self.queues {
            writeln!(
                f,
                "  {:<40} {:<6} messages={:<6} consumers={:<3} {} {}",
                q.name, q.role, q.messages, q.consumers, q.arguments, q.bindings
            )?;
        }
        Ok(())
    }
}

impl Topology {
    /// Built-in queues merged with the config file's queues and tiers.
    pub fn new(namespace: &str, file: &FileConfig) -> Result<Self, TopologyError> {
        Self::with_tasks(namespace, file, &[])
    }

    /// Built-in queues, then the registered tasks' own routes, then the config file's
    /// queues and tiers (which may adjust a task's queue, e.g. its delivery limit).
    ///
    /// A task's route is skipped when a built-in queue already receives the task (it must
    /// then be the queue the task names, else [`TopologyError::TaskRoute`]) or when a
    /// config-file binding receives it; so the built-in tasks add nothing, and the names and
    /// bindings of a deployment without its own tasks are exactly those of [`Topology::new`].
    pub fn with_tasks(
        namespace: &str,
        file: &FileConfig,
        tasks: &[TaskRoute],
    ) -> Result<Self, TopologyError> {
        crate::config::validate_namespace(namespace)?;
        let mut queues = builtin_queues();
        for route in tasks {
            check_queue_name(&route.queue, || format!("task {}: queue", route.task))?;
            if let Some(q) = queues.iter().find(|q| q.receives(&route.task)) {
                if q.name != route.queue {
                    return Err(TopologyError::TaskRoute {
                        task: route.task.clone(),
                        declared: route.queue.clone(),
                        routed_to: q.name.clone(),
                    });
                }
                continue;
            }
            let configured = file
                .queues
                .values()
                .any(|qc| any_binding_receives(&qc.bindings, &route.task));
            if configured {
                continue;
            }
            match queues.iter_mut().find(|q| q.name == route.queue) {
                Some(q) => q.bindings.push(route.task.clone()),
                None => queues.push(WorkQueue {
                    name: route.queue.clone(),
                    bindings: vec![route.task.clone()],
                    delivery_limit: DEFAULT_DELIVERY_LIMIT,
                }),
            }
        }
        for (name, qc) in &file.queues {
            check_queue_name(name, || format!("queues.{name}"))?;
            if qc.delivery_limit == Some(0) {
                return Err(ConfigError::Invalid {
                    field: format!("queues.{name}.delivery_limit"),
                    message: "must be at least 1".into(),
                }
                .into());
            }
            match queues.iter_mut().find(|q| &q.name == name) {
                Some(q) => {
                    q.bindings.extend(qc.bindings.iter().cloned());
                    if let Some(l) = qc.delivery_limit {
                        q.delivery_limit = l;
                    }
                }
                None => {
                    if qc.bindings.is_empty() {
                        return Err(ConfigError::Invalid {
                            field: format!("queues.{name}.bindings"),
                            message: "a new queue needs at least one routing-key pattern".into(),
                        }
                        .into());
                    }
                    queues.push(WorkQueue {
                        name: name.clone(),
                        bindings: qc.bindings.clone(),
                        delivery_limit: qc.delivery_limit.unwrap_or(DEFAULT_DELIVERY_LIMIT),
                    });
                }
            }
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            queues,
            tiers: file.tiers()?,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    pub fn queues(&self) -> &[WorkQueue] {
        &self.queues
    }
    pub fn tiers(&self) -> &[Duration] {
        &self.tiers
    }
    /// The longest delay tier: longer delays wait in the outbox, not on the broker.
    pub fn longest_tier(&self) -> Duration {
        self.tiers.last().copied().unwrap_or_default()
    }
    /// Whether some work queue receives jobs of `task`.
    pub fn routes(&self, task: &str) -> bool {
        self.queues.iter().any(|q| q.receives(task))
    }

    /// The topic exchange every job is published to.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.namespace)
    }
    /// The direct exchange dead letters go through (routing key = queue short name).
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.namespace)
    }
    /// Broker name of a work queue.
    pub fn queue_name(&self, short: &str) -> String {
        format!("{}.{short}", self.namespace)
    }
    /// Broker name of a work queue's dead-letter queue.
    pub fn dlq_name(&self, short: &str) -> String {
        format!("{}.{short}.dlq", self.namespace)
    }
    /// Exchange and queue name of delay tier `i` (the same string for both), in the
    /// largest whole unit: `1s`, `90s`, `2m`, `1h`, `1500ms`.
    pub fn tier_name(&self, i: usize) -> String {
        let d = self.tiers[i.min(self.tiers.len() - 1)];
        let ms = d.as_millis();
        let label = if !ms.is_multiple_of(1000) {
            format!("{ms}ms")
        } else if ms.is_multiple_of(3_600_000) {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            format!("{}m", ms / 60_000)
        } else {
            format!("{}s", ms / 1000)
        };
        format!("{}.delay.{label}", self.namespace)
    }

    /// Resolves a short queue name, or says which ones exist.
    pub fn queue(&self, short: &str) -> Result<&WorkQueue, TopologyError> {
        self.queues
            .iter()
            .find(|q| q.name == short)
            .ok_or_else(|| TopologyError::UnknownQueue {
                name: short.to_owned(),
                known: self.queues.iter().map(|q| q.name.clone()).collect(),
            })
    }

    fn work_queue_args(&self, q: &WorkQueue) -> FieldTable {
        let mut a = quorum_args();
        a.insert("x-delivery-limit".into(), long(q.delivery_limit.into()));
        a.insert(
            "x-dead-letter-exchange".into(),
            text(&self.dead_letter_exchange()),
        );
        a.insert("x-dead-letter-routing-key".into(), text(&q.name));
        at_least_once(&mut a);
        a
    }

    fn tier_args(&self, d: Duration) -> FieldTable {
        let mut a = quorum_args();
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        a.insert("x-message-ttl".into(), long(ms));
        a.insert("x-dead-letter-exchange".into(), text(&self.jobs_exchange()));
        at_least_once(&mut a);
        a
    }

    /// Declares everything (idempotently) and reports what the broker holds.
    ///
    /// A queue that exists with other arguments closes the channel with
    /// `PRECONDITION_FAILED`; that becomes [`TopologyError::Mismatch`] naming the queue.
    pub async fn declare(&self, ch: &Channel) -> Result<Declared, TopologyError> {
        let mut out = Declared {
            exchanges: vec![],
            queues: vec![],
        };
        let exchanges = [
            (self.jobs_exchange(), ExchangeKind::Topic, "topic"),
            (self.dead_letter_exchange(), ExchangeKind::Direct, "direct"),
        ];
        for (name, kind, label) in exchanges {
            declare_exchange(ch, &name, kind, label).await?;
            out.exchanges.push((name, label));
        }
        for (i, d) in self.tiers.iter().enumerate() {
            let name = self.tier_name(i);
            declare_exchange(ch, &name, ExchangeKind::Fanout, "fanout").await?;
            out.exchanges.push((name.clone(), "fanout"));
            let args = self.tier_args(*d);
            let q = declare_queue(ch, &name, &args).await?;
            bind(ch, &name, &name, "").await?;
            out.queues.push(DeclaredQueue {
                name,
                role: "delay",
                arguments: describe(&args),
                bindings: format!("ttl -> {}", self.jobs_exchange()),
                messages: q.message_count(),
                consumers: q.consumer_count(),
            });
        }
        for wq in &self.queues {
            let name = self.queue_name(&wq.name);
            let args = self.work_queue_args(wq);
            let q = declare_queue(ch, &name, &args).await?;
            for key in &wq.bindings {
                bind(ch, &name, &self.jobs_exchange(), key).await?;
            }
            out.queues.push(DeclaredQueue {
                name,
                role: "work",
                arguments: describe(&args),
                bindings: format!("<- {}", wq.bindings.join(" ")),
                messages: q.message_count(),
                consumers: q.consumer_count(),
            });
            let dlq = self.dlq_name(&wq.name);
            let dargs = quorum_args();
            let q = declare_queue(ch, &dlq, &dargs).await?;
            bind(ch, &dlq, &self.dead_letter_exchange(), &wq.name).await?;
            out.queues.push(DeclaredQueue {
                name: dlq,
                role: "dlq",
                arguments: describe(&dargs),
                bindings: format!("<- {} {}", self.dead_letter_exchange(), wq.name),
                messages: q.message_count(),
                consumers: q.consumer_count(),
            });
        }
        Ok(out)
    }
}

impl Topology {
    /// Deletes every queue and exchange of the namespace (tests and benchmarks clean up with
    /// it). Messages in them are lost: never point it at a namespace in use.
    pub async fn delete(&self, ch: &Channel) -> Result<(), lapin::Error> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let mut queues: Vec<String> = (0..self.tiers.len()).map(|i| self.tier_name(i)).collect();
        for q in &self.queues {
            queues.push(self.queue_name(&q.name));
            queues.push(self.dlq_name(&q.name));
        }
        for q in queues {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        let mut exchanges = vec![self.jobs_exchange(), self.dead_letter_exchange()];
        exchanges.extend((0..self.tiers.len()).map(|i| self.tier_name(i)));
        for e in exchanges {
            ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}

fn quorum_args() -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-queue-type".into(), text("quorum"));
    a
}

/// Broker-side dead-lettering that survives a broker crash (RabbitMQ >= 3.10).
fn at_least_once(a: &mut FieldTable) {
    a.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    a.insert("x-overflow".into(), text("reject-publish"));
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.as_bytes().to_vec().into())
}

fn long(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

fn describe(args: &FieldTable) -> String {
    let mut s = String::new();
    for (k, v) in args.inner() {
        let v = match v {
            AMQPValue::LongString(l) => String::from_utf8_lossy(l.as_bytes()).into_owned(),
            AMQPValue::LongLongInt(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        let k = k.as_str().trim_start_matches("x-");
        let _ = write!(s, "{}{k}={v}", if s.is_empty() { "" } else { "," });
    }
    s
}

fn classify(object: String, wanted: String, e: lapin::Error) -> TopologyError {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        if matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
        ) {
            return TopologyError::Mismatch {
                object,
                reply: amqp.get_message().to_string(),
                wanted,
            };
        }
    }
    TopologyError::Broker { object, source: e }
}

async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    label: &str,
) -> Result<(), TopologyError> {
    let wanted = format!("a durable {label} exchange");
    ch.exchange_declare(
        ShortString::from(name),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| classify(format!("exchange {name}"), wanted, e))
}

async fn declare_queue(
    ch: &Channel,
    name: &str,
    args: &FieldTable,
) -> Result<lapin::Queue, TopologyError> {
    ch.queue_declare(
        ShortString::from(name),
        QueueDeclareOptions::durable(),
        args.clone(),
    )
    .await
    .map_err(|e| classify(format!("queue {name}"), describe(args), e))
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), TopologyError> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| TopologyError::Broker {
        object: format!("binding {exchange} -> {queue} ({key})"),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_receive_by_topic_pattern() {
        let q = |b: &[&str]| WorkQueue {
            name: "q".into(),
            bindings: b.iter().map(|s| s.to_string()).collect(),
            delivery_limit: 1,
        };
        assert!(q(&["demo.#"]).receives("demo.noop"));
        assert!(q(&["demo.#"]).receives("demo"));
        assert!(q(&["renewal.pagarme"]).receives("renewal.pagarme"));
        assert!(!q(&["renewal.pagarme"]).receives("renewal.appmax"));
        assert!(q(&["renewal.*"]).receives("renewal.appmax"));
        assert!(!q(&["renewal.*"]).receives("renewal.appmax.x"));
        assert!(q(&["#"]).receives("anything.at.all"));
        assert!(q(&["a.#.z"]).receives("a.b.c.z"));
        assert!(!q(&["cron.#"]).receives("renewal.pagarme"));
    }

    #[test]
    fn names_are_namespaced() {
        let t = Topology::new("wt-x", &FileConfig::default()).unwrap();
        assert_eq!(t.jobs_exchange(), "wt-x.jobs");
        assert_eq!(t.queue_name("renewals.pagarme"), "wt-x.renewals.pagarme");
        assert_eq!(t.dlq_name("cron"), "wt-x.cron.dlq");
        assert_eq!(t.tier_name(0), "wt-x.delay.1s");
        assert_eq!(t.tier_name(3), "wt-x.delay.2m");
        assert_eq!(t.tier_name(99), "wt-x.delay.1h");
        let odd: FileConfig = toml::from_str("[retry]\ntiers=[\"1500ms\",\"90s\",\"2h\"]").unwrap();
        let t = Topology::new("n", &odd).unwrap();
        let names: Vec<String> = (0..3).map(|i| t.tier_name(i)).collect();
        assert_eq!(names, ["n.delay.1500ms", "n.delay.90s", "n.delay.2h"]);
    }

    #[test]
    fn unknown_queue_lists_known_ones() {
        let t = Topology::new("warren", &FileConfig::default()).unwrap();
        let e = t.queue("renewals").unwrap_err().to_string();
        assert!(
            e.contains("default, renewals.pagarme, renewals.appmax, cron"),
            "{e}"
        );
    }

    #[test]
    fn config_adds_and_adjusts_queues() {
        let file: FileConfig = toml::from_str(
            "[queues.default]\ndelivery_limit=2\n[queues.emails]\nbindings=[\"email.#\"]",
        )
        .unwrap();
        let t = Topology::new("warren", &file).unwrap();
        assert_eq!(t.queue("default").unwrap().delivery_limit, 2);
        assert_eq!(t.queue("emails").unwrap().bindings, vec!["email.#"]);
        let bad: FileConfig = toml::from_str("[queues.x]\ndelivery_limit=3").unwrap();
        let e = Topology::new("warren", &bad).unwrap_err().to_string();
        assert!(e.contains("queues.x.bindings"), "{e}");
    }

    fn route(task: &str, queue: &str) -> TaskRoute {
        TaskRoute {
            task: task.into(),
            queue: queue.into(),
        }
    }

    #[test]
    fn task_routes_add_queues_and_bindings_once() {
        let none = FileConfig::default();
        let builtin = Topology::new("warren", &none).unwrap();
        // The built-in tasks' routes change nothing.
        let same = Topology::with_tasks(
            "warren",
            &none,
            &[
                route("demo.noop", "default"),
                route("cron.prune-job-runs", "cron"),
                route("renewal.pagarme", "renewals.pagarme"),
            ],
        )
        .unwrap();
        assert_eq!(same.queues(), builtin.queues());
        let t = Topology::with_tasks(
            "warren",
            &none,
            &[
                route("email.send", "emails"),
                route("email.bounce", "emails"),
                route("pdf.make", "default"),
            ],
        )
        .unwrap();
        assert_eq!(
            t.queue("emails").unwrap().bindings,
            ["email.send", "email.bounce"]
        );
        assert_eq!(t.queue("default").unwrap().bindings, ["demo.#", "pdf.make"]);
        let names: Vec<&str> = t.queues().iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "default",
                "renewals.pagarme",
                "renewals.appmax",
                "cron",
                "emails"
            ]
        );
    }

    #[test]
    fn config_adjusts_or_overrides_task_routes() {
        let file: FileConfig = toml::from_str("[queues.emails]\ndelivery_limit=3").unwrap();
        let t = Topology::with_tasks("warren", &file, &[route("email.send", "emails")]).unwrap();
        assert_eq!(t.queue("emails").unwrap().delivery_limit, 3);
        assert_eq!(t.queue("emails").unwrap().bindings, ["email.send"]);
        let file: FileConfig = toml::from_str("[queues.mail]\nbindings=[\"x.#\"]").unwrap();
        let t = Topology::with_tasks("warren", &file, &[route("x.y", "emails")]).unwrap();
        assert!(t.queue("emails").is_err(), "config binding must win");
        assert!(t.queue("mail").unwrap().receives("x.y"));
    }

    #[test]
    fn task_routes_conflicting_with_builtin_queues_or_bad_names_fail() {
        let none = FileConfig::default();
        let e = Topology::with_tasks("warren", &none, &[route("demo.mine", "mine")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"demo.mine\"") && e.contains("\"default\""),
            "{e}"
        );
        let e = Topology::with_tasks("warren", &none, &[route("a.b", "bad queue")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("task a.b: queue"), "{e}");
    }
}
