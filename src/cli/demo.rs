//! `warren demo seed`: customers, cards and subscriptions wired to the provider simulator.
//!
//! Every seeded subscription is deterministic given its index `i` (0-based, in this run):
//!
//! - outcome: `mix[i % len]`, where `mix` is `--mix` with weights expanded in the order
//!   given (`ok=2,decline` → `[ok, ok, decline]`); each entry is a simulator card script
//!   (an outcome such as `ok`, optionally preceded by modifiers: `then502_lag20s_ok`),
//!   parsed by [`warren_providersim::Script`] and used as the card suffix the simulator
//!   scripts its answer by (docs/providers.md);
//! - provider: the cycle `c = i / len` goes to Appmax when `floor((c+1)·A) > floor(c·A)`
//!   (A = `--appmax-fraction`), i.e. whole mix cycles alternate evenly between the
//!   providers, so with A = 0.5 and at least `2 × len` subscriptions every
//!   (provider, outcome) pair is present;
//! - due: the first `round(F·N)` subscriptions (F = `--due-fraction`);
//! - Appmax merchant: `merchants[k % M]` for the k-th Appmax subscription;
//! - amount: `990 + (i·37 mod 190)·100` cents.
//!
//! Ids, card ids, tokens and access tokens are random. Rows go in batches of
//! [`BATCH`] subscriptions: one `INSERT … SELECT FROM UNNEST(…)` per table, one transaction
//! per batch. The data contract (row shapes, metadata keys) is what the renewal handlers read.

use super::Global;
use anyhow::{bail, ensure, Context};
use chrono::{DateTime, Months, Utc};
use clap::{Args, Subcommand};
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};
use uuid::Uuid;
use warren_core::config::redact_url;
use warren_core::db;
use warren_providersim::{Provider, Script, KNOWN_SUFFIXES};

/// Subscriptions per insert batch (and per transaction).
pub(crate) const BATCH: usize = 1000;
/// Progress is printed on stderr every this many subscriptions.
const PROGRESS_EVERY: u64 = 10_000;

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(subcommand)]
    pub command: DemoCommand,
}

#[derive(Subcommand, Debug)]
pub enum DemoCommand {
    /// Create demo customers, cards and subscriptions wired to the provider simulator.
    #[command(long_about = SEED_ABOUT)]
    Seed(SeedArgs),
}

const SEED_ABOUT: &str = "\
Create demo customers, cards and subscriptions wired to the provider simulator.

Applies the migrations first (like `warren migrate`, creating the database if missing), then
inserts, per subscription, one customer (email demo+<n>@example.com, metadata {\"demo\": true};
n continues after the demo customers already in the database), one card and one ACTIVE
monthly subscription. Half of them, by default, are Pagar.me prepaid (card id
card_<hex>_<suffix>, metadata.pagarmeCustomerId), the others Appmax (card token
tok_<hex>_<suffix>, one of --merchants new merchant integrations with an access_token, a
provider_subscription_id). Point the renewal workers at `warren provider-sim` and each
card's suffix decides what the charge does:

  ok       paid / approved
  decline  failed / declined (\"Insufficient funds\")
  500      HTTP 500 every time, nothing charged
  500once  HTTP 500 on the first attempt for a key, then paid
  429      HTTP 429 (Retry-After: 1) on the first attempt for a key, then paid
  timeout  charged, but answers only after 30 s (past any client timeout)
  slow     paid, after 200 ms

An outcome may be preceded by modifiers, `_`-separated, that make the simulator misbehave
like a real gateway (N is a whole number of s or ms):

  then<NNN>     charged, but the charging request is answered HTTP NNN (e.g. then502)
  thenreset     charged, then the connection drops mid-answer
  pending<N>    answered pending; settles to the outcome N later
  lag<N>        lookups by code/reference do not see the charge for N
  lookuperr<N>  lookups for the key answer 500 for N
  forget        Pagar.me: the idempotency key is forgotten; a retry charges again
  duporder      Appmax: the reference is not unique; a new order every time

e.g. --mix \"then502_lag20s_ok=2,ok\" seeds cards card_<hex>_then502_lag20s_ok (see
docs/providers.md).

Distribution (deterministic, by the subscription's index i = 0..N-1 in this run):
  outcome   mix[i % len], with --mix weights expanded in order (ok=2,decline -> ok,ok,decline)
  provider  whole mix cycles c = i / len alternate: c goes to Appmax when
            floor((c+1)*A) > floor(c*A), A = --appmax-fraction; with A = 0.5 and
            N >= 2 x len every (provider, outcome) pair is present
  due       the first round(F*N), F = --due-fraction: current_period_end 5 minutes to 3 days
            ago; the others end 1 to 28 days from now (periods are one month long)
  merchant  the k-th Appmax subscription belongs to merchant k % M
  amount    990 + (i*37 mod 190)*100 cents, BRL

Prints a table of subscriptions and due ones per provider and outcome.

Examples:
  warren demo seed --subscriptions 40 --mix ok,decline,timeout,500once --due-fraction 0.5
  warren demo seed --subscriptions 100000 --mix ok=8,decline=1,500once=1
  warren demo seed --subscriptions 20 --mix then502_lag20s_ok,pending30s_ok,ok";

#[derive(Args, Debug)]
pub struct SeedArgs {
    /// Subscriptions to create (each with its own customer and card).
    #[arg(long, env = "WARREN_DEMO_SUBSCRIPTIONS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub subscriptions: u64,
    /// Fraction of them due now (0 to 1): the first round(F*N) subscriptions.
    #[arg(
        long,
        env = "WARREN_DEMO_DUE_FRACTION",
        default_value_t = 1.0,
        value_name = "F"
    )]
    pub due_fraction: f64,
    /// Simulator card scripts (card suffixes without the underscore), comma-separated, each
    /// optionally weighted: e.g. `ok,decline,500once`, `ok=8,decline=2` or
    /// `then502_lag20s_ok=2,ok`. Outcomes: ok, decline, 500, 500once, 429, timeout, slow;
    /// modifiers before them: then<NNN>, thenreset, pending<N>, lag<N>, lookuperr<N>,
    /// forget, duporder.
    #[arg(long, env = "WARREN_DEMO_MIX", default_value = "ok",
          value_parser = |s: &str| s.parse::<Mix>())]
    pub mix: Mix,
    /// Fraction of subscriptions on Appmax (0 to 1); the rest are Pagar.me prepaid.
    #[arg(
        long,
        env = "WARREN_DEMO_APPMAX_FRACTION",
        default_value_t = 0.5,
        value_name = "A"
    )]
    pub appmax_fraction: f64,
    /// Appmax merchant integrations created for this run (the Appmax subscriptions are
    /// spread over them round-robin).
    #[arg(long, env = "WARREN_DEMO_MERCHANTS", default_value_t = 3, value_name = "M",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub merchants: u32,
}

/// `--mix`: card scripts with weights expanded, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mix(Vec<Script>);

impl Mix {
    pub(crate) fn expanded(&self) -> &[Script] {
        &self.0
    }
}

impl Default for Mix {
    fn default() -> Self {
        Self(vec![Script::plain(warren_providersim::Outcome::Ok)])
    }
}

/// `ok, decline, 500, …`: the simulator's outcomes, by the names `--mix` takes.
fn known_outcomes() -> String {
    KNOWN_SUFFIXES
        .iter()
        .map(|(s, _)| s.trim_start_matches('_'))
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(format!(
                    "{s:?} has an empty entry; give a comma list of outcomes ({})",
                    known_outcomes()
                ));
            }
            let (name, weight) = match item.split_once('=') {
                Some((n, w)) => {
                    let w = w.trim();
                    let weight = w.parse::<u32>().ok().filter(|w| (1..=1000).contains(w));
                    match weight {
                        Some(weight) => (n.trim(), weight),
                        None => {
                            return Err(format!(
                                "weight {w:?} of {:?} is not a whole number from 1 to 1000",
                                n.trim()
                            ))
                        }
                    }
                }
                None => (item, 1),
            };
            let name = name.strip_prefix('_').unwrap_or(name);
            // The simulator's own parser: its error names the outcomes and modifiers.
            let script = name.parse::<Script>().map_err(|e| e.to_string())?;
            if seen.contains(&script) {
                return Err(format!(
                    "{name:?} is given twice; use a weight instead (e.g. {script}=2)"
                ));
            }
            seen.push(script);
            out.extend(std::iter::repeat_n(script, weight as usize));
        }
        Ok(Self(out))
    }
}

/// The `billing_provider` enum value a subscription of `p` is seeded with.
fn db_provider(p: Provider) -> &'static str {
    match p {
        Provider::Pagarme => "PAGARME",
        Provider::Appmax => "APPMAX",
    }
}

/// What to seed (see the module docs for the distribution rules).
#[derive(Debug, Clone)]
pub(crate) struct SeedOptions {
    pub subscriptions: u64,
    pub due_fraction: f64,
    pub mix: Mix,
    pub appmax_fraction: f64,
    pub merchants: u32,
    /// Print progress on stderr every 10 000 subscriptions.
    pub progress: bool,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            subscriptions: 100,
            due_fraction: 1.0,
            mix: Mix::default(),
            appmax_fraction: 0.5,
            merchants: 3,
            progress: false,
        }
    }
}

impl SeedOptions {
    /// Checks every field, naming its flag in the error.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.subscriptions >= 1,
            "--subscriptions: {} is not at least 1",
            self.subscriptions
        );
        for (flag, v) in [
            ("--due-fraction", self.due_fraction),
            ("--appmax-fraction", self.appmax_fraction),
        ] {
            ensure!(
                (0.0..=1.0).contains(&v),
                "{flag}: {v} is not between 0 and 1"
            );
        }
        ensure!(!self.mix.0.is_empty(), "--mix: no outcome given");
        ensure!(
            self.merchants >= 1 || self.appmax_fraction == 0.0,
            "--merchants: {} is not at least 1 (Appmax subscriptions need a merchant)",
            self.merchants
        );
        Ok(())
    }

    fn due_count(&self) -> u64 {
        (self.due_fraction * self.subscriptions as f64).round() as u64
    }

    /// Whether the subscription with index `i` is an Appmax one: its mix cycle `c` is,
    /// when `floor((c+1)·A) > floor(c·A)`, computed in millionths so it is exact.
    fn provider_of(&self, i: u64) -> Provider {
        let cycle = (i / self.mix.0.len() as u64) as u128;
        let a = (self.appmax_fraction * 1_000_000.0).round() as u128;
        if (cycle + 1) * a / 1_000_000 > cycle * a / 1_000_000 {
            Provider::Appmax
        } else {
            Provider::Pagarme
        }
    }
}

/// Subscriptions and due ones of one (provider, outcome).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub subscriptions: u64,
    pub due: u64,
}

/// What a seed run created.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeedReport {
    pub counts: BTreeMap<(Provider, Script), Counts>,
    /// The merchant ids of the Appmax integrations created (none without Appmax subscriptions).
    pub merchants: Vec<Uuid>,
    /// The first customer number `n` (`demo+<n>@example.com`) of this run.
    pub first_customer: u64,
    pub elapsed: Duration,
}

impl SeedReport {
    pub(crate) fn total(&self) -> Counts {
        self.counts.values().fold(Counts::default(), |a, c| Counts {
            subscriptions: a.subscriptions + c.subscriptions,
            due: a.due + c.due,
        })
    }

    /// The summary table printed by `warren demo seed`.
    pub(crate) fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        // Outcome and suffix columns widen for long scripts (`then502_lag20s_ok`).
        let w = self
            .counts
            .keys()
            .map(|(_, o)| o.suffix().len())
            .max()
            .unwrap_or(0)
            .max(10);
        let _ = writeln!(
            s,
            "{:<10} {:<w$} {:<w$} {:>13} {:>9}",
            "PROVIDER", "OUTCOME", "SUFFIX", "SUBSCRIPTIONS", "DUE"
        );
        for ((p, o), c) in &self.counts {
            let _ = writeln!(
                s,
                "{:<10} {:<w$} {:<w$} {:>13} {:>9}",
                p.label(),
                o.to_string(),
                o.suffix(),
                c.subscriptions,
                c.due
            );
        }
        let t = self.total();
        let _ = writeln!(
            s,
            "{:<10} {:<w$} {:<w$} {:>13} {:>9}",
            "total", "", "", t.subscriptions, t.due
        );
        s
    }
}

/// 16 random hex digits.
fn hex16() -> String {
    let u = Uuid::new_v4().as_u128();
    format!("{:016x}", (u >> 64) as u64 ^ u as u64)
}

/// One batch's rows, column by column (the `UNNEST` arrays).
#[derive(Default)]
struct Batch {
    customer_ids: Vec<Uuid>,
    emails: Vec<String>,
    names: Vec<String>,
    pm_ids: Vec<Uuid>,
    providers: Vec<&'static str>,
    card_ids: Vec<String>,
    sub_ids: Vec<Uuid>,
    starts: Vec<DateTime<Utc>>,
    ends: Vec<DateTime<Utc>>,
    metadata: Vec<serde_json::Value>,
    amounts: Vec<i64>,
    merchant_ids: Vec<Option<Uuid>>,
    provider_sub_ids: Vec<Option<String>>,
}

/// Seeds demo data into an already migrated database. Returns per (provider, outcome)
/// counts; callers print [`SeedReport::table`] if they want to.
pub(crate) async fn seed(pool: &PgPool, opts: &SeedOptions) -> anyhow::Result<SeedReport> {
    opts.validate()?;
    let t = Instant::now();
    let now = Utc::now();
    let n = opts.subscriptions;
    let due = opts.due_count();
    let mix = opts.mix.expanded();

    // Plan first: counts per pair, and whether any subscription is Appmax.
    let mut report = SeedReport::default();
    for i in 0..n {
        let c = report
            .counts
            .entry((opts.provider_of(i), mix[i as usize % mix.len()]))
            .or_default();
        c.subscriptions += 1;
        c.due += u64::from(i < due);
    }
    let any_appmax = report.counts.keys().any(|(p, _)| *p == Provider::Appmax);

    report.first_customer = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM customers WHERE metadata @> '{\"demo\": true}'",
    )
    .fetch_one(pool)
    .await
    .context("counting demo customers (has `warren migrate` run?)")?
        as u64
        + 1;

    if any_appmax {
        let ids: Vec<Uuid> = (0..opts.merchants).map(|_| Uuid::new_v4()).collect();
        let merchants: Vec<Uuid> = (0..opts.merchants).map(|_| Uuid::new_v4()).collect();
        let credentials: Vec<serde_json::Value> = (0..opts.merchants)
            .map(|_| json!({ "access_token": format!("demo-{}", hex16()) }))
            .collect();
        sqlx::query(
            "INSERT INTO merchant_integrations (id, merchant_id, provider, credentials, enabled)
             SELECT id, m, 'APPMAX', c, true
               FROM UNNEST($1::uuid[], $2::uuid[], $3::jsonb[]) AS t(id, m, c)",
        )
        .bind(&ids)
        .bind(&merchants)
        .bind(&credentials)
        .execute(pool)
        .await
        .context("inserting Appmax merchant integrations")?;
        report.merchants = merchants;
    }

    let mut appmax_seen: u64 = 0;
    let mut done: u64 = 0;
    while done < n {
        let end = (done + BATCH as u64).min(n);
        let mut b = Batch::default();
        for i in done..end {
            let provider = opts.provider_of(i);
            let outcome = mix[i as usize % mix.len()];
            let number = report.first_customer + i;
            let customer = Uuid::new_v4();
            let pm = Uuid::new_v4();
            b.customer_ids.push(customer);
            b.emails.push(format!("demo+{number}@example.com"));
            b.names.push(format!("Demo Customer {number}"));
            b.pm_ids.push(pm);
            b.providers.push(db_provider(provider));
            b.sub_ids.push(Uuid::new_v4());
            // Due: 5 minutes to 3 days ago; not due: 1 to 28 days ahead. Spread by i.
            let period_end = if i < due {
                now - chrono::Duration::seconds(300 + (i * 7919 % (3 * 86_400 - 300)) as i64)
            } else {
                now + chrono::Duration::seconds(86_400 + (i * 7919 % (27 * 86_400)) as i64)
            };
            b.ends.push(period_end);
            b.starts.push(
                period_end
                    .checked_sub_months(Months::new(1))
                    .context("period start out of range")?,
            );
            b.amounts.push(990 + (i as i64 * 37 % 190) * 100);
            match provider {
                Provider::Pagarme => {
                    b.card_ids
                        .push(format!("card_{}{}", hex16(), outcome.suffix()));
                    b.metadata.push(json!({
                        "demo": true,
                        "intervalUnit": "MONTH",
                        "intervalCount": 1,
                        "pagarmeCustomerId": format!("cus_{}", hex16()),
                    }));
                    b.merchant_ids.push(None);
                    b.provider_sub_ids.push(None);
                }
                Provider::Appmax => {
                    b.card_ids
                        .push(format!("tok_{}{}", hex16(), outcome.suffix()));
                    b.metadata.push(json!({
                        "demo": true,
                        "intervalUnit": "MONTH",
                        "intervalCount": 1,
                    }));
                    let m =
                        report.merchants[(appmax_seen % report.merchants.len() as u64) as usize];
                    appmax_seen += 1;
                    b.merchant_ids.push(Some(m));
                    b.provider_sub_ids
                        .push(Some(format!("appmax-sub-{}", hex16())));
                }
            }
        }
        insert_batch(pool, &b)
            .await
            .with_context(|| format!("inserting subscriptions {}..{} of {n}", done + 1, end))?;
        if opts.progress && end / PROGRESS_EVERY > done / PROGRESS_EVERY {
            eprintln!(
                "seeded {end}/{n} subscriptions ({:.1}s)",
                t.elapsed().as_secs_f64()
            );
        }
        done = end;
    }
    report.elapsed = t.elapsed();
    Ok(report)
}

/// One transaction: customers, cards, subscriptions of one batch.
async fn insert_batch(pool: &PgPool, b: &Batch) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO customers (id, email, name, metadata)
         SELECT id, e, n, '{\"demo\": true}'::jsonb
           FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS t(id, e, n)",
    )
    .bind(&b.customer_ids)
    .bind(&b.emails)
    .bind(&b.names)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO customer_payment_methods
           (id, customer_id, provider, provider_payment_method_id, brand, last4)
         SELECT id, c, p::billing_provider, pm, 'visa', '4242'
           FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS t(id, c, p, pm)",
    )
    .bind(&b.pm_ids)
    .bind(&b.customer_ids)
    .bind(&b.providers)
    .bind(&b.card_ids)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO customer_subscriptions
           (id, customer_id, provider, is_native, status, current_period_start,
            current_period_end, vault_payment_method_id, metadata, amount_cents, currency,
            merchant_id, provider_subscription_id)
         SELECT id, c, p::billing_provider, false, 'ACTIVE', s, e, pm, md, amt, 'BRL', m, psid
           FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[],
                       $5::timestamptz[], $6::uuid[], $7::jsonb[], $8::bigint[],
                       $9::uuid[], $10::text[])
                AS t(id, c, p, s, e, pm, md, amt, m, psid)",
    )
    .bind(&b.sub_ids)
    .bind(&b.customer_ids)
    .bind(&b.providers)
    .bind(&b.starts)
    .bind(&b.ends)
    .bind(&b.pm_ids)
    .bind(&b.metadata)
    .bind(&b.amounts)
    .bind(&b.merchant_ids)
    .bind(&b.provider_sub_ids)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn run(g: &Global, a: DemoArgs) -> anyhow::Result<()> {
    match a.command {
        DemoCommand::Seed(s) => run_seed(g, s).await,
    }
}

async fn run_seed(g: &Global, a: SeedArgs) -> anyhow::Result<()> {
    let opts = SeedOptions {
        subscriptions: a.subscriptions,
        due_fraction: a.due_fraction,
        mix: a.mix,
        appmax_fraction: a.appmax_fraction,
        merchants: a.merchants,
        progress: true,
    };
    // Refuse bad options before touching the database.
    opts.validate()?;
    super::migrate::apply(g).await?;
    let pool = db::lazy_pool(&g.database_url, 2)?;
    let report = seed(&pool, &opts).await;
    pool.close().await;
    let report = match report {
        Ok(r) => r,
        Err(e) => bail!("seeding {}: {e:#}", redact_url(&g.database_url)),
    };
    let t = report.total();
    println!(
        "seeded {} subscriptions ({} due) with customers demo+{}..{}@example.com and {} Appmax \
         merchant integrations into {} in {:.1}s",
        t.subscriptions,
        t.due,
        report.first_customer,
        report.first_customer + t.subscriptions - 1,
        report.merchants.len(),
        redact_url(&g.database_url),
        report.elapsed.as_secs_f64()
    );
    println!();
    print!("{}", report.table());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(n: u64, mix: &str, a: f64) -> SeedOptions {
        SeedOptions {
            subscriptions: n,
            mix: mix.parse().unwrap(),
            appmax_fraction: a,
            ..Default::default()
        }
    }

    /// The mix as canonical script names.
    fn names(mix: &str) -> Vec<String> {
        mix.parse::<Mix>()
            .unwrap()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn mix_parses_names_and_weights() {
        assert_eq!(
            names("ok=2, decline,500once"),
            ["ok", "ok", "decline", "500once"]
        );
        assert_eq!(
            names("500,429,timeout,_slow,OK"),
            ["500", "429", "timeout", "slow", "ok"]
        );
        let e = "ok,nope".parse::<Mix>().unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("500once, 429"), "{e}");
        assert!("ok,ok".parse::<Mix>().is_err());
        assert!("ok=0".parse::<Mix>().is_err());
        assert!("ok,".parse::<Mix>().is_err());
    }

    #[test]
    fn mix_takes_simulator_scripts() {
        assert_eq!(
            names("then502_lag20s_ok=2,ok"),
            ["then502_lag20s_ok", "then502_lag20s_ok", "ok"]
        );
        let mix: Mix = "lag500ms_then502_ok".parse().unwrap();
        // Canonical spelling, and the simulator reads the seeded card back to the same script.
        assert_eq!(mix.0[0].suffix(), "_then502_lag500ms_ok");
        let card = format!("card_{}{}", hex16(), mix.0[0].suffix());
        assert_eq!(Script::from_card(&card), Some(mix.0[0]));
        // The same script twice, however spelled.
        let e = "then502_lag20s_ok,lag20s_then502_ok"
            .parse::<Mix>()
            .unwrap_err();
        assert!(e.contains("given twice"), "{e}");
        let e = "lga20s_ok".parse::<Mix>().unwrap_err();
        assert!(e.contains("\"lga20s\"") && e.contains("lag<N>"), "{e}");
    }

    #[test]
    fn table_names_scripts_and_suffixes() {
        let mut report = SeedReport::default();
        for mix in ["ok", "then502_lag20s_ok"] {
            let script: Script = mix.parse().unwrap();
            report.counts.insert(
                (Provider::Pagarme, script),
                Counts {
                    subscriptions: 2,
                    due: 1,
                },
            );
        }
        let table = report.table();
        assert!(table.contains(" ok "), "{table}");
        assert!(table.contains(" _ok "), "{table}");
        assert!(
            table.contains("then502_lag20s_ok  _then502_lag20s_ok"),
            "{table}"
        );
        let widths: Vec<usize> = table.lines().map(str::len).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "aligned: {table}");
    }

    #[test]
    fn every_pair_is_present_at_half() {
        for len in 1..=KNOWN_SUFFIXES.len() {
            let names: Vec<_> = KNOWN_SUFFIXES[..len]
                .iter()
                .map(|(s, _)| s.trim_start_matches('_'))
                .collect();
            let o = opts(2 * len as u64, &names.join(","), 0.5);
            let mut pairs = std::collections::HashSet::new();
            for i in 0..o.subscriptions {
                pairs.insert((o.provider_of(i), o.mix.0[i as usize % len]));
            }
            assert_eq!(pairs.len(), 2 * len);
        }
    }

    #[test]
    fn appmax_fraction_is_exact_over_whole_cycles() {
        for (a, want) in [(0.0, 0), (0.25, 25), (0.5, 50), (0.3, 30), (1.0, 100)] {
            let o = opts(100, "ok", a);
            let got = (0..100)
                .filter(|&i| o.provider_of(i) == Provider::Appmax)
                .count();
            assert_eq!(got, want, "A = {a}");
        }
    }

    #[test]
    fn validation_names_the_flag() {
        let o = SeedOptions {
            due_fraction: 1.5,
            ..Default::default()
        };
        assert_eq!(
            o.validate().unwrap_err().to_string(),
            "--due-fraction: 1.5 is not between 0 and 1"
        );
        let o = SeedOptions {
            appmax_fraction: -0.1,
            ..Default::default()
        };
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("--appmax-fraction:"));
    }
}
