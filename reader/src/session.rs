//! Session read-your-writes without a header: a reader remembers, per token, where the writes it
//! forwarded for that token landed, and answers that token's reads only once it has applied them.
//!
//! Real Vault clients (the CLI, Vault Agent, `hvac`) never echo `X-Secretlog-Index`, so the reader
//! keeps the index for them. An entry is keyed by the token's SHA-256 (the token itself is never
//! kept), holds a position vector (offsets of different partitions cannot be compared), and is
//! dropped only once applied — or, for an entry made strong, once it expires. The table is
//! bounded: an entry pushed out before it was applied is merged into a floor that every session
//! read waits for, so eviction costs other clients a wait, never a guarantee.
//!
//! What is not covered, by design: writes through one reader and reads through another (use the
//! index header or `X-Secretlog-Consistency: strong`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secretlog_schemas::ConsistencyToken;
use sha2::{Digest, Sha256};

/// What a token's reads must wait for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionNeeds {
    /// A position to be applied first (the token's own writes, and the floor).
    pub position: ConsistencyToken,
    /// A forward of this token's had an unknown outcome: its reads are strong until expiry.
    pub strong: bool,
}

#[derive(Debug)]
struct Entry {
    position: ConsistencyToken,
    strong_until: Option<Instant>,
    /// Dropped at this instant whatever its state (a node that has not applied a write for this
    /// long is past any staleness bound anyway).
    expires: Instant,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<[u8; 32], Entry>,
    /// Positions of entries evicted before they were applied.
    floor: ConsistencyToken,
}

/// The per-token table of one reader.
#[derive(Debug)]
pub struct Sessions {
    table: Mutex<Table>,
    capacity: usize,
    ttl: Duration,
}

fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Table {
    /// `token`'s entry, a new one (expiring at `expires`) if it has none.
    fn entry(&mut self, token: &str, expires: Instant) -> &mut Entry {
        self.entries.entry(key(token)).or_insert_with(|| Entry {
            position: ConsistencyToken::default(),
            strong_until: None,
            expires,
        })
    }
}

impl Sessions {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Sessions { table: Mutex::new(Table::default()), capacity: capacity.max(1), ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write forwarded for `token` landed at `position`.
    pub fn wrote(&self, token: &str, position: &ConsistencyToken, applied: &BTreeMap<i32, i64>, now: Instant) {
        if position.is_reached_by(applied) {
            return;
        }
        let mut t = self.lock();
        let e = t.entry(token, now + self.ttl);
        e.position.merge(position);
        e.expires = now + self.ttl;
        self.bound(&mut t, applied, now);
        metrics::gauge!("secretlog_reader_sessions").set(t.entries.len() as f64);
    }

    /// A write forwarded for `token` has an unknown outcome: it may land at any position, so the
    /// token reads strong until the entry expires.
    pub fn unknown(&self, token: &str, applied: &BTreeMap<i32, i64>, now: Instant) {
        let mut t = self.lock();
        let ttl = self.ttl;
        let e = t.entry(token, now + ttl);
        e.strong_until = Some(now + ttl);
        e.expires = now + ttl;
        self.bound(&mut t, applied, now);
        metrics::gauge!("secretlog_reader_sessions").set(t.entries.len() as f64);
    }

    /// What a read with `token` (or none) waits for; drops the token's entry once it asks nothing.
    pub fn needs(&self, token: Option<&str>, applied: &BTreeMap<i32, i64>, now: Instant) -> SessionNeeds {
        let mut t = self.lock();
        if t.entries.is_empty() && t.floor.0.is_empty() {
            return SessionNeeds::default();
        }
        if t.floor.is_reached_by(applied) {
            t.floor = ConsistencyToken::default();
        }
        let mut needs = SessionNeeds { position: t.floor.clone(), strong: false };
        if let Some(token) = token {
            let k = key(token);
            if let Some(e) = t.entries.get(&k) {
                let strong = e.strong_until.is_some_and(|u| u > now);
                let applied_all = e.position.is_reached_by(applied);
                if (applied_all && !strong) || e.expires <= now {
                    t.entries.remove(&k);
                } else {
                    needs.strong = strong;
                    if !applied_all {
                        needs.position.merge(&e.position);
                    }
                }
            }
        }
        needs
    }

    /// Keep the table within its capacity: drop what asks nothing any more, then push the entries
    /// expiring first into the floor.
    fn bound(&self, t: &mut Table, applied: &BTreeMap<i32, i64>, now: Instant) {
        if t.entries.len() <= self.capacity {
            return;
        }
        t.entries.retain(|_, e| {
            e.expires > now && (!e.position.is_reached_by(applied) || e.strong_until.is_some_and(|u| u > now))
        });
        if t.entries.len() <= self.capacity {
            return;
        }
        let mut by_expiry: Vec<([u8; 32], Instant)> = t.entries.iter().map(|(k, e)| (*k, e.expires)).collect();
        by_expiry.sort_by_key(|(_, x)| *x);
        let excess = t.entries.len() - self.capacity;
        for (k, _) in by_expiry.into_iter().take(excess) {
            if let Some(e) = t.entries.remove(&k) {
                // A strong entry evicted keeps its position in the floor; its strong reads end
                // early, which the capacity metric and the docs say.
                t.floor.merge(&e.position);
                metrics::counter!("secretlog_reader_sessions_evicted_total").increment(1);
            }
        }
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_tokens_reads_wait_for_its_own_writes_until_applied_then_the_entry_goes() {
        let s = Sessions::new(10, Duration::from_secs(60));
        let now = Instant::now();
        s.wrote("alice", &ConsistencyToken(pos(&[(1, 10)])), &pos(&[(1, 3)]), now);
        s.wrote("alice", &ConsistencyToken(pos(&[(2, 5)])), &pos(&[(1, 3)]), now);
        let needs = s.needs(Some("alice"), &pos(&[(1, 3)]), now);
        assert_eq!(needs.position, ConsistencyToken(pos(&[(1, 10), (2, 5)])));
        assert!(!needs.strong);
        assert_eq!(
            s.needs(Some("bob"), &pos(&[(1, 3)]), now),
            SessionNeeds::default(),
            "other tokens wait for nothing"
        );
        assert_eq!(s.needs(Some("alice"), &pos(&[(1, 10), (2, 5)]), now), SessionNeeds::default());
        assert!(s.is_empty(), "an applied entry is dropped");
    }

    #[test]
    fn a_write_already_applied_makes_no_entry() {
        let s = Sessions::new(10, Duration::from_secs(60));
        s.wrote("alice", &ConsistencyToken(pos(&[(0, 4)])), &pos(&[(0, 4)]), Instant::now());
        assert!(s.is_empty());
    }

    #[test]
    fn an_unknown_outcome_makes_the_token_strong_until_the_entry_expires() {
        let s = Sessions::new(10, Duration::from_secs(60));
        let now = Instant::now();
        s.unknown("alice", &pos(&[(0, 1)]), now);
        assert!(s.needs(Some("alice"), &pos(&[(0, 1)]), now).strong);
        assert!(s.needs(Some("alice"), &pos(&[(0, 1)]), now + Duration::from_secs(59)).strong);
        assert!(!s.needs(Some("alice"), &pos(&[(0, 1)]), now + Duration::from_secs(61)).strong);
        assert!(s.is_empty());
    }

    #[test]
    fn entries_pushed_out_unapplied_become_a_floor_every_session_read_waits_for() {
        let s = Sessions::new(2, Duration::from_secs(60));
        let now = Instant::now();
        let applied = pos(&[(0, 0)]);
        s.wrote("a", &ConsistencyToken(pos(&[(0, 5)])), &applied, now);
        s.wrote("b", &ConsistencyToken(pos(&[(0, 6)])), &applied, now + Duration::from_millis(1));
        s.wrote("c", &ConsistencyToken(pos(&[(0, 7)])), &applied, now + Duration::from_millis(2));
        assert_eq!(s.len(), 2);
        let needs = s.needs(Some("someone-else"), &applied, now);
        assert_eq!(needs.position, ConsistencyToken(pos(&[(0, 5)])), "a's write is now everyone's floor");
        assert_eq!(
            s.needs(Some("a"), &applied, now).position,
            ConsistencyToken(pos(&[(0, 5)])),
            "a keeps its guarantee"
        );
        assert_eq!(
            s.needs(None, &pos(&[(0, 5)]), now).position,
            ConsistencyToken::default(),
            "reached: the floor clears"
        );
    }
}
