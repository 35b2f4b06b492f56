//! "Nothing charged twice, nothing lost", as a seeded random property over both providers.
//!
//! Each schedule is drawn from a seed: 3–8 due subscriptions, each with a random provider and
//! card script, a simulator with a random latency, and a random fault plan against the
//! renewal workers — `kill -9` after 0–2 s (once or twice, a replacement between), and/or
//! every PostgreSQL backend of the test database terminated once at a random moment — then a
//! final worker that runs to the end. Once every renewal job has settled (succeeded, or
//! dead-lettered) the schedule asserts:
//!
//! 1. per key, at most one charge request that created a charge (`charged: true`), exactly
//!    one for a key that reached a decision;
//! 2. the money invariant (`common::money::assert_money`): no charge without its
//!    `payment_transactions` row, no paid row without its charge;
//! 3. every subscription in the state its (provider, script) implies (see [`expected`] and
//!    [`fault_may_end_unknown`]);
//! 4. every job succeeded or dead-lettered with a reason (`assert_invariants`);
//! 5. the simulator's `charged: true` rows equal the number of distinct charged keys.
//!
//! Seeds: schedules `WARREN_MONEY_FIRST_SEED` (default 1) onwards, `WARREN_MONEY_SCHEDULES`
//! of them (default [`DEFAULT_SCHEDULES`], sized for CI); `WARREN_MONEY_SEED=<n>` runs just
//! seed n. A failure names its seed and schedule:
//!
//! ```text
//! WARREN_MONEY_SEED=<n> cargo test --test money_property -- --nocapture
//! ```
//!
//! `WARREN_MONEY_KEEP_GOING=1` runs every schedule and fails at the end with all failures
//! (for long batches). The PRNG is a SplitMix64 in this file: no dependency, and a seed's
//! schedule stays the same whatever crate versions the lock file holds.

mod common;

use common::invariants::{assert_invariants, dead_letters};
use common::money::assert_money;
use common::sim::*;
use common::*;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Schedules per run by default, sized so the whole test stays under 3 minutes on the
/// 2-core CI machine: a schedule takes 8–13 s there (15 took 157 s, shared with a build).
const DEFAULT_SCHEDULES: u64 = 14;

/// How long a schedule's renewal jobs may take to settle after the last fault.
const SETTLE: Duration = Duration::from_secs(60);

const T: Duration = Duration::from_secs(30);

/// Longest a schedule may run (a passing one takes 8–16 s; a failing one is bounded by
/// [`SETTLE`] and the harness's own waits well under this).
const SCHEDULE_LIMIT: Duration = Duration::from_secs(240);

/// The card scripts drawn from (`docs/providers.md`, "The simulator"). `forget` is a
/// Pagar.me modifier only.
const SCRIPTS: [&str; 15] = [
    "ok",
    "decline",
    "then502_ok",
    "thenreset_ok",
    "then502_lag2s_ok",
    "lag1s_ok",
    "pending1s_ok",
    "pending1s_decline",
    "lookuperr1s_then502_ok",
    "timeout",
    "429",
    "slow",
    "500once",
    "500",
    "forget_then502_ok",
];

/// Scripts whose charge does not answer a decision the worker can see at once: the charge
/// is answered pending, or with a 5xx while lookups lag or fail, or (`500once`) the first
/// request the provider receives is refused with a 500. When such a charge request is only
/// *sent* late — a repeat under the idempotency key after a worker died between recording
/// its intent and sending it, by which time the lease (3 s) has used up the whole
/// `unknown_outcome_after` (3 s), both counted from that first intent — the outcome is not
/// known by the bound and the job is dead-lettered `unknown-outcome`.
const SLOW_FIRST_ANSWER: [&str; 5] = [
    "pending1s_ok",
    "pending1s_decline",
    "then502_lag2s_ok",
    "lookuperr1s_then502_ok",
    "500once",
];

/// How a subscription's renewal ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// Row `paid`, period advanced once, `ACTIVE`, job succeeded.
    Paid,
    /// Row `failed`, `PAST_DUE` with dunning attempt 1, period kept, job succeeded.
    Declined,
    /// Row `unknown`, period kept, `metadata.unknownChargeKey` set, job dead-lettered
    /// `unknown-outcome`.
    Unknown,
}

/// What a script implies without faults, under the test's `[billing]` settings
/// (`unknown_outcome_after = 3s`, `resend_after = 1s`, `lease = 3s`).
///
/// `can_repeat`: the worker may repeat a charge request the provider's lookups do not show —
/// Pagar.me inside its idempotency window (24 h by default). Appmax never repeats (a pending
/// order may be settling), nor does Pagar.me when the window is configured shorter than
/// `resend_after` (see [`Schedule::short_window`]).
///
/// - `500`: every request answered 500, nothing charged: unknown (Pagar.me repeats under
///   the key until the bound, each repeat a 500).
/// - `500once`: the first request is a 500, nothing charged; Pagar.me repeats after
///   `resend_after` and pays; without a repeat the outcome stays unknown.
/// - `…decline`: declined (also `pending1s_decline`, settled by lookup after 1 s).
/// - the rest pay: `then502`/`thenreset`/`timeout` are looked up at once and found paid;
///   `then502_lag2s` is found after 2 s (Pagar.me: or the repeat after 1 s gets the replay);
///   `lag1s`/`slow`/`429` answer paid (a 429's `Retry-After: 1` waited out in place);
///   `pending1s` settles in 1 s; `lookuperr1s_then502` is found once lookups answer;
///   `forget_then502_ok` is found by lookup at once (and is never repeated: see
///   [`Schedule::short_window`]).
fn expected(script: &str, can_repeat: bool) -> End {
    match script {
        "500" => End::Unknown,
        "500once" if !can_repeat => End::Unknown,
        s if s.ends_with("decline") => End::Declined,
        _ => End::Paid,
    }
}

/// Whether a fault may leave this key `unknown` although its script decides, given how many
/// charges the provider made for it. Both ways are the designed bounded outcome (flagged,
/// dead-lettered for an operator), never a second charge:
///
/// - a worker killed (or its intent's commit acknowledgement lost to a terminated backend)
///   after the intent was recorded and before the request reached the provider: a worker
///   that may not repeat only looks up, finds no charge (Appmax: the order opened, pending)
///   and gives up at the bound — nothing was charged;
/// - a worker that may repeat does so only after the lease ran out, at or past the bound:
///   a script in [`SLOW_FIRST_ANSWER`] then cannot show its decision in time — at most the
///   one charge, which an operator's replay records ([`run_schedule`] replays it).
fn fault_may_end_unknown(script: &str, can_repeat: bool, charged: usize) -> bool {
    if can_repeat {
        SLOW_FIRST_ANSWER.contains(&script) && charged <= 1
    } else {
        charged == 0
    }
}

/// SplitMix64: a tiny, well-mixed PRNG whose sequence depends on the seed alone.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// One subscription of a schedule.
#[derive(Debug, Clone)]
struct Sub {
    provider: &'static str,
    script: &'static str,
}

/// Everything a seed chose.
#[derive(Debug, Clone)]
struct Schedule {
    seed: u64,
    subs: Vec<Sub>,
    /// Simulator latency before every answer.
    latency_ms: u64,
    /// `kill -9` of the running worker, each this long after the publishes (the first) or
    /// after the replacement was ready (the second).
    kills_ms: Vec<u64>,
    /// Every backend of the test database terminated this long after the publishes.
    pg_blip_ms: Option<u64>,
    /// A Pagar.me `forget_then502_ok` card is in the schedule: the simulator forgets its
    /// idempotency key, so a repeated request would charge again. The workers then run with
    /// `[billing] pagarme_idempotency_window = "500ms"`, shorter than `resend_after`: Warren
    /// believes the window has passed (as it has, for that card) and never repeats a request,
    /// for any Pagar.me card of the schedule.
    short_window: bool,
}

impl Schedule {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let n = rng.between(3, 8);
        let subs = (0..n)
            .map(|_| {
                let provider = ["PAGARME", "APPMAX"][rng.below(2) as usize];
                let scripts: Vec<&'static str> = SCRIPTS
                    .iter()
                    .copied()
                    .filter(|s| provider == "PAGARME" || !s.starts_with("forget"))
                    .collect();
                let script = scripts[rng.below(scripts.len() as u64) as usize];
                Sub { provider, script }
            })
            .collect::<Vec<_>>();
        let latency_ms = rng.between(0, 300);
        let kills = match rng.below(10) {
            0..=2 => 0,
            3..=6 => 1,
            _ => 2,
        };
        let kills_ms = (0..kills).map(|_| rng.between(0, 2000)).collect();
        // At least one fault: without a kill, always the PostgreSQL blip.
        let pg_blip_ms = (kills == 0 || rng.below(2) == 0).then(|| rng.between(0, 3000));
        let short_window = subs
            .iter()
            .any(|s| s.provider == "PAGARME" && s.script.starts_with("forget"));
        Self {
            seed,
            subs,
            latency_ms,
            kills_ms,
            pg_blip_ms,
            short_window,
        }
    }

    fn can_repeat(&self, provider: &str) -> bool {
        provider == "PAGARME" && !self.short_window
    }

    fn config(&self) -> String {
        let mut c = format!("[retry]\ntiers = [\"200ms\", \"500ms\", \"1s\"]\n{BILLING}");
        if self.short_window {
            c.push_str("pagarme_idempotency_window = \"500ms\"\n");
        }
        c
    }

    fn faults(&self) -> String {
        let mut f: Vec<String> = self
            .kills_ms
            .iter()
            .map(|ms| format!("kill9@{ms}ms"))
            .collect();
        if let Some(ms) = self.pg_blip_ms {
            f.push(format!("pg-terminate@{ms}ms"));
        }
        f.join(",")
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut mix: BTreeMap<String, usize> = BTreeMap::new();
        for s in &self.subs {
            *mix.entry(format!("{}:{}", s.provider, s.script))
                .or_default() += 1;
        }
        let mix: Vec<String> = mix
            .into_iter()
            .map(|(k, n)| if n > 1 { format!("{k}×{n}") } else { k })
            .collect();
        write!(
            f,
            "seed={} subs=[{}] latency={}ms window={} faults=[{}]",
            self.seed,
            mix.join(" "),
            self.latency_ms,
            if self.short_window { "500ms" } else { "24h" },
            self.faults()
        )
    }
}

/// What a schedule left behind for a failure report.
#[derive(Default)]
struct Trace {
    ns: String,
    logs: Vec<PathBuf>,
    steps: Vec<String>,
}

type Shared = Arc<Mutex<Trace>>;

fn step(trace: &Shared, what: String) {
    trace.lock().unwrap().steps.push(what);
}

/// How a schedule ended, for its summary line.
struct ScheduleSummary {
    ends: BTreeMap<End, usize>,
    /// Keys left unknown by a fault with nothing charged (`provider:script`).
    fault_unknown: Vec<String>,
    /// Keys left unknown by a fault with a charge, recorded by an operator's replay.
    replayed: Vec<String>,
    /// Backends the PostgreSQL blip terminated.
    terminated: Option<usize>,
}

/// A subscription's renewal as the database and the simulator left it.
#[derive(Debug)]
struct State {
    status: String,
    advanced: bool,
    dunning_attempt: i16,
    unknown_key: Option<String>,
    row: Option<String>,
    rows: i64,
    job: Option<String>,
}

async fn state(
    env: &TestEnv,
    sub: Uuid,
    end: chrono::DateTime<chrono::Utc>,
    key: &str,
    job: &str,
) -> State {
    let (status, advanced, dunning_attempt, unknown_key, row, rows): (
        String,
        bool,
        i16,
        Option<String>,
        Option<String>,
        i64,
    ) = sqlx::query_as(
        "SELECT s.status::text, s.current_period_end > $2, s.dunning_attempt,
                s.metadata->>'unknownChargeKey',
                (SELECT status FROM payment_transactions WHERE idempotency_key = $3),
                (SELECT count(*) FROM payment_transactions WHERE subscription_id = s.id)
           FROM customer_subscriptions s WHERE s.id = $1",
    )
    .bind(sub)
    .bind(end)
    .bind(key)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    State {
        status,
        advanced,
        dunning_attempt,
        unknown_key,
        row,
        rows,
        job: env.job(job).await.map(|j| j.status),
    }
}

/// The end a subscription's state shows, or why it shows none.
fn end_of(s: &State, key: &str) -> Result<End, String> {
    let job = s.job.as_deref();
    if s.rows != 1 {
        return Err(format!("{} payment_transactions rows", s.rows));
    }
    match (s.status.as_str(), s.row.as_deref()) {
        ("ACTIVE", Some("paid"))
            if s.advanced && s.dunning_attempt == 0 && job == Some("succeeded") =>
        {
            Ok(End::Paid)
        }
        ("PAST_DUE", Some("failed"))
            if !s.advanced && s.dunning_attempt == 1 && job == Some("succeeded") =>
        {
            Ok(End::Declined)
        }
        ("ACTIVE", Some("unknown"))
            if !s.advanced
                && s.unknown_key.as_deref() == Some(key)
                && job == Some("dead_lettered") =>
        {
            Ok(End::Unknown)
        }
        _ => Err("no consistent end state".into()),
    }
}

/// Waits until every job in `ids` succeeded or was dead-lettered.
async fn settle(env: &TestEnv, ids: &[String]) {
    eventually(SETTLE, "every renewal job settled", || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[]) AS i(id)
               LEFT JOIN job_runs j ON j.job_id = i.id
              WHERE j.status IS NULL OR j.status::text NOT IN ('succeeded', 'dead_lettered')",
        )
        .bind(ids)
        .fetch_one(&env.pool)
        .await
        .unwrap_or(1);
        open == 0
    })
    .await;
}

/// Terminates every backend of the test database but the one asking; returns how many.
async fn terminate_backends(pool: &sqlx::PgPool) -> usize {
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    killed.into_iter().filter(|k| *k).count()
}

async fn run_schedule(plan: Schedule, trace: Shared) -> ScheduleSummary {
    let env = TestEnv::new(&plan.config()).await;
    trace.lock().unwrap().ns = env.ns.clone();
    let sim = simulator(&env, plan.latency_ms).await;
    trace.lock().unwrap().logs.push(sim.proc.log.clone());
    let worker = |trace: &Shared| {
        let w = renewal_worker(&env, &sim, "100");
        trace.lock().unwrap().logs.push(w.log.clone());
        w
    };
    let mut subs = Vec::new();
    for (i, s) in plan.subs.iter().enumerate() {
        let card = format!("card_{i}_{}", s.script);
        let (id, end) = due_subscription(&env, s.provider, &card).await;
        subs.push((s, id, end, format!("money-{}-{i}", plan.seed)));
    }
    let mut victim = worker(&trace);
    victim.wait_ready(T).await;

    let mut keys = Vec::new();
    for (s, id, end, job) in &subs {
        keys.push(publish_renewal(&env, s.provider, *id, *end, job).await);
    }
    let start = Instant::now();
    step(&trace, "published".into());
    let blip = plan.pg_blip_ms.map(|ms| {
        let pool = env.pool.clone();
        let trace = trace.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let n = terminate_backends(&pool).await;
            step(&trace, format!("terminated {n} backends at {ms}ms"));
            n
        })
    });
    for (i, ms) in plan.kills_ms.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*ms)).await;
        victim.kill9();
        step(
            &trace,
            format!(
                "kill -9 #{} at {:?} after the publishes",
                i + 1,
                start.elapsed()
            ),
        );
        victim = worker(&trace);
        if i + 1 < plan.kills_ms.len() {
            victim.wait_ready(T).await;
        }
    }
    let last = victim;
    let terminated = match blip {
        Some(b) => Some(b.await.unwrap()),
        None => None,
    };
    let mut ids: Vec<String> = subs.iter().map(|s| s.3.clone()).collect();
    settle(&env, &ids).await;
    step(&trace, format!("settled after {:?}", start.elapsed()));

    // An operator's replay of each key a fault left unknown although the provider charged
    // it (docs/operations.md: replay once the provider shows the outcome): it must record
    // the charge, and charge nothing more.
    let charges = sim.charges().await;
    let mut replayed = Vec::new();
    let mut replayed_what = Vec::new();
    for ((s, id, end, job), key) in subs.iter().zip(&keys) {
        let st = state(&env, *id, *end, key, job).await;
        let charged = charges.get(key).map_or(0, |c| c.1);
        let want = expected(s.script, plan.can_repeat(s.provider));
        if end_of(&st, key) == Ok(End::Unknown) && want != End::Unknown && charged == 1 {
            let replay = format!("{job}-replay");
            publish_renewal(&env, s.provider, *id, *end, &replay).await;
            step(
                &trace,
                format!(
                    "replayed {job} ({} {}): {key} charged",
                    s.provider, s.script
                ),
            );
            replayed.push(job.clone());
            replayed_what.push(format!("{}:{}", s.provider, s.script));
            ids.push(replay);
        }
    }
    if !replayed.is_empty() {
        settle(&env, &ids).await;
    }

    // (1), (5): at most one charge per key; as many charges as charged keys.
    let charges = sim.charges().await;
    for (key, (status, n)) in &charges {
        assert!(*n <= 1, "{key} charged {n} times (last {status})");
    }
    let total: usize = charges.values().map(|c| c.1).sum();
    assert_eq!(
        total,
        charges.len(),
        "charged:true rows vs charged keys: {charges:?}"
    );
    assert!(
        charges.keys().all(|k| keys.contains(k)),
        "a charge for a key no subscription has: {charges:?}"
    );

    // (3): every subscription in the state its script implies.
    let dead = dead_letters(&env).await;
    let mut ends: BTreeMap<End, usize> = BTreeMap::new();
    let mut fault_unknown = Vec::new();
    for ((s, id, end, job), key) in subs.iter().zip(&keys) {
        let can_repeat = plan.can_repeat(s.provider);
        let want = expected(s.script, can_repeat);
        let charged = charges.get(key).map_or(0, |c| c.1);
        let was_replayed = replayed.contains(job);
        // A replayed key's decision is its replay's job; the original stays dead-lettered.
        let decided_by = if was_replayed {
            format!("{job}-replay")
        } else {
            job.clone()
        };
        let st = state(&env, *id, *end, key, &decided_by).await;
        let what = format!(
            "{job} {} card_{}: {st:?}, {charged} charge(s)",
            s.provider, s.script
        );
        let got = end_of(&st, key).unwrap_or_else(|e| panic!("{what}: {e}"));
        let sim_status = charges.get(key).map(|c| c.0.as_str());
        match got {
            End::Paid => assert_eq!(sim_status, Some("paid"), "{what}"),
            End::Declined => assert_eq!(sim_status, Some("failed"), "{what}"),
            End::Unknown => {
                let d = dead.get(job.as_str());
                assert_eq!(
                    d.and_then(|d| d.kind.as_deref()),
                    Some("unknown-outcome"),
                    "{what}: dead letter {d:?}"
                );
            }
        }
        if got != End::Unknown {
            assert_eq!(charged, 1, "{what}: a decided key has exactly one charge");
        }
        if was_replayed {
            let faults = !plan.kills_ms.is_empty() || plan.pg_blip_ms.is_some();
            assert!(
                faults && fault_may_end_unknown(s.script, can_repeat, charged),
                "{what}: ended unknown with a charge where its script implies {want:?}"
            );
            let dl = dead.get(job.as_str()).and_then(|d| d.kind.clone());
            assert_eq!(
                dl.as_deref(),
                Some("unknown-outcome"),
                "{what}: the replayed job"
            );
            assert_eq!(got, want, "{what}: after the operator's replay");
        } else if got != want {
            assert!(
                got == End::Unknown
                    && (!plan.kills_ms.is_empty() || plan.pg_blip_ms.is_some())
                    && fault_may_end_unknown(s.script, can_repeat, charged)
                    && charged == 0,
                "{what}: ended {got:?}, its script implies {want:?}"
            );
            fault_unknown.push(format!("{}:{}", s.provider, s.script));
        }
        if want == End::Unknown {
            assert_eq!(charged, 0, "{what}: an unknown script charges nothing");
        }
        *ends.entry(got).or_default() += 1;
    }

    // (2), (4).
    assert_money(&env, &sim).await;
    assert_invariants(&env, &ids, T).await;

    drop((last, sim));
    let ns = env.ns.clone();
    env.cleanup().await;
    remove_logs(&ns);
    ScheduleSummary {
        ends,
        fault_unknown,
        replayed: replayed_what,
        terminated,
    }
}

/// The schedule's process logs (`<tmp>/<ns>-*.log`), once it passed.
fn remove_logs(ns: &str) {
    let prefix = format!("{ns}-");
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".log") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(non-text panic)".into())
}

/// The last lines of each log of a failed schedule.
fn log_tails(trace: &Trace) -> String {
    let mut out = String::new();
    for log in &trace.logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        out.push_str(&format!(
            "--- {} (last {} lines)\n",
            log.display(),
            lines.len() - from
        ));
        for l in &lines[from..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_charged_twice_nothing_lost() {
    let seeds: Vec<u64> = match env_u64("WARREN_MONEY_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("WARREN_MONEY_FIRST_SEED").unwrap_or(1);
            let n = env_u64("WARREN_MONEY_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
            (first..first + n).collect()
        }
    };
    let keep_going = std::env::var("WARREN_MONEY_KEEP_GOING").is_ok_and(|v| v == "1");
    let began = Instant::now();
    let mut failures = Vec::new();
    for &seed in &seeds {
        let plan = Schedule::new(seed);
        let trace: Shared = Default::default();
        let t0 = Instant::now();
        let task = tokio::spawn(run_schedule(plan.clone(), trace.clone()));
        let abort = task.abort_handle();
        let run = match tokio::time::timeout(SCHEDULE_LIMIT, task).await {
            Ok(joined) => joined.map_err(|e| {
                if e.is_panic() {
                    panic_text(e.into_panic())
                } else {
                    e.to_string()
                }
            }),
            Err(_) => {
                // A harness call without a bound hung (a broker that accepts and never
                // answers): name the schedule rather than wait for the 20-minute watchdog.
                // Aborting drops the schedule's processes, which kills them.
                abort.abort();
                Err(format!(
                    "schedule still running after {SCHEDULE_LIMIT:?}: hung"
                ))
            }
        };
        let secs = t0.elapsed().as_secs_f64();
        match run {
            Ok(o) => {
                let ends: Vec<String> = o.ends.iter().map(|(e, n)| format!("{e:?}={n}")).collect();
                let blip = o
                    .terminated
                    .map(|n| format!(" pg-terminated={n}"))
                    .unwrap_or_default();
                eprintln!(
                    "money: {plan} → ok [{}] fault-unknown=[{}] replayed=[{}]{blip} {secs:.1}s",
                    ends.join(" "),
                    o.fault_unknown.join(" "),
                    o.replayed.join(" ")
                );
            }
            Err(why) => {
                let t = trace.lock().unwrap();
                let report = format!(
                    "money property FAILED: {plan}\n  reproduce: WARREN_MONEY_SEED={seed} cargo test \
                     --test money_property -- --nocapture\n  schedule: {plan:?}\n  namespace: {} \
                     (database and queues kept)\n  steps: {:?}\n  after {secs:.1}s: {why}\n{}",
                    t.ns,
                    t.steps,
                    log_tails(&t)
                );
                eprintln!("{report}");
                failures.push(format!("seed {seed}: {why}"));
                if !keep_going {
                    panic!("{report}");
                }
            }
        }
    }
    let total = began.elapsed().as_secs_f64();
    eprintln!(
        "money: {} schedules, {} failed, {total:.1}s ({:.1}s per schedule)",
        seeds.len(),
        failures.len(),
        total / seeds.len().max(1) as f64
    );
    assert!(
        failures.is_empty(),
        "{} schedule(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
