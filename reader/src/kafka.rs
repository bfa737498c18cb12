//! Kafka client settings shared by every secretlog process that reads the log.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use crate::error::ReaderError;

/// Environment variable every secretlog process reads its Kafka bootstrap servers from.
pub const BOOTSTRAP_ENV: &str = "KAFKA_BOOTSTRAP_SERVERS";

/// A consumer configuration with secretlog's non-negotiable settings:
/// `isolation.level=read_committed` (never see an aborted or uncommitted write),
/// `enable.auto.commit=false` (positions live in SlateDB with the state),
/// `auto.offset.reset=error` (librdkafka's default would silently skip history).
pub fn consumer_config(bootstrap: &str, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "true")
        .set("fetch.error.backoff.ms", "50")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("socket.keepalive.enable", "true");
    c
}

/// Number of partitions of `topic`, asking the cluster.
pub fn partition_count(bootstrap: &str, topic: &str, timeout: Duration) -> Result<i32, ReaderError> {
    let consumer: BaseConsumer = consumer_config(bootstrap, "secretlog-metadata").create()?;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if n == 0 {
        return Err(ReaderError::NoTopic { topic: topic.to_string() });
    }
    Ok(n)
}

/// The Kafka cluster's id (KRaft cluster id), waiting up to `timeout` for the cluster. Snapshots
/// and the archive are tied to it: offsets of one cluster mean nothing in another.
pub fn cluster_id(bootstrap: &str, timeout: Duration) -> Result<String, ReaderError> {
    let consumer: BaseConsumer = consumer_config(bootstrap, "secretlog-metadata").create()?;
    consumer.client().fetch_cluster_id(timeout).ok_or_else(|| ReaderError::Config {
        field: "kafka",
        reason: format!("no cluster id from {bootstrap} within {timeout:?}"),
    })
}

/// Client context of secretlog's consumers: reaching the end of a partition is routine (the
/// materializer asks for it, to know when it is caught up), so it is not logged as an error;
/// every other client error is logged with its reason.
#[derive(Clone, Default)]
pub struct LogContext;

impl ClientContext for LogContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for LogContext {}
