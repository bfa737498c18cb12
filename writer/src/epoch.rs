//! Leader epochs, taken from the log (DESIGN.md, "Write path", rule 2), never from a clock.
//!
//! An epoch is `(era, claim, barrier)` packed into the `u64` every event carries, compared as one
//! number: era in the top 8 bits, the offset of the leader's claim record on the one-partition
//! election topic in the next 40, the barrier sequence in the low 16.
//!
//! * **claim**: a would-be leader appends a claim record (acks=all) to the election topic; its
//!   offset is unique and grows with every claim, so of two leaders the later claim wins,
//!   whatever their clocks say. The consumer group only decides who *tries* to lead.
//! * **barrier**: bumped when a delivery error leaves a record's fate open; records of the older
//!   sequence that land after the barrier are refused everywhere (`crate::committer`).
//! * **era**: offsets restart in a new Kafka cluster (`secretlog reseed`, a DR promotion), so a
//!   leader whose claim would not exceed an epoch already in the log takes the next era. Era 1 is
//!   above every epoch of earlier releases (milliseconds since 1970, below 2^41).

const CLAIM_BITS: u32 = 40;
const BARRIER_BITS: u32 = 16;
const ERA_SHIFT: u32 = CLAIM_BITS + BARRIER_BITS;

/// The epoch of a leader whose claim record is at `claim`, with barrier sequence 0: in the
/// lowest era (at least 1) that puts it above `highest_seen`, the newest epoch in the log this
/// node has applied.
pub fn from_claim(claim: i64, highest_seen: u64) -> u64 {
    let claim = (claim.max(0) as u64) & ((1 << CLAIM_BITS) - 1);
    let mut era = (highest_seen >> ERA_SHIFT).max(1);
    loop {
        let epoch = (era << ERA_SHIFT) | (claim << BARRIER_BITS);
        if epoch > highest_seen || era == 0xff {
            return epoch;
        }
        era += 1;
    }
}

/// The same leader's epoch after one more barrier, or `None` once its sequence is used up (the
/// leader then claims anew).
pub fn next_barrier(epoch: u64) -> Option<u64> {
    let seq = epoch & ((1 << BARRIER_BITS) - 1);
    (seq + 1 < (1 << BARRIER_BITS)).then_some(epoch + 1)
}

/// Whether `other` belongs to a later claim (or era) than `epoch`: another leader, not a barrier
/// of the same one.
pub fn is_later_leader(epoch: u64, other: u64) -> bool {
    (other >> BARRIER_BITS) > (epoch >> BARRIER_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_claim_outranks_an_earlier_one_and_every_clock_epoch_of_older_releases() {
        let clock_epoch = 1_790_000_000_000u64; // December 2026, in ms: how epochs were made before
        let a = from_claim(3, clock_epoch);
        let b = from_claim(4, clock_epoch);
        assert!(a > clock_epoch && b > a);
        assert!(is_later_leader(a, b) && !is_later_leader(b, a));
        // A zombie with a fast clock cannot outrank anyone any more: its epoch is its claim's.
        assert!(from_claim(3, a) > a, "a claim never reuses an epoch the log holds");
    }

    #[test]
    fn barriers_stay_below_the_next_claim_and_are_not_another_leader() {
        let a = from_claim(7, 0);
        let a1 = next_barrier(a).unwrap();
        assert!(a1 > a && !is_later_leader(a, a1));
        let b = from_claim(8, a1);
        assert!(b > a1 && is_later_leader(a1, b));
        let full = a | 0xffff;
        assert_eq!(next_barrier(full), None);
    }

    #[test]
    fn offsets_restarting_in_a_new_cluster_take_the_next_era() {
        let old = from_claim(5_000, 0);
        let after_reseed = from_claim(0, old);
        assert!(after_reseed > old);
        assert_eq!(after_reseed >> ERA_SHIFT, 2);
        assert!(from_claim(1, after_reseed) > after_reseed, "and claims in the new era rank as before");
    }
}
