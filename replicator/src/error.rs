//! Errors of the replicator.

use secretlog_reader::ReaderError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("object store: {0}")]
    Objects(String),
    #[error("the API listener: {0}")]
    Listener(#[source] std::io::Error),
    /// The object store prefix belongs to another Kafka cluster or topic: retrying cannot help.
    #[error("{0}")]
    ForeignStore(String),
    #[error("snapshot format: {0}")]
    Format(#[from] secretlog_schemas::archive::FormatError),
    #[error(transparent)]
    Reader(#[from] ReaderError),
}
