//! The one route table: what a request is for, decided once from its path.
//!
//! Every node parses a request's path into a [`Route`] once ([`super::ApiRequest::route`]), the
//! way mini-redis parses a frame into a `Command`; authorization ([`super::auth::need`]) and
//! every node's dispatch — the opening steps every node shares, the reads
//! (`ReadContext::read`), the writer's writes, the replicator's snapshots, the audit layer's own
//! endpoints — match on it instead of comparing path strings of their own. What follows the
//! route's prefix (a policy's name, a mount's path, a token action) is the handler's to read.
//!
//! A path under no fixed route is [`Route::Mounted`]: a KV v2 endpoint if one of the mounts the
//! node follows serves it (mount paths never take a reserved first segment such as `sys` or
//! `auth`, so no mount shadows a fixed route), else Vault's 404 `no handler for route`.

/// What a request is for. The method is not part of the route: a handler that takes a route
/// answers every method of it (405 for one it does not serve, as Vault does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `sys/health`: no token, answered while sealed.
    Health,
    /// `/metrics` (Prometheus): no token, answered while sealed.
    Metrics,
    /// `sys/leader`: no token, answered while sealed.
    Leader,
    /// `sys/seal-status`.
    SealStatus,
    /// `sys/unseal`.
    Unseal,
    /// `sys/seal`.
    Seal,
    /// `sys/policies/acl`, or Vault's older `sys/policy`: the list.
    Policies,
    /// `sys/policies/acl/<name>`, or Vault's older `sys/policy/<name>` ([`PolicyPath`]).
    Policy,
    /// `sys/mounts`: the list.
    Mounts,
    /// `sys/mounts/<path>[/tune]`.
    Mount,
    /// `sys/internal/ui/mounts[/<path>]`: which mount serves a path.
    UiMounts,
    /// `sys/capabilities-self`.
    CapabilitiesSelf,
    /// `sys/capabilities`.
    Capabilities,
    /// `sys/audit`: the devices.
    Audit,
    /// `sys/audit/<path>`: one device, enabled or disabled through the log.
    AuditDevice,
    /// `sys/audit-hash/<path>`.
    AuditHash,
    /// `sys/key-status`.
    KeyStatus,
    /// `sys/rotate`.
    Rotate,
    /// `sys/secretlog/retire-term`.
    RetireTerm,
    /// `sys/secretlog/rewrap`.
    Rewrap,
    /// `sys/secretlog/digest`: a digest of the node's state.
    Digest,
    /// `sys/secretlog/snapshot`: take one (replicator).
    Snapshot,
    /// `sys/secretlog/snapshots`: the list (replicator).
    Snapshots,
    /// `sys/secretlog/restore` (writer).
    Restore,
    /// `auth/token/lookup-self`.
    TokenLookupSelf,
    /// `auth/token/accessors`.
    TokenAccessors,
    /// `auth/token/tidy`.
    TokenTidy,
    /// Any other `auth/token/<action>`.
    Token,
    /// `sys/auth`: the auth methods.
    AuthMethods,
    /// `sys/auth/<path>`: one auth method, enabled or disabled.
    AuthMount,
    /// `auth/<mount>/...` other than `auth/token/`: an auth method's endpoints.
    AuthMethod,
    /// Anything else: a KV v2 endpoint if a mount serves it, else no route.
    Mounted,
}

impl Route {
    /// The route of `path` (after the leading `/`, percent-decoded: `v1/secret/data/a`).
    pub fn of(path: &str) -> Route {
        if path == "metrics" {
            return Route::Metrics;
        }
        let Some(rel) = path.strip_prefix("v1/") else { return Route::Mounted };
        if let Some(sys) = rel.strip_prefix("sys/") {
            return Route::of_sys(sys);
        }
        if let Some(action) = rel.strip_prefix("auth/token/") {
            return match action {
                "lookup-self" => Route::TokenLookupSelf,
                "accessors" => Route::TokenAccessors,
                "tidy" => Route::TokenTidy,
                _ => Route::Token,
            };
        }
        if rel.starts_with("auth/") {
            return Route::AuthMethod;
        }
        Route::Mounted
    }

    /// The route of a path under `v1/sys/`.
    fn of_sys(sys: &str) -> Route {
        match sys {
            "health" => Route::Health,
            "leader" => Route::Leader,
            "seal-status" => Route::SealStatus,
            "unseal" => Route::Unseal,
            "seal" => Route::Seal,
            "policies/acl" | "policy" => Route::Policies,
            "mounts" => Route::Mounts,
            "capabilities-self" => Route::CapabilitiesSelf,
            "capabilities" => Route::Capabilities,
            "audit" => Route::Audit,
            "key-status" => Route::KeyStatus,
            "rotate" => Route::Rotate,
            "secretlog/retire-term" => Route::RetireTerm,
            "secretlog/rewrap" => Route::Rewrap,
            "secretlog/digest" => Route::Digest,
            "secretlog/snapshot" => Route::Snapshot,
            "secretlog/snapshots" => Route::Snapshots,
            "secretlog/restore" => Route::Restore,
            "auth" => Route::AuthMethods,
            s if s.starts_with("policies/acl/") || s.starts_with("policy/") => Route::Policy,
            s if s.starts_with("mounts/") => Route::Mount,
            s if s.starts_with("internal/ui/mounts") => Route::UiMounts,
            s if s.starts_with("audit/") => Route::AuditDevice,
            s if s.starts_with("audit-hash/") => Route::AuditHash,
            s if s.starts_with("auth/") => Route::AuthMount,
            _ => Route::Mounted,
        }
    }

    /// Whether `method` on this route changes state (and must go to the leader writer). A POST
    /// that only computes an answer (capabilities, an audit hash) is a read, as in Vault.
    pub fn is_write(self, method: &str) -> bool {
        matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
            && !matches!(self, Route::CapabilitiesSelf | Route::Capabilities | Route::AuditHash)
    }

    /// The key-rotation endpoints (the writer rotates; every node reads the key status).
    pub fn is_rotation(self) -> bool {
        matches!(self, Route::KeyStatus | Route::Rotate | Route::RetireTerm | Route::Rewrap)
    }
}

/// A path of the [`Route::Policies`] and [`Route::Policy`] routes, read.
///
/// Vault serves ACL policies under two prefixes: `sys/policies/acl/<name>` and the older
/// `sys/policy/<name>`, which `hvac`'s `sys.create_or_update_policy`, `read_policy`,
/// `list_policies` and `delete_policy` still call. The older one names the text `rules` (in
/// answers; a write may send either) and answers a list with `policies` beside `keys`, both at
/// the top level too (docs/compatibility.md#legacy-policy-paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyPath<'a> {
    /// The name as the client sent it ("" for the list; not yet lower-cased).
    pub name: &'a str,
    /// Under `sys/policy`.
    pub legacy: bool,
}

impl<'a> PolicyPath<'a> {
    /// The policy path `path` names (after the leading `/`: `v1/sys/policy/app`), if any.
    pub fn of(path: &'a str) -> Option<PolicyPath<'a>> {
        let sys = path.strip_prefix("v1/sys/")?;
        let (rest, legacy) = match sys.strip_prefix("policies/acl") {
            Some(rest) => (rest, false),
            None => (sys.strip_prefix("policy")?, true),
        };
        if !rest.is_empty() && !rest.starts_with('/') {
            return None;
        }
        Some(PolicyPath { name: rest.strip_prefix('/').unwrap_or(rest), legacy })
    }
}

#[cfg(test)]
mod tests {
    use super::PolicyPath;
    use super::Route::{self, *};

    #[test]
    fn every_path_has_one_route() {
        let table: &[(&str, Route)] = &[
            ("v1/sys/health", Health),
            ("metrics", Metrics),
            ("v1/sys/leader", Leader),
            ("v1/sys/seal-status", SealStatus),
            ("v1/sys/unseal", Unseal),
            ("v1/sys/seal", Seal),
            ("v1/sys/policies/acl", Policies),
            ("v1/sys/policies/acl/", Policy),
            ("v1/sys/policies/acl/app", Policy),
            ("v1/sys/policy", Policies),
            ("v1/sys/policy/app", Policy),
            ("v1/sys/policyx", Mounted),
            ("v1/sys/mounts", Mounts),
            ("v1/sys/mounts/team", Mount),
            ("v1/sys/mounts/team/tune", Mount),
            ("v1/sys/internal/ui/mounts", UiMounts),
            ("v1/sys/internal/ui/mounts/secret/a", UiMounts),
            ("v1/sys/capabilities-self", CapabilitiesSelf),
            ("v1/sys/capabilities", Capabilities),
            ("v1/sys/audit", Audit),
            ("v1/sys/audit/trail/", AuditDevice),
            ("v1/sys/audit-hash/file", AuditHash),
            ("v1/sys/key-status", KeyStatus),
            ("v1/sys/rotate", Rotate),
            ("v1/sys/secretlog/retire-term", RetireTerm),
            ("v1/sys/secretlog/rewrap", Rewrap),
            ("v1/sys/secretlog/digest", Digest),
            ("v1/sys/secretlog/snapshot", Snapshot),
            ("v1/sys/secretlog/snapshots", Snapshots),
            ("v1/sys/secretlog/restore", Restore),
            ("v1/auth/token/lookup-self", TokenLookupSelf),
            ("v1/auth/token/accessors", TokenAccessors),
            ("v1/auth/token/tidy", TokenTidy),
            ("v1/auth/token/create", Token),
            ("v1/auth/token/", Token),
            ("v1/auth/token", AuthMethod),
            ("v1/sys/auth", AuthMethods),
            ("v1/sys/auth/approle", AuthMount),
            ("v1/auth/approle/login", AuthMethod),
            ("v1/auth/userpass/users/alice", AuthMethod),
            ("v1/secret/data/a/b", Mounted),
            ("v1/team/metadata/", Mounted),
            ("v1/sys/nothing", Mounted),
            ("v1/sys/mountsx", Mounted),
            ("v1/sys/policies/aclx", Mounted),
            ("v1/system/data/a", Mounted),
            ("v2/secret/data/a", Mounted),
            ("", Mounted),
        ];
        for (path, route) in table {
            assert_eq!(Route::of(path), *route, "{path:?}");
        }
    }

    #[test]
    fn a_policy_path_names_its_policy_under_either_prefix() {
        let p = |name, legacy| Some(PolicyPath { name, legacy });
        assert_eq!(PolicyPath::of("v1/sys/policies/acl/App"), p("App", false));
        assert_eq!(PolicyPath::of("v1/sys/policies/acl"), p("", false));
        assert_eq!(PolicyPath::of("v1/sys/policies/acl/"), p("", false));
        assert_eq!(PolicyPath::of("v1/sys/policy/app"), p("app", true));
        assert_eq!(PolicyPath::of("v1/sys/policy"), p("", true));
        assert_eq!(PolicyPath::of("v1/sys/policyx"), None);
        assert_eq!(PolicyPath::of("v1/sys/policies/aclx"), None);
        assert_eq!(PolicyPath::of("v1/secret/data/sys/policy/a"), None);
        for path in ["v1/sys/policy", "v1/sys/policy/a", "v1/sys/policies/acl", "v1/sys/policies/acl/a"] {
            assert!(matches!(Route::of(path), Policies | Policy), "{path}: the route and the path agree");
        }
    }

    #[test]
    fn a_post_that_only_computes_is_a_read() {
        assert!(Mounted.is_write("POST") && Mounted.is_write("PATCH") && Mounted.is_write("DELETE"));
        assert!(!Mounted.is_write("GET") && !Mounted.is_write("LIST"));
        for read_only in [CapabilitiesSelf, Capabilities, AuditHash] {
            assert!(!read_only.is_write("POST") && !read_only.is_write("PUT"), "{read_only:?}");
        }
        assert!(AuditDevice.is_write("PUT") && AuditDevice.is_write("DELETE"));
    }
}
