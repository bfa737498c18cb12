//! The reader's configuration: one struct, from flags or `SECRETLOG_*` environment variables.
//! Secrets never come from flags: the root key is read from `SECRETLOG_ROOT_KEY` or a file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use secretlog_schemas::topic::MUTATIONS_TOPIC;

/// Default bootstrap servers: the local three-broker cluster of `secretlog kafka up`.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094";

/// What a reader does when a read's consistency token is not reached within the wait bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnStale {
    /// Forward the read to the leader writer, which has the write.
    Forward,
    /// Answer 412 Precondition Failed; the client may retry elsewhere.
    Fail,
}

/// Settings every node that reads the log shares (readers, and writers for their own state).
#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = DEFAULT_BOOTSTRAP)]
    pub bootstrap: String,
    /// The mutation topic.
    #[arg(long, env = "SECRETLOG_TOPIC", default_value = MUTATIONS_TOPIC)]
    pub topic: String,
    /// KV v2 mount served.
    #[arg(long, env = "SECRETLOG_MOUNT", default_value = "secret")]
    pub mount: String,
    /// File holding the root key (hex or base64 of 32 bytes). `SECRETLOG_ROOT_KEY` takes
    /// precedence; without either the node stays sealed.
    #[arg(long, env = "SECRETLOG_ROOT_KEY_FILE")]
    pub root_key_file: Option<PathBuf>,
    /// In-memory cache size, MiB.
    #[arg(long, env = "SECRETLOG_CACHE_MEMORY_MB", default_value_t = 64)]
    pub cache_memory_mb: usize,
    /// Object store holding snapshots (`file:///dir` or `s3://bucket/prefix`, S3 credentials from
    /// the environment). A node with an empty disk starts from the newest snapshot there and
    /// consumes only the log after it.
    #[arg(long, env = "SECRETLOG_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// On-disk cache size, MiB (0 disables the disk tier).
    #[arg(long, env = "SECRETLOG_CACHE_DISK_MB", default_value_t = 256)]
    pub cache_disk_mb: usize,
    /// Audit log: every request and response as a JSON line appended to this file, tokens and
    /// secret values replaced by HMAC-SHA256 under a key derived from the root key. Unset, nothing
    /// is audited. A request whose audit entry cannot be written is refused (503) unless
    /// `--audit-fail-open`.
    #[arg(long, env = "SECRETLOG_AUDIT_FILE")]
    pub audit_file: Option<PathBuf>,
    /// DANGEROUS: serve requests even when their audit entry cannot be written (a full disk then
    /// silently turns auditing off). Failures are still counted in
    /// `secretlog_audit_failures_total`.
    #[arg(long, env = "SECRETLOG_AUDIT_FAIL_OPEN")]
    pub audit_fail_open: bool,
}

/// `secretlog-reader` / `secretlog reader`.
#[derive(Debug, Clone, Args)]
pub struct ReaderConfig {
    /// Address to serve HTTP on.
    #[arg(long, env = "SECRETLOG_READER_LISTEN", default_value = "127.0.0.1:8300")]
    pub listen: SocketAddr,
    /// Region label, reported in health and metrics.
    #[arg(long, env = "SECRETLOG_REGION", default_value = "local")]
    pub region: String,
    /// Directory for SlateDB state and the disk cache.
    #[arg(long, env = "SECRETLOG_READER_DATA_DIR", default_value = "./.secretlog/reader")]
    pub data_dir: PathBuf,
    /// Writer URLs that writes (and stale reads) are forwarded to, tried in order.
    #[arg(
        long = "writer-url",
        env = "SECRETLOG_WRITER_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8200"
    )]
    pub writer_urls: Vec<String>,
    /// How long a read carrying `X-Secretlog-Index` waits for this reader to catch up, ms.
    #[arg(long, env = "SECRETLOG_CONSISTENCY_WAIT_MS", default_value_t = 2000)]
    pub consistency_wait_ms: u64,
    /// What to do when that wait runs out.
    #[arg(long, env = "SECRETLOG_ON_STALE", value_enum, default_value = "forward")]
    pub on_stale: OnStale,
    /// Lag, in seconds, above which health reports the reader unhealthy (503).
    #[arg(long, env = "SECRETLOG_MAX_LAG_SECONDS", default_value_t = 10.0)]
    pub max_lag_seconds: f64,
    /// Largest request body accepted, bytes.
    #[arg(long, env = "SECRETLOG_MAX_REQUEST_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_request_bytes: u64,
    #[command(flatten)]
    pub log: LogConfig,
}
