//! The Kafka-client side of the local cluster: topic creation and the readiness probe.
//!
//! Readiness is judged the way secretlog uses Kafka: a write acknowledged by acks=all on a topic
//! with RF=3 / min.insync.replicas=2. An open port or a registered broker is not enough.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use super::{KafkaError, NODE_IDS};

/// Topic written by the readiness probe; one partition per broker so each broker leads one.
pub(crate) const PROBE_TOPIC: &str = "secretlog-readiness-probe";
const PROBE_PARTITIONS: i32 = 3;
/// How long `ensure_topic` waits for a new topic to have leaders everywhere.
const TOPIC_VISIBLE_TIMEOUT: Duration = Duration::from_secs(30);

type Admin = AdminClient<DefaultClientContext>;

fn admin(bootstrap: &str) -> Result<Admin, KafkaError> {
    secretlog_state::kafka::client_config(bootstrap)
        .create()
        .map_err(|e| KafkaError::Client { op: format!("admin client for {bootstrap}"), source: e })
}

/// How long the mutation topic keeps records: 7 days. A decision, not a broker default
/// (docs/operations.md, "Kafka retention of the mutation topic"): history older than this lives
/// in object storage (the log archive for PITR, snapshots for bootstrap), so the log dirs stay
/// bounded; it must exceed the longest reader outage to survive without a rebuild (a reader whose
/// next record is gone halts on *offset out of range* — `auto.offset.reset=error`, nothing skipped
/// — and is rebuilt from the newest snapshot), and be far above the snapshot interval and the
/// archive lag.
pub const MUTATION_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// The topic settings [`ensure_topic`] creates the mutation topic with.
pub fn mutation_topic_config() -> [(&'static str, String); 5] {
    [
        ("min.insync.replicas", "2".into()),
        ("unclean.leader.election.enable", "false".into()),
        // Never `compact`: compaction drops records in the middle of a key's history, and the
        // log is the history readers, PITR and the archive replay.
        ("cleanup.policy", "delete".into()),
        ("retention.ms", MUTATION_RETENTION_MS.to_string()),
        // No size-based deletion: it drops records with no regard to their age.
        ("retention.bytes", "-1".into()),
    ]
}

/// Create a topic the way secretlog needs it: RF=3, `partitions` partitions, the settings of
/// [`mutation_topic_config`] (min.insync.replicas=2, unclean.leader.election.enable=false, an
/// explicit time retention). Idempotent (an existing topic is left as it is); returns once every
/// partition has a leader, so producers can start at once.
pub async fn ensure_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let admin = Arc::new(admin(bootstrap)?);
    let config = mutation_topic_config();
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(3));
    for (k, v) in &config {
        new = new.set(k, v);
    }
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| KafkaError::Client { op: format!("create topic {topic}"), source: e })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Topic { topic: name, code: code.to_string() });
            }
        }
    }
    let deadline = Instant::now() + TOPIC_VISIBLE_TIMEOUT;
    loop {
        let problem = match fetch_metadata(&admin, Some(topic)).await {
            Ok(md) => {
                let view = ClusterView::from_metadata(&md);
                let parts = view.partitions.iter().filter(|p| p.topic == topic).count();
                if parts > 0 && parts != partitions as usize {
                    tracing::warn!(
                        topic,
                        existing = parts,
                        wanted = partitions,
                        "topic exists with another partition count"
                    );
                }
                match view.check_leaders() {
                    Ok(()) if parts > 0 => return Ok(()),
                    Ok(()) => format!("topic {topic} not in metadata yet"),
                    Err(e) => e,
                }
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(KafkaError::Timeout {
                what: format!("leaders for topic {topic}"),
                timeout: TOPIC_VISIBLE_TIMEOUT,
                last_error: problem,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Blocking metadata fetch moved off the async executor.
async fn fetch_metadata(admin: &Arc<Admin>, topic: Option<&str>) -> Result<Metadata, KafkaError> {
    let admin = Arc::clone(admin);
    let topic = topic.map(str::to_owned);
    tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(topic.as_deref(), Duration::from_secs(5)))
        .await
        .map_err(|e| KafkaError::Internal(format!("metadata task failed: {e}")))?
        .map_err(|e| KafkaError::Client { op: "fetch metadata".into(), source: e })
}

/// One readiness attempt against any three-broker cluster at `bootstrap` (ours or, say, the test
/// harness's brokers in containers): all three brokers registered, every partition fully in sync,
/// an acks=all produce acknowledged on every partition of a probe topic. `Err` says what is not
/// ready yet.
pub async fn probe(bootstrap: &str, attempt_timeout: Duration) -> Result<(), String> {
    let admin = Arc::new(admin(bootstrap).map_err(|e| e.to_string())?);
    let md = fetch_metadata(&admin, None).await.map_err(|e| e.to_string())?;
    ClusterView::from_metadata(&md).check_brokers()?;
    ensure_topic(bootstrap, PROBE_TOPIC, PROBE_PARTITIONS).await.map_err(|e| e.to_string())?;
    let md = fetch_metadata(&admin, None).await.map_err(|e| e.to_string())?;
    let view = ClusterView::from_metadata(&md);
    view.check_brokers()?;
    view.check_topics()?;

    let producer: FutureProducer = secretlog_state::kafka::client_config(bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", attempt_timeout.as_millis().max(1000).to_string())
        .create()
        .map_err(|e| format!("creating probe producer: {e}"))?;
    let mut pending = Vec::new();
    for partition in 0..PROBE_PARTITIONS {
        let record = FutureRecord::to(PROBE_TOPIC).partition(partition).key("probe").payload("ready?");
        match producer.send_result(record) {
            Ok(fut) => pending.push((partition, fut)),
            Err((e, _)) => return Err(format!("probe partition {partition}: {e}")),
        }
    }
    let mut failures = Vec::new();
    for (partition, fut) in pending {
        match fut.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => failures.push(format!("partition {partition}: {e}")),
            Err(_) => failures.push(format!("partition {partition}: delivery report lost")),
        }
    }
    if failures.is_empty() { Ok(()) } else { Err(format!("acks=all probe failed: {}", failures.join("; "))) }
}

/// The parts of a metadata response readiness depends on (separate from rdkafka so the checks
/// are unit-testable).
#[derive(Debug, Default)]
pub(crate) struct ClusterView {
    pub(crate) brokers: Vec<i32>,
    pub(crate) partitions: Vec<PartitionView>,
    pub(crate) topic_errors: Vec<(String, String)>,
}

/// One partition's placement.
#[derive(Debug)]
pub(crate) struct PartitionView {
    pub(crate) topic: String,
    pub(crate) id: i32,
    pub(crate) leader: i32,
    pub(crate) replicas: Vec<i32>,
    pub(crate) isr: Vec<i32>,
    pub(crate) error: Option<String>,
}

impl ClusterView {
    fn from_metadata(md: &Metadata) -> Self {
        let mut view = ClusterView { brokers: md.brokers().iter().map(|b| b.id()).collect(), ..Default::default() };
        for t in md.topics() {
            if let Some(e) = t.error() {
                view.topic_errors.push((t.name().to_string(), format!("{e:?}")));
            }
            for p in t.partitions() {
                view.partitions.push(PartitionView {
                    topic: t.name().to_string(),
                    id: p.id(),
                    leader: p.leader(),
                    replicas: p.replicas().to_vec(),
                    isr: p.isr().to_vec(),
                    error: p.error().map(|e| format!("{e:?}")),
                });
            }
        }
        view
    }

    /// All three nodes registered and unfenced (fenced brokers are left out of metadata).
    pub(crate) fn check_brokers(&self) -> Result<(), String> {
        let have: BTreeSet<i32> = self.brokers.iter().copied().collect();
        let want: BTreeSet<i32> = NODE_IDS.iter().map(|n| *n as i32).collect();
        if have == want { Ok(()) } else { Err(format!("brokers in metadata {have:?}, want {want:?}")) }
    }

    /// Every partition has a leader (enough to produce to it).
    pub(crate) fn check_leaders(&self) -> Result<(), String> {
        if let Some((t, e)) = self.topic_errors.first() {
            return Err(format!("topic {t}: {e}"));
        }
        for p in &self.partitions {
            if let Some(e) = &p.error {
                return Err(format!("{}-{}: {e}", p.topic, p.id));
            }
            if p.leader < 0 {
                return Err(format!("{}-{} has no leader", p.topic, p.id));
            }
        }
        Ok(())
    }

    /// Every partition has a leader and its full replica set in sync.
    pub(crate) fn check_topics(&self) -> Result<(), String> {
        self.check_leaders()?;
        for p in &self.partitions {
            let replicas: BTreeSet<i32> = p.replicas.iter().copied().collect();
            let isr: BTreeSet<i32> = p.isr.iter().copied().collect();
            if isr != replicas {
                return Err(format!("{}-{} ISR {isr:?} of replicas {replicas:?}", p.topic, p.id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_mutation_topic_keeps_a_week_deletes_by_age_only_and_is_never_compacted() {
        let cfg: std::collections::BTreeMap<_, _> = super::mutation_topic_config().into_iter().collect();
        assert_eq!(cfg["retention.ms"], "604800000");
        assert_eq!(cfg["retention.bytes"], "-1");
        assert_eq!(cfg["cleanup.policy"], "delete");
        assert_eq!(cfg["min.insync.replicas"], "2");
        assert_eq!(cfg["unclean.leader.election.enable"], "false");
    }
    use super::*;

    fn part(leader: i32, isr: &[i32]) -> PartitionView {
        PartitionView { topic: "t".into(), id: 0, leader, replicas: vec![1, 2, 3], isr: isr.to_vec(), error: None }
    }

    #[test]
    fn brokers_must_be_all_three() {
        let mut v = ClusterView { brokers: vec![3, 1], ..Default::default() };
        assert!(v.check_brokers().is_err());
        v.brokers = vec![2, 3, 1];
        assert!(v.check_brokers().is_ok());
    }

    #[test]
    fn partitions_need_leader_and_full_isr() {
        let mut v = ClusterView { brokers: vec![1, 2, 3], ..Default::default() };
        v.partitions = vec![part(1, &[3, 2, 1])];
        assert!(v.check_topics().is_ok());
        v.partitions = vec![part(1, &[1, 2])];
        assert!(v.check_topics().unwrap_err().contains("ISR"));
        v.partitions = vec![part(-1, &[1, 2, 3])];
        assert!(v.check_topics().unwrap_err().contains("no leader"));
        v.partitions.clear();
        v.topic_errors.push(("x".into(), "UnknownTopicOrPartition".into()));
        assert!(v.check_topics().is_err());
    }
}
