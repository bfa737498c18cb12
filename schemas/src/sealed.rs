//! The sealed-value format: how a secret's data is stored everywhere outside process memory.
//!
//! ```text
//! format u8 (=1) | term u32 BE | salt [16] | nonce [12] | AES-256-GCM ciphertext ‖ tag [16]
//! ```
//!
//! Each value gets its own AES-256 key, HKDF-derived from the term's seal key and a random salt,
//! so no key ever encrypts two values and random-nonce collisions cannot matter. The AAD binds
//! mount, path and version: a ciphertext moved to another secret or version does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::SealError;
use crate::keyring::Keyring;

/// Current sealed-value format.
pub const SEALED_FORMAT: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 16 + 12;
const TAG_LEN: usize = 16;

/// What a sealed value belongs to; bound into the AAD.
#[derive(Debug, Clone, Copy)]
pub struct SealContext<'a> {
    pub mount: &'a str,
    pub path: &'a str,
    pub version: u64,
}

impl SealContext<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut a = Vec::with_capacity(32 + self.mount.len() + self.path.len());
        a.extend_from_slice(b"secretlog/sealed-value/v1\0");
        a.extend_from_slice(self.mount.as_bytes());
        a.push(0);
        a.extend_from_slice(self.path.as_bytes());
        a.push(0);
        a.extend_from_slice(&self.version.to_be_bytes());
        a
    }
}

/// A sealed value, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// The key term that sealed it (rotation status counts values per term).
    pub term: u32,
    salt: [u8; 16],
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
}

fn value_cipher(keyring: &Keyring, term: u32, salt: &[u8; 16], even_retired: bool) -> Result<Aes256Gcm, SealError> {
    let term_key = keyring.seal_key(term, even_retired).ok_or(SealError::UnknownTerm { term })?;
    let hk = Hkdf::<Sha256>::new(Some(salt), &term_key[..]);
    let mut k = Zeroizing::new([0u8; 32]);
    hk.expand(b"secretlog sealed-value key v1", &mut k[..]).map_err(|_| SealError::Seal)?;
    Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&k[..])))
}

impl SealedValue {
    /// Seal `plaintext` under the keyring's active term.
    pub fn seal(keyring: &Keyring, ctx: &SealContext<'_>, plaintext: &[u8]) -> Result<Self, SealError> {
        let term = keyring.active_term();
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = value_cipher(keyring, term, &salt, false)?;
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &ctx.aad() })
            .map_err(|_| SealError::Seal)?;
        Ok(SealedValue { term, salt, nonce, ciphertext })
    }

    /// Open it. Fails, without any partial output, on a wrong key or a wrong context — and on a
    /// value sealed under a retired term ([`SealError::UnknownTerm`]: the keyring no longer holds
    /// that term for opening).
    pub fn open(&self, keyring: &Keyring, ctx: &SealContext<'_>) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_inner(keyring, ctx, false)
    }

    /// Open it even if its term was retired: for moving a value to the active term (the rewrap,
    /// a restore of a state older than the retirement), never for answering a read.
    pub fn open_to_reseal(&self, keyring: &Keyring, ctx: &SealContext<'_>) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_inner(keyring, ctx, true)
    }

    /// The same plaintext sealed anew under the active term (new salt and nonce), for the same
    /// mount, path and version.
    pub fn reseal(&self, keyring: &Keyring, ctx: &SealContext<'_>) -> Result<SealedValue, SealError> {
        let plaintext = self.open_to_reseal(keyring, ctx)?;
        SealedValue::seal(keyring, ctx, &plaintext)
    }

    /// The term of encoded sealed-value bytes, without parsing the rest (counting values per term).
    pub fn term_of(bytes: &[u8]) -> Option<u32> {
        match bytes {
            [SEALED_FORMAT, a, b, c, d, ..] if bytes.len() >= HEADER_LEN + TAG_LEN => {
                Some(u32::from_be_bytes([*a, *b, *c, *d]))
            }
            _ => None,
        }
    }

    fn open_inner(
        &self,
        keyring: &Keyring,
        ctx: &SealContext<'_>,
        even_retired: bool,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let cipher = value_cipher(keyring, self.term, &self.salt, even_retired)?;
        cipher
            .decrypt(Nonce::from_slice(&self.nonce), Payload { msg: &self.ciphertext, aad: &ctx.aad() })
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }

    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.push(SEALED_FORMAT);
        out.extend_from_slice(&self.term.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parse wire bytes (does not open them).
    pub fn decode(bytes: &[u8]) -> Result<Self, SealError> {
        if bytes.is_empty() {
            return Err(SealError::Truncated { len: 0 });
        }
        if bytes[0] != SEALED_FORMAT {
            return Err(SealError::UnknownVersion { found: bytes[0] });
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(SealError::Truncated { len: bytes.len() });
        }
        let term = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&bytes[5..21]);
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&bytes[21..33]);
        Ok(SealedValue { term, salt, nonce, ciphertext: bytes[HEADER_LEN..].to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::RootKey;

    fn ring(b: u8) -> Keyring {
        Keyring::from_root(&RootKey::from_bytes([b; 32]))
    }
    const CTX: SealContext<'static> = SealContext { mount: "secret", path: "app/db", version: 3 };

    #[test]
    fn seals_and_opens() {
        let r = ring(1);
        let s = SealedValue::seal(&r, &CTX, b"{\"password\":\"hunter2\"}").unwrap();
        let bytes = s.encode();
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"));
        let back = SealedValue::decode(&bytes).unwrap().open(&r, &CTX).unwrap();
        assert_eq!(&back[..], b"{\"password\":\"hunter2\"}");
    }

    #[test]
    fn same_plaintext_seals_differently() {
        let r = ring(1);
        let a = SealedValue::seal(&r, &CTX, b"x").unwrap().encode();
        let b = SealedValue::seal(&r, &CTX, b"x").unwrap().encode();
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_context_does_not_open() {
        let r = ring(1);
        let s = SealedValue::seal(&r, &CTX, b"v").unwrap();
        for ctx in [
            SealContext { version: 4, ..CTX },
            SealContext { path: "app/other", ..CTX },
            SealContext { mount: "kv", ..CTX },
        ] {
            assert_eq!(s.open(&r, &ctx), Err(SealError::Open));
        }
    }

    #[test]
    fn wrong_key_does_not_open() {
        let s = SealedValue::seal(&ring(1), &CTX, b"v").unwrap();
        assert_eq!(s.open(&ring(2), &CTX), Err(SealError::Open));
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let r = ring(1);
        let bytes = SealedValue::seal(&r, &CTX, b"value").unwrap().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let res = SealedValue::decode(&b).and_then(|s| s.open(&r, &CTX));
            assert!(res.is_err(), "flip at byte {i} opened");
        }
    }

    #[test]
    fn short_or_unknown_input_is_an_error() {
        assert_eq!(SealedValue::decode(&[]), Err(SealError::Truncated { len: 0 }));
        assert_eq!(SealedValue::decode(&[9, 0, 0]), Err(SealError::UnknownVersion { found: 9 }));
        assert_eq!(SealedValue::decode(&[1; 20]), Err(SealError::Truncated { len: 20 }));
        let mut b = SealedValue::seal(&ring(1), &CTX, b"v").unwrap().encode();
        b[1..5].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(SealedValue::decode(&b).unwrap().open(&ring(1), &CTX), Err(SealError::UnknownTerm { term: 0 }));
        // Another term's key (derivable, but not the one that sealed it) does not open it.
        b[1..5].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(SealedValue::decode(&b).unwrap().open(&ring(1), &CTX), Err(SealError::Open));
    }

    #[test]
    fn a_retired_term_does_not_open_but_can_be_resealed() {
        let r = ring(1);
        let old = SealedValue::seal(&r, &CTX, b"v").unwrap();
        assert_eq!(old.term, 1);
        r.advance_to(2);
        let moved = old.reseal(&r, &CTX).unwrap();
        assert_eq!(moved.term, 2);
        assert_eq!(SealedValue::term_of(&moved.encode()), Some(2));
        assert_eq!(&moved.open(&r, &CTX).unwrap()[..], b"v");
        r.retire(1);
        assert_eq!(old.open(&r, &CTX), Err(SealError::UnknownTerm { term: 1 }));
        assert_eq!(&old.open_to_reseal(&r, &CTX).unwrap()[..], b"v");
        assert_eq!(&moved.open(&r, &CTX).unwrap()[..], b"v");
        // The context still binds: a rewrap cannot move a value to another secret.
        assert!(old.reseal(&r, &SealContext { version: 4, ..CTX }).is_err());
        assert_eq!(SealedValue::term_of(&[1, 0, 0]), None);
    }

    /// Bounded fuzzing of the sealed-value parser and opener: 200,000 generated inputs, no
    /// panic, and nothing but the untouched seed ever opens.
    #[test]
    fn sealed_value_parsing_survives_generated_inputs() {
        let r = ring(5);
        let ctx = SealContext { mount: "secret", path: "a/b", version: 2 };
        let seed = SealedValue::seal(&r, &ctx, b"{\"k\":\"v\"}").unwrap().encode();
        let mut m = crate::fuzz::Mutator::new(0x5EA1_ED00);
        let (mut parsed, mut opened) = (0u64, 0u64);
        for _ in 0..200_000 {
            let input = m.input(std::slice::from_ref(&seed), 128);
            if let Ok(v) = SealedValue::decode(&input) {
                parsed += 1;
                if v.open(&r, &ctx).is_ok() {
                    opened += 1;
                    assert_eq!(input, seed, "a mutated sealed value opened");
                }
            }
        }
        assert!(parsed > 0, "the generator should produce parseable values");
        assert!(opened < 200_000);
    }
}
