//! The reader's configuration: one struct, from flags or `SECRETLOG_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use secretlog_node::config::{HttpConfig, LogConfig, ReadMode};

/// What a reader does when a read's consistency token is not reached within the wait bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnStale {
    /// Forward the read to the leader writer, which has the write.
    Forward,
    /// Answer 412 Precondition Failed; the client may retry elsewhere.
    Fail,
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
    /// Consistency of reads that do not choose one with `X-Secretlog-Consistency`: `session`
    /// (read-your-writes for the writes this reader forwarded for the same token), `strong`
    /// (linearizable: every read waits for a query of the log's end) or `latest`.
    #[arg(long, env = "SECRETLOG_CONSISTENCY", value_enum, default_value = "session")]
    pub consistency: ReadMode,
    /// Longest time, in seconds, since this reader last confirmed (by a last-stable-offset query
    /// it then caught up with) that it had applied the log's end, for it to answer from its own
    /// state. Past it, reads are forwarded to the leader (`--on-stale forward`) or refused with
    /// 503 saying why (`fail`), and health reports it.
    #[arg(long, env = "SECRETLOG_MAX_STALENESS", default_value_t = 10.0)]
    pub max_staleness: f64,
    /// Tokens whose forwarded writes this reader remembers for session reads; beyond it, the
    /// oldest entries become a position every session read waits for.
    #[arg(long, env = "SECRETLOG_SESSION_MAX_TOKENS", default_value_t = 100_000)]
    pub session_max_tokens: usize,
    /// Lag, in seconds, above which health reports the reader unhealthy (503).
    #[arg(long, env = "SECRETLOG_MAX_LAG_SECONDS", default_value_t = 10.0)]
    pub max_lag_seconds: f64,
    /// Largest request body accepted, bytes.
    #[arg(long, env = "SECRETLOG_MAX_REQUEST_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_request_bytes: u64,
    #[command(flatten)]
    pub http: HttpConfig,
    #[command(flatten)]
    pub log: LogConfig,
}
