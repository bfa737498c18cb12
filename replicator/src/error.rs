//! Errors of the replicator.

use secretlog_state::NodeError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("object store: {0}")]
    Objects(#[from] object_store::Error),
    /// The snapshot's manifest could not be printed (a bug).
    #[error("snapshot manifest: {0}")]
    Manifest(#[source] serde_json::Error),
    /// The Kafka cluster's id, which the archive is tied to, was not known in time.
    #[error("the Kafka cluster id is not known yet")]
    NoClusterId,
    /// A blocking task (snapshot encoding, a Kafka metadata query) panicked or was cancelled.
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the API listener: {0}")]
    Listener(#[source] std::io::Error),
    /// The object store prefix belongs to another Kafka cluster or topic: retrying cannot help.
    #[error("{0}")]
    ForeignStore(String),
    #[error("snapshot format: {0}")]
    Format(#[from] secretlog_schemas::archive::FormatError),
    #[error(transparent)]
    Reader(#[from] NodeError),
}
