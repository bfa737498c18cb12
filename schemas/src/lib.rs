//! The wire contract of secretlog.
//!
//! Everything that crosses a process boundary is defined here, once, so the writer that produces
//! a record and every reader, replicator and restore tool that consumes it agree byte for byte:
//!
//! * [`event`] — the mutation event model (Vault KV v2 operations plus control operations);
//! * [`envelope`] — its compact, versioned, authenticated binary encoding (golden vectors in
//!   `schemas/tests/golden/` must decode forever);
//! * [`sealed`] — the sealed-value (ciphertext) format;
//! * [`keyring`] — the root key, its terms (added and retired through the log), and the keys
//!   derived from it for sealing, event authentication and token hashing;
//! * [`topic`] — topic, header and record-key rules, and the consistency token;
//! * [`path`] — which secret paths are valid;
//! * [`auth`] — the records of auth methods (mounts, AppRole roles and secret ids, userpass
//!   users) that auth-object control events carry, and the token records token events carry;
//! * [`mount`] — the mount table's records and mount path rules;
//! * [`metadata`] — a secret's metadata, as stores, snapshots and restore events hold it;
//! * [`audit`] — the audit devices enabled through the log.

pub mod archive;
pub mod audit;
pub mod auth;
pub mod envelope;
pub mod error;
pub mod event;
pub mod fuzz;
pub mod keyring;
pub mod metadata;
pub mod mount;
pub mod path;
pub mod sealed;
pub mod topic;
mod wire;

pub use envelope::{SCHEMA_VERSION, decode_event, encode_event};
pub use error::{DecodeError, KeyError, SealError};
pub use event::{Event, MetadataUpdate, Operation, Rewrapped};
pub use keyring::{Keyring, RootKey};
pub use sealed::SealedValue;
pub use topic::ConsistencyToken;
