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
    Storage(String),
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

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ReaderError::Io { path: path.display().to_string(), source }
    }
}
