//! Typed errors of the wire contract. Each variant carries the facts an operator needs.

use thiserror::Error;

/// Why a record could not be turned into a trusted [`crate::Event`].
///
/// Any of these on a consumed record means the partition must halt: skipping the record would be
/// silent divergence.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record truncated: needed {needed} more bytes at byte {at}")]
    Truncated { at: usize, needed: usize },
    #[error("not a secretlog event: bad magic bytes {found:02x?}")]
    BadMagic { found: [u8; 2] },
    #[error("unknown event schema version {found} (this build reads up to {supported})")]
    UnknownVersion { found: u8, supported: u8 },
    #[error("record of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("{len} trailing bytes after the event")]
    TrailingBytes { len: usize },
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("unknown operation tag {tag:#04x}")]
    UnknownOperation { tag: u8 },
    #[error("invalid field `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: &'static str },
    #[error("event authenticated with key term {term}, which this keyring does not hold")]
    UnknownKeyTerm { term: u32 },
    #[error("event was written under a different root key (key check {found} != ours {ours})")]
    WrongKey { found: String, ours: String },
    #[error("event authentication failed: the record was altered or forged")]
    BadMac,
    #[error("record key {found:?} does not match the event's key {expected:?}")]
    KeyMismatch { expected: String, found: String },
}

/// A root key that could not be loaded.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("no root key configured: set {env} or give a key file")]
    Missing { env: &'static str },
    #[error("cannot read root key file {path}: {source}")]
    Unreadable { path: String, source: std::io::Error },
    #[error("root key from {origin} is malformed: expected 32 bytes as 64 hex characters or base64, got {detail}")]
    Malformed { origin: String, detail: String },
}

/// A sealed value that could not be sealed or opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed value truncated ({len} bytes)")]
    Truncated { len: usize },
    #[error("unknown sealed-value format version {found}")]
    UnknownVersion { found: u8 },
    #[error("sealed with key term {term}, which this keyring does not hold")]
    UnknownTerm { term: u32 },
    #[error("sealed value does not open: wrong key, or it belongs to another secret or version")]
    Open,
    #[error("encryption failed")]
    Seal,
}
