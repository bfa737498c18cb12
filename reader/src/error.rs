//! Errors of the read node and the materializer.

use std::path::Path;

use secretlog_schemas::{DecodeError, KeyError, SealError};

use crate::state::ApplyError;

/// Everything that can go wrong inside a reader. [`crate::api::ApiError`] maps these to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
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

impl ReaderError {
    /// Whether a client should simply retry: Kafka unreachable or slow, the topic not there yet.
    /// Everything else is a halt, a bad configuration or a bug, for an operator to see.
    pub fn is_transient(&self) -> bool {
        matches!(self, ReaderError::Kafka(_) | ReaderError::Timeout { .. } | ReaderError::NoTopic { .. })
    }

    /// What kind of failure this is for a client: a halt, one to retry, or an internal one
    /// (mapped to a status in one place: `api::ErrorKind`).
    pub fn kind(&self) -> crate::api::ErrorKind {
        match self {
            ReaderError::Halted { .. } => crate::api::ErrorKind::Halted,
            _ if self.is_transient() => crate::api::ErrorKind::Transient,
            _ => crate::api::ErrorKind::Internal,
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ReaderError::Io { path: path.display().to_string(), source }
    }
}
