//! The search against a brute force, on small random histories: every order of every choice of
//! indeterminate writes, checked directly, must give the same answer.

use std::time::{Duration, Instant};

use super::*;
use crate::checker::linearizability::SEARCH_BUDGET;

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

/// Every order of every choice of indeterminate writes, checked directly.
fn brute_force(e: &[Entry]) -> bool {
    let n = e.len();
    let before = |a: usize, b: usize| -> bool {
        let real_time = matches!((e[a].end(), e[b].start()), (Some(x), Some(y)) if x < y);
        let token = matches!(&e[b], Entry::SnapshotRead { after, .. } if after.contains(&a));
        real_time || token
    };
    fn go(
        e: &[Entry],
        before: &dyn Fn(usize, usize) -> bool,
        used: &mut Vec<bool>,
        version: u64,
        last: Option<usize>,
    ) -> bool {
        let n = e.len();
        // Done when every entry with an answer is placed.
        if (0..n).all(|i| used[i] || e[i].end().is_none()) {
            return true;
        }
        for i in 0..n {
            if used[i] || (0..n).any(|j| !used[j] && j != i && before(j, i)) {
                continue;
            }
            if let Entry::SnapshotRead { after, .. } = &e[i]
                && after.iter().any(|&a| a >= n || e[a].value().is_none())
            {
                continue;
            }
            let next = match &e[i] {
                Entry::Acked { version: v, .. } if v.is_some_and(|v| v != version + 1) => continue,
                Entry::Acked { .. } | Entry::Indeterminate { .. } => (version + 1, Some(i)),
                Entry::Read { seen, .. } | Entry::SnapshotRead { seen, .. } => {
                    let ok = match seen {
                        Seen::Absent => version == 0,
                        Seen::Version(v, x) => *v == version && last.and_then(|l| e[l].value()) == x.as_deref(),
                    };
                    if !ok {
                        continue;
                    }
                    (version, last)
                }
            };
            used[i] = true;
            if go(e, before, used, next.0, next.1) {
                return true;
            }
            used[i] = false;
        }
        false
    }
    go(e, &before, &mut vec![false; n], 0, None)
}

/// A small random history, from a random execution, sometimes with one answer altered.
fn random_history(seed: u64) -> Vec<Entry> {
    let mut s = seed;
    let mut rnd = |k: u64| {
        s = mix(s);
        s % k
    };
    let t0 = Instant::now();
    let n = 1 + rnd(7) as usize;
    // (point of effect, or never; entry), the answers filled in below.
    let mut ops: Vec<(Option<u64>, Entry)> = Vec::new();
    for i in 0..n {
        let start = rnd(20);
        let end = start + rnd(8);
        let value = format!("w{i}");
        let (point, e) = match rnd(5) {
            0 | 1 => (
                Some(start + rnd(end - start + 1)),
                Entry::Acked { start: at(t0, start), end: at(t0, end), value, version: None },
            ),
            // Later than its answer, or never.
            2 => ((rnd(2) == 0).then(|| start + rnd(30)), Entry::Indeterminate { start: at(t0, start), value }),
            3 => (
                Some(start + rnd(end - start + 1)),
                Entry::Read { start: at(t0, start), end: at(t0, end), seen: Seen::Absent },
            ),
            // Any time before its answer.
            _ => (Some(rnd(end + 1)), Entry::SnapshotRead { end: at(t0, end), after: Vec::new(), seen: Seen::Absent }),
        };
        ops.push((point, e));
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| ops[i].0.is_some()).collect();
    order.sort_by_key(|&i| ops[i].0);
    let (mut version, mut last): (u64, Option<String>) = (0, None);
    let mut applied: Vec<usize> = Vec::new();
    for &i in &order {
        match &mut ops[i].1 {
            Entry::Acked { version: v, value, .. } => {
                version += 1;
                *v = Some(version);
                last = Some(value.clone());
                applied.push(i);
            }
            Entry::Indeterminate { value, .. } => {
                version += 1;
                last = Some(value.clone());
            }
            Entry::Read { seen, .. } => *seen = seen_now(version, &last),
            Entry::SnapshotRead { seen, .. } => *seen = seen_now(version, &last),
        }
        if let Entry::SnapshotRead { after, .. } = &mut ops[i].1 {
            let covered: Vec<usize> = applied.iter().copied().filter(|_| rnd(2) == 0).collect();
            after.extend(covered);
        }
    }
    let mut e: Vec<Entry> = ops.into_iter().map(|(_, e)| e).collect();
    // Alter one answer, half of the time.
    if rnd(2) == 0 {
        let i = rnd(n as u64) as usize;
        match &mut e[i] {
            Entry::Acked { version, .. } => *version = Some(1 + rnd(3)),
            Entry::Read { seen, .. } | Entry::SnapshotRead { seen, .. } => {
                *seen = match rnd(3) {
                    0 => Seen::Absent,
                    v => Seen::Version(v, Some(format!("w{}", rnd(n as u64)))),
                }
            }
            Entry::Indeterminate { start, .. } => *start += Duration::from_millis(rnd(10)),
        }
    }
    e
}

fn seen_now(version: u64, last: &Option<String>) -> Seen {
    if version == 0 { Seen::Absent } else { Seen::Version(version, last.clone()) }
}

#[test]
fn the_search_agrees_with_a_brute_force_on_small_random_histories() {
    let (mut yes, mut no) = (0, 0);
    for seed in 0..20_000u64 {
        let e = random_history(seed);
        let expected = brute_force(&e);
        let (outcome, _) = search(&e, SEARCH_BUDGET);
        assert_eq!(outcome == Outcome::Linearizable, expected, "seed {seed}: {e:#?}");
        assert_ne!(outcome, Outcome::Inconclusive);
        if expected {
            yes += 1
        } else {
            no += 1
        }
        if !expected {
            // The smallest failing prefix fails, and one answer earlier does not.
            let (culprit, len) = first_failure(&e, SEARCH_BUDGET).expect("a failing prefix");
            let t = e[culprit].end().expect("an answer");
            let p = prefix(&e, t);
            assert_eq!(p.len(), len);
            assert!(!brute_force(&p), "seed {seed}");
            let earlier = e.iter().filter_map(Entry::end).filter(|x| *x < t).max();
            if let Some(t) = earlier {
                assert!(brute_force(&prefix(&e, t)), "seed {seed}");
            }
        }
    }
    assert!(yes > 5_000 && no > 5_000, "{yes} linearizable, {no} not");
}
