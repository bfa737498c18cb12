//! Issue #19: per-key linearizability of a history — a Wing & Gong search, memoized as porcupine
//! does, and bounded so that it cannot run away.
//!
//! **The model.** Each key is a KV v2 register with versions. A write that takes effect sets the
//! value and makes the version the previous one plus one: the materializer refuses a `Put` of any
//! other version (`state::model::apply`), so the versions of a key have no gaps. A read sees the
//! current version and its value, or 404 before the first write. The clients never delete these
//! keys (their deletes go to keys of their own: `Kind::Delete`).
//! Linearizability is local (Herlihy & Wing): a history is linearizable if and only if each key's
//! is, so every key is searched on its own (porcupine's P-compositionality), which keeps each
//! search small.
//!
//! **What each operation may do.** Writes, by their answer:
//! * 200, *acknowledged*: took effect exactly once, between its invocation and its answer, as the
//!   version answered.
//! * no answer (connection refused, timeout, cut off) or any 5xx but a refusal (outcome unknown,
//!   leader gone mid-commit, unavailable), *indeterminate*: it may have taken effect once at any
//!   point after its invocation — its answer time counts as +∞ — or never.
//! * 503 "write refused" (every node consumed its record without effect) or any other status,
//!   *refused*: never took effect ([`Effect::Refused`]). It is not an operation of the search, so
//!   a read that sees its value cannot be linearized.
//!
//! Reads: 200 and 404 are observations; any other answer (none, 412, 5xx) says nothing and is
//! left out. A read is checked by what its mode guarantees:
//! * *strong* (sent with `X-Secretlog-Consistency: strong`, [`Op::strong`]): linearizable. A
//!   reader answers it only once it has applied the partitions' last stable offsets as queried
//!   after the read arrived, or forwards it to the leader writer, which answers from its own state
//!   (docs/design.md, "Consistency"). So it is checked as a strict read ([`Entry::Read`]): it
//!   takes effect between its invocation and its answer, and sees every write acknowledged before
//!   it was invoked, whoever wrote it and whatever node it asked.
//! * any other: readers and writers answer from their own materialized copy of the committed log,
//!   and a read carrying a consistency token only waits until that copy has applied the token's
//!   position. So it is checked as a *snapshot* ([`Entry::SnapshotRead`]): it takes effect at
//!   some point of the key's linearization before its answer (it never sees a write invoked after
//!   it answered), and after every acknowledged write its token covers — every write whose
//!   answered token the read's token reaches, the client's own and, through the log offsets,
//!   every other client's. A read with no token may be any amount stale, by design.
//!
//! **What it finds** beyond [`super::model`]'s other checks: there is no single order of the
//! writes that explains the acknowledged versions and every read together. For instance a version
//! answered twice, or skipped with no indeterminate write that could have taken it; writes
//! ordered against real time; a read of a refused write's value, of a write invoked after the
//! read answered, or of a version under another write's value; a read older than a write its
//! token covers, whoever wrote it; a strong read older than a write acknowledged before it was
//! invoked.
//!
//! The search itself is [`search()`]. A key whose search visits more than [`SEARCH_BUDGET`] states
//! is *inconclusive*: neither passed nor failed, and counted apart.

mod search;

use std::collections::BTreeMap;
use std::time::Instant;

use search::{Entry, Outcome, Seen, first_failure, search};
use secretlog_schemas::ConsistencyToken;

use super::model::{Effect, Kind, Op, Violation};

/// States one key's search may visit before the key is called inconclusive. A linearizable key
/// visits about one state per write that took effect (a ten-minute run: a few thousand), so this
/// only bounds what a pathological key may take: well under a second, a few MB.
pub const SEARCH_BUDGET: usize = 250_000;

/// What the linearizability check looked at, and how the keys came out: for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    pub keys: usize,
    pub linearizable: usize,
    pub not_linearizable: usize,
    /// Keys whose search ran out of budget: neither passed nor failed.
    pub inconclusive: Vec<String>,
    /// Writes with no definite answer, searched as taking effect at any time after their
    /// invocation, or never.
    pub indeterminate_writes: usize,
    /// Writes refused with a definite answer: never took effect.
    pub refused_writes: usize,
    /// Reads answered 200 or 404, and reads that said nothing (no answer, 412, 5xx).
    pub reads_checked: usize,
    pub reads_unknown: usize,
    /// Of `reads_checked`, the strong ones, checked as linearizable reads.
    pub strong_reads_checked: usize,
    /// The most states one key's search visited (against [`SEARCH_BUDGET`]).
    pub most_states: usize,
}

/// One key's operations as search entries, and the history index of each.
fn entries_of(history: &[Op], ops: &[usize], tally: &mut Tally) -> (Vec<Entry>, Vec<usize>) {
    let mut entries = Vec::new();
    let mut origin = Vec::new();
    // Acknowledged writes by the partition of their token (a key lives in one), sorted by offset.
    let mut acked: BTreeMap<i32, Vec<(i64, Option<u64>, usize)>> = BTreeMap::new();
    for &h in ops {
        let o = &history[h];
        let entry = match (o.kind, o.status) {
            (Kind::Write, _) if o.effect() == Effect::Refused => {
                tally.refused_writes += 1;
                continue;
            }
            (Kind::Write, 200) => {
                let token = o.index.as_deref().and_then(|t| t.parse::<ConsistencyToken>().ok());
                if let Some(t) = token
                    && t.0.len() == 1
                {
                    let (p, off) = t.0.into_iter().next().expect("one partition");
                    acked.entry(p).or_default().push((off, o.version, entries.len()));
                }
                Entry::Acked {
                    start: o.start,
                    end: o.end,
                    value: o.value.clone().unwrap_or_default(),
                    version: o.version,
                }
            }
            (Kind::Write, _) => {
                tally.indeterminate_writes += 1;
                Entry::Indeterminate { start: o.start, value: o.value.clone().unwrap_or_default() }
            }
            (Kind::Read, 200) if o.strong && o.version.is_some() => Entry::Read {
                start: o.start,
                end: o.end,
                seen: Seen::Version(o.version.unwrap_or_default(), o.value.clone()),
            },
            (Kind::Read, 404) if o.strong => Entry::Read { start: o.start, end: o.end, seen: Seen::Absent },
            (Kind::Read, 200) if o.version.is_some() => Entry::SnapshotRead {
                end: o.end,
                after: Vec::new(),
                seen: Seen::Version(o.version.unwrap_or_default(), o.value.clone()),
            },
            (Kind::Read, 404) => Entry::SnapshotRead { end: o.end, after: Vec::new(), seen: Seen::Absent },
            (Kind::Read, _) => {
                tally.reads_unknown += 1;
                continue;
            }
            // Lifecycle keys are not registers: checked apart (`model::check_lifecycles`).
            (Kind::LifecyclePut | Kind::Delete | Kind::Undelete, _) => continue,
        };
        if o.kind == Kind::Read {
            tally.reads_checked += 1;
            tally.strong_reads_checked += usize::from(o.strong);
        }
        entries.push(entry);
        origin.push(h);
    }
    // A read must follow the covered write of highest offset and the one of highest version
    // answered: the other covered writes precede one of these in any order the search accepts,
    // unless the versions themselves are wrong, which the search reports anyway.
    for list in acked.values_mut() {
        list.sort();
    }
    for (e, &h) in entries.iter_mut().zip(&origin) {
        let Entry::SnapshotRead { after, .. } = e else { continue };
        let Some(token) = history[h].index.as_deref().and_then(|t| t.parse::<ConsistencyToken>().ok()) else {
            continue;
        };
        for (p, list) in &acked {
            let Some(&reached) = token.0.get(p) else { continue };
            let covered = &list[..list.partition_point(|(off, _, _)| *off <= reached)];
            if let Some(&(_, _, newest)) = covered.last() {
                after.push(newest);
            }
            if let Some(&(_, _, highest)) = covered.iter().filter(|w| w.1.is_some()).max_by_key(|w| w.1) {
                after.push(highest);
            }
        }
        after.sort_unstable();
        after.dedup();
    }
    (entries, origin)
}

/// An operation, for a violation's report: times in ms from `t0`.
fn describe(o: &Op, t0: Instant) -> String {
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1000.0;
    let value = o.value.as_deref().unwrap_or("?");
    let what = match (o.kind, o.status, o.version) {
        (Kind::Write, 200, Some(v)) => format!("write {value} acknowledged as v{v}"),
        (Kind::Write, 200, None) => format!("write {value} acknowledged, no version"),
        (Kind::Write, s, _) => format!("write {value} answered {s}"),
        (Kind::Read, 404, _) => "read: not found".to_string(),
        (Kind::Read, _, v) => format!("read v{} = {value}", v.unwrap_or_default()),
        (kind, s, v) => format!("{kind:?} of v{} answered {s}", v.unwrap_or_default()),
    };
    let token = o.index.as_deref().map(|t| format!(" with token {t}")).unwrap_or_default();
    let strong = if o.strong { " (strong)" } else { "" };
    format!("client {} {what}{strong} on {}{token}, +{:.1}..{:.1} ms", o.client, o.node, ms(o.start), ms(o.end))
}

/// Search every key of `history`: a [`Violation::NotLinearizable`] for each key that has no
/// linearization, with the smallest prefix that has none, and the tally.
pub fn check_history(history: &[Op], budget: usize) -> (Vec<Violation>, Tally) {
    let mut tally = Tally::default();
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, o) in history.iter().enumerate().filter(|(_, o)| matches!(o.kind, Kind::Write | Kind::Read)) {
        by_key.entry(o.key.as_str()).or_default().push(i);
    }
    let t0 = history.iter().map(|o| o.start).min();
    let mut out = Vec::new();
    for (key, ops) in by_key {
        let (entries, origin) = entries_of(history, &ops, &mut tally);
        tally.keys += 1;
        let (outcome, states) = search(&entries, budget);
        tally.most_states = tally.most_states.max(states);
        match outcome {
            Outcome::Linearizable => tally.linearizable += 1,
            Outcome::Inconclusive => tally.inconclusive.push(key.to_string()),
            Outcome::NotLinearizable => {
                tally.not_linearizable += 1;
                let (culprit, prefix) = match first_failure(&entries, budget) {
                    Some((c, p)) => (describe(&history[origin[c]], t0.unwrap_or(history[origin[c]].start)), p),
                    None => {
                        ("(the whole history: no prefix shown to fail within the budget)".to_string(), entries.len())
                    }
                };
                out.push(Violation::NotLinearizable { key: key.to_string(), prefix, culprit });
            }
        }
    }
    (out, tally)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Client 0 writes v1 (0..10 ms) and v2 (20..30 ms), acknowledged; client 1 then reads
    /// (`start`..`start + 4` ms) with no token and sees `seen`.
    fn history(read_start: u64, seen: Option<(u64, &str)>, strong: bool) -> Vec<Op> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let w = |value: &str, start, version: u64| Op {
            client: 0,
            kind: Kind::Write,
            key: "k".into(),
            node: "writer".into(),
            start: at(start),
            end: at(start + 10),
            status: 200,
            version: Some(version),
            value: Some(value.into()),
            index: Some(format!("0:{version}")),
            error: None,
            strong: false,
        };
        let read = Op {
            client: 1,
            kind: Kind::Read,
            key: "k".into(),
            node: "reader-0".into(),
            start: at(read_start),
            end: at(read_start + 4),
            status: if seen.is_some() { 200 } else { 404 },
            version: seen.map(|(v, _)| v),
            value: seen.map(|(_, s)| s.to_string()),
            index: None,
            error: None,
            strong,
        };
        vec![w("0-1", 0, 1), w("0-2", 20, 2), read]
    }

    #[test]
    fn a_strong_read_older_than_a_write_acknowledged_before_it_is_not_linearizable() {
        // v2 was acknowledged at 30 ms; the read, invoked at 31 ms, sees v1.
        let (v, tally) = check_history(&history(31, Some((1, "0-1")), true), SEARCH_BUDGET);
        let culprit = "client 1 read v1 = 0-1 (strong) on reader-0, +31.0..35.0 ms".to_string();
        assert_eq!(v, vec![Violation::NotLinearizable { key: "k".into(), prefix: 3, culprit }]);
        assert_eq!((tally.not_linearizable, tally.reads_checked, tally.strong_reads_checked), (1, 1, 1));
        // Not found at all, after two acknowledged writes: no better.
        let (v, _) = check_history(&history(31, None, true), SEARCH_BUDGET);
        assert!(matches!(v.as_slice(), [Violation::NotLinearizable { .. }]), "{v:?}");
    }

    #[test]
    fn the_same_read_as_a_snapshot_without_a_token_may_lag() {
        let (v, tally) = check_history(&history(31, Some((1, "0-1")), false), SEARCH_BUDGET);
        assert_eq!(v, vec![]);
        assert_eq!((tally.linearizable, tally.reads_checked, tally.strong_reads_checked), (1, 1, 0));
        let (v, _) = check_history(&history(31, None, false), SEARCH_BUDGET);
        assert_eq!(v, vec![]);
    }

    #[test]
    fn a_strong_read_concurrent_with_a_write_may_see_either_version() {
        // Invoked at 25 ms, while v2 (20..30 ms) is in flight: v1 or v2.
        for seen in [(1, "0-1"), (2, "0-2")] {
            let (v, tally) = check_history(&history(25, Some(seen), true), SEARCH_BUDGET);
            assert_eq!((v, tally.linearizable), (vec![], 1), "{seen:?}");
        }
        // Once v2 is acknowledged, it: fine.
        let (v, _) = check_history(&history(31, Some((2, "0-2")), true), SEARCH_BUDGET);
        assert_eq!(v, vec![]);
    }

    #[test]
    fn a_strong_read_that_said_nothing_is_left_out() {
        let mut h = history(31, Some((1, "0-1")), true);
        h[2].status = 503;
        let (v, tally) = check_history(&h, SEARCH_BUDGET);
        assert_eq!(v, vec![]);
        assert_eq!((tally.reads_checked, tally.reads_unknown, tally.strong_reads_checked), (0, 1, 0));
    }
}
