//! `secretlog-writer`: the leader write node.

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "secretlog-writer",
    version,
    about = "secretlog write node: seals KV v2 writes and appends them to Kafka in transactions"
)]
struct Cli {
    #[command(flatten)]
    config: secretlog_writer::WriterConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    secretlog_reader::telemetry::init_logging();
    let cli = Cli::parse();
    let cancel = CancellationToken::new();
    let node = secretlog_writer::node::start(cli.config, cancel.clone()).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    cancel.cancel();
    node.wait().await;
    Ok(())
}
