//! `warren migrate`, `--check` and `--down` on the real PostgreSQL: the exit status a deploy
//! pipeline reads, databases migrated before the scripts were renamed, and every down script
//! undoing exactly its up on a database with rows in every table.

mod common;

use common::{bin, stderr, stdout, PG_BASE};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use std::process::{Command, Output, Stdio};
use warren_core::migrations;

/// A database of its own for one test (not created), dropped when the test ends, even when it
/// fails.
struct Db {
    name: String,
    url: String,
}

impl Db {
    fn new() -> Self {
        let name = format!(
            "wt_mig_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let url = format!("{PG_BASE}/{name}");
        Self { name, url }
    }

    async fn create(&self) {
        let mut admin = admin().await;
        admin
            .execute(format!("CREATE DATABASE \"{}\"", self.name).as_str())
            .await
            .unwrap();
    }

    async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.unwrap()
    }

    fn warren(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("DATABASE_URL", &self.url)
            .env("WARREN_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .env_remove("WARREN_MIGRATE_FORMAT")
            .stdin(Stdio::null())
            .output()
            .expect("warren runs")
    }

    /// `warren migrate ARGS`, which must succeed.
    fn migrate(&self, args: &[&str]) -> String {
        let out = self.warren(&[&["migrate"], args].concat());
        assert!(
            out.status.success(),
            "warren migrate {args:?} failed: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// `warren migrate --check --format json`: its exit status and report.
    fn check(&self) -> (i32, Value) {
        let out = self.warren(&["migrate", "--check", "--format", "json"]);
        let code = out.status.code().expect("exited");
        let report = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("--check printed no JSON ({e}): {}", stderr(&out)));
        (code, report)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Its own thread and runtime: this runs inside the test's runtime, possibly unwinding.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&format!("{PG_BASE}/postgres")).await {
                    let _ = admin
                        .execute(
                            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                        )
                        .await;
                }
            })
        })
        .join();
    }
}

async fn admin() -> PgConnection {
    PgConnection::connect(&format!("{PG_BASE}/postgres"))
        .await
        .expect("PostgreSQL must run on 127.0.0.1:5432 (scripts/services.sh starts it)")
}

fn versions(report: &Value, key: &str) -> Vec<i64> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {report:#}"))
        .iter()
        .map(|m| m["version"].as_i64().unwrap())
        .collect()
}

fn all_versions() -> Vec<i64> {
    migrations::known().iter().map(|k| k.up.version).collect()
}

/// Everything about the schema in `public` that a migration creates or changes, one line per
/// fact, sorted: columns (type, nullability, default, identity, collation, and their order
/// among the table's live columns; a dropped column leaves a hole in attnum, which is not a
/// difference), indexes, constraints, enum types with their labels in order, sequences,
/// relations. `_sqlx_migrations` is left out.
async fn schema(pool: &PgPool) -> Vec<String> {
    let q = r#"
        SELECT 'column ' || c.relname || '.' || a.attname
               || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)
               || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END
               || coalesce(' collate ' || co.collname, '')
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          LEFT JOIN pg_collation co ON co.oid = a.attcollation
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
           AND c.relname <> '_sqlx_migrations' AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT 'index ' || indexname || ': ' || indexdef
          FROM pg_indexes
         WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations'
        UNION ALL
        SELECT 'constraint ' || conrelid::regclass::text || '.' || conname || ' ' || contype::text || ': '
               || pg_get_constraintdef(oid)
          FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace
           AND conrelid <> '_sqlx_migrations'::regclass
        UNION ALL
        SELECT 'type ' || t.typname || ' ' || t.typtype::text || coalesce(': ' || (
                   SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                     FROM pg_enum e WHERE e.enumtypid = t.oid), '')
          FROM pg_type t
         WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'c')
           AND NOT EXISTS (SELECT 1 FROM pg_class r WHERE r.reltype = t.oid)
        UNION ALL
        SELECT 'relation ' || relname || ' ' || relkind::text
          FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relname NOT LIKE '\_sqlx\_migrations%'
        UNION ALL
        SELECT 'sequence ' || sequencename || ' ' || data_type || ' ' || start_value
               || ' ' || increment_by
          FROM pg_sequences WHERE schemaname = 'public'
        ORDER BY 1
    "#;
    sqlx::query_scalar(q).fetch_all(pool).await.unwrap()
}

fn assert_same_schema(got: &[String], want: &[String], what: &str) {
    let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).collect();
    let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: schema differs\n  missing: {missing:#?}\n  extra: {extra:#?}"
    );
}

/// The tables' rows as JSON, by table, for comparing before and after.
async fn rows(pool: &PgPool, table: &str, drop_keys: &[&str]) -> Vec<Value> {
    let mut minus = String::new();
    for k in drop_keys {
        minus.push_str(&format!(" - '{k}'"));
    }
    sqlx::query_scalar(&format!(
        "SELECT to_jsonb(t){minus} FROM {table} t ORDER BY to_jsonb(t)::text"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

const SUB1: &str = "00000000-0000-7000-8000-000000000001";
const SUB2: &str = "00000000-0000-7000-8000-000000000002";

/// Representative rows in every table of the full schema: each status the later migrations
/// added or reinterpret ('rejected', 'duplicate_charge', a dunning enqueue).
async fn populate(pool: &PgPool) {
    pool.execute(
        format!(
            r#"
        INSERT INTO job_runs (job_id, task, queue, status, attempts, finished_at)
        VALUES ('job-1', 'demo.noop', 'default', 'succeeded', 1, now()),
               ('job-2', 'demo.fail', 'default', 'dead_lettered', 3, now());
        INSERT INTO customers (id, email, name) VALUES
            ('00000000-0000-7000-8000-0000000000c1', 'a@example.com', 'A');
        INSERT INTO merchant_integrations (id, merchant_id, provider, credentials) VALUES
            ('00000000-0000-7000-8000-0000000000e1', '00000000-0000-7000-8000-0000000000f1',
             'APPMAX', '{{"token": "t"}}');
        INSERT INTO customer_payment_methods (id, customer_id, provider,
                                              provider_payment_method_id, brand, last4)
        VALUES ('00000000-0000-7000-8000-0000000000a1', '00000000-0000-7000-8000-0000000000c1',
                'PAGARME', 'card_1', 'visa', '4242');
        INSERT INTO customer_subscriptions (id, customer_id, provider, status,
            current_period_start, current_period_end, vault_payment_method_id, amount_cents,
            dunning_attempt, next_attempt_at)
        VALUES ('{SUB1}', '00000000-0000-7000-8000-0000000000c1', 'PAGARME', 'ACTIVE',
                '2026-11-01Z', '2026-12-01Z', '00000000-0000-7000-8000-0000000000a1', 4990,
                0, NULL),
               ('{SUB2}', '00000000-0000-7000-8000-0000000000c1', 'APPMAX', 'PAST_DUE',
                '2026-10-01Z', '2026-11-01Z', NULL, 9900, 1, '2026-11-03Z');
        INSERT INTO payment_transactions (id, subscription_id, provider, idempotency_key,
            status, amount_cents, currency, period_end, attempt, created_at, updated_at,
            charge_requests, charge_refusals, first_charge_sent_at, last_charge_sent_at)
        VALUES ('00000000-0000-7000-8000-0000000000b1', '{SUB1}', 'PAGARME',
                'renewal:{SUB1}:2026-11-01', 'paid', 4990, 'BRL', '2026-11-01Z', 1,
                '2026-11-01Z', '2026-11-01Z', 1, 0, '2026-11-01Z', '2026-11-01Z'),
               ('00000000-0000-7000-8000-0000000000b2', '{SUB1}', 'PAGARME',
                'renewal:{SUB1}:2026-11-01:2', 'duplicate_charge', 4990, 'BRL', '2026-11-01Z',
                2, '2026-11-02Z', '2026-11-02Z', 2, 1, '2026-11-02Z', '2026-11-02Z'),
               ('00000000-0000-7000-8000-0000000000b3', '{SUB2}', 'APPMAX',
                'renewal:{SUB2}:2026-11-01', 'rejected', 9900, 'BRL', '2026-11-01Z', 1,
                '2026-11-01Z', '2026-11-01Z', 1, 1, '2026-11-01Z', '2026-11-01Z'),
               ('00000000-0000-7000-8000-0000000000b4', '{SUB2}', 'APPMAX',
                'renewal:{SUB2}:2026-11-01:2', 'failed', 9900, 'BRL', '2026-11-01Z', 2,
                '2026-11-02Z', '2026-11-02Z', 1, 0, '2026-11-02Z', '2026-11-02Z');
        INSERT INTO renewal_enqueues (subscription_id, period_end, provider, job_id,
                                      idempotency_key, attempt)
        VALUES ('{SUB1}', '2026-11-01Z', 'PAGARME', '00000000-0000-7000-8000-0000000000d1',
                'renewal:{SUB1}:2026-11-01', 1),
               ('{SUB2}', '2026-11-01Z', 'APPMAX', '00000000-0000-7000-8000-0000000000d2',
                'renewal:{SUB2}:2026-11-01', 1),
               ('{SUB2}', '2026-11-01Z', 'APPMAX', '00000000-0000-7000-8000-0000000000d3',
                'renewal:{SUB2}:2026-11-01:2', 2);
        INSERT INTO subscription_events (subscription_id, kind, period_end, attempt,
                                         idempotency_key, job_id, detail)
        VALUES ('{SUB2}', 'renewal.declined', '2026-11-01Z', 1,
                'renewal:{SUB2}:2026-11-01', 'job-3', '{{"reason": "declined"}}');
        INSERT INTO cron_ticks (schedule, tick, job_id, status)
        VALUES ('prune-job-runs', '2026-12-01Z', '00000000-0000-7000-8000-0000000000d4',
                'published');
        INSERT INTO warren_outbox (task, payload, run_at, published_at)
        VALUES ('demo.noop', '{{}}', '2026-12-01Z', '2026-12-01Z'),
               ('demo.sleep', '{{"ms": 1}}', '2027-01-01Z', NULL);
        INSERT INTO ingest_idempotency (scope, key, request_hash, status, response,
                                        completed_at)
        VALUES ('scope-1', 'key-1', 'hash', 202, '{{"id": "job-4"}}', now());
        INSERT INTO dead_letters (queue, fingerprint, message_id, task, source, kind, error,
                                  attempts, headers, payload, payload_json, failed_at)
        VALUES ('default', 'fp-1', 'job-2', 'demo.fail', 'worker', 'permanent', 'boom', 3,
                '{{}}', '\x7b7d', '{{}}', now());
    "#
        )
        .as_str(),
    )
    .await
    .unwrap();
}

/// Every table a migration creates, and whether the newest migration changes it.
const TABLES: &[&str] = &[
    "job_runs",
    "customers",
    "merchant_integrations",
    "customer_payment_methods",
    "customer_subscriptions",
    "payment_transactions",
    "renewal_enqueues",
    "subscription_events",
    "cron_ticks",
    "warren_outbox",
    "ingest_idempotency",
    "dead_letters",
];

/// What the newest migration (charge intent) adds to payment_transactions, and rewrites.
const CHARGE_INTENT: &[&str] = &[
    "charge_requests",
    "charge_refusals",
    "first_charge_sent_at",
    "last_charge_sent_at",
    "lease_owner",
    "updated_at",
];

/// A pipeline's view: --check exits 3 on a fresh database (every migration pending, listed),
/// 0 once migrated, 4 when a newer release applied a migration this build does not know
/// (naming it and this release's newest version), 5 when an applied migration's script
/// differs; 1 naming DATABASE_URL when the database is missing or PostgreSQL unreachable.
/// Plain migrate and --down refuse the newer release's database; --down refuses without --yes
/// when stdin is not a terminal.
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_pending_unknown_and_unreachable() {
    let db = Db::new();

    let missing = db.warren(&["migrate", "--check"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    let err = stderr(&missing);
    assert!(
        err.contains("DATABASE_URL") && err.contains(&db.name) && err.contains("warren migrate"),
        "{err}"
    );
    let unreachable = Command::new(bin())
        .args(["migrate", "--check"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/warren")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    let err = stderr(&unreachable);
    assert!(
        err.contains("cannot reach PostgreSQL") && err.contains("DATABASE_URL"),
        "{err}"
    );

    db.create().await;
    let all = all_versions();
    let (code, report) = db.check();
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(report["state"], "pending");
    assert_eq!(versions(&report, "pending"), all);
    let table = db.warren(&["migrate", "--check"]);
    assert_eq!(table.status.code(), Some(3));
    let text = stdout(&table);
    for k in migrations::known() {
        let line = format!("pending  {} {}", k.up.version, k.up.description);
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    // --check changed nothing: not even sqlx's bookkeeping table.
    let pool = db.pool().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0);

    let out = db.migrate(&[]);
    assert!(out.contains(&format!("applied {}", all[0])), "{out}");
    let (code, report) = db.check();
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["state"], "up_to_date");
    assert_eq!(versions(&report, "applied"), all);
    assert_eq!(report["latest_known"], *all.last().unwrap());
    let again = db.migrate(&[]);
    assert!(
        !again.contains("applied 2"),
        "nothing to apply the second time: {again}"
    );

    // Without --yes and without a terminal, --down reverts nothing.
    let refused = db.warren(&["migrate", "--down", "0"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert_eq!(db.check().0, 0);

    // A newer release applied a migration this build does not know.
    let future = 99991231000001_i64;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from a newer release', true, '\\x00', 1)",
    )
    .bind(future)
    .execute(&pool)
    .await
    .unwrap();
    let (code, report) = db.check();
    assert_eq!(code, 4, "{report:#}");
    assert_eq!(report["state"], "unknown_applied");
    assert_eq!(versions(&report, "unknown"), vec![future]);
    assert!(versions(&report, "pending").is_empty());
    let table = db.warren(&["migrate", "--check"]);
    assert_eq!(table.status.code(), Some(4));
    let text = stdout(&table);
    assert!(
        text.contains(&format!("unknown  {future} from a newer release")),
        "{text}"
    );
    assert!(
        text.contains(&format!("--down {}", all.last().unwrap())),
        "names the version to revert to: {text}"
    );
    for args in [&["migrate"][..], &["migrate", "--down", "0", "--yes"][..]] {
        let out = db.warren(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        assert!(
            stderr(&out).contains(&future.to_string()),
            "{}",
            stderr(&out)
        );
    }
    // Both refused before touching anything.
    assert_eq!(versions(&db.check().1, "applied"), all);

    // An applied migration whose script is not this build's.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(future)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00' WHERE version = $1")
        .bind(all[0])
        .execute(&pool)
        .await
        .unwrap();
    let (code, report) = db.check();
    assert_eq!(code, 5, "{report:#}");
    assert_eq!(versions(&report, "diverged"), vec![all[0]]);
    pool.close().await;
}

/// A database migrated by the releases before the scripts were named `.up.sql` (sqlx
/// reading `<version>_<name>.sql`, as `warren migrate` did) keeps working with no manual
/// step: the same versions, descriptions and checksums are recorded, this build's migrate
/// applies nothing and --check says up to date; --down and migrate work on it.
#[tokio::test(flavor = "multi_thread")]
async fn databases_migrated_with_the_old_file_names_keep_working() {
    // The old layout: every up script under its old name, nothing else.
    let dir = std::env::temp_dir().join(format!("wt-old-layout-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let mut n = 0;
    for entry in std::fs::read_dir(src).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".up.sql") {
            std::fs::copy(format!("{src}/{name}"), dir.join(format!("{stem}.sql"))).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, all_versions().len());
    let old = sqlx::migrate::Migrator::new(dir.clone()).await.unwrap();
    assert!(old
        .iter()
        .all(|m| m.migration_type == sqlx::migrate::MigrationType::Simple));

    let db = Db::new();
    db.create().await;
    let pool = db.pool().await;
    old.run(&pool).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    // What the old layout recorded is what this build would record.
    let recorded: Vec<(i64, String, Vec<u8>)> =
        sqlx::query_as("SELECT version, description, checksum FROM _sqlx_migrations ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let ours: Vec<(i64, String, Vec<u8>)> = migrations::known()
        .iter()
        .map(|k| {
            (
                k.up.version,
                k.up.description.to_string(),
                k.up.checksum.to_vec(),
            )
        })
        .collect();
    assert_eq!(recorded, ours);

    let (code, report) = db.check();
    assert_eq!(code, 0, "{report:#}");
    let out = db.migrate(&[]);
    assert!(!out.contains("applied 2"), "applied something: {out}");
    let all = all_versions();
    let before_last = all[all.len() - 2];
    db.migrate(&["--down", &before_last.to_string(), "--yes"]);
    assert_eq!(
        versions(&db.check().1, "pending"),
        vec![*all.last().unwrap()]
    );
    db.migrate(&[]);
    assert_eq!(db.check().0, 0);
    pool.close().await;
}

/// Up, down step by step to before the first migration, and up again, on a database with
/// rows in every table. After each down the schema is exactly that of a database migrated up
/// to the same version (so each down undoes its up: columns, defaults, indexes,
/// constraints, enum types), and --check lists just the reverted migrations as pending; the
/// final up gives the first up's schema. Reverting and re-applying only the newest migration
/// keeps the rows of every table.
#[tokio::test(flavor = "multi_thread")]
async fn up_down_up_on_a_populated_database() {
    let known = migrations::known();
    let all = all_versions();

    // The reference: a database migrated one version at a time, its schema after each.
    let reference = Db::new();
    reference.create().await;
    let mut want = vec![vec![]]; // want[i]: schema with the first i migrations applied
    {
        let rpool = reference.pool().await;
        let mut conn = rpool.acquire().await.unwrap();
        conn.ensure_migrations_table().await.unwrap();
        for k in &known {
            conn.apply(k.up).await.unwrap();
            want.push(schema(&rpool).await);
        }
        drop(conn);
        rpool.close().await;
    }
    drop(reference);

    let db = Db::new();
    db.migrate(&[]);
    let pool = db.pool().await;
    let first_up = schema(&pool).await;
    assert_same_schema(&first_up, want.last().unwrap(), "warren migrate");
    populate(&pool).await;
    let mut before = Vec::new();
    for t in TABLES {
        let skip: &[&str] = if *t == "payment_transactions" {
            CHARGE_INTENT
        } else {
            &[]
        };
        let r = rows(&pool, t, skip).await;
        assert!(!r.is_empty(), "populate left {t} empty");
        before.push(r);
    }

    // Only the newest migration, down and up: every row stays.
    let newest = *all.last().unwrap();
    let before_newest = all[all.len() - 2];
    let out = db.migrate(&["--down", &before_newest.to_string(), "--yes"]);
    assert!(out.contains(&format!("reverted  {newest}")), "{out}");
    let status: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, status FROM payment_transactions ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        status[1].1, "paid",
        "a duplicate charge is 'paid' without the migration"
    );
    db.migrate(&[]);
    assert_same_schema(&schema(&pool).await, &first_up, "down and up of the newest");
    for (t, was) in TABLES.iter().zip(&before) {
        let skip: &[&str] = if *t == "payment_transactions" {
            CHARGE_INTENT
        } else {
            &[]
        };
        assert_eq!(&rows(&pool, t, skip).await, was, "{t} changed");
    }

    // Every migration, one step at a time.
    for i in (0..known.len()).rev() {
        let target = if i == 0 { 0 } else { all[i - 1] };
        let out = db.migrate(&["--down", &target.to_string(), "--yes"]);
        assert!(out.contains(&format!("reverted  {}", all[i])), "{out}");
        assert_same_schema(
            &schema(&pool).await,
            &want[i],
            &format!("after reverting {} {}", all[i], known[i].up.description),
        );
        let (code, report) = db.check();
        assert_eq!(code, 3, "{report:#}");
        assert_eq!(versions(&report, "pending"), all[i..].to_vec());
        if known[i].up.description == "renewals" {
            // Dunning enqueues cannot keep the older key; 'rejected' has no older name.
            let enqueues: i64 = sqlx::query_scalar("SELECT count(*) FROM renewal_enqueues")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(enqueues, 2);
            let rejected: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM payment_transactions WHERE status NOT IN ('paid', 'failed')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(rejected, 0);
        }
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);

    let out = db.migrate(&["--down", "0", "--yes"]);
    assert!(out.contains("nothing to revert"), "{out}");
    db.migrate(&[]);
    assert_same_schema(&schema(&pool).await, &first_up, "up after down to 0");
    assert_eq!(db.check().0, 0);
    pool.close().await;
}
