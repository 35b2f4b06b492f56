//! `warren topology`: declare the namespace's topology and print it.

use super::Global;

pub async fn run(g: &Global) -> anyhow::Result<()> {
    let declared = declare(g).await?;
    print!("{declared}");
    Ok(())
}

/// Shared with `warren dev` and the benchmark.
pub async fn declare(g: &Global) -> anyhow::Result<warren_core::topology::Declared> {
    let topology = g.topology()?;
    let conn = g.connect("topology").await?;
    let ch = conn.create_channel().await?;
    let declared = topology.declare(&ch).await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(declared)
}
