//! Parsing KV v2 write requests into commands, with Vault's status codes and messages.
//!
//! Pure: no state, no I/O. Everything a request can get wrong *by itself* is caught here; what
//! depends on the current state (CAS, existence) is decided in [`crate::plan`].
//!
//! Fields are decoded as Vault decodes them — Go's weak typing: decimal strings for integers,
//! `"true"`/`1` for booleans, `null` for the zero value — so clients that rely on it (the Vault
//! CLI sends every field as a string) work unchanged. Where that decoding would wrap a number
//! or invent a value, secretlog refuses instead (docs/compatibility.md#go-coercions). The
//! differential tests (`tests/it/differential.rs`) hold this to OpenBao's answers.

use std::collections::BTreeMap;

use secretlog_node::api::{ApiError, ApiRequest};
use secretlog_schemas::MetadataUpdate;
use secretlog_schemas::event::{MAX_CUSTOM_METADATA, MAX_CUSTOM_METADATA_LEN, MAX_VERSIONS_PER_EVENT};
use secretlog_schemas::path::validate_secret_path;
use secretlog_state::mounts::{DefaultMount, Mounts};
use serde_json::{Map, Value};

pub(crate) mod fields;

use fields::{field_error, go_bool, go_duration_secs, go_int, go_type};

/// Longest custom-metadata key, bytes (Vault's limit).
const MAX_CUSTOM_METADATA_KEY_LEN: usize = 128;

/// A write, parsed and checked for everything that does not depend on state.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `POST|PUT data/:path`.
    Put { path: String, data: Map<String, Value>, cas: Option<i64> },
    /// `PATCH data/:path` (JSON merge patch of the current version).
    Patch { path: String, patch: Map<String, Value>, cas: Option<i64> },
    /// `DELETE data/:path`: soft-delete the current version.
    DeleteLatest { path: String },
    /// `POST delete/:path`.
    DeleteVersions { path: String, versions: Vec<u64> },
    /// `POST undelete/:path`.
    UndeleteVersions { path: String, versions: Vec<u64> },
    /// `POST destroy/:path`.
    DestroyVersions { path: String, versions: Vec<u64> },
    /// `POST|PUT metadata/:path`.
    UpdateMetadata { path: String, update: MetadataUpdate },
    /// `DELETE metadata/:path`.
    DeleteMetadata { path: String },
    /// One secret of `POST /v1/sys/secretlog/restore`: replace its whole state, or remove it
    /// (`metadata: None`). See [`crate::restore`].
    Restore { path: String, metadata: Option<Vec<u8>>, values: Vec<(u64, Vec<u8>)> },
    /// A control event (policies, tokens) decided by the handler: append `op` under the control
    /// object `name`, then answer `body` (200). See [`crate::auth`].
    Control { name: String, op: secretlog_schemas::Operation, body: Option<Value> },
    /// Re-seal stored values of one secret under the active key term (the background rewrap;
    /// see `crate::rotate`).
    Rewrap { path: String, values: Vec<secretlog_schemas::Rewrapped> },
    /// Enable, tune, configure or disable the mount at `path` (see [`crate::mounts`]): a control
    /// event, decided on the mount table when nothing else is in flight.
    Mount { path: String, change: crate::mounts::MountChange },
    /// Enable or disable the audit device at `path` (see [`crate::audit_devices`]): a control
    /// event, decided on the device table when nothing else is in flight.
    AuditDevice { path: String, change: crate::audit_devices::AuditChange },
    /// `PATCH metadata/:path` (JSON merge patch of the metadata; see [`MetadataPatch`]).
    PatchMetadata { path: String, patch: MetadataPatch },
}

/// A `PATCH metadata/:path`: the fields given change, the others stay; `custom_metadata` is
/// merged key by key, a `null` value removing its key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataPatch {
    pub max_versions: Option<u32>,
    pub cas_required: Option<bool>,
    pub delete_version_after_secs: Option<u64>,
    /// Key → new value, or `None` to remove the key.
    pub custom_metadata: BTreeMap<String, Option<String>>,
}

impl Command {
    pub fn path(&self) -> &str {
        match self {
            Command::Put { path, .. }
            | Command::Patch { path, .. }
            | Command::DeleteLatest { path }
            | Command::Restore { path, .. }
            | Command::Rewrap { path, .. }
            | Command::Control { name: path, .. }
            | Command::DeleteVersions { path, .. }
            | Command::UndeleteVersions { path, .. }
            | Command::DestroyVersions { path, .. }
            | Command::UpdateMetadata { path, .. }
            | Command::DeleteMetadata { path }
            | Command::PatchMetadata { path, .. } => path,
            Command::Mount { .. } => crate::mounts::CONTROL_NAME,
            Command::AuditDevice { .. } => crate::audit_devices::CONTROL_NAME,
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        // Go decodes `null` into a map as "no fields".
        Ok(Value::Null) => Ok(Map::new()),
        Ok(v) => Err(ApiError::bad_request(format!(
            "failed to decode JSON input: the body must be a JSON object, not {}",
            go_type(&v)
        ))),
        Err(e) => Err(ApiError::bad_request(format!("failed to decode JSON input: {e}"))),
    }
}

/// `data` and `options.cas` of a write or patch, checked in Vault's order: the type of every
/// field first, then whether there is data, then the CAS value.
fn parse_data_and_cas(body: &Map<String, Value>) -> Result<(Map<String, Value>, Option<i64>), ApiError> {
    let not_a_map = |field: &str, v: &Value| {
        field_error(
            field,
            format!("expected type 'map[string]interface {{}}', got unconvertible type '{}'", go_type(v)),
        )
    };
    let data = match body.get("data") {
        None => None,
        Some(Value::Object(d)) => Some(d),
        // Vault stores `null` (and `[]`) as a version's data; secretlog refuses
        // (docs/compatibility.md#go-coercions).
        Some(v) => return Err(not_a_map("data", v)),
    };
    let options = match body.get("options") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(v) => return Err(not_a_map("options", v)),
    };
    let data = data.ok_or_else(|| ApiError::bad_request("no data provided"))?.clone();
    // Present means "check": `null` and `""` are 0 (create only), as in Vault.
    let cas = match options.and_then(|o| o.get("cas")) {
        None => None,
        Some(v) => Some(go_int(v).map_err(|_| ApiError::bad_request("error parsing check-and-set parameter"))?),
    };
    Ok((data, cas))
}

/// `versions` of delete/undelete/destroy, decoded as Vault decodes a comma-separated integer
/// list: a list, a single number or a "1,2" string; elements decode like [`go_int`]. Versions
/// below 1 name nothing and are dropped (Vault ignores them too).
fn parse_versions(body: &Map<String, Value>, endpoint: &str) -> Result<Vec<u64>, ApiError> {
    let bad = |detail: String| {
        ApiError::bad_request(format!(
            "Field validation failed: error converting input for field \"versions\": decoding failed due to the \
             following error(s):\n\n'[0]' {detail}"
        ))
    };
    let raw: Vec<Value> = match body.get("versions") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) if s.is_empty() => vec![],
        Some(Value::String(s)) => s.split(',').map(|p| Value::String(p.to_string())).collect(),
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Object(o)) if o.is_empty() => vec![],
        Some(v) => vec![v.clone()],
    };
    if raw.is_empty() {
        // Vault's own inconsistency, kept: destroy says it in lower case.
        let msg = if endpoint == "destroy" { "no version number provided" } else { "No version number provided" };
        return Err(ApiError::bad_request(msg));
    }
    if raw.len() > MAX_VERSIONS_PER_EVENT {
        return Err(ApiError::bad_request(format!("at most {MAX_VERSIONS_PER_EVENT} versions per request")));
    }
    let mut versions = Vec::with_capacity(raw.len());
    for v in &raw {
        let n = go_int(v).map_err(bad)?;
        if n > 0 {
            versions.push(n as u64);
        }
    }
    Ok(versions)
}

/// `custom_metadata`: a map of strings (numbers and booleans are converted as Vault converts
/// them); `null` clears it. Checked against Vault's limits, with Vault's messages.
fn parse_custom_metadata(v: &Value) -> Result<BTreeMap<String, String>, ApiError> {
    let m = match v {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(m) => m,
        _ => {
            return Err(field_error(
                "custom_metadata",
                format!("'' expected type 'map[string]interface {{}}', got unconvertible type '{}'", go_type(v)),
            ));
        }
    };
    let mut cm = BTreeMap::new();
    for (k, v) in m {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
            Value::Null => String::new(),
            Value::Array(_) | Value::Object(_) => {
                return Err(ApiError::bad_request(format!(
                    "custom_metadata validation failed: '' expected type 'string', got unconvertible type '{}'",
                    go_type(v)
                )));
            }
        };
        cm.insert(k.clone(), s);
    }
    let mut problems = Vec::new();
    if cm.len() > MAX_CUSTOM_METADATA {
        problems.push(format!("payload must contain at most {MAX_CUSTOM_METADATA} keys, provided {}", cm.len()));
    }
    for (k, v) in &cm {
        if k.is_empty() || k.len() > MAX_CUSTOM_METADATA_KEY_LEN {
            problems.push(format!(
                "length of key {k:?} is {} but must be 0 < len(key) <= {MAX_CUSTOM_METADATA_KEY_LEN}",
                k.len()
            ));
        }
        if v.is_empty() || v.len() > MAX_CUSTOM_METADATA_LEN {
            problems.push(format!(
                "length of value for key {k:?} is {} but must be 0 < len(value) <= {MAX_CUSTOM_METADATA_LEN}",
                v.len()
            ));
        }
    }
    if problems.is_empty() {
        return Ok(cm);
    }
    // go-multierror's format, as Vault sends it.
    let n = problems.len();
    let mut msg = format!("{n} error{} occurred:\n", if n == 1 { "" } else { "s" });
    for p in problems {
        msg.push_str(&format!("\t* custom_metadata validation failed: {p}\n"));
    }
    msg.push('\n');
    Err(ApiError::bad_request(msg))
}

fn parse_metadata(body: &Map<String, Value>) -> Result<MetadataUpdate, ApiError> {
    let mut u = MetadataUpdate::default();
    // `null` is the zero value for each field (as in Vault), except for delete_version_after,
    // which it leaves unchanged.
    if let Some(v) = body.get("max_versions") {
        let n = go_int(v).map_err(|e| field_error("max_versions", e))?;
        // Vault wraps negative and oversized values into a uint32; secretlog refuses them
        // (docs/compatibility.md#go-coercions).
        let n = u32::try_from(n)
            .map_err(|_| ApiError::bad_request(format!("max_versions must be between 0 and {}", u32::MAX)))?;
        u.max_versions = Some(n);
    }
    if let Some(v) = body.get("cas_required") {
        u.cas_required = Some(go_bool(v).map_err(|e| field_error("cas_required", e))?);
    }
    if let Some(v) = body.get("delete_version_after").filter(|v| !v.is_null()) {
        u.delete_version_after_secs = Some(go_duration_secs("delete_version_after", v)?);
    }
    if let Some(v) = body.get("custom_metadata") {
        u.custom_metadata = Some(parse_custom_metadata(v)?);
    }
    Ok(u)
}

/// Parse a KV write: resolve the mount serving it on `mounts` (the table this node applied, with
/// its `default` mount), as every reader resolves reads, then [`parse`] it. Returns the mount's
/// storage id — what the secret is keyed and sealed under — with the command. A path under no
/// mount is Vault's 404 `no handler for route`.
pub fn parse_on(
    req: &ApiRequest,
    mounts: &Mounts,
    default: &DefaultMount,
    max_value_bytes: usize,
) -> Result<(String, Command), ApiError> {
    let rel = req.path.strip_prefix("v1/").unwrap_or(&req.path);
    let Some(m) = mounts.resolve(default, rel) else { return Err(ApiError::no_route(rel)) };
    Ok((m.record.storage.clone(), parse(req, m.path, m.rest, max_value_bytes)?))
}

/// Parse a write to the KV mount at `mount` (its path) into a [`Command`]; `rest` is what
/// follows the mount's path (`data/app/db`).
pub fn parse(req: &ApiRequest, mount: &str, rest: &str, max_value_bytes: usize) -> Result<Command, ApiError> {
    let (endpoint, path) = rest.split_once('/').unwrap_or((rest, ""));
    if endpoint.is_empty() {
        return Err(ApiError::unsupported_path());
    }
    let path = path.to_string();
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(ApiError::relative_path());
    }
    let method = req.method.as_str();
    if endpoint == "config" && path.is_empty() && matches!(method, "POST" | "PUT") {
        return crate::mounts::parse_config_write(req, mount);
    }
    match (endpoint, method) {
        ("data", "POST" | "PUT" | "PATCH" | "DELETE")
        | ("delete" | "undelete" | "destroy", "POST" | "PUT")
        | ("metadata", "POST" | "PUT" | "PATCH" | "DELETE") => {}
        ("data" | "delete" | "undelete" | "destroy" | "metadata" | "config", _) => {
            return Err(ApiError::method_not_allowed());
        }
        _ => return Err(ApiError::unsupported_path()),
    }
    if path.is_empty() || path.ends_with('/') {
        // A folder is never a secret: deleting one deletes nothing, as in Vault; writing to one
        // is refused.
        return match (endpoint, method) {
            ("data", "DELETE") => Ok(Command::DeleteLatest { path }),
            ("metadata", "DELETE") => Ok(Command::DeleteMetadata { path }),
            _ => Err(ApiError::bad_request("cannot write to a path ending in '/'")),
        };
    }
    validate_secret_path(&path).map_err(|e| ApiError::from_path(&e))?;
    match (endpoint, method) {
        ("data", "POST" | "PUT") => {
            let (data, cas) = parse_data_and_cas(&parse_json(&req.body)?)?;
            let size = serde_json::to_vec(&data).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > max_value_bytes {
                return Err(ApiError::new(
                    secretlog_state::ErrorKind::TooLarge,
                    format!("secret data is {size} bytes; the limit is {max_value_bytes}"),
                ));
            }
            Ok(Command::Put { path, data, cas })
        }
        ("data", "PATCH") => {
            merge_patch_content_type(req)?;
            let (patch, cas) = parse_data_and_cas(&parse_json(&req.body)?)?;
            Ok(Command::Patch { path, patch, cas })
        }
        ("data", _) => Ok(Command::DeleteLatest { path }),
        ("delete", _) => {
            Ok(Command::DeleteVersions { path, versions: parse_versions(&parse_json(&req.body)?, endpoint)? })
        }
        ("undelete", _) => {
            Ok(Command::UndeleteVersions { path, versions: parse_versions(&parse_json(&req.body)?, endpoint)? })
        }
        ("destroy", _) => {
            Ok(Command::DestroyVersions { path, versions: parse_versions(&parse_json(&req.body)?, endpoint)? })
        }
        ("metadata", "DELETE") => Ok(Command::DeleteMetadata { path }),
        ("metadata", "PATCH") => {
            merge_patch_content_type(req)?;
            Ok(Command::PatchMetadata { path, patch: parse_metadata_patch(&parse_json(&req.body)?)? })
        }
        _ => Ok(Command::UpdateMetadata { path, update: parse_metadata(&parse_json(&req.body)?)? }),
    }
}

/// A PATCH must say it carries a JSON merge patch (415 otherwise, as Vault).
fn merge_patch_content_type(req: &ApiRequest) -> Result<(), ApiError> {
    let ct = req.content_type.as_deref().unwrap_or("");
    if ct.starts_with("application/merge-patch+json") {
        return Ok(());
    }
    Err(ApiError::new(
        secretlog_state::ErrorKind::UnsupportedMediaType,
        format!("PATCH requires Content-Type of application/merge-patch+json, provided {ct}"),
    ))
}

/// The fields of a `PATCH metadata/:path`, decoded like [`parse_metadata`]'s, except that a
/// `null` field changes nothing and a `null` custom-metadata value removes its key.
fn parse_metadata_patch(body: &Map<String, Value>) -> Result<MetadataPatch, ApiError> {
    let present = |k: &str| body.get(k).filter(|v| !v.is_null());
    let mut plain = Map::new();
    for k in ["max_versions", "cas_required", "delete_version_after"] {
        if let Some(v) = present(k) {
            plain.insert(k.to_string(), v.clone());
        }
    }
    let u = parse_metadata(&plain)?;
    let mut patch = MetadataPatch {
        max_versions: u.max_versions,
        cas_required: u.cas_required,
        delete_version_after_secs: u.delete_version_after_secs,
        custom_metadata: BTreeMap::new(),
    };
    if let Some(v) = present("custom_metadata") {
        let Value::Object(m) = v else {
            return Err(field_error(
                "custom_metadata",
                format!("'' expected type 'map[string]interface {{}}', got unconvertible type '{}'", go_type(v)),
            ));
        };
        let (removed, set): (Map<String, Value>, Map<String, Value>) =
            m.clone().into_iter().partition(|(_, v)| v.is_null());
        // The values set are checked as a write's custom metadata is.
        let set = if set.is_empty() { BTreeMap::new() } else { parse_custom_metadata(&Value::Object(set))? };
        patch.custom_metadata.extend(removed.into_iter().map(|(k, _)| (k, None)));
        patch.custom_metadata.extend(set.into_iter().map(|(k, v)| (k, Some(v))));
    }
    Ok(patch)
}

/// RFC 7386 JSON merge patch: `null` removes a key, objects merge recursively, anything else
/// replaces.
pub fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => {
                let entry = target.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                if let Value::Object(t) = entry {
                    merge_patch(t, p);
                }
            }
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// A JSON request as a client sends it (for the parsers' tests).
#[cfg(test)]
pub(crate) fn test_request(method: &str, path: &str, body: &[u8]) -> ApiRequest {
    ApiRequest {
        method: method.into(),
        path: path.into(),
        raw_path: path.into(),
        token: Some("t".into()),
        content_type: Some("application/json".into()),
        body: body.to_vec().into(),
        request_id: "r".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(method: &str, path: &str, body: &str) -> ApiRequest {
        test_request(method, path, body.as_bytes())
    }
    fn p(method: &str, path: &str, body: &str) -> Result<Command, ApiError> {
        let mut mounts = Mounts::default();
        let team = secretlog_schemas::mount::MountRecord::new_kv([1; 16], String::new(), 1);
        mounts
            .apply(&secretlog_schemas::Operation::PutMount { path: "team/kv".into(), record: team.encode() })
            .unwrap();
        let (storage, cmd) = parse_on(&req(method, path, body), &mounts, &DefaultMount::new("secret"), 100)?;
        let expected = if path.starts_with("v1/team/kv/") { team.storage } else { "secret".to_string() };
        assert_eq!(storage, expected, "{path}");
        Ok(cmd)
    }

    #[test]
    fn parses_writes() {
        assert_eq!(
            p("POST", "v1/secret/data/app/db", r#"{"data":{"a":"b"},"options":{"cas":0}}"#).unwrap(),
            Command::Put { path: "app/db".into(), data: json!({"a":"b"}).as_object().unwrap().clone(), cas: Some(0) }
        );
        assert_eq!(
            p("POST", "v1/secret/destroy/x", r#"{"versions":[1,"2"]}"#).unwrap(),
            Command::DestroyVersions { path: "x".into(), versions: vec![1, 2] }
        );
        assert_eq!(p("DELETE", "v1/secret/metadata/x", "").unwrap(), Command::DeleteMetadata { path: "x".into() });
        let Command::UpdateMetadata { update, .. } = p(
            "POST",
            "v1/secret/metadata/x",
            r#"{"max_versions":3,"delete_version_after":"1h30m","custom_metadata":{"o":"p"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(update.max_versions, Some(3));
        assert_eq!(update.delete_version_after_secs, Some(5400));
        assert_eq!(update.cas_required, None);
    }

    #[test]
    fn refuses_bad_input_with_vault_codes() {
        let status = |r: Result<Command, ApiError>| r.unwrap_err().status;
        assert_eq!(status(p("POST", "v1/secret/data/x", "{not json")), 400);
        assert_eq!(status(p("POST", "v1/secret/data/x", "[1]")), 400);
        assert_eq!(status(p("POST", "v1/secret/data/x", r#"{"data":"str"}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/data/x", r#"{}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/data/x", r#"{"data":{"a":1},"options":{"cas":1.5}}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/data/a/../b", r#"{"data":{}}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/data/a//b", r#"{"data":{}}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/data/x", &format!(r#"{{"data":{{"a":"{}"}}}}"#, "x".repeat(200)))), 413);
        assert_eq!(status(p("POST", "v1/secret/delete/x", r#"{"versions":[]}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/metadata/x", r#"{"max_versions":"many"}"#)), 400);
        assert_eq!(status(p("POST", "v1/other/data/x", r#"{"data":{}}"#)), 404);
        assert_eq!(status(p("PATCH", "v1/secret/data/x", r#"{"data":{}}"#)), 415);
    }

    fn err(r: Result<Command, ApiError>) -> String {
        r.unwrap_err().errors.join("|")
    }
    fn metadata(body: &str) -> Result<MetadataUpdate, ApiError> {
        match p("POST", "v1/secret/metadata/x", body)? {
            Command::UpdateMetadata { update, .. } => Ok(update),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cas_decodes_like_vault() {
        let cas = |c: &str| match p("POST", "v1/secret/data/x", &format!(r#"{{"data":{{}},"options":{{"cas":{c}}}}}"#))
        {
            Ok(Command::Put { cas, .. }) => Ok(cas),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.errors.join("|")),
        };
        assert_eq!(cas("2"), Ok(Some(2)));
        assert_eq!(cas(r#""2""#), Ok(Some(2)));
        assert_eq!(cas("-1"), Ok(Some(-1)), "parses; it can never match");
        assert_eq!(cas("null"), Ok(Some(0)), "present means check: null is 0");
        assert_eq!(cas(r#""""#), Ok(Some(0)));
        assert_eq!(cas("true"), Ok(Some(1)));
        for bad in ["1.5", "2.0", r#""x""#, "[1]", "{}"] {
            assert_eq!(cas(bad), Err("error parsing check-and-set parameter".into()), "{bad}");
        }
        assert_eq!(
            p("POST", "v1/secret/data/x", r#"{"data":{},"options":null}"#).unwrap(),
            Command::Put { path: "x".into(), data: Map::new(), cas: None }
        );
        assert!(
            err(p("POST", "v1/secret/data/x", r#"{"data":{},"options":"cas=1"}"#))
                .starts_with("error converting input for field \"options\": ")
        );
        // Field types first, then "no data", then the CAS value.
        assert!(err(p("POST", "v1/secret/data/x", r#"{"options":7}"#)).starts_with("error converting input for field"));
        assert_eq!(err(p("POST", "v1/secret/data/x", r#"{"options":{"cas":"x"}}"#)), "no data provided");
    }

    #[test]
    fn bodies_decode_like_vault() {
        assert!(matches!(p("POST", "v1/secret/data/x", "null"), Err(e) if e.errors == ["no data provided"]));
        assert!(err(p("POST", "v1/secret/data/x", "[1]")).starts_with("failed to decode JSON input: "));
        assert!(err(p("POST", "v1/secret/data/x", "{bad")).starts_with("failed to decode JSON input: "));
        assert!(
            err(p("POST", "v1/secret/data/x", r#"{"data":[1]}"#))
                .starts_with("error converting input for field \"data\": ")
        );
        assert_eq!(metadata("null").unwrap(), MetadataUpdate::default());
    }

    #[test]
    fn versions_decode_like_vault() {
        let versions = |body: &str| match p("POST", "v1/secret/delete/x", body) {
            Ok(Command::DeleteVersions { versions, .. }) => Ok(versions),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.errors.join("|")),
        };
        assert_eq!(versions(r#"{"versions":[1,"2",true]}"#), Ok(vec![1, 2, 1]));
        assert_eq!(versions(r#"{"versions":"1,3"}"#), Ok(vec![1, 3]));
        assert_eq!(versions(r#"{"versions":4}"#), Ok(vec![4]));
        assert_eq!(versions(r#"{"versions":[-1,0]}"#), Ok(vec![]), "versions below 1 name nothing");
        for none in [r#"{}"#, r#"{"versions":[]}"#, r#"{"versions":null}"#, r#"{"versions":""}"#] {
            assert_eq!(versions(none), Err("No version number provided".into()), "{none}");
        }
        assert_eq!(err(p("POST", "v1/secret/destroy/x", "{}")), "no version number provided");
        for bad in [r#"{"versions":[1.5]}"#, r#"{"versions":"x"}"#, r#"{"versions":[[1]]}"#, r#"{"versions":" 1"}"#] {
            assert!(
                versions(bad)
                    .unwrap_err()
                    .starts_with("Field validation failed: error converting input for field \"versions\": "),
                "{bad}"
            );
        }
    }

    #[test]
    fn metadata_fields_decode_like_vault() {
        let u = metadata(r#"{"max_versions":"4","cas_required":"t","delete_version_after":7200}"#).unwrap();
        assert_eq!((u.max_versions, u.cas_required, u.delete_version_after_secs), (Some(4), Some(true), Some(7200)));
        let u =
            metadata(r#"{"max_versions":null,"cas_required":null,"custom_metadata":null,"delete_version_after":null}"#)
                .unwrap();
        assert_eq!(u.max_versions, Some(0), "null is the zero value");
        assert_eq!(u.cas_required, Some(false));
        assert_eq!(u.custom_metadata, Some(BTreeMap::new()), "null clears custom metadata");
        assert_eq!(u.delete_version_after_secs, None, "null leaves delete_version_after");
        assert_eq!(metadata(r#"{"cas_required":0}"#).unwrap().cas_required, Some(false));
        let cm = metadata(r#"{"custom_metadata":{"n":7,"b":true,"s":"x"}}"#).unwrap().custom_metadata.unwrap();
        assert_eq!(cm, BTreeMap::from([("b".into(), "1".into()), ("n".into(), "7".into()), ("s".into(), "x".into())]));
        for (body, field) in [
            (r#"{"max_versions":2.5}"#, "max_versions"),
            (r#"{"cas_required":2}"#, "cas_required"),
            (r#"{"cas_required":"yes"}"#, "cas_required"),
            (r#"{"delete_version_after":true}"#, "delete_version_after"),
            (r#"{"delete_version_after":"1h 30m"}"#, "delete_version_after"),
            (r#"{"custom_metadata":"k=v"}"#, "custom_metadata"),
        ] {
            assert!(
                err(p("POST", "v1/secret/metadata/x", body))
                    .starts_with(&format!("error converting input for field \"{field}\": ")),
                "{body}"
            );
        }
        assert_eq!(
            err(p("POST", "v1/secret/metadata/x", r#"{"custom_metadata":{"k":""}}"#)),
            "1 error occurred:\n\t* custom_metadata validation failed: length of value for key \"k\" is 0 but must be 0 < len(value) <= 512\n\n"
        );
        assert_eq!(metadata(r#"{"max_versions":-1}"#).unwrap_err().status, 400, "no wrap-around");
    }

    #[test]
    fn paths_are_checked_like_vault() {
        assert_eq!(err(p("POST", "v1/secret/data/a/../b", r#"{"data":{}}"#)), "relative paths not supported");
        assert_eq!(err(p("GET", "v1/secret/delete/./b", "")), "relative paths not supported");
        assert_eq!(err(p("POST", "v1/secret/data/dir/", r#"{"data":{}}"#)), "cannot write to a path ending in '/'");
        assert_eq!(err(p("POST", "v1/secret/destroy/", r#"{"versions":[1]}"#)), "cannot write to a path ending in '/'");
        // Deleting a folder deletes nothing, successfully.
        assert_eq!(p("DELETE", "v1/secret/data/dir/", "").unwrap(), Command::DeleteLatest { path: "dir/".into() });
        assert_eq!(p("DELETE", "v1/secret/metadata/", "").unwrap(), Command::DeleteMetadata { path: String::new() });
        assert_eq!(
            err(p("POST", "v1/nomount/data/x", "{}")),
            "no handler for route \"nomount/data/x\". route entry not found."
        );
        assert_eq!(p("DELETE", "v1/secret/destroy/x", "").unwrap_err().status, 405);
        assert_eq!(p("GET", "v1/secret/config", "").unwrap_err().status, 405);
        assert!(
            matches!(p("POST", "v1/secret/config", "{}").unwrap(), Command::Mount { path, .. } if path == "secret")
        );
    }

    #[test]
    fn writes_resolve_to_the_mount_serving_them() {
        assert_eq!(
            p("PUT", "v1/team/kv/data/x", r#"{"data":{}}"#).unwrap(),
            Command::Put { path: "x".into(), data: Map::new(), cas: None }
        );
        assert_eq!(
            err(p("PUT", "v1/team/data/x", r#"{"data":{}}"#)),
            "no handler for route \"team/data/x\". route entry not found."
        );
        let Command::Mount { path, change: crate::mounts::MountChange::Config(c) } =
            p("PUT", "v1/team/kv/config", r#"{"max_versions":"3","cas_required":"false","delete_version_after":"1h"}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(path, "team/kv");
        assert_eq!((c.max_versions, c.cas_required, c.delete_version_after_secs), (Some(3), Some(false), Some(3600)));
    }

    #[test]
    fn a_metadata_patch_merges_custom_metadata_and_null_removes_a_key() {
        let patch = |body: &str, ct: &str| {
            let mut r = req("PATCH", "v1/secret/metadata/a/b", body);
            r.content_type = Some(ct.into());
            parse(&r, "secret", "metadata/a/b", 100)
        };
        let Command::PatchMetadata { path, patch: m } = patch(
            r#"{"custom_metadata":{"team":"t","old":null},"delete_version_after":"1h0m0s","max_versions":null}"#,
            "application/merge-patch+json",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(path, "a/b");
        assert_eq!(m.delete_version_after_secs, Some(3600));
        assert_eq!(m.max_versions, None, "null changes nothing");
        assert_eq!(m.cas_required, None);
        assert_eq!(m.custom_metadata, BTreeMap::from([("old".into(), None), ("team".into(), Some("t".into()))]));
        assert_eq!(patch("{}", "application/json").unwrap_err().status, 415);
        assert_eq!(patch(r#"{"custom_metadata":"x"}"#, "application/merge-patch+json").unwrap_err().status, 400);
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a":"b","c":{"d":"e","f":"g"}}).as_object().unwrap().clone();
        let patch = json!({"a":"z","c":{"f":null},"n":{"x":1}});
        merge_patch(&mut t, patch.as_object().unwrap());
        assert_eq!(Value::Object(t), json!({"a":"z","c":{"d":"e"},"n":{"x":1}}));
    }
}
