//! The runtime every secretlog node runs on — reader, writer and replicator alike.
//!
//! Its public surface:
//!
//! * [`api`] — the Vault-compatible HTTP surface: request parsing ([`api::ApiRequest`]), answers
//!   ([`api::ApiResponse`]), errors decided at the edge ([`api::ApiError`], one kind → status map),
//!   the listener with TLS and limits ([`api::bind`], [`api::ServeOptions`]), and the handlers every
//!   node shares: KV v2 reads, tokens, policies, auth methods, health, seal, forwarding;
//! * [`node`] — [`node::Keys`] (sealed, or unsealed with an [`node::Unsealed`] lifetime), the
//!   opening steps every node runs on a request, and [`node::open_state`];
//! * [`context`] — an unsealed node's state ([`context::ReadContext`]) and its waits on the log;
//! * [`audit`] — the audit log every node's handler goes through;
//! * [`auth_cache`] — token records and merged ACLs kept while the node's tokens and policies are
//!   unchanged ([`auth_cache::AuthCache`]);
//! * [`unseal`] — the root key as Shamir shares and the unseal that collects them;
//! * [`telemetry`] — logging and the Prometheus recorder;
//! * [`config`] — the settings every node shares ([`config::LogConfig`], [`config::HttpConfig`],
//!   [`config::ReadMode`]).
//!
//! The state it serves from is `secretlog-state`'s.

pub mod api;
pub mod audit;
pub mod auth_cache;
pub mod config;
pub mod context;
pub mod node;
pub mod telemetry;
pub mod unseal;
