//! What can go wrong in a node's state and its opening, and the kind of failure a client is told.

use std::path::Path;

use secretlog_schemas::{DecodeError, KeyError, SealError};

use crate::model::ApplyError;

/// Everything that can go wrong in a node's state, its store, its log and its opening. The node
/// runtime's `ApiError` tells a client its [`ErrorKind`]; the detail stays in the log.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("I/O error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("local state store: {0}")]
    Storage(#[from] slatedb::Error),
    #[error("value cache: {0}")]
    Cache(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("object store: {0}")]
    Objects(#[from] object_store::Error),
    /// State this node could not print as JSON to store it (a bug).
    #[error("encoding {what}: {source}")]
    Encode { what: &'static str, source: serde_json::Error },
    /// A blocking task (a Kafka metadata query, closing the store) panicked or was cancelled.
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("partition {partition} halted at offset {offset}: {reason}")]
    Halted { partition: i32, offset: i64, reason: String },
    #[error("record at partition {partition} offset {offset} rejected: {source}")]
    Decode { partition: i32, offset: i64, source: DecodeError },
    #[error("record at partition {partition} offset {offset} cannot be applied: {source}")]
    Apply { partition: i32, offset: i64, source: ApplyError },
    #[error(
        "event at partition {partition} offset {offset} comes from writer epoch {epoch}, older than epoch {max_epoch} already applied (a fenced writer's record)"
    )]
    StaleEpoch { partition: i32, offset: i64, epoch: u64, max_epoch: u64 },
    #[error("sealed value of {path} version {version}: {source}")]
    Seal { path: String, version: u64, source: SealError },
    #[error("root key: {0}")]
    Key(#[from] KeyError),
    #[error("configuration: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("the topic {topic} has no partitions or does not exist")]
    NoTopic { topic: String },
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
}

impl NodeError {
    /// Whether a client should simply retry: Kafka unreachable or slow, the topic not there yet.
    /// Everything else is a halt, a bad configuration or a bug, for an operator to see.
    pub fn is_transient(&self) -> bool {
        matches!(self, NodeError::Kafka(_) | NodeError::Timeout { .. } | NodeError::NoTopic { .. })
    }

    /// What kind of failure this is for a client: a halt, one to retry, or an internal one
    /// (mapped to a status in one place, by the node runtime).
    pub fn kind(&self) -> ErrorKind {
        match self {
            NodeError::Halted { .. } => ErrorKind::Halted,
            _ if self.is_transient() => ErrorKind::Transient,
            _ => ErrorKind::Internal,
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        NodeError::Io { path: path.display().to_string(), source }
    }
}

/// What went wrong, as the node decides it. The node runtime maps a kind to an HTTP status and a
/// `Retry-After` in one place (its `api::error::status` and `retry_after`). Domain errors say
/// their kind (`NodeError::kind`, the writer's `WriterError::kind`); handlers pick one; nothing
/// else chooses a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Input that is wrong by itself (and, as in Vault, a CAS mismatch): 400.
    InvalidRequest,
    /// No token, a wrong or expired one, or a capability the token lacks: 403.
    PermissionDenied,
    /// Nothing there, or no route to it: 404.
    NotFound,
    /// The path does not take that method: 405.
    MethodNotAllowed,
    /// This node has not applied the position the request asked for (and may not forward it):
    /// 412, as a Vault standby answers a client ahead of it.
    NotYetApplied,
    /// A body or value over its limit: 413.
    TooLarge,
    /// A body in a type the endpoint does not take: 415.
    UnsupportedMediaType,
    /// The token spent its rate; it may come back after that many seconds: 429.
    RateLimited { retry_after_secs: u32 },
    /// A request head over its limit: 431.
    HeadersTooLarge,
    /// A bug or an unexpected failure; details go to the log, never to the client: 500.
    Internal,
    /// Worth retrying in a moment (Kafka unavailable, no leader yet, overloaded): 503 with
    /// `Retry-After: 1`.
    Transient,
    /// The node holds no key (Vault's "Vault is sealed"): 503, no `Retry-After` — an operator
    /// must unseal it.
    Sealed,
    /// A partition stopped at a record it cannot apply: 503, no `Retry-After` — nothing changes
    /// until an operator repairs the log.
    Halted,
}
