//! `secretlog-replicator`: archives the log and writes snapshots into object storage.

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "secretlog-replicator",
    version,
    about = "secretlog replicator: log archive and snapshots in object storage"
)]
struct Cli {
    #[command(flatten)]
    config: secretlog_replicator::ReplicatorConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    secretlog_reader::telemetry::init_logging();
    let cli = Cli::parse();
    let cancel = CancellationToken::new();
    let node = secretlog_replicator::node::start(cli.config, cancel.clone()).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    cancel.cancel();
    node.wait().await;
    Ok(())
}
