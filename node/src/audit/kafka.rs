//! The Kafka audit sink: every entry is one record on an audit topic, produced with `acks=all`
//! and idempotence, through the same bootstrap servers and client properties (SASL, TLS) as the
//! node's log. An entry counts as recorded only once the brokers acknowledged it.
//!
//! The topic is not created here: the operator creates it (replicated like the log, retention as
//! the audit policy wants), and a node whose topic is missing says so at start — and, with no
//! other sink, refuses every request, which is what an audit device that cannot record must do.

use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};

use secretlog_state::error::NodeError;
use secretlog_state::kafka::{LogContext, client_config};

/// A producer bound to the audit topic.
pub(crate) struct KafkaSink {
    producer: FutureProducer<LogContext>,
    topic: String,
    timeout: Duration,
}

impl KafkaSink {
    /// A sink producing to `topic`; an entry not acknowledged within `timeout` counts as not
    /// recorded by this sink.
    pub fn new(bootstrap: &str, topic: &str, timeout: Duration) -> Result<KafkaSink, NodeError> {
        let ms = timeout.as_millis().max(1).to_string();
        let producer = client_config(bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", &ms)
            .set("linger.ms", "0")
            // Bounded: while Kafka is down, entries fail fast instead of piling up.
            .set("queue.buffering.max.messages", "100000")
            .set("socket.keepalive.enable", "true")
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "1000")
            .create_with_context(LogContext)
            .map_err(|e| NodeError::Config {
                field: "audit-kafka-topic",
                reason: format!("cannot create the audit producer: {e}"),
            })?;
        Ok(KafkaSink { producer, topic: topic.to_string(), timeout })
    }

    /// The audit topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Enqueue `line` now (keyed by `key`); the future resolves once the brokers acknowledged it
    /// (`acks=all`), or with why not.
    pub fn send(&self, line: &[u8], key: &str) -> BoxFuture<'static, Result<(), String>> {
        // The line ends in '\n' for files; a record is the JSON object alone.
        let payload = line.strip_suffix(b"\n").unwrap_or(line);
        let record = FutureRecord::to(&self.topic).key(key.as_bytes()).payload(payload);
        let delivery = match self.producer.send_result(record) {
            Ok(d) => d,
            Err((e, _)) => return Box::pin(std::future::ready(Err(format!("cannot enqueue: {e}")))),
        };
        // librdkafka fails the record after `message.timeout.ms`; the extra second only guards
        // against a delivery report that never comes.
        let guard = self.timeout + Duration::from_secs(1);
        Box::pin(async move {
            match tokio::time::timeout(guard, delivery).await {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err((e, _)))) => Err(e.to_string()),
                Ok(Err(_)) => Err("delivery report lost (producer closed)".into()),
                Err(_) => Err(format!("not acknowledged within {guard:?}")),
            }
        })
    }

    /// Look the topic up once, off the request path, and say loudly if it is not there (every
    /// entry to it would fail). Kafka being unreachable at start is not reported here: the
    /// node's other Kafka clients say so, and entries fail (and are counted) until it is back.
    pub(crate) fn check_topic_in_background(&self, bootstrap: String) {
        let topic = self.topic.clone();
        let spawned = std::thread::Builder::new().name("audit-topic-check".into()).spawn(move || {
            match secretlog_state::kafka::partition_count(&bootstrap, &topic, Duration::from_secs(10)) {
                Ok(n) => tracing::info!(%topic, partitions = n, "audit topic found"),
                Err(NodeError::NoTopic { .. }) => tracing::error!(
                    %topic,
                    "the audit topic does not exist: no audit entry can be recorded there (create it, replicated \
                     like the log); without another audit sink every request is refused"
                ),
                Err(e) => tracing::warn!(%topic, error = %e, "cannot check the audit topic yet"),
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the audit topic check");
        }
    }
}
