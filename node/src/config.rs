//! Settings every node shares, from flags or `SECRETLOG_*` environment variables: the log and
//! its keys ([`LogConfig`]), the HTTP listener ([`HttpConfig`]) and the read modes. Secrets never
//! come from flags: the root key is read from `SECRETLOG_ROOT_KEY` or a file.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use secretlog_schemas::topic::MUTATIONS_TOPIC;

/// Default bootstrap servers: the local three-broker cluster of `secretlog kafka up`.
pub(crate) const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094";

/// How a read is answered when it names no mode (`X-Secretlog-Consistency` names one per read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadMode {
    /// This node's applied state, within `--max-staleness` of the log's end.
    Latest,
    /// `latest`, and a token's reads wait for the writes this reader forwarded for it.
    Session,
    /// Linearizable: wait until this node applied the log's end as queried after the read came.
    Strong,
}

impl std::str::FromStr for ReadMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <ReadMode as ValueEnum>::from_str(s.trim(), true)
            .map_err(|_| format!("unknown consistency {s:?}: expected strong, session or latest"))
    }
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
    /// The init record (`seal.json`) written by `secretlog init`. A node given it and no key
    /// starts sealed and is unsealed at runtime with key shares (`PUT /v1/sys/unseal`); a key
    /// given directly is checked against it.
    #[arg(long, env = "SECRETLOG_SEAL_CONFIG")]
    pub seal_config: Option<PathBuf>,
    /// In-memory cache size, MiB: the value cache in front of the store; SlateDB's block and
    /// index caches get a quarter and an eighth of it besides.
    #[arg(long, env = "SECRETLOG_CACHE_MEMORY_MB", default_value_t = 64)]
    pub cache_memory_mb: usize,
    /// Object store holding snapshots (`file:///dir` or `s3://bucket/prefix`, S3 credentials from
    /// the environment). A node with an empty disk starts from the newest snapshot there and
    /// consumes only the log after it.
    #[arg(long, env = "SECRETLOG_OBJECT_STORE")]
    pub object_store: Option<String>,
    /// On-disk cache size, MiB: values that reads brought in, kept once memory evicts them (what
    /// a commit writes through stays in memory only; SlateDB holds it). 0 disables the disk tier.
    #[arg(long, env = "SECRETLOG_CACHE_DISK_MB", default_value_t = 256)]
    pub cache_disk_mb: usize,
    /// Audit log: every request and response as a JSON line appended to this file, tokens and
    /// secret values replaced by HMAC-SHA256 under a key derived from the root key. Unset, nothing
    /// is audited. A request whose audit entry cannot be written is refused (503) unless
    /// `--audit-fail-open`.
    /// The file is reopened on SIGHUP (`secretlog audit reopen` sends it), so logrotate's
    /// rename-then-signal works.
    #[arg(long, env = "SECRETLOG_AUDIT_FILE")]
    pub audit_file: Option<PathBuf>,
    /// Rotate the audit file once it holds this many bytes: it becomes `PATH.1`, older ones move
    /// to `PATH.2` ... up to `--audit-keep` (the oldest is deleted), and a new `PATH` is started.
    /// 0: never (rotate it with logrotate and SIGHUP instead).
    #[arg(long, env = "SECRETLOG_AUDIT_MAX_BYTES", default_value_t = 0)]
    pub audit_max_bytes: u64,
    /// Rotated audit files kept with `--audit-max-bytes` (`PATH.1` ... `PATH.N`), at least 1.
    #[arg(long, env = "SECRETLOG_AUDIT_KEEP", default_value_t = 5)]
    pub audit_keep: u32,
    /// DANGEROUS: serve requests even when their audit entry cannot be written (a full disk then
    /// silently turns auditing off). Failures are still counted in
    /// `secretlog_audit_failures_total`.
    #[arg(long, env = "SECRETLOG_AUDIT_FAIL_OPEN")]
    pub audit_fail_open: bool,
    /// Audit log to a Kafka topic as well (or instead): every entry is produced with acks=all
    /// to this existing topic (same bootstrap servers and client properties as the log), and a
    /// request runs only once an audit sink has recorded its entry. With several sinks, one
    /// recording it is enough (Vault's rule); with none, 503 unless `--audit-fail-open`.
    #[arg(long, env = "SECRETLOG_AUDIT_KAFKA_TOPIC")]
    pub audit_kafka_topic: Option<String>,
    /// How long an audit entry may take to be acknowledged by Kafka before that sink counts as
    /// failed for it, ms.
    #[arg(long, env = "SECRETLOG_AUDIT_KAFKA_TIMEOUT_MS", default_value_t = 5000)]
    pub audit_kafka_timeout_ms: u64,
    /// librdkafka properties for every Kafka client of this node: `key=value` lines such as
    /// `security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-512`, `sasl.username=...`,
    /// `ssl.ca.location=...`. Secrets come from the environment (`SECRETLOG_KAFKA_SASL_PASSWORD`,
    /// `SECRETLOG_KAFKA_SSL_KEY_PASSWORD`, `SECRETLOG_KAFKA_SSL_KEYSTORE_PASSWORD`,
    /// `SECRETLOG_KAFKA_OAUTHBEARER_CLIENT_SECRET`) or this file (mode 0600), never from a flag,
    /// and are never logged. Settings secretlog's guarantees rest on (isolation.level,
    /// enable.auto.commit, acks, enable.idempotence, transactional.id, ...) are refused at start.
    #[arg(long, env = "SECRETLOG_KAFKA_CONFIG")]
    pub kafka_config: Option<PathBuf>,
}

/// The HTTP listener every node shares: TLS, and the limits that protect it (see
/// `docs/operations.md`, "TLS" and "Request limits"). Certificates and keys are named by file,
/// never passed inline, so no key material is ever on a command line.
#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// PEM certificate chain (leaf first) to serve HTTPS with, together with `--tls-key`. Unset,
    /// the node serves plain HTTP. Replaced files are picked up without a restart (checked every
    /// `--tls-reload-interval-ms`, and at once on SIGHUP); a new pair that does not load is
    /// refused with an error in the log and the old one stays in use.
    #[arg(long, env = "SECRETLOG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(long, env = "SECRETLOG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate and key files are checked for a replacement, ms.
    #[arg(long, env = "SECRETLOG_TLS_RELOAD_INTERVAL_MS", default_value_t = 5000)]
    pub tls_reload_interval_ms: u64,
    /// PEM file of CA certificates trusted, besides the system's, when this node calls another
    /// over HTTPS (a reader or standby forwarding to the leader). Vault's `VAULT_CACERT`.
    #[arg(long, env = "SECRETLOG_CACERT")]
    pub tls_ca: Option<PathBuf>,
    /// Largest request head (request line and headers), bytes; larger gets 431.
    #[arg(long, env = "SECRETLOG_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Requests per second one token may make to this node (a token bucket keyed by the token's
    /// hash); over it, 429 with `Retry-After`. 0 turns the limit off.
    #[arg(long, env = "SECRETLOG_RATE_LIMIT_PER_TOKEN", default_value_t = 50_000.0)]
    pub rate_limit_per_token: f64,
    /// Burst a token may spend at once, requests (0: one second's worth of the rate).
    #[arg(long, env = "SECRETLOG_RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,
    /// Bulkhead: KV reads (GET, LIST) served at once; more wait in the group's queue.
    #[arg(long, env = "SECRETLOG_MAX_CONCURRENT_KV_READ", default_value_t = 1024)]
    pub max_concurrent_kv_read: usize,
    /// Bulkhead: KV writes (POST, PUT, PATCH, DELETE; forwarded ones included) served at once.
    #[arg(long, env = "SECRETLOG_MAX_CONCURRENT_KV_WRITE", default_value_t = 512)]
    pub max_concurrent_kv_write: usize,
    /// Bulkhead: `/v1/sys/*` requests (policies, seal, ...; not health) served at once.
    #[arg(long, env = "SECRETLOG_MAX_CONCURRENT_SYS", default_value_t = 128)]
    pub max_concurrent_sys: usize,
    /// Bulkhead: `/v1/auth/*` requests (token create, lookup, renew, revoke) served at once.
    #[arg(long, env = "SECRETLOG_MAX_CONCURRENT_AUTH", default_value_t = 128)]
    pub max_concurrent_auth: usize,
    /// Requests that may wait for a slot in each bulkhead; past it, 503 at once.
    #[arg(long, env = "SECRETLOG_BULKHEAD_QUEUE", default_value_t = 1000)]
    pub bulkhead_queue: usize,
    /// Longest a request waits in a bulkhead's queue before 503, ms.
    #[arg(long, env = "SECRETLOG_BULKHEAD_QUEUE_TIMEOUT_MS", default_value_t = 5000)]
    pub bulkhead_queue_timeout_ms: u64,
}

impl HttpConfig {
    /// `https` when the node serves TLS, else `http` (for URLs it advertises).
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() { "https" } else { "http" }
    }
}
