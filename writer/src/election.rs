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
//!
//! ## The lease: when the leader may answer reads from its own state
//!
//! A deposed leader that has not noticed yet cannot commit, but it could still *read* its own
//! state while a successor acknowledges newer writes. So the leader answers reads locally only
//! within a [`Lease`], renewed every heartbeat interval by committing an offset of the election
//! partition in its group. A commit carries the member id and generation and the coordinator
//! refuses it from a member it no longer has; one that succeeds also restarts the member's
//! session timer (the group coordinator does so for classic groups in the Stable and
//! PreparingRebalance states). So when a commit sent at `t` succeeds, the coordinator cannot
//! expire this member, and hand the partition to another, before `t + session_timeout` on its
//! clock. The lease lasts half of that from `t`: the other half absorbs clock-rate differences
//! and scheduling, and a partitioned leader stops answering locally well before anyone else can
//! be elected. librdkafka's own detection of a lost session is no fence: it measures from when
//! responses arrive (later than the coordinator's clock starts) and is checked once a second.
//!
//! A member that stops rejoining is also removed when the join phase of a rebalance ends, up
//! to the rebalance timeout (`max.poll.interval.ms`, 300 s) after it began — far beyond any
//! lease, and a member whose commits get through rejoins within a heartbeat.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Until when the leader may answer reads from its own state (see the module's documentation).
#[derive(Debug, Default)]
pub struct Lease {
    until: Mutex<Option<Instant>>,
}

impl Lease {
    /// The time left, or `None` when the lease has lapsed (or was never taken).
    pub fn left(&self) -> Option<Duration> {
        let until = (*self.until.lock().expect("lease lock"))?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    /// A renewal confirmed for a commit sent at `sent`: the lease runs to `sent + term`, never
    /// shorter than it already was — if `still_leading` holds, checked under the lease's lock so
    /// that a revocation (which clears the lease after saying so) cannot be overtaken.
    fn renew(&self, sent: Instant, term: Duration, still_leading: impl FnOnce() -> bool) {
        let mut until = self.until.lock().expect("lease lock");
        if still_leading() {
            *until = Some(until.map_or(sent + term, |u| u.max(sent + term)));
        }
    }

    fn end(&self) {
        *self.until.lock().expect("lease lock") = None;
    }
}

/// The lease's length for a session timeout: half of it.
pub fn lease_term(session_timeout: Duration) -> Duration {
    session_timeout / 2
}

/// Publishes leadership changes from librdkafka's rebalance callbacks.
struct ElectionContext {
    topic: String,
    tx: watch::Sender<bool>,
    lease: Arc<Lease>,
}

impl ElectionContext {
    fn names_election_partition(&self, tpl: &rdkafka::TopicPartitionList) -> bool {
        tpl.elements_for_topic(&self.topic).iter().any(|e| e.partition() == 0)
    }
}

impl ClientContext for ElectionContext {
    fn error(&self, error: KafkaError, reason: &str) {
        secretlog_state::kafka::log_client_error("election", &error, reason);
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
            self.lease.end();
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
    let admin: AdminClient<DefaultClientContext> = secretlog_state::kafka::client_config(bootstrap)
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
    lease: Arc<Lease>,
    cancel: CancellationToken,
) -> Result<(watch::Receiver<bool>, tokio::task::JoinHandle<()>), WriterError> {
    let (tx, rx) = watch::channel(false);
    lease.end();
    let consumer: StreamConsumer<ElectionContext> = secretlog_state::kafka::client_config(&cfg.bootstrap)
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
        .create_with_context(ElectionContext { topic: cfg.topic.clone(), tx: tx.clone(), lease: lease.clone() })
        .map_err(|e| WriterError::NotReady(format!("election consumer: {e}")))?;
    consumer.subscribe(&[&cfg.topic]).map_err(|e| WriterError::NotReady(format!("joining the election: {e}")))?;
    let consumer = Arc::new(consumer);
    let term = lease_term(Duration::from_millis(cfg.session_timeout_ms));
    let mut renew_every = tokio::time::interval(Duration::from_millis(cfg.heartbeat_interval_ms));
    renew_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewal: Option<tokio::task::JoinHandle<()>> = None;
    let join = tokio::spawn(async move {
        loop {
            // Polling drives heartbeats and rebalance callbacks; the topic carries no records.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = renew_every.tick() => {
                    if *tx.borrow() && renewal.as_ref().is_none_or(|r| r.is_finished()) {
                        renewal = Some(renew_lease(consumer.clone(), &cfg.topic, lease.clone(), tx.subscribe(), term));
                    }
                }
                m = consumer.recv() => {
                    if let Err(e) = m {
                        tracing::debug!(error = %e, "election poll");
                    }
                }
            }
        }
        tx.send_replace(false);
        lease.end();
        // A renewal still waiting for the coordinator is not waited for: it holds the consumer
        // until librdkafka answers it, and the group is left when the last holder lets go.
        drop(renewal);
        consumer.unsubscribe();
        drop(consumer); // closing it leaves the group, so a successor is chosen now
        tracing::info!("left the leader election");
    });
    Ok((rx, join))
}

/// Commit an offset of the election partition in the group, synchronously (on a blocking
/// thread: librdkafka waits for the coordinator's answer), and renew the lease from the moment
/// the commit was sent if it succeeded while this writer still led with its assignment intact.
fn renew_lease(
    consumer: Arc<StreamConsumer<ElectionContext>>,
    topic: &str,
    lease: Arc<Lease>,
    leading: watch::Receiver<bool>,
    term: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    if let Err(e) = tpl.add_partition_offset(topic, 0, rdkafka::Offset::Offset(0)) {
        tracing::warn!(error = %e, "cannot name the election partition for a lease renewal");
        return tokio::spawn(async {});
    }
    tokio::task::spawn_blocking(move || {
        let sent = Instant::now();
        match consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync) {
            // A member that lost its session locally has an empty member id; what it commits
            // then is no proof of membership, so a lost assignment never renews.
            Ok(()) => lease.renew(sent, term, || *leading.borrow() && !consumer.assignment_lost()),
            Err(e) => tracing::debug!(error = %e, "lease renewal refused"),
        }
    })
}

/// Append this writer's claim to lead (its URL) to the election topic, replicated (acks=all), and
/// return the claim's offset: the log-given part of the leader epoch (`crate::epoch`). Claims
/// are never read back; their offsets only ever grow. Appended by the term's own log producer
/// (idempotent, acks=all), made ready before the election was won.
pub async fn claim(
    producer: &crate::producer::LogProducer,
    topic: &str,
    leader_url: &str,
    timeout: Duration,
) -> Result<i64, WriterError> {
    producer
        .append_to(topic, 0, leader_url.as_bytes(), timeout)
        .await
        .map_err(|e| WriterError::NotReady(format!("appending the leadership claim: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_the_renewal_sent_never_shrinks_and_ends_at_once() {
        let lease = Lease::default();
        assert_eq!(lease.left(), None, "no lease before the first renewal");
        let sent = Instant::now();
        lease.renew(sent, Duration::from_secs(60), || true);
        let left = lease.left().expect("renewed");
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(59), "{left:?}");
        // An older renewal answered late does not shorten it.
        lease.renew(sent - Duration::from_secs(30), Duration::from_secs(60), || true);
        assert!(lease.left().expect("still renewed") > Duration::from_secs(59));
        lease.end();
        assert_eq!(lease.left(), None);
    }

    #[test]
    fn a_renewal_answered_after_leadership_was_lost_grants_nothing() {
        let lease = Lease::default();
        lease.renew(Instant::now(), Duration::from_secs(60), || false);
        assert_eq!(lease.left(), None);
    }

    #[test]
    fn a_lease_sent_longer_ago_than_its_term_has_lapsed() {
        let lease = Lease::default();
        lease.renew(Instant::now() - Duration::from_secs(2), Duration::from_secs(1), || true);
        assert_eq!(lease.left(), None);
    }

    #[test]
    fn the_lease_is_half_the_session() {
        assert_eq!(lease_term(Duration::from_millis(2000)), Duration::from_millis(1000));
    }
}
