//! `warren dev --seed N`: the README's "run the fleet" command. Seeds due subscriptions,
//! starts the simulator, scheduler and workers in one process, shows renewals flowing on its
//! one-line summary, and stops cleanly on Ctrl-C.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn dev_seed_renews_and_stops_cleanly_on_ctrl_c() {
    let env = TestEnv::new(FAST_CONFIG).await;
    let mut dev = env.spawn(
        &[
            "dev",
            "--seed",
            "40",
            "--seed-mix",
            "ok=3,decline",
            "--scan-interval",
            "1s",
        ],
        &[],
    );
    dev.wait_ready(Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(60),
        "renewals in the summary line",
        || async {
            dev.logs()
                .contains("warren dev: due 0 · published 40 · renewed 30 · declined 10")
        },
    )
    .await;
    let paid: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payment_transactions WHERE status = 'paid'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(paid, 30);
    assert!(
        dev.logs().contains("metrics on http://127.0.0.1:"),
        "{}",
        dev.logs()
    );

    dev.signal("INT");
    let status = dev.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status}:\n{}", dev.logs());
    assert!(dev.logs().contains("worker stopped"));
    env.cleanup().await;
}
