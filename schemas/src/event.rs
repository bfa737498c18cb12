//! The mutation event model: one event is one state change of one secret (or of the control
//! state), fully decided by the leader writer so that every reader applying it computes the same
//! state. Events carry results (the version number chosen, the merged value already sealed), not
//! requests: a reader never re-runs validation, it only applies.

use std::collections::BTreeMap;

pub use crate::auth::AuthObjectKind;

/// Largest mount or path, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Largest sealed value an event may carry, in bytes (the writer's configurable limit for
/// plaintext is below this).
pub const MAX_SEALED_LEN: usize = 4 * 1024 * 1024;
/// Most versions one delete/undelete/destroy event may name.
pub const MAX_VERSIONS_PER_EVENT: usize = 1024;
/// Most custom-metadata entries (Vault allows 64).
pub const MAX_CUSTOM_METADATA: usize = 64;
/// Largest custom-metadata key or value, in bytes (Vault: 128 / 512).
pub const MAX_CUSTOM_METADATA_LEN: usize = 512;
/// Longest policy document or token record a control event carries.
pub const MAX_CONTROL_DOC_LEN: usize = 64 * 1024;
/// Longest metadata document a `RestoreSecret` carries.
pub const MAX_RESTORE_METADATA_LEN: usize = 256 * 1024;

/// One authenticated mutation, as appended to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique id, chosen by the writer; lets consumers recognise a record delivered twice.
    pub event_id: [u8; 16],
    /// Commit-time clock of the writer, milliseconds since the Unix epoch. Becomes the
    /// `created_time` / `deletion_time` readers report, so every reader reports the same time.
    pub timestamp_ms: i64,
    /// The leader epoch of the writer that produced it. Readers refuse an epoch older than one
    /// they already applied: fencing written into the log, not only in the broker.
    pub writer_epoch: u64,
    /// The per-key revision the writer decided this event against (how many records of its key
    /// were accepted before it): every node accepts it only if that still holds, so a record
    /// sent again, or landing after its key changed, is refused everywhere alike. `None`:
    /// unconditional (records of earlier releases, reseed, leader epochs).
    pub revision: Option<u64>,
    /// KV mount (`secret`), or empty for control events.
    pub mount: String,
    /// Secret path inside the mount, or the control object's name.
    pub path: String,
    pub op: Operation,
}

/// What an event does. Tags are part of the wire format and never reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Create version `version` (always current + 1) holding `sealed` (a [`crate::SealedValue`]
    /// encoding). PATCH is resolved by the writer into a `Put` of the merged value.
    Put { version: u64, sealed: Vec<u8> },
    /// A `Put` into a mount whose KV settings set defaults: the mount's `max_versions` and
    /// `delete_version_after`, as the writer read them when it decided the write. A secret's own
    /// settings win over these (Vault's rule). Carried in the event, not looked up when applied,
    /// because the mount table lives in another partition: every node applies the same numbers.
    PutWithDefaults { version: u64, sealed: Vec<u8>, max_versions: u32, delete_version_after_secs: u64 },
    /// Soft-delete these versions (they can be undeleted).
    DeleteVersions { versions: Vec<u64> },
    /// Undo a soft delete of these versions.
    UndeleteVersions { versions: Vec<u64> },
    /// Permanently remove the data of these versions.
    DestroyVersions { versions: Vec<u64> },
    /// Change the settings of a secret; `None` leaves a field as it is.
    UpdateMetadata(MetadataUpdate),
    /// Remove the secret: every version and its metadata.
    DeleteMetadata,
    /// Replace the secret's whole state — metadata (a [`crate::metadata::SecretMeta`], as JSON,
    /// exactly as snapshots carry it) and the sealed value of every version that has one — with a
    /// state taken from a snapshot or a point-in-time rebuild. Written by `secretlog restore`
    /// (through the leader, ordered with every other write to the secret) and by `secretlog
    /// reseed`. Values stay sealed: they were sealed for this mount, path and version.
    RestoreSecret { metadata: Vec<u8>, values: Vec<(u64, Vec<u8>)> },
    /// Re-seal stored values under the active key term (the background rewrap after a rotation).
    /// Each entry replaces the stored value of its version only if that value is still exactly
    /// the one the rewrap read (`replaces` = SHA-256 of its bytes): a destroy, a removal or any
    /// other change that reached the secret first wins, and the entry changes nothing. The
    /// plaintext is the same; only the ciphertext and its term change.
    RewrapValues { values: Vec<Rewrapped> },
    /// Control: the keyed hash of the bootstrap root token, so readers can check it locally.
    SetRootToken { token_hash: [u8; 32] },
    /// Control: a new leader's first record in each partition. It raises the partition's writer
    /// epoch (so any later record of an older leader is refused: fencing written into the log)
    /// and marks the point up to which the new leader must have applied the log before it
    /// decides any write. It names the leader's URL, so standbys and readers learn from the log
    /// itself where to forward writes.
    LeaderEpoch { leader_url: String },
    /// Control: create or replace ACL policy `name` (Vault HCL or JSON, validated by the writer).
    PutPolicy { name: String, policy: String },
    /// Control: remove ACL policy `name`.
    DeletePolicy { name: String },
    /// Control: create, renew or replace a token, known only by its keyed hash; `record` is the
    /// token's record (policies, expiry, ...) as JSON: a [`crate::auth::TokenRecord`].
    PutToken { token_hash: [u8; 32], record: Vec<u8> },
    /// Control: revoke a token.
    RevokeToken { token_hash: [u8; 32] },
    /// Control: drop an expired token from state (Vault's `auth/token/tidy`): its record, its
    /// accessor and the revision of its control key. The leader decides which tokens are expired;
    /// a node applies it only if the stored record had expired by the event's own timestamp (the
    /// leader's clock when it decided, the same for every node), so a tidy can never remove a
    /// live token, whatever the applying node's clock says. Keyed by the token's own control
    /// object (`token/{accessor}`), so it is ordered with the token's renewals and revocation.
    TidyToken { token_hash: [u8; 32] },
    /// Control: key term `term` exists from here on; once a node has applied it, it seals new
    /// values and authenticates new events under it (when it is the newest term). Adding a term
    /// that is not newer than the newest changes nothing.
    AddKeyTerm { term: u32 },
    /// Control: no value is sealed under `term` any more (the writer checked, after the rewrap);
    /// nodes refuse to open values under it from here on. Records authenticated under it stay
    /// verifiable: a retired term never makes the retained log unreplayable.
    RetireKeyTerm { term: u32 },
    /// Control: mount a secrets engine at `path` (no trailing slash), or replace its settings;
    /// `record` is its [`crate::mount::MountRecord`] as JSON. Keyed by [`MOUNTS_CONTROL_NAME`],
    /// so every change to the mount table is ordered in one partition.
    PutMount { path: String, record: Vec<u8> },
    /// Control: enable the audit device at `path` (no trailing slash); `record` is its
    /// [`crate::audit::AuditDeviceRecord`] as JSON. Keyed by [`AUDIT_CONTROL_NAME`], so every
    /// change to the device table is ordered in one partition.
    PutAuditDevice { path: String, record: Vec<u8> },
    /// Control: disable the audit device at `path`.
    DeleteAuditDevice { path: String },
    /// Control: unmount `path`. Its secrets become unreachable at once; a mount enabled there
    /// again gets a new storage id and starts empty (Vault's rule).
    DeleteMount { path: String },
    /// Control: create or replace auth object `name` of `kind` in auth mount `mount` (`approle/`)
    /// — the mount itself, a role, a secret id or a user; `record` is its JSON record
    /// ([`crate::auth`]). Keyed by [`crate::auth::control_name`] of the mount. With `replaces`,
    /// it applies only if the stored record is exactly the one the writer decided against
    /// (`replaces` = SHA-256 of its bytes; see [`Rewrapped::digest`]): a login that takes a use
    /// of a limited secret id is refused everywhere alike if another login took it first.
    PutAuthObject { mount: String, kind: AuthObjectKind, name: String, record: Vec<u8>, replaces: Option<[u8; 32]> },
    /// Control: remove auth object `name` of `kind` from auth mount `mount`, conditional on
    /// `replaces` as for `PutAuthObject`. Removing the mount (kind `Mount`) removes everything
    /// under it; removing a role removes its secret ids.
    DeleteAuthObject { mount: String, kind: AuthObjectKind, name: String, replaces: Option<[u8; 32]> },
}

/// One value of a [`Operation::RewrapValues`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrapped {
    pub version: u64,
    /// SHA-256 of the sealed value this one replaces.
    pub replaces: [u8; 32],
    /// The same plaintext, sealed under the active term for the same mount, path and version.
    pub sealed: Vec<u8>,
}

impl Rewrapped {
    /// What `replaces` holds for a stored sealed value: its SHA-256.
    pub fn digest(stored: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(stored).into()
    }

    /// Whether this entry replaces exactly `stored`.
    pub fn replaces_value(&self, stored: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(Rewrapped::digest(stored).ct_eq(&self.replaces))
    }
}

/// The fields of `POST /v1/{mount}/metadata/{path}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataUpdate {
    pub max_versions: Option<u32>,
    pub cas_required: Option<bool>,
    /// Seconds after which a version is soft-deleted; 0 disables.
    pub delete_version_after_secs: Option<u64>,
    /// Replaces the whole custom metadata map when present.
    pub custom_metadata: Option<BTreeMap<String, String>>,
}

impl Operation {
    /// The wire tag of this operation.
    pub fn tag(&self) -> u8 {
        match self {
            Operation::Put { .. } => 0x01,
            Operation::PutWithDefaults { .. } => 0x09,
            Operation::DeleteVersions { .. } => 0x02,
            Operation::UndeleteVersions { .. } => 0x03,
            Operation::DestroyVersions { .. } => 0x04,
            Operation::UpdateMetadata(_) => 0x05,
            Operation::DeleteMetadata => 0x06,
            Operation::RestoreSecret { .. } => 0x07,
            Operation::RewrapValues { .. } => 0x08,
            Operation::SetRootToken { .. } => 0x40,
            Operation::LeaderEpoch { .. } => 0x41,
            Operation::PutPolicy { .. } => 0x42,
            Operation::DeletePolicy { .. } => 0x43,
            Operation::PutToken { .. } => 0x44,
            Operation::RevokeToken { .. } => 0x45,
            Operation::AddKeyTerm { .. } => 0x46,
            Operation::RetireKeyTerm { .. } => 0x47,
            Operation::PutMount { .. } => 0x48,
            Operation::DeleteMount { .. } => 0x49,
            Operation::PutAuthObject { .. } => 0x4A,
            Operation::DeleteAuthObject { .. } => 0x4B,
            Operation::TidyToken { .. } => 0x4C,
            Operation::PutAuditDevice { .. } => 0x4D,
            Operation::DeleteAuditDevice { .. } => 0x4E,
        }
    }

    /// A short name for logs and metrics (never includes values).
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Put { .. } => "put",
            Operation::PutWithDefaults { .. } => "put_with_defaults",
            Operation::DeleteVersions { .. } => "delete_versions",
            Operation::UndeleteVersions { .. } => "undelete_versions",
            Operation::DestroyVersions { .. } => "destroy_versions",
            Operation::UpdateMetadata(_) => "update_metadata",
            Operation::DeleteMetadata => "delete_metadata",
            Operation::RestoreSecret { .. } => "restore_secret",
            Operation::RewrapValues { .. } => "rewrap_values",
            Operation::SetRootToken { .. } => "set_root_token",
            Operation::LeaderEpoch { .. } => "leader_epoch",
            Operation::PutPolicy { .. } => "put_policy",
            Operation::DeletePolicy { .. } => "delete_policy",
            Operation::PutToken { .. } => "put_token",
            Operation::RevokeToken { .. } => "revoke_token",
            Operation::AddKeyTerm { .. } => "add_key_term",
            Operation::RetireKeyTerm { .. } => "retire_key_term",
            Operation::PutMount { .. } => "put_mount",
            Operation::DeleteMount { .. } => "delete_mount",
            Operation::PutAuthObject { .. } => "put_auth_object",
            Operation::DeleteAuthObject { .. } => "delete_auth_object",
            Operation::TidyToken { .. } => "tidy_token",
            Operation::PutAuditDevice { .. } => "put_audit_device",
            Operation::DeleteAuditDevice { .. } => "delete_audit_device",
        }
    }

    /// Control operations live under the control key, not under a secret path.
    pub fn is_control(&self) -> bool {
        self.tag() >= 0x40
    }
}

/// The control object every key-term event is keyed by, so adding and retiring terms are
/// totally ordered in one partition and every node applies them in the same order.
pub const KEYRING_CONTROL_NAME: &str = "keyring";

/// The control object every mount-table event is keyed by.
pub const MOUNTS_CONTROL_NAME: &str = "mounts";

/// The control object every audit-device event is keyed by.
pub const AUDIT_CONTROL_NAME: &str = "audit-devices";

impl Event {
    /// The Kafka record key of this event: `mount/path`, or for control events a NUL byte and the
    /// control object's name (see [`crate::topic::control_key`]).
    pub fn record_key(&self) -> Vec<u8> {
        if self.op.is_control() {
            crate::topic::control_key(&self.path)
        } else {
            crate::topic::record_key(&self.mount, &self.path)
        }
    }
}
