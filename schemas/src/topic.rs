//! Topic, header and record-key rules, and the consistency token.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The mutation log.
pub const MUTATIONS_TOPIC: &str = "secretlog.mutations";
/// Partition count the topic is created with (`secretlog up`, `kafka create-topic`, reseed, the
/// DR drill's site): one. Every partition a batch of writes touches costs the brokers a produce
/// request and, per node following the log, a fetch, and every strong read asks each partition's
/// end: on the local three-broker stack one partition gave 1.5-2.1x the acknowledged writes of
/// three at 57-62 % of the CPU per write, and 1.7x the strong reads at 16 connections
/// (docs/benchmarks.md, "One partition"). A secret store's writes are far below one partition's throughput, and every
/// node consumes every partition, so more partitions buy a smaller halt (a partition is the unit
/// of halting) and nothing else; `--partitions N` still creates N.
pub const DEFAULT_PARTITIONS: i32 = 1;
/// Record key of a control event (root token, leader epochs, later policies and tokens): a NUL
/// byte and the control object's name. No valid secret key starts with NUL, so the two never
/// collide.
pub fn control_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Control name of the leader-epoch record of `partition`.
pub fn leader_epoch_name(partition: i32) -> String {
    format!("leader-epoch/{partition}")
}
/// HTTP header carrying a [`ConsistencyToken`] (in write responses and read requests).
pub const HEADER_INDEX: &str = "X-Secretlog-Index";
/// HTTP header choosing a read's consistency: `strong`, `session` or `latest` (see the reader's
/// `--consistency`).
pub const HEADER_CONSISTENCY: &str = "X-Secretlog-Consistency";
/// HTTP header carrying a node's applied position on every read response.
pub const HEADER_APPLIED: &str = "X-Secretlog-Applied";
/// Vault's token header.
pub const HEADER_TOKEN: &str = "X-Vault-Token";

/// The Kafka record key of a secret.
pub fn record_key(mount: &str, path: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(mount.len() + 1 + path.len());
    k.extend_from_slice(mount.as_bytes());
    k.push(b'/');
    k.extend_from_slice(path.as_bytes());
    k
}

/// The partition a record key lives in: the first four bytes of its SHA-256, big-endian, modulo
/// the partition count. Defined here rather than left to a client's partitioner so every tool
/// (and every Kafka client library) places a key identically.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "partition count must be positive");
    let h = Sha256::digest(key);
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    (n % partitions as u32) as i32
}

/// A log position: for each partition, the offset *after* the last record that counts.
///
/// A writer returns one for each committed write; a reader that has applied, for every listed
/// partition, everything before the given offset has seen that write. Text form:
/// `p:offset[,p:offset...]`, e.g. `3:1042`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken(pub BTreeMap<i32, i64>);

impl ConsistencyToken {
    /// Whether `applied` (next offset to apply, per partition) has reached this position.
    pub fn is_reached_by(&self, applied: &BTreeMap<i32, i64>) -> bool {
        self.0.iter().all(|(p, off)| applied.get(p).is_some_and(|a| a >= off))
    }
    /// Merge another position in, keeping the larger offset per partition.
    pub fn merge(&mut self, other: &ConsistencyToken) {
        for (p, off) in &other.0 {
            let e = self.0.entry(*p).or_insert(*off);
            *e = (*e).max(*off);
        }
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (p, off) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{p}:{off}")?;
        }
        Ok(())
    }
}

/// A consistency token that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed consistency token {0:?}: expected partition:offset[,partition:offset...]")]
pub struct BadToken(pub String);

impl FromStr for ConsistencyToken {
    type Err = BadToken;
    fn from_str(s: &str) -> Result<Self, BadToken> {
        let bad = || BadToken(s.chars().take(64).collect());
        let mut m = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (p, off) = part.split_once(':').ok_or_else(bad)?;
            let p: i32 = p.parse().map_err(|_| bad())?;
            let off: i64 = off.parse().map_err(|_| bad())?;
            if p < 0 || off < 0 {
                return Err(bad());
            }
            m.insert(p, off);
        }
        if m.is_empty() {
            return Err(bad());
        }
        Ok(ConsistencyToken(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_compares() {
        let t: ConsistencyToken = "3:1042,0:7".parse().unwrap();
        assert_eq!(t.to_string(), "0:7,3:1042");
        let mut applied = BTreeMap::from([(0, 7), (3, 1041)]);
        assert!(!t.is_reached_by(&applied));
        applied.insert(3, 1042);
        assert!(t.is_reached_by(&applied));
        assert!(!t.is_reached_by(&BTreeMap::from([(3, 2000)])));
    }

    #[test]
    fn token_rejects_garbage() {
        for bad in ["", "x", "1", "1:", ":2", "-1:3", "1:-3", "a:b", "1:2,3"] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn partitioning_is_in_range_and_spreads() {
        let mut seen = [0u32; 6];
        for i in 0..6000 {
            let p = partition_for(format!("secret/k{i}").as_bytes(), 6);
            seen[p as usize] += 1;
        }
        // Golden placements are in tests/golden/partitions_v1.json; here: every partition gets
        // a fair share (within 20% of 1000).
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }
}
