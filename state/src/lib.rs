//! The state every secretlog node holds: what the log means, and the log applied to local disk.
//!
//! Its public surface, the way SlateDB exposes `Db`, its builder and `Error`:
//!
//! * [`model`] — the KV v2 model and the pure function that applies an event ([`model::apply`]),
//!   shared by the writer's validation and every node's materializer so the two never disagree;
//! * [`store`] — the SlateDB store with the foyer cache in front, and its key layout
//!   ([`store::keys`]); [`key_filter`] — which keys it certainly lacks, answered without
//!   SlateDB;
//! * [`materializer`] — consumes the mutation log and applies it to the store exactly once, with
//!   partition offsets committed atomically with the state they produced; [`materializer::Progress`]
//!   is what it publishes;
//! * [`acl`], [`auth_objects`], [`mounts`], [`audit_devices`] — the policies, tokens, auth methods,
//!   mounts and audit devices as the log defines them;
//! * [`freshness`] — how far behind the log a node may be, measured by last-stable-offset queries;
//! * [`bootstrap`] — a new node's state from a snapshot in [`objects`] (object storage);
//! * [`kafka`] — the Kafka client configuration every node uses;
//! * [`error`] — [`NodeError`] and [`ErrorKind`]: what can go wrong, and the kind a client is
//!   told (the node runtime maps a kind to an HTTP status in one place).
//!
//! Nothing here speaks HTTP. The node runtime (`secretlog-node`) serves from it; the reader,
//! writer and replicator run on both.

pub mod acl;
pub mod audit_devices;
pub mod auth_objects;
pub mod bootstrap;
pub mod error;
pub mod freshness;
pub mod kafka;
pub mod key_filter;
pub mod materializer;
pub mod model;
pub mod mounts;
pub mod objects;
pub mod store;

pub use error::{ErrorKind, NodeError};
