//! One key's search, Wing & Gong's: repeatedly pick an operation that no pending operation must
//! precede (porcupine's list of call and return events, whose candidates are the
//! calls before the first return), apply it to the register, and backtrack on a dead end; a cache
//! of every (set of operations applied, register state) already explored cuts the tree (Lowe's
//! memoization, as in porcupine). Three reductions keep it nearly linear without losing an
//! answer: a read that can take effect now is applied at once (it changes nothing, and applying
//! it early only frees others); an operation pinned to a version (an acknowledged write, a read, an
//! indeterminate write whose value a read saw) keeps the register at that version until it is
//! applied, since versions never go back; indeterminate writes nobody saw are interchangeable,
//! so only the first one that can take effect is tried. The cache holds 128-bit Zobrist hashes
//! of the states, not the sets themselves: a collision (odds below 2^-90 within the budget) could
//! only prune a path that leads somewhere, never accept a history. A search that visits more than
//! `budget` states gives up: [`Outcome::Inconclusive`].

use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// What a read saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// 404: the key has no version yet.
    Absent,
    /// A version and its value (`None`: the answer carried none).
    Version(u64, Option<String>),
}

/// One operation on one key, with the interval in which it may take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A write that took effect exactly once between `start` and `end`, as `version` when the
    /// answer said which.
    Acked { start: Instant, end: Instant, value: String, version: Option<u64> },
    /// A write with no definite outcome: took effect once at any point after `start`, or never.
    Indeterminate { start: Instant, value: String },
    /// A linearizable read: took effect between `start` and `end`.
    Read { start: Instant, end: Instant, seen: Seen },
    /// A read of a committed prefix: took effect at any point before `end`, after every write in
    /// `after` (indices into the same slice; one that is not a write can never be satisfied).
    SnapshotRead { end: Instant, after: Vec<usize>, seen: Seen },
}

impl Entry {
    /// The answer time, `None` for an indeterminate write (+∞).
    pub fn end(&self) -> Option<Instant> {
        match self {
            Entry::Acked { end, .. } | Entry::Read { end, .. } | Entry::SnapshotRead { end, .. } => Some(*end),
            Entry::Indeterminate { .. } => None,
        }
    }

    fn start(&self) -> Option<Instant> {
        match self {
            Entry::Acked { start, .. } | Entry::Indeterminate { start, .. } | Entry::Read { start, .. } => Some(*start),
            Entry::SnapshotRead { .. } => None,
        }
    }

    fn value(&self) -> Option<&str> {
        match self {
            Entry::Acked { value, .. } | Entry::Indeterminate { value, .. } => Some(value),
            _ => None,
        }
    }

    fn seen(&self) -> Option<&Seen> {
        match self {
            Entry::Read { seen, .. } | Entry::SnapshotRead { seen, .. } => Some(seen),
            _ => None,
        }
    }
}

/// How a key's search came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    NotLinearizable,
    /// The budget ran out first.
    Inconclusive,
}

/// Whether `entries` (one key's operations) have a linearization; and how many states the search
/// visited.
pub fn search(entries: &[Entry], budget: usize) -> (Outcome, usize) {
    match Search::new(entries) {
        Some(mut s) => {
            let outcome = s.run(budget);
            (outcome, s.visited.len())
        }
        None => (Outcome::NotLinearizable, 0),
    }
}

/// The smallest prefix of `entries` that has no linearization: the entry whose answer ends it,
/// and how many entries the prefix holds. `None` when no prefix is shown non-linearizable within
/// the budget. The prefix up to time `t` holds what was invoked by `t`; a write still running
/// then counts as indeterminate and a read still running is left out. A prefix of a
/// linearizable history is linearizable, so a binary search over the answer times finds it.
pub fn first_failure(entries: &[Entry], budget: usize) -> Option<(usize, usize)> {
    let mut ends: Vec<Instant> = entries.iter().filter_map(Entry::end).collect();
    ends.sort();
    ends.dedup();
    let fails = |t: Instant| search(&prefix(entries, t), budget).0 == Outcome::NotLinearizable;
    let (mut lo, mut hi) = (0, ends.len());
    let mut found = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails(ends[mid]) {
            found = Some(mid);
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let t = ends[found?];
    let culprit = entries.iter().position(|e| e.end() == Some(t))?;
    Some((culprit, prefix(entries, t).len()))
}

/// What of `entries` was invoked by `t`, as seen at `t`.
fn prefix(entries: &[Entry], t: Instant) -> Vec<Entry> {
    let mut index = vec![usize::MAX; entries.len()];
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let kept = match e {
            Entry::Acked { end, .. } | Entry::Read { end, .. } | Entry::SnapshotRead { end, .. } if *end <= t => {
                Some(e.clone())
            }
            Entry::Acked { start, value, .. } if *start <= t => {
                Some(Entry::Indeterminate { start: *start, value: value.clone() })
            }
            Entry::Indeterminate { start, .. } if *start <= t => Some(e.clone()),
            _ => None,
        };
        if let Some(k) = kept {
            index[i] = out.len();
            out.push(k);
        }
    }
    for e in &mut out {
        if let Entry::SnapshotRead { after, .. } = e {
            for a in after.iter_mut() {
                *a = index.get(*a).copied().unwrap_or(usize::MAX);
            }
        }
    }
    out
}

const NONE: u32 = u32::MAX;

/// splitmix64's finalizer: the Zobrist keys, deterministic and well spread.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn zobrist(i: u64) -> u128 {
    (u128::from(mix(2 * i)) << 64) | u128::from(mix(2 * i + 1))
}

/// A search frame: the writes that may be applied next, which is being tried, and how many reads
/// were applied on arriving here (undone on leaving).
struct Frame {
    choices: Vec<u32>,
    next: usize,
    forced: usize,
    chosen: bool,
}

enum Step {
    Done,
    Dead,
    OutOfBudget,
    Frame(Frame),
}

/// One key's search. Entries are numbered as in the slice; events as nodes 1.. of a circular,
/// doubly linked list sorted by time (node 0 is its head), from which an applied entry's events
/// are unlinked and relinked in the reverse order (dancing links).
struct Search<'a> {
    entries: &'a [Entry],
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Per event: its entry, and whether it is the answer (else the invocation).
    event_entry: Vec<u32>,
    event_is_return: Vec<bool>,
    /// Per entry: its events (`NONE` when it has none).
    call_event: Vec<u32>,
    return_event: Vec<u32>,
    done: Vec<bool>,
    /// Entries that must be applied and are not yet.
    required_left: usize,
    /// Per entry: the version the register must be at for it to apply (a read's version seen; an
    /// acknowledged write's version less one; an indeterminate write seen by a read, likewise).
    pin: Vec<Option<u64>>,
    /// Entries pinned to each version and not yet applied.
    pending_at: HashMap<u64, u32>,
    /// Per write, its value's id; per read, the id of the value it saw (`NONE`: no write's).
    value_id: Vec<u32>,
    /// Snapshot reads by the version they saw.
    waiting: HashMap<u64, Vec<u32>>,
    /// Per snapshot read, the writes in its `after` not yet applied; per write, the reads whose
    /// `after` lists it.
    after_left: Vec<u32>,
    unlocks: Vec<Vec<u32>>,
    /// Indeterminate writes whose value no read saw, by invocation. They are interchangeable,
    /// so the search only ever applies the first not yet applied: those applied are the first
    /// `free_used`. They have no events in the list.
    free: Vec<(Instant, u32)>,
    free_used: usize,
    /// Per event node, its time.
    event_time: Vec<Instant>,
    version: u64,
    /// The last write applied (`NONE`: none yet), and the one before each write applied.
    last: u32,
    lasts: Vec<u32>,
    /// XOR of the Zobrist keys of the entries applied.
    hash: u128,
    /// Entries applied, in order, to undo.
    path: Vec<u32>,
    visited: HashSet<u128>,
}

impl<'a> Search<'a> {
    /// `None` when some required entry can never apply (a read of a value no write wrote, a
    /// version 0, one value seen at two versions...): not linearizable, with no search.
    fn new(entries: &'a [Entry]) -> Option<Self> {
        let n = entries.len();
        assert!(n < NONE as usize, "a key with more than 2^32 operations");
        let writes = entries.iter().filter(|e| e.value().is_some()).count() as u64;
        let mut ids: HashMap<&str, u32> = HashMap::new();
        let mut value_id = vec![NONE; n];
        let mut writers: HashMap<u32, u32> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if let Some(v) = e.value() {
                let next = ids.len() as u32;
                value_id[i] = *ids.entry(v).or_insert(next);
                *writers.entry(value_id[i]).or_default() += 1;
            }
        }
        // A value two writes wrote (never, from the clients) pins neither.
        let unique = |id: u32| writers.get(&id) == Some(&1);
        // The version each value written once was seen at, by any read.
        let mut seen_at: HashMap<u32, u64> = HashMap::new();
        let mut pin = vec![None; n];
        for (i, e) in entries.iter().enumerate() {
            match e.seen() {
                Some(Seen::Absent) => pin[i] = Some(0),
                Some(Seen::Version(v, value)) => {
                    let id = value.as_deref().and_then(|x| ids.get(x)).copied()?;
                    if *v == 0 || *v > writes || (unique(id) && *seen_at.entry(id).or_insert(*v) != *v) {
                        return None;
                    }
                    value_id[i] = id;
                    pin[i] = Some(*v);
                }
                None => {}
            }
        }
        for (i, e) in entries.iter().enumerate() {
            let acked = match e {
                Entry::Acked { version: Some(v), .. } => Some(*v),
                _ => None,
            };
            let seen = if e.value().is_some() { seen_at.get(&value_id[i]).copied() } else { None };
            match (acked, seen) {
                (Some(a), Some(s)) if a != s => return None,
                (Some(v), _) if v == 0 || v > writes => return None,
                (Some(v), _) | (None, Some(v)) => pin[i] = Some(v - 1),
                (None, None) => {}
            }
        }
        let mut pending_at: HashMap<u64, u32> = HashMap::new();
        for p in pin.iter().flatten() {
            *pending_at.entry(*p).or_default() += 1;
        }
        let mut waiting: HashMap<u64, Vec<u32>> = HashMap::new();
        let mut after_left = vec![0; n];
        let mut unlocks = vec![Vec::new(); n];
        for (i, e) in entries.iter().enumerate() {
            if let Entry::SnapshotRead { after, .. } = e {
                waiting.entry(pin[i].unwrap_or_default()).or_default().push(i as u32);
                let mut after = after.clone();
                after.sort_unstable();
                after.dedup();
                for a in after {
                    entries.get(a).and_then(Entry::value)?;
                    after_left[i] += 1;
                    unlocks[a].push(i as u32);
                }
            }
        }
        let mut free = Vec::new();
        // The events, invocations before answers at equal times: such operations overlap.
        let mut events: Vec<(Instant, bool, u32)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match (e, e.start()) {
                (Entry::Indeterminate { start, .. }, _) if pin[i].is_none() => free.push((*start, i as u32)),
                (_, Some(s)) => events.push((s, false, i as u32)),
                (_, None) => {}
            }
            if let Some(t) = e.end() {
                events.push((t, true, i as u32));
            }
        }
        events.sort();
        free.sort();
        let m = events.len() + 1;
        let mut call_event = vec![NONE; n];
        let mut return_event = vec![NONE; n];
        let mut event_entry = vec![NONE; m];
        let mut event_is_return = vec![false; m];
        for (k, (_, ret, i)) in events.iter().enumerate() {
            let node = k as u32 + 1;
            event_entry[node as usize] = *i;
            event_is_return[node as usize] = *ret;
            if *ret { return_event[*i as usize] = node } else { call_event[*i as usize] = node }
        }
        let event_time = events.first().map(|e| e.0).into_iter().chain(events.iter().map(|e| e.0)).collect();
        let next = (0..m as u32).map(|k| (k + 1) % m as u32).collect();
        let prev = (0..m as u32).map(|k| (k + m as u32 - 1) % m as u32).collect();
        Some(Search {
            entries,
            next,
            prev,
            event_entry,
            event_is_return,
            call_event,
            return_event,
            done: vec![false; n],
            required_left: entries.iter().filter(|e| e.end().is_some()).count(),
            pin,
            pending_at,
            value_id,
            waiting,
            after_left,
            unlocks,
            free,
            free_used: 0,
            event_time,
            version: 0,
            last: NONE,
            lasts: Vec::new(),
            hash: 0,
            path: Vec::new(),
            visited: HashSet::new(),
        })
    }

    fn run(&mut self, budget: usize) -> Outcome {
        let mut frames = match self.arrive(budget) {
            Step::Done => return Outcome::Linearizable,
            Step::OutOfBudget => return Outcome::Inconclusive,
            Step::Dead => return Outcome::NotLinearizable,
            Step::Frame(f) => vec![f],
        };
        while let Some(top) = frames.last_mut() {
            if top.chosen {
                self.undo();
                top.chosen = false;
            }
            match top.choices.get(top.next).copied() {
                Some(w) => {
                    top.next += 1;
                    top.chosen = true;
                    self.apply(w);
                    match self.arrive(budget) {
                        Step::Done => return Outcome::Linearizable,
                        Step::OutOfBudget => return Outcome::Inconclusive,
                        Step::Dead => {}
                        Step::Frame(f) => frames.push(f),
                    }
                }
                None => {
                    let forced = top.forced;
                    frames.pop();
                    for _ in 0..forced {
                        self.undo();
                    }
                }
            }
        }
        Outcome::NotLinearizable
    }

    /// Apply every read that can take effect now, then see where that leaves the search.
    fn arrive(&mut self, budget: usize) -> Step {
        let forced = self.apply_reads();
        if self.required_left == 0 {
            return Step::Done;
        }
        if self.visited.len() >= budget {
            return Step::OutOfBudget;
        }
        let choices = if self.visited.insert(self.hash ^ self.last_key()) { self.choices() } else { Vec::new() };
        if choices.is_empty() {
            for _ in 0..forced {
                self.undo();
            }
            return Step::Dead;
        }
        Step::Frame(Frame { choices, next: 0, forced, chosen: false })
    }

    fn last_key(&self) -> u128 {
        if self.last == NONE { 0 } else { zobrist(self.entries.len() as u64 + u64::from(self.last)).rotate_left(17) }
    }

    /// The invocations no pending operation must precede: those before the first answer.
    fn candidates(&self) -> impl Iterator<Item = u32> + '_ {
        let mut node = self.next[0];
        std::iter::from_fn(move || {
            if node == 0 || self.event_is_return[node as usize] {
                return None;
            }
            let i = self.event_entry[node as usize];
            node = self.next[node as usize];
            Some(i)
        })
    }

    fn matches(&self, read: u32) -> bool {
        let r = read as usize;
        self.pin[r] == Some(self.version)
            && (self.version == 0 || (self.last != NONE && self.value_id[self.last as usize] == self.value_id[r]))
    }

    /// Apply the reads that can take effect in the current state; how many.
    fn apply_reads(&mut self) -> usize {
        let mut applied = 0;
        loop {
            let strict =
                self.candidates().find(|&i| matches!(self.entries[i as usize], Entry::Read { .. }) && self.matches(i));
            if let Some(i) = strict {
                self.apply(i);
                applied += 1;
                continue;
            }
            let snapshot = self.waiting.get(&self.version).and_then(|rs| {
                rs.iter()
                    .copied()
                    .find(|&r| !self.done[r as usize] && self.after_left[r as usize] == 0 && self.matches(r))
            });
            match snapshot {
                Some(r) => {
                    self.apply(r);
                    applied += 1;
                }
                None => return applied,
            }
        }
    }

    /// The writes that may take effect next. The register cannot leave a version while an
    /// operation pinned to it is pending, unless that operation is the write itself.
    fn choices(&self) -> Vec<u32> {
        let held = self.pending_at.get(&self.version).copied().unwrap_or(0);
        if held > 1 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for i in self.candidates() {
            let e = &self.entries[i as usize];
            if e.value().is_none() {
                continue;
            }
            match self.pin[i as usize] {
                Some(p) if p == self.version => return vec![i],
                Some(_) => {}
                None if held > 0 => {}
                None => out.push(i),
            }
        }
        if held == 0
            && let Some(&(start, i)) = self.free.get(self.free_used)
            && self.first_answer().is_none_or(|t| start <= t)
        {
            out.push(i);
        }
        out
    }

    /// The earliest answer still pending, if any.
    fn first_answer(&self) -> Option<Instant> {
        let mut node = self.next[0];
        while node != 0 && !self.event_is_return[node as usize] {
            node = self.next[node as usize];
        }
        (node != 0).then(|| self.event_time[node as usize])
    }

    fn apply(&mut self, i: u32) {
        let iu = i as usize;
        self.done[iu] = true;
        for node in [self.call_event[iu], self.return_event[iu]] {
            if node != NONE {
                let (p, n) = (self.prev[node as usize], self.next[node as usize]);
                self.next[p as usize] = n;
                self.prev[n as usize] = p;
            }
        }
        self.hash ^= zobrist(u64::from(i));
        let e = &self.entries[iu];
        if e.end().is_some() {
            self.required_left -= 1;
        }
        if let Some(p) = self.pin[iu] {
            *self.pending_at.get_mut(&p).expect("pinned") -= 1;
        }
        if self.free.get(self.free_used).is_some_and(|f| f.1 == i) {
            self.free_used += 1;
        }
        if e.value().is_some() {
            self.lasts.push(self.last);
            self.last = i;
            self.version += 1;
            for r in &self.unlocks[iu] {
                self.after_left[*r as usize] -= 1;
            }
        }
        self.path.push(i);
    }

    fn undo(&mut self) {
        let i = self.path.pop().expect("something to undo");
        let iu = i as usize;
        let e = &self.entries[iu];
        if self.free_used > 0 && self.free[self.free_used - 1].1 == i {
            self.free_used -= 1;
        }
        if e.value().is_some() {
            for r in &self.unlocks[iu] {
                self.after_left[*r as usize] += 1;
            }
            self.version -= 1;
            self.last = self.lasts.pop().expect("the previous write");
        }
        if let Some(p) = self.pin[iu] {
            *self.pending_at.get_mut(&p).expect("pinned") += 1;
        }
        if e.end().is_some() {
            self.required_left += 1;
        }
        self.hash ^= zobrist(u64::from(i));
        for node in [self.return_event[iu], self.call_event[iu]] {
            if node != NONE {
                let (p, n) = (self.prev[node as usize], self.next[node as usize]);
                self.next[p as usize] = node;
                self.prev[n as usize] = node;
            }
        }
        self.done[iu] = false;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::checker::linearizability::SEARCH_BUDGET;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Entries built on one origin, times in ms.
    struct H {
        t0: Instant,
        e: Vec<Entry>,
    }

    impl H {
        fn new() -> Self {
            H { t0: Instant::now(), e: Vec::new() }
        }
        fn acked(&mut self, start: u64, end: u64, value: &str, version: u64) -> usize {
            let (start, end) = (at(self.t0, start), at(self.t0, end));
            self.e.push(Entry::Acked { start, end, value: value.into(), version: Some(version) });
            self.e.len() - 1
        }
        fn unknown(&mut self, start: u64, value: &str) -> usize {
            self.e.push(Entry::Indeterminate { start: at(self.t0, start), value: value.into() });
            self.e.len() - 1
        }
        fn read(&mut self, start: u64, end: u64, seen: Option<(u64, &str)>) -> usize {
            let (start, end) = (at(self.t0, start), at(self.t0, end));
            self.e.push(Entry::Read { start, end, seen: seen_of(seen) });
            self.e.len() - 1
        }
        fn snapshot(&mut self, end: u64, after: &[usize], seen: Option<(u64, &str)>) -> usize {
            let end = at(self.t0, end);
            self.e.push(Entry::SnapshotRead { end, after: after.to_vec(), seen: seen_of(seen) });
            self.e.len() - 1
        }
        fn outcome(&self) -> Outcome {
            search(&self.e, SEARCH_BUDGET).0
        }
    }

    fn seen_of(seen: Option<(u64, &str)>) -> Seen {
        seen.map_or(Seen::Absent, |(v, x)| Seen::Version(v, Some(x.into())))
    }

    /// Three writers and two readers, overlapping, every read fresh; all answered by 40 ms.
    fn clean() -> H {
        let mut h = H::new();
        h.read(0, 2, None);
        h.acked(1, 10, "a", 1);
        h.acked(5, 20, "b", 2); // overlaps a
        h.read(8, 12, Some((1, "a"))); // a took effect, b not yet
        h.read(15, 16, Some((2, "b"))); // b took effect before its answer
        h.acked(21, 30, "c", 3);
        h.read(22, 35, Some((3, "c")));
        h.read(36, 40, Some((3, "c")));
        h
    }

    #[test]
    fn a_clean_concurrent_history_is_linearizable() {
        assert_eq!(clean().outcome(), Outcome::Linearizable);
        assert_eq!(search(&[], 10).0, Outcome::Linearizable);
    }

    #[test]
    fn a_read_older_than_a_completed_acknowledged_write_is_not_linearizable() {
        let mut h = clean();
        // c was acknowledged at 30; a read from 31 sees b.
        h.read(31, 33, Some((2, "b")));
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
        // A read of nothing after the first write completed, too.
        let mut h = clean();
        h.read(11, 12, None);
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
    }

    #[test]
    fn two_writes_acknowledged_as_one_version_are_not_linearizable() {
        let mut h = clean();
        h.acked(31, 40, "d", 3);
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
        // Concurrent ones too: versions never repeat.
        let mut h = H::new();
        h.acked(0, 10, "a", 1);
        h.acked(0, 10, "b", 1);
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
    }

    #[test]
    fn writes_versioned_against_real_time_or_with_a_gap_are_not_linearizable() {
        let mut h = H::new();
        h.acked(0, 10, "a", 2);
        h.acked(11, 20, "b", 1);
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
        // v2 skipped: nothing could have taken it.
        let mut h = H::new();
        h.acked(0, 10, "a", 1);
        h.acked(11, 20, "c", 3);
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
        // ... unless an indeterminate write invoked in time did.
        h.unknown(5, "b");
        assert_eq!(h.outcome(), Outcome::Linearizable);
        // One invoked after v3's answer cannot have.
        let mut h = H::new();
        h.acked(0, 10, "a", 1);
        h.acked(11, 20, "c", 3);
        h.unknown(21, "b");
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
    }

    #[test]
    fn a_read_of_a_refused_write_is_not_linearizable() {
        // The write of "x" was refused: it is not in the history the search sees.
        let mut h = clean();
        h.read(36, 40, Some((4, "x")));
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
        let mut h = clean();
        h.snapshot(40, &[], Some((3, "x")));
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
    }

    #[test]
    fn an_indeterminate_write_seen_by_a_read_is_linearizable() {
        let mut h = clean();
        h.unknown(31, "d"); // answered 503, or no answer
        h.read(100, 110, Some((4, "d")));
        h.read(120, 130, Some((4, "d")));
        assert_eq!(h.outcome(), Outcome::Linearizable);
        // Even long after its own answer, and before a later acknowledged write.
        h.acked(200, 210, "e", 5);
        h.read(211, 212, Some((5, "e")));
        assert_eq!(h.outcome(), Outcome::Linearizable);
        // But not before it was invoked.
        let mut h = clean();
        h.read(41, 42, Some((4, "d")));
        h.unknown(43, "d");
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
        // Nor at two versions.
        let mut h = clean();
        h.unknown(31, "d");
        h.unknown(31, "e");
        h.read(100, 110, Some((4, "d")));
        h.read(120, 130, Some((5, "d")));
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
    }

    #[test]
    fn an_indeterminate_write_never_seen_is_linearizable() {
        let mut h = clean();
        h.unknown(31, "d");
        h.read(100, 110, Some((3, "c")));
        assert_eq!(h.outcome(), Outcome::Linearizable);
        // Nor does it block what follows: it has no answer to wait for.
        h.acked(120, 130, "e", 4);
        h.read(131, 132, Some((4, "e")));
        assert_eq!(h.outcome(), Outcome::Linearizable);
    }

    #[test]
    fn a_read_going_back_in_time_is_not_linearizable() {
        let mut h = clean();
        h.acked(41, 42, "d", 4);
        h.read(43, 50, Some((4, "d")));
        h.read(51, 60, Some((3, "c")));
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
        // While the second read overlaps the first, it may have taken effect before it...
        let mut h = clean();
        h.acked(41, 70, "d", 4);
        h.read(43, 50, Some((4, "d")));
        h.read(45, 60, Some((3, "c")));
        assert_eq!(h.outcome(), Outcome::Linearizable);
        // ... and also when it is a read of a lagging copy that its token does not hold back.
        let mut h = clean();
        h.acked(41, 42, "d", 4);
        h.read(43, 50, Some((4, "d")));
        h.snapshot(60, &[], Some((3, "c")));
        assert_eq!(h.outcome(), Outcome::Linearizable);
    }

    #[test]
    fn a_snapshot_read_older_than_a_write_its_token_covers_is_not_linearizable() {
        let mut h = clean();
        let d = h.acked(41, 42, "d", 4);
        h.snapshot(50, &[d], Some((3, "c")));
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
        let mut h = clean();
        let d = h.acked(41, 42, "d", 4);
        h.snapshot(50, &[d], Some((4, "d")));
        assert_eq!(h.outcome(), Outcome::Linearizable);
        // A snapshot never sees a write invoked after it answered.
        let mut h = clean();
        h.snapshot(50, &[], Some((4, "d")));
        h.acked(51, 52, "d", 4);
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
    }

    #[test]
    fn a_search_over_budget_is_inconclusive() {
        let h = clean();
        assert_eq!(search(&h.e, 1).0, Outcome::Inconclusive);
        let (outcome, states) = search(&h.e, SEARCH_BUDGET);
        assert_eq!(outcome, Outcome::Linearizable);
        assert!(states > 1 && states < 10, "{states}");
    }

    #[test]
    fn the_first_failure_is_the_answer_that_breaks_linearizability() {
        let mut h = clean();
        h.acked(41, 42, "d", 4);
        let bad = h.read(43, 45, Some((3, "c")));
        h.acked(50, 60, "e", 5);
        h.read(61, 62, Some((5, "e")));
        assert_eq!(h.outcome(), Outcome::NotLinearizable);
        // Up to the bad read's answer: 8 of clean, d, the bad read.
        assert_eq!(first_failure(&h.e, SEARCH_BUDGET), Some((bad, 10)));
        assert_eq!(first_failure(&clean().e, SEARCH_BUDGET), None);
    }

    /// A long, busy history: every write overlaps the next, a fifth end with no answer (half of
    /// those took effect, seen by a read), reads lag behind; the search stays near one state per
    /// write.
    #[test]
    fn a_long_history_is_searched_in_about_one_state_per_write() {
        let mut h = H::new();
        let mut version = 0;
        for i in 0..5000u64 {
            let t = i * 10;
            let value = format!("w{i}");
            if i % 5 == 4 {
                h.unknown(t, &value);
                if i % 10 == 4 {
                    version += 1;
                    h.read(t + 1, t + 30, Some((version, &value)));
                }
            } else {
                version += 1;
                let w = h.acked(t, t + 15, &value, version);
                h.snapshot(t + 40, &[w], Some((version, &value)));
            }
        }
        let (outcome, states) = search(&h.e, SEARCH_BUDGET);
        assert_eq!(outcome, Outcome::Linearizable);
        assert!(states <= 5000, "{states}");
    }
}

#[cfg(test)]
mod brute_force;
