//! The writer's configuration: one struct, from flags or `SECRETLOG_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use secretlog_reader::LogConfig;
use secretlog_reader::config::HttpConfig;

/// `secretlog-writer` / `secretlog writer`.
#[derive(Debug, Clone, Args)]
pub struct WriterConfig {
    /// Address to serve HTTP on.
    #[arg(long, env = "SECRETLOG_WRITER_LISTEN", default_value = "127.0.0.1:8200")]
    pub listen: SocketAddr,
    /// URL other nodes reach this writer at; announced in the log when it becomes leader, so
    /// standbys and readers forward writes there. Default: `http://` + the listen address.
    #[arg(long, env = "SECRETLOG_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Directory for the writer's own materialized state and the root token file.
    #[arg(long, env = "SECRETLOG_WRITER_DATA_DIR", default_value = "./.secretlog/writer")]
    pub data_dir: PathBuf,
    /// Kafka `transactional.id` of the logical writer: every writer instance uses the same one,
    /// so a new leader fences the previous one.
    #[arg(long, env = "SECRETLOG_TRANSACTIONAL_ID", default_value = "secretlog-writer")]
    pub transactional_id: String,
    /// Session timeout of the leader election, ms: how long a leader that stopped heartbeating
    /// (killed, partitioned) keeps leadership before another writer takes over. The brokers'
    /// `group.min.session.timeout.ms` must be at most this.
    #[arg(long, env = "SECRETLOG_ELECTION_SESSION_TIMEOUT_MS", default_value_t = 2000)]
    pub election_session_timeout_ms: u64,
    /// Heartbeat interval of the leader election, ms.
    #[arg(long, env = "SECRETLOG_ELECTION_HEARTBEAT_MS", default_value_t = 300)]
    pub election_heartbeat_ms: u64,
    /// File holding the bootstrap root token; created with mode 0600 on first start if the log
    /// has no root token yet. The token is never logged.
    #[arg(long, env = "SECRETLOG_ROOT_TOKEN_FILE")]
    pub root_token_file: Option<PathBuf>,
    /// Largest secret value (the JSON of `data`), bytes.
    #[arg(long, env = "SECRETLOG_MAX_VALUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,
    /// Most writes group-committed in one Kafka transaction.
    #[arg(long, env = "SECRETLOG_MAX_BATCH", default_value_t = 256)]
    pub max_batch: usize,
    /// Kafka transaction timeout, ms: how long a transaction of a dead leader can block readers
    /// before the broker aborts it.
    #[arg(long, env = "SECRETLOG_TRANSACTION_TIMEOUT_MS", default_value_t = 10_000)]
    pub transaction_timeout_ms: u64,
    /// How long a write may wait for Kafka before failing with 503, ms.
    #[arg(long, env = "SECRETLOG_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub log: LogConfig,
}

impl WriterConfig {
    /// The root token file: the configured one or `DATA_DIR/root-token`.
    pub fn root_token_path(&self) -> PathBuf {
        self.root_token_file.clone().unwrap_or_else(|| self.data_dir.join("root-token"))
    }
}
