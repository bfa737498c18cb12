//! A tiny deterministic input mutator for the bounded fuzz tests that run in the test suite
//! (event decoding, sealed values, policy parsing, request parsing): seeds are mutated by
//! flipping, truncating, inserting and duplicating bytes, or replaced by random bytes.
//! Deterministic (a fixed seed) so a failure reproduces; cheap enough for hundreds of thousands
//! of cases in a debug build.

/// xorshift64 with a mutation step on top.
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Random bytes, up to `max_len`.
    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// One generated input: usually a mutated seed, sometimes random bytes.
    pub fn input(&mut self, seeds: &[Vec<u8>], max_len: usize) -> Vec<u8> {
        if seeds.is_empty() || self.below(4) == 0 {
            return self.bytes(max_len);
        }
        let mut v = seeds[self.below(seeds.len())].clone();
        for _ in 0..=self.below(3) {
            self.mutate(&mut v);
        }
        v
    }

    /// Flip, truncate, insert or duplicate.
    pub fn mutate(&mut self, v: &mut Vec<u8>) {
        if v.is_empty() {
            v.push(self.next_u64() as u8);
            return;
        }
        let at = self.below(v.len());
        match self.below(4) {
            0 => v[at] = self.next_u64() as u8,
            1 => v.truncate(at),
            2 => v.insert(at, self.next_u64() as u8),
            _ => {
                let end = (at + 1 + self.below(8)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(at..at, chunk);
            }
        }
    }
}
