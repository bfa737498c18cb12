//! The history model and the pure check over it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use super::linearizability::{self, SEARCH_BUDGET, Tally};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A write of the shared registers ([`super::KEYS`]).
    Write,
    /// A read of one of them.
    Read,
    /// A write of a client's own lifecycle key ([`super::lifecycle_key`]): a version it then
    /// deletes and undeletes, and nobody touches again.
    LifecyclePut,
    /// `POST delete/:path` of that version.
    Delete,
    /// `POST undelete/:path` of that version.
    Undelete,
}

/// What a write's answer says of its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// 200/204: took effect once, between invocation and answer.
    Acknowledged,
    /// A definite refusal (503 "write refused", every node consumed the record without effect;
    /// or a 4xx): never took effect.
    Refused,
    /// No answer (connection refused, timeout, cut off) or 503 "write outcome unknown": may take
    /// effect at any time after its invocation, or never.
    Unknown,
    /// Any other 5xx (no leader, queue full, writer stepping down...): searched as unknown, since
    /// the answer does not say that nothing was appended.
    Unavailable,
}

/// One client operation and its outcome.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub kind: Kind,
    pub key: String,
    /// Which node the client talked to.
    pub node: String,
    pub start: Instant,
    pub end: Instant,
    /// HTTP status; 0 when there was no answer (connection refused, timeout).
    pub status: u16,
    /// Write: the version acknowledged. Read: the version seen.
    pub version: Option<u64>,
    /// Write: the (unique) value written. Read: the value seen.
    pub value: Option<String>,
    /// Write: the consistency token answered. Read: the session token sent.
    pub index: Option<String>,
    /// Read: sent with `X-Secretlog-Consistency: strong` (and no token), so linearizable: it
    /// must take effect between its invocation and its answer. Always false for writes.
    pub strong: bool,
    /// The error answered, if any (for the report).
    pub error: Option<String>,
}

impl Op {
    pub fn acked_write(&self) -> bool {
        self.kind == Kind::Write && self.status == 200
    }

    /// Whether it asks for a change (every kind but a read).
    pub fn is_write(&self) -> bool {
        self.kind != Kind::Read
    }

    /// What the answer of a write says of its effect (see [`Effect`]).
    pub fn effect(&self) -> Effect {
        let says = |what: &str| self.error.as_deref().is_some_and(|e| e.contains(what));
        match self.status {
            200 | 204 => Effect::Acknowledged,
            0 => Effect::Unknown,
            500.. if says("write refused") => Effect::Refused,
            500.. if says("outcome unknown") => Effect::Unknown,
            500.. => Effect::Unavailable,
            _ => Effect::Refused,
        }
    }
}

/// One key's history as the cluster holds it after the load.
#[derive(Debug, Clone, Default)]
pub struct KeyHistory {
    /// Retained versions and their value (`None`: listed in metadata but unreadable).
    pub versions: BTreeMap<u64, Option<String>>,
    pub max_versions: u64,
}

/// What the cluster holds after the load.
#[derive(Debug, Clone, Default)]
pub struct FinalState {
    pub keys: BTreeMap<String, KeyHistory>,
    /// Each reader's state digest (`None`: could not be read, or not caught up).
    pub digests: Vec<(String, Option<String>)>,
    /// The log and its archive, when a replicator ran.
    pub archive: Option<Archive>,
    /// Per lifecycle key, whether each version is deleted (soft-deleted or destroyed).
    pub deleted: BTreeMap<String, BTreeMap<u64, bool>>,
}

/// Record offsets per partition: committed in Kafka (read_committed), and as the archive holds
/// them (in segment order, duplicates kept).
#[derive(Debug, Clone, Default)]
pub struct Archive {
    pub committed: BTreeMap<i32, BTreeSet<i64>>,
    pub archived: BTreeMap<i32, Vec<i64>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged write's version is not in the key's history (and was not pruned).
    LostWrite { key: String, version: u64, value: String },
    /// An acknowledged write's version holds another value.
    WrongValue { key: String, version: u64, expected: String, found: Option<String> },
    /// Two acknowledged writes were given the same version.
    DuplicateVersion { key: String, version: u64, values: Vec<String> },
    /// A write that completed before another started got a version that is not lower.
    RealTimeOrder { key: String, earlier: (u64, String), later: (u64, String) },
    /// A read with the client's session token saw an older version than the client wrote.
    StaleRead { client: usize, key: String, node: String, required: u64, seen: Option<u64> },
    /// A read saw a (version, value) that the final history does not hold.
    ReadNotInHistory { key: String, version: u64, value: Option<String>, history: Option<String> },
    /// One written value is present more than once.
    DuplicateValue { value: String, at: Vec<(String, u64)> },
    /// A value in the history that no client wrote to this key.
    PhantomValue { key: String, version: u64, value: Option<String> },
    /// Readers disagree on the state digest (or one never caught up).
    Diverged { digests: Vec<(String, Option<String>)> },
    /// Committed records the archive lacks (first few, and how many).
    ArchiveMissing { partition: i32, first: Vec<i64>, count: usize },
    /// A record archived more than once, or out of offset order.
    ArchiveDuplicate { partition: i32, offset: i64 },
    /// An archived record that is not a committed record of the log (aborted, or invented).
    ArchiveNotCommitted { partition: i32, offset: i64 },
    /// A status the API should not give for this operation.
    UnexpectedStatus { kind: Kind, key: String, node: String, status: u16 },
    /// A write definitely refused (503 "write refused", or a 4xx) whose value is in the final
    /// history: it took effect after all.
    RefusedWritePresent { key: String, version: u64, value: String },
    /// A lifecycle version whose final deleted state is not what the last acknowledged delete or
    /// undelete of it left (`found`: `None` if the version is gone): an acknowledged write undone,
    /// e.g. an older record applied again after it.
    DeletionUndone { key: String, version: u64, deleted: bool, found: Option<bool> },
    /// The key's operations have no linearization ([`super::linearizability`]): already its
    /// history up to `culprit`'s answer — `prefix` operations, those still running then counted
    /// as indeterminate — has none.
    NotLinearizable { key: String, prefix: usize, culprit: String },
}

/// [`Violation::DeletionUndone`]s: every lifecycle version whose deletes and undeletes all have a
/// definite answer must end as the last acknowledged one left it. Versions with a step of
/// unknown outcome are not judged.
fn check_lifecycles(history: &[Op], fin: &FinalState) -> Vec<Violation> {
    let mut steps: BTreeMap<(&str, u64), Vec<&Op>> = BTreeMap::new();
    for o in history.iter().filter(|o| matches!(o.kind, Kind::Delete | Kind::Undelete)) {
        if let Some(v) = o.version {
            steps.entry((o.key.as_str(), v)).or_default().push(o);
        }
    }
    let mut out = Vec::new();
    for ((key, version), mut ops) in steps {
        if ops.iter().any(|o| matches!(o.effect(), Effect::Unknown | Effect::Unavailable)) {
            continue;
        }
        ops.sort_by_key(|o| o.start);
        let Some(last) = ops.iter().rev().find(|o| o.effect() == Effect::Acknowledged) else { continue };
        let deleted = last.kind == Kind::Delete;
        let found = fin.deleted.get(key).and_then(|vs| vs.get(&version)).copied();
        if found != Some(deleted) {
            out.push(Violation::DeletionUndone { key: key.to_string(), version, deleted, found });
        }
    }
    out
}

/// Whether `version` of a key is gone only because max_versions pruned it.
fn pruned(h: &KeyHistory, version: u64) -> bool {
    let oldest = h.versions.keys().next().copied().unwrap_or(u64::MAX);
    version < oldest && h.versions.len() as u64 >= h.max_versions.max(1)
}

/// Check a recorded history against the final state. Pure: no I/O, no clock.
pub fn check(history: &[Op], fin: &FinalState) -> Vec<Violation> {
    check_with_tally(history, fin).0
}

/// [`check`], and what its linearizability check looked at and found key by key, for the report.
pub fn check_with_tally(history: &[Op], fin: &FinalState) -> (Vec<Violation>, Tally) {
    let mut out = Vec::new();
    let empty = KeyHistory::default();
    let hist = |key: &str| fin.keys.get(key).unwrap_or(&empty);

    for o in history {
        let ok = match o.kind {
            // 200, or an indeterminate failure (no answer, 5xx).
            Kind::Write | Kind::LifecyclePut => o.status == 200 || o.status == 0 || o.status >= 500,
            Kind::Delete | Kind::Undelete => o.status == 204 || o.status == 0 || o.status >= 500,
            // Absent before its first write: 404. 412: neither the reader nor the leader it
            // forwarded to had applied the session token within the wait — a refusal, no data.
            Kind::Read => matches!(o.status, 0 | 200 | 404 | 412) || o.status >= 500,
        };
        if !ok {
            out.push(Violation::UnexpectedStatus {
                kind: o.kind,
                key: o.key.clone(),
                node: o.node.clone(),
                status: o.status,
            });
        }
    }

    // 1. No acknowledged write lost, and its version holds exactly its value.
    let acked: Vec<&Op> = history.iter().filter(|o| o.acked_write()).collect();
    for o in &acked {
        let (Some(v), Some(val)) = (o.version, o.value.as_ref()) else {
            out.push(Violation::LostWrite {
                key: o.key.clone(),
                version: 0,
                value: o.value.clone().unwrap_or_default(),
            });
            continue;
        };
        let h = hist(&o.key);
        match h.versions.get(&v) {
            Some(Some(found)) if found == val => {}
            Some(found) => out.push(Violation::WrongValue {
                key: o.key.clone(),
                version: v,
                expected: val.clone(),
                found: found.clone(),
            }),
            None if pruned(h, v) => {}
            None => out.push(Violation::LostWrite { key: o.key.clone(), version: v, value: val.clone() }),
        }
    }

    // 2. Per key: versions distinct, and increasing in real-time order.
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for o in &acked {
        if o.version.is_some() {
            by_key.entry(o.key.as_str()).or_default().push(o);
        }
    }
    for (key, writes) in &by_key {
        let mut per_version: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for w in writes {
            per_version.entry(w.version.unwrap()).or_default().push(w.value.clone().unwrap_or_default());
        }
        for (version, values) in per_version.into_iter().filter(|(_, v)| v.len() > 1) {
            out.push(Violation::DuplicateVersion { key: key.to_string(), version, values });
        }
        // For each write, the highest-versioned write that ended before it started.
        let mut by_end: Vec<&&Op> = writes.iter().collect();
        by_end.sort_by_key(|o| o.end);
        let mut by_start: Vec<&&Op> = writes.iter().collect();
        by_start.sort_by_key(|o| o.start);
        let mut i = 0;
        let mut best: Option<&Op> = None;
        for b in by_start {
            while i < by_end.len() && by_end[i].end < b.start {
                if best.is_none_or(|x| by_end[i].version > x.version) {
                    best = Some(by_end[i]);
                }
                i += 1;
            }
            if let Some(a) = best
                && a.version >= b.version
            {
                out.push(Violation::RealTimeOrder {
                    key: key.to_string(),
                    earlier: (a.version.unwrap(), a.value.clone().unwrap_or_default()),
                    later: (b.version.unwrap(), b.value.clone().unwrap_or_default()),
                });
            }
        }
    }

    // 3. Reads carrying the session token see the client's own writes (or later ones); and
    //    what a read saw is in the final history.
    let mut per_client: HashMap<usize, Vec<&Op>> = HashMap::new();
    for o in history {
        per_client.entry(o.client).or_default().push(o);
    }
    for ops in per_client.values_mut() {
        ops.sort_by_key(|o| o.start);
        let mut own: HashMap<&str, u64> = HashMap::new();
        for o in ops.iter() {
            match o.kind {
                Kind::Write if o.status == 200 => {
                    if let Some(v) = o.version {
                        let e = own.entry(o.key.as_str()).or_insert(0);
                        *e = (*e).max(v);
                    }
                }
                Kind::Write | Kind::LifecyclePut | Kind::Delete | Kind::Undelete => {}
                Kind::Read => {
                    let required = if o.index.is_some() { own.get(o.key.as_str()).copied().unwrap_or(0) } else { 0 };
                    let seen = match o.status {
                        200 => o.version,
                        404 => None,
                        _ => continue,
                    };
                    if required > 0 && seen.is_none_or(|s| s < required) {
                        out.push(Violation::StaleRead {
                            client: o.client,
                            key: o.key.clone(),
                            node: o.node.clone(),
                            required,
                            seen,
                        });
                    }
                    if let Some(v) = seen {
                        let h = hist(&o.key);
                        match h.versions.get(&v) {
                            Some(found) if *found == o.value => {}
                            None if pruned(h, v) => {}
                            found => out.push(Violation::ReadNotInHistory {
                                key: o.key.clone(),
                                version: v,
                                value: o.value.clone(),
                                history: found.cloned().flatten(),
                            }),
                        }
                    }
                }
            }
        }
    }

    // 4. All readers converge on one state.
    let first = fin.digests.first().and_then(|(_, d)| d.clone());
    if fin.digests.iter().any(|(_, d)| d.is_none() || *d != first) {
        out.push(Violation::Diverged { digests: fin.digests.clone() });
    }

    // 5. Every value present at most once, and only where some client wrote it (acknowledged or
    //    not: failed writes may be present or absent, but never twice).
    let written: HashMap<&str, &str> = history
        .iter()
        .filter(|o| o.kind == Kind::Write)
        .filter_map(|o| o.value.as_deref().map(|v| (v, o.key.as_str())))
        .collect();
    let mut at: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (key, h) in &fin.keys {
        for (v, val) in &h.versions {
            match val.as_deref() {
                Some(val) if written.get(val) == Some(&key.as_str()) => {
                    at.entry(val.to_string()).or_default().push((key.clone(), *v));
                }
                _ => out.push(Violation::PhantomValue { key: key.clone(), version: *v, value: val.clone() }),
            }
        }
    }
    for (value, at) in at.into_iter().filter(|(_, a)| a.len() > 1) {
        out.push(Violation::DuplicateValue { value, at });
    }
    //    A write refused for certain is nowhere.
    for o in history.iter().filter(|o| o.kind == Kind::Write && o.effect() == Effect::Refused) {
        let Some(value) = o.value.as_deref() else { continue };
        for (v, _) in hist(&o.key).versions.iter().filter(|(_, val)| val.as_deref() == Some(value)) {
            out.push(Violation::RefusedWritePresent { key: o.key.clone(), version: *v, value: value.to_string() });
        }
    }

    // 5b. Lifecycle versions: each is deleted and undeleted by the client that wrote it, one step
    //     after the other, and touched by nobody else; so it ends as its last acknowledged step
    //     left it, when every step has a definite answer.
    out.extend(check_lifecycles(history, fin));

    // 6. The archive holds every committed record once, in order, and nothing else.
    if let Some(a) = &fin.archive {
        for (&partition, committed) in &a.committed {
            let archived = a.archived.get(&partition).map(Vec::as_slice).unwrap_or_default();
            for w in archived.windows(2).filter(|w| w[0] >= w[1]) {
                out.push(Violation::ArchiveDuplicate { partition, offset: w[1] });
            }
            let held: BTreeSet<i64> = archived.iter().copied().collect();
            let missing: Vec<i64> = committed.difference(&held).copied().collect();
            if !missing.is_empty() {
                let first = missing.iter().take(5).copied().collect();
                out.push(Violation::ArchiveMissing { partition, first, count: missing.len() });
            }
        }
        for (&partition, archived) in &a.archived {
            let committed = a.committed.get(&partition);
            for &offset in archived.iter().filter(|o| committed.is_none_or(|c| !c.contains(o))) {
                out.push(Violation::ArchiveNotCommitted { partition, offset });
            }
        }
    }

    // 7. Every key's operations are linearizable: writes in one order that explains every
    //    version answered and every read, indeterminate writes taking effect or not.
    let (not_linearizable, tally) = linearizability::check_history(history, SEARCH_BUDGET);
    out.extend(not_linearizable);
    (out, tally)
}

impl Violation {
    /// The variant's name, to count violations by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::LostWrite { .. } => "LostWrite",
            Violation::WrongValue { .. } => "WrongValue",
            Violation::DuplicateVersion { .. } => "DuplicateVersion",
            Violation::RealTimeOrder { .. } => "RealTimeOrder",
            Violation::StaleRead { .. } => "StaleRead",
            Violation::ReadNotInHistory { .. } => "ReadNotInHistory",
            Violation::DuplicateValue { .. } => "DuplicateValue",
            Violation::PhantomValue { .. } => "PhantomValue",
            Violation::Diverged { .. } => "Diverged",
            Violation::ArchiveMissing { .. } => "ArchiveMissing",
            Violation::ArchiveDuplicate { .. } => "ArchiveDuplicate",
            Violation::ArchiveNotCommitted { .. } => "ArchiveNotCommitted",
            Violation::UnexpectedStatus { .. } => "UnexpectedStatus",
            Violation::RefusedWritePresent { .. } => "RefusedWritePresent",
            Violation::DeletionUndone { .. } => "DeletionUndone",
            Violation::NotLinearizable { .. } => "NotLinearizable",
        }
    }

    /// Whether it says an acknowledged write is gone (lost, its version holds another value, or
    /// an acknowledged undelete or delete undone).
    pub fn loses_acknowledged_write(&self) -> bool {
        matches!(self, Violation::LostWrite { .. } | Violation::WrongValue { .. } | Violation::DeletionUndone { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// The checker can fail: planted histories.

#[cfg(test)]
mod planted {
    use std::time::Duration;

    use super::*;

    /// A small, valid history and its final state: two clients, one key.
    fn clean() -> (Vec<Op>, FinalState) {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let w = |client, value: &str, start, end, version| Op {
            client,
            kind: Kind::Write,
            key: "k".into(),
            node: "writer".into(),
            start: at(start),
            end: at(end),
            status: 200,
            version: Some(version),
            value: Some(value.into()),
            index: Some(format!("0:{version}")),
            error: None,
            strong: false,
        };
        let r = |client, start, end, version: u64, value: &str| Op {
            client,
            kind: Kind::Read,
            key: "k".into(),
            node: "reader-0".into(),
            start: at(start),
            end: at(end),
            status: 200,
            version: Some(version),
            value: Some(value.into()),
            index: Some("0:1".into()),
            error: None,
            strong: false,
        };
        let history = vec![
            w(0, "0-1", 0, 10, 1),
            w(1, "1-1", 5, 20, 2), // overlaps 0-1
            r(0, 25, 30, 2, "1-1"),
            w(0, "0-2", 30, 40, 3),
            r(1, 45, 50, 3, "0-2"),
            // Failed, absent.
            Op { status: 503, version: None, index: None, ..w(1, "1-2", 50, 60, 0) },
            // Failed (no answer), yet applied: allowed.
            Op { status: 0, version: None, index: None, ..w(1, "1-3", 60, 70, 0) },
        ];
        let versions = [(1, "0-1"), (2, "1-1"), (3, "0-2"), (4, "1-3")]
            .into_iter()
            .map(|(v, s)| (v, Some(s.to_string())))
            .collect();
        let fin = FinalState {
            keys: [("k".to_string(), KeyHistory { versions, max_versions: 0 })].into_iter().collect(),
            digests: vec![("reader-0".into(), Some("d".into())), ("reader-1".into(), Some("d".into()))],
            archive: Some(Archive {
                committed: [(0, [0, 1, 2, 4].into_iter().collect())].into_iter().collect(),
                archived: [(0, vec![0, 1, 2, 4])].into_iter().collect(),
            }),
            deleted: BTreeMap::new(),
        };
        (history, fin)
    }

    #[test]
    fn planted_clean_history_passes() {
        let (h, f) = clean();
        assert_eq!(check(&h, &f), vec![]);
    }

    #[test]
    fn planted_lost_acknowledged_write_is_reported() {
        let (h, mut f) = clean();
        f.keys.get_mut("k").unwrap().versions.remove(&3);
        let v = check(&h, &f);
        assert!(v.contains(&Violation::LostWrite { key: "k".into(), version: 3, value: "0-2".into() }), "{v:?}");
        // Overwritten with another value is caught too.
        let (h, mut f) = clean();
        f.keys.get_mut("k").unwrap().versions.insert(3, Some("1-1".into()));
        let v = check(&h, &f);
        assert!(v.iter().any(|x| matches!(x, Violation::WrongValue { version: 3, .. })), "{v:?}");
    }

    #[test]
    fn planted_pruned_version_is_not_a_loss() {
        let (h, mut f) = clean();
        let k = f.keys.get_mut("k").unwrap();
        k.versions.remove(&1);
        k.max_versions = 3;
        assert_eq!(check(&h, &f), vec![]);
    }

    #[test]
    fn planted_duplicated_version_is_reported() {
        let (mut h, mut f) = clean();
        // A second acknowledged write, overlapping 0-2, answered with version 3 as well.
        let mut dup = h[3].clone();
        dup.client = 1;
        dup.value = Some("1-9".into());
        h.push(dup);
        f.keys.get_mut("k").unwrap().versions.insert(5, Some("1-9".into()));
        let v = check(&h, &f);
        assert!(v.iter().any(|x| matches!(x, Violation::DuplicateVersion { version: 3, .. })), "{v:?}");
    }

    #[test]
    fn planted_stale_read_is_reported() {
        let (mut h, f) = clean();
        // Client 0 wrote v3 (0-2), then read v2 with its token.
        let mut stale = h[2].clone();
        stale.start = h[3].end + Duration::from_millis(1);
        stale.end = stale.start + Duration::from_millis(5);
        h.push(stale);
        let v = check(&h, &f);
        assert!(
            v.iter().any(|x| matches!(x, Violation::StaleRead { client: 0, required: 3, seen: Some(2), .. })),
            "{v:?}"
        );
        // A 404 after one's own write is stale too.
        let (mut h, f) = clean();
        let mut gone = h[4].clone();
        gone.status = 404;
        gone.version = None;
        gone.value = None;
        h.push(gone);
        let v = check(&h, &f);
        assert!(v.iter().any(|x| matches!(x, Violation::StaleRead { client: 1, seen: None, .. })), "{v:?}");
    }

    #[test]
    fn planted_real_time_order_break_is_reported() {
        let (mut h, f) = clean();
        // 0-2 started after 1-1 ended, but got a lower version... swap the versions in the answers.
        h[1].version = Some(3);
        h[3].version = Some(2);
        let v = check(&h, &f);
        assert!(v.iter().any(|x| matches!(x, Violation::RealTimeOrder { .. })), "{v:?}");
    }

    #[test]
    fn planted_read_older_than_another_clients_covered_write_is_not_linearizable() {
        let (mut h, f) = clean();
        // Client 1 reads after 0-2 (v3, token 0:3) was acknowledged, with a token that reaches
        // it, and sees v2: its own writes it saw, so only the linearizability check can tell.
        let mut stale = h[4].clone();
        (stale.version, stale.value, stale.index) = (Some(2), Some("1-1".into()), Some("0:3".into()));
        (stale.start, stale.end) = (stale.end + Duration::from_millis(1), stale.end + Duration::from_millis(5));
        h.push(stale);
        let v = check(&h, &f);
        assert!(!v.iter().any(|x| matches!(x, Violation::StaleRead { .. })), "{v:?}");
        // Up to its answer: the first five operations, the 503 write (invoked at 50 ms) and it.
        let culprit = "client 1 read v2 = 1-1 on reader-0 with token 0:3, +51.0..55.0 ms".to_string();
        assert_eq!(v, vec![Violation::NotLinearizable { key: "k".into(), prefix: 7, culprit }]);
        // Without a token the same read may lag: by design.
        h.last_mut().unwrap().index = None;
        assert_eq!(check(&h, &f), vec![]);
    }

    #[test]
    fn planted_read_of_a_write_later_refused_is_not_linearizable() {
        let (mut h, f) = clean();
        // 0-2 (30..40 ms) is refused at 40 ms, after a read (32..38 ms) saw it as v3.
        let mut seen = Op { version: Some(3), value: Some("0-2".into()), ..h[4].clone() };
        (seen.start, seen.end) = (h[3].start + Duration::from_millis(2), h[3].end - Duration::from_millis(2));
        h.push(seen);
        h[3] = Op { status: 400, version: None, index: None, ..h[3].clone() };
        let v = check(&h, &f);
        assert!(v.iter().any(|x| matches!(x, Violation::NotLinearizable { .. })), "{v:?}");
        // Had it no definite answer, it could have taken effect before the read.
        h[3].status = 503;
        let v = check(&h, &f);
        assert!(!v.iter().any(|x| matches!(x, Violation::NotLinearizable { .. })), "{v:?}");
    }

    #[test]
    fn planted_indeterminate_write_seen_or_not_is_linearizable() {
        let (mut h, f) = clean();
        // 1-3 had no answer; a read sees it as v4.
        let seen = Op { start: h[6].end, end: h[6].end + Duration::from_millis(5), ..h[4].clone() };
        h.push(Op { version: Some(4), value: Some("1-3".into()), ..seen });
        let (v, tally) = check_with_tally(&h, &f);
        assert_eq!(v, vec![]);
        assert_eq!((tally.keys, tally.linearizable, tally.indeterminate_writes, tally.reads_checked), (1, 1, 2, 3));
        // Seen before it was invoked (at 60 ms): no.
        let invoked = h[6].start;
        let early = h.last_mut().unwrap();
        (early.start, early.end) = (invoked - Duration::from_millis(9), invoked - Duration::from_millis(2));
        let v = check(&h, &f);
        assert!(matches!(v.as_slice(), [Violation::NotLinearizable { .. }]), "{v:?}");
    }

    #[test]
    fn planted_search_over_budget_is_inconclusive_not_a_violation() {
        let (h, _) = clean();
        let (v, tally) = linearizability::check_history(&h, 1);
        assert_eq!(v, vec![]);
        assert_eq!((tally.keys, tally.linearizable, tally.inconclusive), (1, 0, vec!["k".to_string()]));
        let (v, tally) = linearizability::check_history(&h, SEARCH_BUDGET);
        assert_eq!((v, tally.linearizable, tally.inconclusive), (vec![], 1, vec![]));
    }

    #[test]
    fn planted_failed_write_present_twice_is_reported() {
        let (h, mut f) = clean();
        f.keys.get_mut("k").unwrap().versions.insert(5, Some("1-3".into()));
        let v = check(&h, &f);
        assert!(v.iter().any(|x| matches!(x, Violation::DuplicateValue { value, .. } if value == "1-3")), "{v:?}");
    }

    #[test]
    fn planted_divergence_and_phantom_are_reported() {
        let (h, mut f) = clean();
        f.digests[1].1 = Some("other".into());
        f.keys.get_mut("k").unwrap().versions.insert(5, Some("nobody".into()));
        let v = check(&h, &f);
        assert!(v.iter().any(|x| matches!(x, Violation::Diverged { .. })), "{v:?}");
        assert!(v.iter().any(|x| matches!(x, Violation::PhantomValue { version: 5, .. })), "{v:?}");
    }

    #[test]
    fn planted_archive_faults_are_reported() {
        let (h, mut f) = clean();
        let a = f.archive.as_mut().unwrap();
        // Offset 1 archived twice, 2 missing, 3 (an aborted record) archived.
        a.archived.insert(0, vec![0, 1, 1, 3, 4]);
        let v = check(&h, &f);
        assert!(v.contains(&Violation::ArchiveDuplicate { partition: 0, offset: 1 }), "{v:?}");
        assert!(v.contains(&Violation::ArchiveMissing { partition: 0, first: vec![2], count: 1 }), "{v:?}");
        assert!(v.contains(&Violation::ArchiveNotCommitted { partition: 0, offset: 3 }), "{v:?}");
        // A partition with no segment at all.
        let (h, mut f) = clean();
        f.archive.as_mut().unwrap().archived.clear();
        let v = check(&h, &f);
        assert!(v.iter().any(|x| matches!(x, Violation::ArchiveMissing { count: 4, .. })), "{v:?}");
    }

    #[test]
    fn planted_refused_write_present_is_reported_and_an_unknown_one_is_not() {
        let (mut h, mut f) = clean();
        // 1-2 was answered 503 "write refused", yet its value is in the history.
        h[5].error = Some("[\"write refused, nothing changed; retry: decided against revision 1\"]".into());
        f.keys.get_mut("k").unwrap().versions.insert(5, Some("1-2".into()));
        let v = check(&h, &f);
        assert!(
            v.contains(&Violation::RefusedWritePresent { key: "k".into(), version: 5, value: "1-2".into() }),
            "{v:?}"
        );
        // Answered "outcome unknown", it may have landed.
        h[5].error = Some("[\"write outcome unknown: not applied by the writer's own state\"]".into());
        assert_eq!(check(&h, &f), vec![]);
        let (_, tally) = check_with_tally(&h, &f);
        assert_eq!((tally.indeterminate_writes, tally.refused_writes), (2, 0));
    }

    /// [`clean`]'s history and client 0's lifecycle of version 1 of its own key: put, deleted
    /// (acknowledged), undeleted (answered `undelete_status`).
    fn lifecycle(undelete_status: u16) -> Vec<Op> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let step = |kind, start, status| Op {
            client: 0,
            kind,
            key: "life".into(),
            node: "writer".into(),
            start: at(start),
            end: at(start + 5),
            status,
            version: Some(1),
            value: None,
            index: None,
            error: None,
            strong: false,
        };
        let mut h = clean().0;
        h.extend([
            Op { value: Some("0-9".into()), ..step(Kind::LifecyclePut, 0, 200) },
            step(Kind::Delete, 10, 204),
            step(Kind::Undelete, 20, undelete_status),
        ]);
        h
    }

    fn deleted(v1: Option<bool>) -> FinalState {
        let versions = v1.map(|d| (1, d)).into_iter().collect();
        FinalState { deleted: [("life".to_string(), versions)].into_iter().collect(), ..clean().1 }
    }

    #[test]
    fn planted_undelete_undone_is_reported() {
        // Undeleted, acknowledged, and found deleted again: a delete applied twice.
        let v = check(&lifecycle(204), &deleted(Some(true)));
        assert_eq!(
            v,
            vec![Violation::DeletionUndone { key: "life".into(), version: 1, deleted: false, found: Some(true) }]
        );
        assert!(v[0].loses_acknowledged_write());
        // The version gone altogether.
        let v = check(&lifecycle(204), &deleted(None));
        assert!(matches!(v.as_slice(), [Violation::DeletionUndone { found: None, .. }]), "{v:?}");
        assert_eq!(check(&lifecycle(204), &deleted(Some(false))), vec![]);
    }

    #[test]
    fn planted_lifecycle_with_an_unknown_step_is_not_judged() {
        // The undelete's outcome is unknown: deleted or not, nothing to say.
        assert_eq!(check(&lifecycle(0), &deleted(Some(true))), vec![]);
        assert_eq!(check(&lifecycle(0), &deleted(Some(false))), vec![]);
        // Refused for certain (503 "write refused"): the acknowledged delete stands.
        let mut refused = lifecycle(503);
        refused.last_mut().unwrap().error = Some("write refused, nothing changed".into());
        assert_eq!(check(&refused, &deleted(Some(true))), vec![]);
        let v = check(&refused, &deleted(Some(false)));
        assert!(matches!(v.as_slice(), [Violation::DeletionUndone { deleted: true, .. }]), "{v:?}");
    }
}
