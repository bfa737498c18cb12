//! Errors of the write path.

use secretlog_node::api::{ApiError, ErrorKind};
use secretlog_state::NodeError;

/// What can stop a write; mapped to HTTP once, in `From<WriterError> for ApiError`.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// A step of producing to the log failed (creating the producer, `init_transactions`,
    /// begin, enqueue, commit, a delivery).
    #[error("kafka {step}: {source}")]
    Kafka { step: &'static str, source: rdkafka::error::KafkaError },
    /// Every producer of the reseed's ring is in a transaction.
    #[error("more concurrent transactions than producers")]
    RingExhausted,
    /// A blocking producer call panicked or was cancelled.
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("this writer was fenced by a newer leader; it no longer accepts writes")]
    Fenced,
    #[error("the writer is not ready: {0}")]
    NotReady(String),
    #[error("write timed out after {ms} ms waiting for {what}")]
    Timeout { what: &'static str, ms: u64 },
    #[error("partition {partition} is halted; writes to its keys are refused until it is repaired")]
    PartitionHalted { partition: i32 },
    #[error("sealing failed: {0}")]
    Seal(#[from] secretlog_schemas::SealError),
    #[error(transparent)]
    Reader(#[from] NodeError),
    #[error("root token file {path}: {source}")]
    TokenFile { path: String, source: std::io::Error },
}

impl WriterError {
    /// What kind of failure this is for a client (mapped to a status in one place:
    /// `secretlog_state::ErrorKind`): a failure of the log or of leadership is worth a
    /// retry, a halted partition is not, a sealing or token-file failure is internal.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WriterError::Reader(r) => r.kind(),
            WriterError::Seal(_) | WriterError::TokenFile { .. } => ErrorKind::Internal,
            // Nothing changes for its keys until an operator repairs the log: no retry in a second.
            WriterError::PartitionHalted { .. } => ErrorKind::Halted,
            WriterError::RingExhausted | WriterError::Task(_) => ErrorKind::Internal,
            WriterError::Kafka { .. }
            | WriterError::Fenced
            | WriterError::NotReady(_)
            | WriterError::Timeout { .. } => ErrorKind::Transient,
        }
    }
}

impl From<WriterError> for ApiError {
    fn from(e: WriterError) -> Self {
        ApiError::of_domain(e.kind(), e.to_string())
    }
}
