//! Leader election with Kafka's own coordination: every writer joins one consumer group on a
//! single-partition election topic; the member the group coordinator assigns that partition to is
//! the leader. No extra coordination service.
//!
//! * A leader killed -9 stops heartbeating; after `session_timeout` the coordinator rebalances
//!   and another writer is assigned the partition.
//! * A leader shutting down leaves the group (`unsubscribe` + close), so the rebalance starts at
//!   once and a rolling restart hands over in well under a second.
//! * Being elected is necessary, not sufficient: the new leader's transactional producer fences
//!   the previous one, so a deposed leader that has not noticed yet cannot commit anything.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::WriterError;

/// Election settings.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    pub bootstrap: String,
    /// The election topic (one partition).
    pub topic: String,
    /// Consumer group of the logical writer.
    pub group_id: String,
    /// How long a silent leader keeps leadership, ms (the broker's
    /// `group.min.session.timeout.ms` must allow it).
    pub session_timeout_ms: u64,
    /// Heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
}

/// Publishes leadership changes from librdkafka's rebalance callbacks.
struct ElectionContext {
    topic: String,
    tx: watch::Sender<bool>,
}

impl ElectionContext {
    fn names_election_partition(&self, tpl: &rdkafka::TopicPartitionList) -> bool {
        tpl.elements_for_topic(&self.topic).iter().any(|e| e.partition() == 0)
    }
}

impl ClientContext for ElectionContext {
    fn error(&self, error: KafkaError, reason: &str) {
        secretlog_reader::kafka::log_client_error("election", &error, reason);
    }
}

impl ConsumerContext for ElectionContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Stop leading *before* the partition is handed on. With the cooperative protocol a
        // revocation lists only what is taken away, so it concerns us only if it names the
        // election partition.
        let lost = match rebalance {
            Rebalance::Revoke(tpl) => self.names_election_partition(tpl),
            Rebalance::Error(e) => {
                // librdkafka reports a lost assignment as a revocation; an error alone leaves
                // the assignment as it is. (Should we be wrong, the next leader's producer
                // fences ours: nothing can be committed twice.)
                tracing::warn!(error = %e, "rebalance error");
                false
            }
            Rebalance::Assign(_) => false,
        };
        if lost && *self.tx.borrow() {
            tracing::warn!("leadership revoked");
            self.tx.send_replace(false);
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // An incremental assignment lists only what is added: it can make us leader, never
        // unmake us.
        if let Rebalance::Assign(tpl) = rebalance
            && self.names_election_partition(tpl)
        {
            tracing::info!("elected leader");
            self.tx.send_replace(true);
        }
    }
}

/// Create the election topic if it does not exist: one partition, replicated like the log.
pub async fn ensure_election_topic(bootstrap: &str, topic: &str) -> Result<(), WriterError> {
    let admin: AdminClient<DefaultClientContext> = secretlog_reader::kafka::client_config(bootstrap)
        .create()
        .map_err(|e| WriterError::NotReady(format!("admin client: {e}")))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2")
        .set("unclean.leader.election.enable", "false");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| WriterError::NotReady(format!("creating {topic}: {e}")))?;
    for r in res {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(WriterError::NotReady(format!("creating election topic {t}: {code}"))),
        }
    }
    Ok(())
}

/// Join the election. The receiver says whether this writer is the leader right now. The group
/// is left when `cancel` fires.
pub fn spawn(
    cfg: ElectionConfig,
    cancel: CancellationToken,
) -> Result<(watch::Receiver<bool>, tokio::task::JoinHandle<()>), WriterError> {
    let (tx, rx) = watch::channel(false);
    let consumer: StreamConsumer<ElectionContext> = secretlog_reader::kafka::client_config(&cfg.bootstrap)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", cfg.heartbeat_interval_ms.to_string())
        // Sticky: a writer joining (a standby restarting) never takes leadership from a healthy
        // leader; only a leader that leaves or goes silent is replaced.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .create_with_context(ElectionContext { topic: cfg.topic.clone(), tx: tx.clone() })
        .map_err(|e| WriterError::NotReady(format!("election consumer: {e}")))?;
    consumer.subscribe(&[&cfg.topic]).map_err(|e| WriterError::NotReady(format!("joining the election: {e}")))?;
    let join = tokio::spawn(async move {
        loop {
            // Polling drives heartbeats and rebalance callbacks; the topic carries no records.
            tokio::select! {
                _ = cancel.cancelled() => break,
                m = consumer.recv() => {
                    if let Err(e) = m {
                        tracing::debug!(error = %e, "election poll");
                    }
                }
            }
        }
        tx.send_replace(false);
        consumer.unsubscribe();
        drop(consumer); // closes the consumer: leaves the group, so a successor is chosen now
        tracing::info!("left the leader election");
    });
    Ok((rx, join))
}

/// Append this writer's claim to lead (its URL) to the election topic, replicated (acks=all), and
/// return the claim's offset: the log-given part of the leader epoch (`crate::epoch`). Claims
/// are never read back; their offsets only ever grow.
pub async fn claim(bootstrap: &str, topic: &str, leader_url: &str, timeout: Duration) -> Result<i64, WriterError> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer<secretlog_reader::kafka::LogContext> =
        crate::producer::idempotent_config(bootstrap, timeout.as_millis() as u64)
            .create_with_context(secretlog_reader::kafka::LogContext)
            .map_err(|e| WriterError::NotReady(format!("claim producer: {e}")))?;
    let record = FutureRecord::<[u8], [u8]>::to(topic).payload(leader_url.as_bytes()).partition(0);
    match producer.send(record, timeout).await {
        Ok(d) => Ok(d.offset),
        Err((e, _)) => Err(WriterError::NotReady(format!("appending the leadership claim: {e}"))),
    }
}
