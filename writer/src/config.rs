//! The writer's configuration: one struct, from flags or `SECRETLOG_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use secretlog_node::config::HttpConfig;
use secretlog_node::config::LogConfig;

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
    /// Most writes decided and sent together as one batch.
    #[arg(long, env = "SECRETLOG_MAX_BATCH", default_value_t = 256)]
    pub max_batch: usize,
    /// Most batches in flight at once (1 to 64), on disjoint secrets: sent and waiting for the
    /// leader's own materializer to apply them. 1 was the fastest on a two-core machine running
    /// the brokers too: more concurrent produce requests made librdkafka's broker threads spin
    /// and every produce slower (docs/benchmarks.md, "Acknowledged on apply").
    #[arg(long = "max-batches-in-flight", env = "SECRETLOG_MAX_BATCHES_IN_FLIGHT", default_value_t = 1,
          value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u8).range(1..=crate::committer::MAX_IN_FLIGHT as i64), usize::from))]
    pub max_in_flight: usize,
    /// Kafka transaction timeout, ms, of the transactional producers a new leader fences (earlier
    /// releases' and `secretlog reseed`'s): how long such a transaction can block readers.
    #[arg(long, env = "SECRETLOG_TRANSACTION_TIMEOUT_MS", default_value_t = 10_000)]
    pub transaction_timeout_ms: u64,
    /// How long a write may wait for Kafka before failing with 503, ms.
    #[arg(long, env = "SECRETLOG_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
    /// How long a write that arrives while no leader can take it (this writer between two terms
    /// of its own, a takeover under way, the announced leader unreachable) waits for one, ms,
    /// before failing with 503. Covers a takeover (the election's session timeout and the new
    /// leader's fencing) without reaching the readers' 30 s forwarding timeout or a client's own.
    #[arg(long, env = "SECRETLOG_LEADER_WAIT_MS", default_value_t = 5_000)]
    pub leader_wait_ms: u64,
    /// Most values per second the leader's background rewrap moves to the active key term after
    /// a rotation. 0 starts the rewrap paused. Changed at runtime, on the leader, with
    /// `secretlog rotate --rewrap-rate N` or `POST /v1/sys/secretlog/rewrap {"rate": N}` (0
    /// pauses); a writer that becomes leader starts from its own setting.
    #[arg(
        long,
        env = crate::rotate::REWRAP_RATE_ENV,
        value_name = "VALUES_PER_SEC",
        default_value_t = crate::rotate::DEFAULT_REWRAP_RATE,
        value_parser = crate::rotate::parse_rewrap_rate,
    )]
    pub rewrap_rate: u64,
    /// How often the leader tidies expired tokens out of every node's state (through the log,
    /// as `POST /v1/auth/token/tidy` does), seconds. 0: only when asked.
    #[arg(long, env = "SECRETLOG_TOKEN_TIDY_INTERVAL_SECS", value_name = "SECS", default_value_t = 3600)]
    pub token_tidy_interval_secs: u64,
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: WriterConfig,
    }

    #[test]
    fn batches_in_flight_default_to_one_and_stay_within_bounds() {
        let n = |args: &[&str]| {
            Cli::try_parse_from(["writer"].iter().chain(args)).map(|c| c.cfg.max_in_flight).map_err(|e| e.to_string())
        };
        if std::env::var_os("SECRETLOG_MAX_BATCHES_IN_FLIGHT").is_none() {
            assert_eq!(n(&[]), Ok(1));
        }
        assert_eq!(n(&["--max-batches-in-flight", "3"]), Ok(3));
        for bad in ["0", "65", "two"] {
            assert!(n(&["--max-batches-in-flight", bad]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_rewrap_rate_is_a_flag_with_its_environment_variable_and_default() {
        let cmd = Cli::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == "rewrap_rate").expect("--rewrap-rate");
        assert_eq!(arg.get_long(), Some("rewrap-rate"));
        assert_eq!(
            arg.get_env().and_then(|e| e.to_str()),
            Some("SECRETLOG_REWRAP_RATE"),
            "existing setups keep working"
        );
        assert_eq!(arg.get_default_values(), ["500"]);
        let rate = |args: &[&str]| {
            Cli::try_parse_from(["writer"].iter().chain(args)).map(|c| c.cfg.rewrap_rate).map_err(|e| e.to_string())
        };
        assert_eq!(rate(&["--rewrap-rate", "20"]), Ok(20));
        assert_eq!(rate(&["--rewrap-rate=0"]), Ok(0), "0 starts the rewrap paused");
        if std::env::var_os("SECRETLOG_REWRAP_RATE").is_none() {
            assert_eq!(rate(&[]), Ok(500));
        }
        for bad in ["-5", "fast", "2.5"] {
            let e = rate(&[&format!("--rewrap-rate={bad}")]).unwrap_err();
            assert!(e.contains("--rewrap-rate") && e.contains("is not a rewrap rate"), "{bad}: {e}");
        }
    }
}
