//! secretlog's replicator: the disaster-recovery restore points.
//!
//! * `archive` — every committed record of the log, in offset-ranged Arrow segments;
//! * [`snapshot`] — consistent snapshots of the materialized state, with manifests and retention;
//! * [`node`] — the process: both of the above, health with the archive lag, on-demand snapshots,
//!   on the node runtime (`secretlog-node`) and the state (`secretlog-state`);
//! * [`config`] and [`error`] — [`ReplicatorConfig`] and [`ReplicatorError`].

pub(crate) mod archive;
pub mod config;
pub mod error;
pub mod node;
pub mod snapshot;

pub use config::ReplicatorConfig;
pub use error::ReplicatorError;
