//! Errors of the write path.

use secretlog_reader::ReaderError;
use secretlog_reader::api::ApiError;

/// What can stop a write; mapped to HTTP once, in `From<WriterError> for ApiError`.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("kafka transaction failed: {0}")]
    Transaction(String),
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
    Reader(#[from] ReaderError),
    #[error("root token file {path}: {source}")]
    TokenFile { path: String, source: std::io::Error },
}

impl From<WriterError> for ApiError {
    fn from(e: WriterError) -> Self {
        match e {
            WriterError::Reader(r) => r.into(),
            WriterError::Seal(_) | WriterError::TokenFile { .. } => {
                tracing::error!(error = %e, "internal error");
                ApiError::internal()
            }
            other => ApiError::unavailable(other.to_string()),
        }
    }
}
