//! secretlog's leader write node.
//!
//! A write travels: HTTP → [`request`] (parse, validate input) → [`committer`] (decide against
//! state with [`plan`], seal, group into one Kafka transaction via [`producer`]) → answer after
//! commit with the log position. [`node`] puts it together with the reader crate's materializer,
//! which gives the writer the exact state every reader computes; `route` decides whether a
//! write is decided there or forwarded, and holds it while leadership changes hands. A KV write
//! resolves the mount serving its path on the mount table the log built; [`mounts`] enables,
//! tunes, configures and disables mounts.

pub mod approle;
pub mod audit_devices;
pub mod auth;
pub mod auth_methods;
pub mod committer;
pub mod config;
pub mod election;
pub mod epoch;
pub mod error;
pub mod mounts;
pub mod node;
pub mod plan;
pub mod producer;
pub mod request;
pub mod restore;
pub mod rotate;
pub(crate) mod route;
pub mod tidy;
pub mod token;
pub mod userpass;

pub use config::WriterConfig;
pub use error::WriterError;
