//! ACL policies with Vault's semantics: path rules with capabilities, `*` (glob, at the end) and
//! `+` (one segment) wildcards, the most specific matching rule decides, and `deny` overrides
//! every other capability of that rule. Policies are written in Vault HCL or its JSON form:
//!
//! ```hcl
//! path "secret/data/app/*" { capabilities = ["create", "read", "update"] }
//! path "secret/data/app/admin" { capabilities = ["deny"] }
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    Create,
    Read,
    Update,
    Patch,
    Delete,
    List,
    Sudo,
    Deny,
}

impl Capability {
    /// Vault's name of the capability.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Create => "create",
            Capability::Read => "read",
            Capability::Update => "update",
            Capability::Patch => "patch",
            Capability::Delete => "delete",
            Capability::List => "list",
            Capability::Sudo => "sudo",
            Capability::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Capability> {
        Some(match s {
            "create" => Capability::Create,
            "read" => Capability::Read,
            "update" => Capability::Update,
            "patch" => Capability::Patch,
            "delete" => Capability::Delete,
            "list" => Capability::List,
            "sudo" => Capability::Sudo,
            "deny" => Capability::Deny,
            _ => return None,
        })
    }
}

/// A policy that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyError(pub String);

#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    path: BTreeMap<String, RuleDoc>,
}

#[derive(Deserialize)]
struct RuleDoc {
    #[serde(default)]
    capabilities: Vec<String>,
}

/// A parsed policy: pattern → capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub rules: BTreeMap<String, BTreeSet<Capability>>,
}

/// Most policy text accepted.
pub(crate) const MAX_POLICY_LEN: usize = 32 * 1024;

/// Parse a policy in Vault HCL or JSON.
pub fn parse_policy(text: &str) -> Result<Policy, PolicyError> {
    if text.len() > MAX_POLICY_LEN {
        return Err(PolicyError(format!("longer than {MAX_POLICY_LEN} bytes")));
    }
    let doc: Document = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| PolicyError(e.to_string()))?
    } else {
        hcl::from_str(text).map_err(|e| PolicyError(e.to_string()))?
    };
    let mut rules = BTreeMap::new();
    for (pattern, rule) in doc.path {
        let pattern = pattern.trim_start_matches('/').to_string();
        if pattern.strip_suffix('*').unwrap_or(&pattern).contains('*') {
            return Err(PolicyError(format!("path {pattern:?}: `*` is only allowed at the end")));
        }
        let caps = rule
            .capabilities
            .iter()
            .map(|c| {
                Capability::parse(c).ok_or_else(|| PolicyError(format!("path {pattern:?}: unknown capability {c:?}")))
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        rules.insert(pattern, caps);
    }
    Ok(Policy { rules })
}

/// Whether `pattern` matches `path`: `+` is exactly one segment, a trailing `*` any rest
/// (including nothing). As in Vault, the segment may be empty: `a/+` matches the folder `a/`
/// (what a LIST asks for); empty segments inside a secret path never reach here (refused as
/// non-canonical).
fn matches(pattern: &str, path: &str) -> bool {
    let (mut pat, glob) = match pattern.strip_suffix('*') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let mut rest = path;
    loop {
        match pat.find('+') {
            None => return if glob { rest.starts_with(pat) } else { rest == pat },
            Some(i) => {
                let Some(after) = rest.strip_prefix(&pat[..i]) else { return false };
                let segment = after.find('/').unwrap_or(after.len());
                rest = &after[segment..];
                pat = &pat[i + 1..];
            }
        }
    }
}

/// Vault's priority: `a` is less specific than `b` when its first wildcard comes earlier, it ends
/// in `*` and `b` does not, it has more `+` segments, it is shorter, or it sorts lower.
fn specificity(a: &str, b: &str) -> Ordering {
    let first_wild = |p: &str| p.find(['+', '*']).unwrap_or(usize::MAX);
    let plus = |p: &str| p.split('/').filter(|s| *s == "+").count();
    first_wild(a)
        .cmp(&first_wild(b))
        .then_with(|| b.ends_with('*').cmp(&a.ends_with('*')))
        .then_with(|| plus(b).cmp(&plus(a)))
        .then_with(|| a.len().cmp(&b.len()))
        .then_with(|| a.cmp(b))
}

/// The policies of a token, merged.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: BTreeMap<String, BTreeSet<Capability>>,
}

impl Acl {
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Acl {
        let mut rules: BTreeMap<String, BTreeSet<Capability>> = BTreeMap::new();
        for p in policies {
            for (pattern, caps) in &p.rules {
                rules.entry(pattern.clone()).or_default().extend(caps.iter().copied());
            }
        }
        Acl { rules }
    }

    /// Whether `cap` is granted on `path` (no leading `/`). As in OpenBao, an exact rule decides
    /// before any wildcard rule; and a LIST of the folder `a/` that no rule matches is decided by
    /// the rules that match `a` (an exact rule for `a` first, then wildcard rules such as `+`).
    pub fn allows(&self, path: &str, cap: Capability) -> bool {
        self.decisive(path, cap).is_some_and(|caps| !caps.contains(&Capability::Deny) && caps.contains(&cap))
    }

    /// What a token may do on `path`, as `sys/capabilities-self` reports it: the capabilities of
    /// the rule that decides the path (sorted by name), or `["deny"]`.
    pub fn capabilities(&self, path: &str) -> Vec<&'static str> {
        match self.decisive(path, Capability::Read) {
            Some(caps) if !caps.contains(&Capability::Deny) && !caps.is_empty() => {
                let mut names: Vec<&'static str> = caps.iter().map(|c| c.name()).collect();
                names.sort_unstable();
                names
            }
            _ => vec!["deny"],
        }
    }

    /// The capabilities of the rule that decides `cap` on `path`, if any rule does.
    fn decisive(&self, path: &str, cap: Capability) -> Option<&BTreeSet<Capability>> {
        let folder = (cap == Capability::List).then(|| path.strip_suffix('/')).flatten();
        let most_specific =
            |p: &str| self.rules.iter().filter(|(r, _)| matches(r, p)).max_by(|(a, _), (b, _)| specificity(a, b));
        let best = self
            .rules
            .get_key_value(path)
            .or_else(|| folder.and_then(|f| self.rules.get_key_value(f)))
            .or_else(|| most_specific(path))
            .or_else(|| folder.and_then(most_specific));
        best.map(|(_, caps)| caps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(texts: &[&str]) -> Acl {
        let policies: Vec<Policy> = texts.iter().map(|t| parse_policy(t).unwrap()).collect();
        Acl::new(&policies)
    }

    #[test]
    fn hcl_and_json_parse_to_the_same_policy() {
        let hcl = r#"
            path "secret/data/app/*" { capabilities = ["read", "list"] }
            path "secret/data/app/admin" { capabilities = ["deny"] }
        "#;
        let json = r#"{"path": {"secret/data/app/*": {"capabilities": ["read", "list"]},
                                "secret/data/app/admin": {"capabilities": ["deny"]}}}"#;
        assert_eq!(parse_policy(hcl).unwrap(), parse_policy(json).unwrap());
        assert!(parse_policy(r#"path "a" { capabilities = ["fly"] }"#).is_err());
        assert!(parse_policy(r#"path "a/*/b" { capabilities = ["read"] }"#).is_err());
        assert!(parse_policy("path {").is_err());
    }

    #[test]
    fn the_policy_matrix() {
        let a = acl(&[r#"path "secret/data/app/*" { capabilities = ["read", "create", "update"] }
               path "secret/data/app/admin" { capabilities = ["deny"] }
               path "secret/data/app/ro/*" { capabilities = ["read"] }
               path "secret/data/team/+/config" { capabilities = ["read"] }
               path "secret/metadata/app/*" { capabilities = ["list"] }"#]);
        // allow, by glob
        assert!(a.allows("secret/data/app/db", Capability::Read));
        assert!(a.allows("secret/data/app/db", Capability::Update));
        // not granted
        assert!(!a.allows("secret/data/app/db", Capability::Delete));
        assert!(!a.allows("secret/data/other", Capability::Read));
        // deny overrides, on the most specific rule
        assert!(!a.allows("secret/data/app/admin", Capability::Read));
        // most specific wins: the longer glob grants only read
        assert!(a.allows("secret/data/app/ro/x", Capability::Read));
        assert!(!a.allows("secret/data/app/ro/x", Capability::Update));
        // `+` is one segment
        assert!(a.allows("secret/data/team/blue/config", Capability::Read));
        assert!(!a.allows("secret/data/team/blue/green/config", Capability::Read));
        // ... possibly an empty one, as in Vault: `secret/metadata/+` lets a token LIST
        // `secret/metadata/`.
        assert!(a.allows("secret/data/team//config", Capability::Read));
        assert!(a.allows("secret/metadata/app/x", Capability::List));
    }

    #[test]
    fn a_list_of_a_folder_follows_an_exact_rule_without_its_slash() {
        let a = acl(&[r#"path "secret/metadata/app" { capabilities = ["list"] }
               path "secret/metadata/*" { capabilities = ["deny"] }"#]);
        assert!(a.allows("secret/metadata/app/", Capability::List));
        assert!(!a.allows("secret/metadata/app/", Capability::Read), "only for LIST");
        assert!(!a.allows("secret/metadata/other/", Capability::List));
        let plus = acl(&[r#"path "secret/+/p/b/+" { capabilities = ["list"] }"#]);
        assert!(plus.allows("secret/metadata/p/b/x/", Capability::List), "`+` matches the folder's name");
        assert!(!plus.allows("secret/metadata/p/b/x/y/", Capability::List));
        // ... only when no rule matches the folder itself.
        let denied = acl(&[r#"path "secret/+/p/*" { capabilities = ["deny"] }
               path "secret/metadata/p/b/+" { capabilities = ["list"] }"#]);
        assert!(!denied.allows("secret/metadata/p/b/x/", Capability::List));
    }

    #[test]
    fn policies_merge_and_deny_in_any_of_them_wins() {
        let a = acl(&[
            r#"path "secret/data/shared" { capabilities = ["read"] }"#,
            r#"path "secret/data/shared" { capabilities = ["update"] }"#,
        ]);
        assert!(a.allows("secret/data/shared", Capability::Read) && a.allows("secret/data/shared", Capability::Update));
        let d = acl(&[
            r#"path "secret/data/shared" { capabilities = ["read"] }"#,
            r#"path "secret/data/shared" { capabilities = ["deny"] }"#,
        ]);
        assert!(!d.allows("secret/data/shared", Capability::Read));
        assert!(!Acl::default().allows("secret/data/x", Capability::Read), "no policy, no access");
    }

    #[test]
    fn specificity_follows_vaults_order() {
        assert_eq!(specificity("secret/*", "secret/data/*"), Ordering::Less);
        assert_eq!(specificity("secret/data/*", "secret/data/x"), Ordering::Less);
        assert_eq!(specificity("secret/+/x", "secret/data/x"), Ordering::Less);
        assert_eq!(specificity("a/+/+/c", "a/+/b/c"), Ordering::Less);
    }

    /// Bounded fuzzing of the policy parser and matcher: 50,000 generated policies (mutated
    /// HCL and JSON seeds, random bytes), each checked against generated paths. No panic; a
    /// policy either parses or is refused with a reason.
    #[test]
    fn policy_parsing_survives_generated_inputs() {
        let seeds: Vec<Vec<u8>> = [
            r#"path "secret/data/app/*" { capabilities = ["read", "list"] }"#,
            r#"path "secret/data/+/x" { capabilities = ["deny"] } path "a" { capabilities = [] }"#,
            r#"{"path": {"secret/data/x": {"capabilities": ["create", "update"]}}}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let paths = ["secret/data/app/x", "secret/data/a/x", "a", "", "secret/data/app/", "+/*"];
        let mut m = secretlog_schemas::fuzz::Mutator::new(0xAC1_F022);
        let (mut ok, mut refused) = (0u64, 0u64);
        for _ in 0..50_000 {
            let input = m.input(&seeds, 96);
            let text = String::from_utf8_lossy(&input);
            match parse_policy(&text) {
                Ok(p) => {
                    ok += 1;
                    let acl = Acl::new([&p]);
                    for path in paths {
                        let _ = acl.allows(path, Capability::Read);
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert!(!e.0.is_empty());
                }
            }
        }
        assert!(ok > 0 && refused > 0, "{ok} parsed, {refused} refused");
    }
}
