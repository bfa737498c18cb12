//! The read node: a [`node`] that materializes the log into its own state and answers reads from
//! it as its read mode allows ([`config::ReaderConfig`]), remembering the writes it forwarded for
//! each token ([`session`]) so session reads see them. It runs on the node runtime
//! (`secretlog-node`) and the state (`secretlog-state`).
//!
//! Its public surface: [`node::start`] and [`config::ReaderConfig`].

pub mod config;
pub mod node;
pub(crate) mod session;
