//! The replicator's configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use secretlog_node::config::HttpConfig;
use secretlog_node::config::LogConfig;

/// `secretlog-replicator` / `secretlog replicator`.
#[derive(Debug, Clone, Args)]
pub struct ReplicatorConfig {
    /// Address to serve health, metrics and on-demand snapshots on.
    #[arg(long, env = "SECRETLOG_REPLICATOR_LISTEN", default_value = "127.0.0.1:8400")]
    pub listen: SocketAddr,
    /// Directory for the replicator's own materialized state (the source of snapshots).
    #[arg(long, env = "SECRETLOG_REPLICATOR_DATA_DIR", default_value = "./.secretlog/replicator")]
    pub data_dir: PathBuf,
    /// Flush an archive segment once it holds this many records...
    #[arg(long, env = "SECRETLOG_SEGMENT_MAX_RECORDS", default_value_t = 1000)]
    pub segment_max_records: usize,
    /// ...or once its oldest record is this old, ms.
    #[arg(long, env = "SECRETLOG_SEGMENT_FLUSH_MS", default_value_t = 1000)]
    pub segment_flush_ms: u64,
    /// Seconds between scheduled snapshots (0: only on demand).
    #[arg(long, env = "SECRETLOG_SNAPSHOT_INTERVAL_SECS", default_value_t = 3600)]
    pub snapshot_interval_secs: u64,
    /// Retention: always keep this many newest snapshots (the SOAR runbook keeps 5)...
    #[arg(long, env = "SECRETLOG_KEEP_SNAPSHOTS", default_value_t = 5)]
    pub keep_snapshots: usize,
    /// ...and every snapshot younger than this many seconds.
    #[arg(long, env = "SECRETLOG_KEEP_SNAPSHOTS_SECS", default_value_t = 86_400)]
    pub keep_snapshots_secs: u64,
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

impl ReplicatorConfig {
    /// The object store URL: the configured one, or `file://DATA_DIR/objects`.
    pub fn object_store_url(&self) -> String {
        self.log.object_store.clone().unwrap_or_else(|| {
            let dir =
                std::path::absolute(self.data_dir.join("objects")).unwrap_or_else(|_| self.data_dir.join("objects"));
            format!("file://{}", dir.display())
        })
    }
}
