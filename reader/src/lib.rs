//! secretlog's read side.
//!
//! * [`materializer`] consumes the mutation log and applies it to the local [`store`], exactly
//!   once, with partition offsets committed atomically with the state they produced;
//! * [`state`] is the KV v2 model and the pure function that applies an event — used by writers
//!   too, so validation and materialization can never disagree;
//! * [`freshness`] says how far behind the log a node may be, measured by last-stable-offset
//!   queries rather than by the age of records;
//! * [`context`] is an unsealed node's state (store, keyring, materializer) and the waits on the
//!   log that every read mode is built of;
//! * [`api`] is the Vault-compatible HTTP surface (reads, health, forwarding);
//! * [`audit`] is the audit log every node's handler goes through;
//! * [`unseal`] is the root key as Shamir shares and the unseal that collects them;
//! * [`node`] puts them together as a read node.

pub mod acl;
pub mod api;
pub mod audit;
pub mod auth_objects;
pub mod bootstrap;
pub mod config;
pub mod context;
pub mod error;
pub mod freshness;
pub mod kafka;
pub mod materializer;
pub mod mounts;
pub mod node;
pub mod objects;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod unseal;

pub use config::{LogConfig, ReaderConfig};
pub use error::ReaderError;
