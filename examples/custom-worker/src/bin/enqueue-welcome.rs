//! `enqueue-welcome EMAIL NAME`: enqueues one `welcome.send` job the way an application
//! would, typed, and prints its id. Reads `AMQP_URL` and `WARREN_NAMESPACE` like `warren`.

use std::error::Error;
use warren::core::config::{FileConfig, DEFAULT_AMQP_URL, DEFAULT_NAMESPACE};
use warren::core::topology::Topology;
use warren::producer::Producer;
use warren_example_custom_worker::Welcome;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(email), Some(name)) = (args.next(), args.next()) else {
        return Err("usage: enqueue-welcome EMAIL NAME".into());
    };
    let amqp_url = std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.into());
    let namespace = std::env::var("WARREN_NAMESPACE").unwrap_or_else(|_| DEFAULT_NAMESPACE.into());
    let topology = Topology::new(&namespace, &FileConfig::default())?;

    let conn = warren::core::broker::connect(&amqp_url, "enqueue-welcome").await?;
    let producer = Producer::new(&conn, topology.jobs_exchange()).await?;
    let job_id = producer.enqueue(&Welcome { email, name }).await?;
    println!("{job_id}");
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
