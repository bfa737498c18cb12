//! The state an unsealed node answers from, and the waits on the log every read mode is built
//! of. Nothing here speaks HTTP: the API's checks and reads on it are `impl ReadContext` blocks
//! in [`crate::api`] (`api/kv.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use secretlog_schemas::{ConsistencyToken, Keyring};

use secretlog_state::materializer::MaterializerHandle;
use secretlog_state::store::Store;

/// An unsealed node's state: its store, keyring and materializer, the mount it serves by default,
/// and how long it may wait for the log. Every node holds one per unsealed lifetime; the HTTP
/// layer (`crate::api`) answers from it, the writer decides on it.
#[derive(Clone)]
pub struct ReadContext {
    pub store: Arc<Store>,
    pub keyring: Arc<Keyring>,
    pub materializer: MaterializerHandle,
    /// The default KV v2 mount (`secret`, `--mount`): mounted until disabled through the log.
    pub mount: String,
    /// Its record (the storage id of earlier releases: its path).
    pub default_mount: Arc<secretlog_state::mounts::DefaultMount>,
    /// How long a read carrying `X-Secretlog-Index` may wait for this node to catch up.
    pub consistency_wait: Duration,
    /// Longest time since this node last confirmed it had applied the log's end for it to answer
    /// from its own state (see [`secretlog_state::freshness`]).
    pub max_staleness: Duration,
    /// Token records and merged ACLs, kept while the node's tokens and policies are unchanged.
    pub auth: Arc<crate::auth_cache::AuthCache>,
}

impl ReadContext {
    /// Wait until this node applied `position`, up to the consistency wait.
    pub async fn wait_position(&self, position: &ConsistencyToken) -> bool {
        if position.0.is_empty() {
            return true;
        }
        self.materializer.wait_for(self.consistency_wait, |p| position.is_reached_by(&p.applied)).await
    }

    /// A linearizable read's wait: the partitions' last stable offsets from a query sent after
    /// this call, then until this node consumed them — so its state holds every write
    /// acknowledged before the read arrived. Up to the consistency wait; else why not.
    pub async fn wait_strong(&self) -> Result<(), String> {
        let started = Instant::now();
        // A node still positioning on the log (just started) has no partitions to ask about yet.
        let positioned = self.materializer.wait_for(self.consistency_wait, |p| p.partitions > 0).await;
        if !positioned {
            return Err(format!(
                "this node was not positioned on the log within {} ms",
                self.consistency_wait.as_millis()
            ));
        }
        let left = self.consistency_wait.saturating_sub(started.elapsed());
        let ends = self.materializer.ends.after_now(left).await?;
        let left = self.consistency_wait.saturating_sub(started.elapsed());
        if self.materializer.wait_for(left, |p| p.has_consumed(&ends)).await {
            return Ok(());
        }
        let p = self.materializer.progress.borrow();
        let behind: Vec<String> = ends
            .iter()
            .filter(|(part, end)| p.consumed_at(**part) < **end)
            .map(|(part, end)| format!("partition {part} at {} of {end}", p.consumed_at(*part)))
            .collect();
        Err(format!(
            "this node had not applied the log's end within {} ms ({})",
            self.consistency_wait.as_millis(),
            behind.join(", ")
        ))
    }

    /// Counts the applied changes to tokens and policies (what [`Self::auth`] is valid for).
    pub fn auth_version(&self) -> u64 {
        self.materializer.progress.borrow().auth_version
    }

    /// The mount table this node applied.
    pub fn mounts(&self) -> Arc<secretlog_state::mounts::Mounts> {
        self.materializer.progress.borrow().mounts.clone()
    }

    /// The audit devices enabled through the log, as this node applied them.
    pub fn audit_devices(&self) -> Arc<crate::audit::AuditDevices> {
        self.materializer.progress.borrow().audit_devices.clone()
    }

    /// This node's applied position, as a consistency token string.
    pub fn applied_token(&self) -> String {
        ConsistencyToken(self.materializer.progress.borrow().applied.clone()).to_string()
    }
}
