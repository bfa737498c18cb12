//! secretlog's leader write node, on the node runtime (`secretlog-node`) and the state
//! (`secretlog-state`).
//!
//! A write travels: HTTP → [`request`] (parse, validate input) → `committer` (decide against
//! state with `plan`, seal, append through [`producer`]) → answered once the writer's own
//! materializer applied it, with its log position. `route` decides whether a write is decided
//! here or forwarded, and holds it while leadership changes hands; `election` and `epoch` make
//! one leader, ever. A KV write resolves the mount serving its path on the mount table the log
//! built; `mounts`, `auth`, `auth_methods`, `audit_devices` and `rotate` turn the other writes
//! into events.
//!
//! Its public surface: [`node`] (`node::start`), [`config`] ([`WriterConfig`]), [`error`]
//! ([`WriterError`]), [`producer`] (the idempotent producer `secretlog reseed` appends with),
//! [`restore`] (the wire form of `sys/secretlog/restore`, which `secretlog restore` sends) and
//! [`request`] (the parser of KV writes, fuzzed on its own).

pub(crate) mod approle;
pub(crate) mod audit_devices;
pub(crate) mod auth;
pub(crate) mod auth_methods;
pub(crate) mod committer;
pub mod config;
pub(crate) mod election;
pub(crate) mod epoch;
pub mod error;
pub(crate) mod mounts;
pub mod node;
pub(crate) mod plan;
pub mod producer;
pub mod request;
pub mod restore;
pub(crate) mod rotate;
pub(crate) mod route;
pub(crate) mod tidy;
pub(crate) mod token;
pub(crate) mod userpass;

pub use config::WriterConfig;
pub use error::WriterError;
