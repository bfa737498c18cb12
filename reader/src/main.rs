//! `secretlog-reader`: a regional read node.

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "secretlog-reader",
    version,
    about = "secretlog read node: materializes the log, serves Vault KV v2 reads"
)]
struct Cli {
    #[command(flatten)]
    config: secretlog_reader::ReaderConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    secretlog_reader::telemetry::init_logging();
    let cli = Cli::parse();
    let cancel = CancellationToken::new();
    let node = secretlog_reader::node::start(cli.config, cancel.clone()).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    cancel.cancel();
    node.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
