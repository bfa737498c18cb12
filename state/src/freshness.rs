//! How fresh a node's state is, measured against the log and never against a clock in a record.
//!
//! A node knows it is caught up with a partition only when it has *consumed* (applied, and
//! stepped over any transaction markers after it) at least the partition's last stable offset as
//! a query sent at some instant `t` returned it: everything committed before `t` is then in its
//! state. [`Confirmations`] keeps, per partition, the newest such `t` — the partition is *confirmed
//! as of `t`* — and the queries not reached yet. Staleness is `now - t`: idle partitions are
//! normal (their end does not move, so every query confirms them at once), and a node cut off from
//! Kafka cannot confirm anything, so its staleness grows however recent its last record was.
//!
//! The last stable offset is what librdkafka's watermark and `offsets_for_times(-1)` queries return
//! to a `read_committed` client (checked against a real broker: with a transaction open at offset
//! 2 they return 2, a `read_uncommitted` client gets the high watermark 3), and a consumer's
//! position steps over transaction markers once it has read past them.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Queries a partition may have outstanding (not reached yet); older ones are dropped first — a
/// newer query's offset is at least theirs, so reaching it confirms them too.
const MAX_PENDING: usize = 64;

/// Per-partition confirmation of catching up with the log's end.
#[derive(Debug, Clone, Default)]
pub struct Confirmations {
    /// Per partition: (query sent at, last stable offset it returned), oldest first, not reached.
    pending: BTreeMap<i32, VecDeque<(Instant, i64)>>,
    /// Per partition: the send time of the newest query this node has caught up with.
    confirmed: BTreeMap<i32, Instant>,
    /// Set when a query failed: the node may be cut off. The next query that answers must be
    /// reached before anything counts as confirmed again.
    disconnected: bool,
    /// When the last query failed, and why (for health and the 503's reason).
    last_failure: Option<(Instant, String)>,
}

impl Confirmations {
    /// A query sent at `sent` returned these last stable offsets; `consumed` is where the node is.
    pub fn answered(&mut self, sent: Instant, ends: &BTreeMap<i32, i64>, consumed: &BTreeMap<i32, i64>) {
        if std::mem::take(&mut self.disconnected) {
            // Back after a failure: what was confirmed before proves nothing about what happened
            // meanwhile. Partitions behind this answer serve nothing local until they reach it.
            for (p, end) in ends {
                if consumed.get(p).copied().unwrap_or(0) < *end {
                    self.confirmed.remove(p);
                }
            }
        }
        self.last_failure = None;
        for (p, end) in ends {
            let q = self.pending.entry(*p).or_default();
            q.push_back((sent, *end));
            while q.len() > MAX_PENDING {
                q.pop_front();
            }
        }
        self.consumed(consumed);
    }

    /// A query did not answer.
    pub fn failed(&mut self, at: Instant, why: String) {
        self.disconnected = true;
        self.last_failure = Some((at, why));
    }

    /// The node consumed up to `consumed`: confirm every query it reached.
    pub fn consumed(&mut self, consumed: &BTreeMap<i32, i64>) {
        for (p, q) in self.pending.iter_mut() {
            let at = consumed.get(p).copied().unwrap_or(0);
            while let Some(&(sent, end)) = q.front() {
                if end > at {
                    break;
                }
                q.pop_front();
                let c = self.confirmed.entry(*p).or_insert(sent);
                *c = (*c).max(sent);
            }
        }
    }

    /// How long ago partition `p` was last confirmed caught up; `None` if never (since start or
    /// since a reconnect found it behind).
    pub fn age(&self, p: i32, now: Instant) -> Option<Duration> {
        self.confirmed.get(&p).map(|t| now.saturating_duration_since(*t))
    }

    /// The oldest confirmation among `partitions` (`None` if one has none).
    pub fn oldest(&self, partitions: impl IntoIterator<Item = i32>, now: Instant) -> Option<Duration> {
        let mut oldest = Duration::ZERO;
        for p in partitions {
            oldest = oldest.max(self.age(p, now)?);
        }
        Some(oldest)
    }

    /// Why the last query failed, if the last one did.
    pub fn failure(&self) -> Option<&str> {
        self.last_failure.as_ref().map(|(_, why)| why.as_str())
    }

    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }
}

/// Whether a node whose partitions were confirmed as `conf` says may answer from its own state,
/// within `bound`; otherwise why not (the reason a 503 and health give).
pub fn within_bound(conf: &Confirmations, partitions: i32, bound: Duration, now: Instant) -> Result<(), String> {
    match conf.oldest(0..partitions, now) {
        _ if partitions == 0 => Err("not yet positioned on the log".into()),
        Some(age) if age <= bound => Ok(()),
        Some(age) => Err(format!(
            "this node last confirmed it was caught up with the log {:.1} s ago (bound {:.1} s){}",
            age.as_secs_f64(),
            bound.as_secs_f64(),
            conf.failure().map(|w| format!(": {w}")).unwrap_or_default()
        )),
        None => Err(match conf.failure() {
            Some(w) => format!("this node has not confirmed it is caught up with the log: {w}"),
            None => "this node has not yet caught up with the end of the log as of its start or reconnect".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_partition_is_confirmed_as_of_the_query_it_reached_not_the_newest_record() {
        let t0 = Instant::now();
        let mut c = Confirmations::default();
        assert_eq!(c.age(0, t0), None, "nothing is confirmed before a query");
        c.answered(t0, &at(&[(0, 10), (1, 0)]), &at(&[(0, 4), (1, 0)]));
        assert_eq!(c.age(0, t0), None, "behind the query's end");
        assert_eq!(c.age(1, t0), Some(Duration::ZERO), "an idle partition is confirmed at once");
        let t1 = t0 + Duration::from_secs(1);
        c.answered(t1, &at(&[(0, 12), (1, 0)]), &at(&[(0, 10), (1, 0)]));
        assert_eq!(c.age(0, t1), Some(Duration::from_secs(1)), "reached the first query only");
        c.consumed(&at(&[(0, 12), (1, 0)]));
        assert_eq!(c.age(0, t1), Some(Duration::ZERO));
        let later = t1 + Duration::from_secs(30);
        assert_eq!(c.oldest([0, 1], later), Some(Duration::from_secs(30)), "no query since: it ages");
        assert!(within_bound(&c, 2, Duration::from_secs(10), later).unwrap_err().contains("30.0 s ago"));
        assert!(within_bound(&c, 2, Duration::from_secs(10), t1).is_ok());
    }

    #[test]
    fn after_a_failed_query_partitions_behind_the_next_answer_lose_their_confirmation() {
        let t0 = Instant::now();
        let mut c = Confirmations::default();
        c.answered(t0, &at(&[(0, 5), (1, 7)]), &at(&[(0, 5), (1, 7)]));
        let t1 = t0 + Duration::from_secs(2);
        c.failed(t1, "broker transport failure".into());
        assert!(c.is_disconnected());
        assert_eq!(c.age(0, t1), Some(Duration::from_secs(2)), "still confirmed as of before the cut, and aging");
        let reason = within_bound(&c, 2, Duration::from_secs(1), t1).unwrap_err();
        assert!(reason.contains("broker transport failure"), "{reason}");
        let t2 = t1 + Duration::from_secs(1);
        c.answered(t2, &at(&[(0, 9), (1, 7)]), &at(&[(0, 5), (1, 7)]));
        assert_eq!(c.age(0, t2), None, "behind after the reconnect: nothing local until caught up");
        assert_eq!(c.age(1, t2), Some(Duration::ZERO));
        c.consumed(&at(&[(0, 9), (1, 7)]));
        assert_eq!(c.age(0, t2), Some(Duration::ZERO));
        assert!(c.failure().is_none());
    }

    #[test]
    fn outstanding_queries_are_bounded_and_the_newest_still_confirms() {
        let t0 = Instant::now();
        let mut c = Confirmations::default();
        for i in 0..(MAX_PENDING as i64 * 2) {
            c.answered(t0 + Duration::from_millis(i as u64), &at(&[(0, 100 + i)]), &at(&[(0, 0)]));
        }
        assert_eq!(c.pending[&0].len(), MAX_PENDING);
        c.consumed(&at(&[(0, 1000)]));
        assert_eq!(c.age(0, t0 + Duration::from_millis(MAX_PENDING as u64 * 2 - 1)), Some(Duration::ZERO));
    }

    #[test]
    fn a_node_without_partitions_is_never_within_bound() {
        assert!(within_bound(&Confirmations::default(), 0, Duration::from_secs(10), Instant::now()).is_err());
    }
}
