//! Parsing KV v2 write requests into commands, with Vault's status codes and messages.
//!
//! Pure: no state, no I/O. Everything a request can get wrong *by itself* is caught here; what
//! depends on the current state (CAS, existence) is decided in [`crate::plan`].

use std::collections::BTreeMap;

use secretlog_reader::api::{ApiError, ApiRequest};
use secretlog_schemas::MetadataUpdate;
use secretlog_schemas::event::{MAX_CUSTOM_METADATA, MAX_CUSTOM_METADATA_LEN, MAX_VERSIONS_PER_EVENT};
use secretlog_schemas::path::validate_secret_path;
use serde_json::{Map, Value};

/// A write, parsed and checked for everything that does not depend on state.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `POST|PUT data/:path`.
    Put { path: String, data: Map<String, Value>, cas: Option<u64> },
    /// `PATCH data/:path` (JSON merge patch of the current version).
    Patch { path: String, patch: Map<String, Value>, cas: Option<u64> },
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
}

impl Command {
    pub fn path(&self) -> &str {
        match self {
            Command::Put { path, .. }
            | Command::Patch { path, .. }
            | Command::DeleteLatest { path }
            | Command::DeleteVersions { path, .. }
            | Command::UndeleteVersions { path, .. }
            | Command::DestroyVersions { path, .. }
            | Command::UpdateMetadata { path, .. }
            | Command::DeleteMetadata { path } => path,
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("failed to parse JSON input: request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("failed to parse JSON input: {e}"))),
    }
}

fn parse_cas(body: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    let Some(opts) = body.get("options") else { return Ok(None) };
    let opts = match opts {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(ApiError::bad_request("error parsing options: expected a map")),
    };
    match opts.get("cas") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_u64(v)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("error parsing options: cas must be a non-negative integer")),
    }
}

/// Vault accepts numbers and numeric strings for integer fields.
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64))
        }
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn parse_versions(body: &Map<String, Value>) -> Result<Vec<u64>, ApiError> {
    let versions = match body.get("versions") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| as_u64(v).ok_or_else(|| ApiError::bad_request("versions must be a list of non-negative integers")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::String(s)) => s
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| ApiError::bad_request("versions must be a list of non-negative integers"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(v) => {
            vec![as_u64(v).ok_or_else(|| ApiError::bad_request("versions must be a list of non-negative integers"))?]
        }
    };
    if versions.is_empty() {
        return Err(ApiError::bad_request("no version number provided"));
    }
    if versions.len() > MAX_VERSIONS_PER_EVENT {
        return Err(ApiError::bad_request(format!("at most {MAX_VERSIONS_PER_EVENT} versions per request")));
    }
    Ok(versions)
}

/// `delete_version_after`: a Go-style duration ("3h25m19s", "30m", "0s") or a number of seconds.
fn parse_duration_secs(v: &Value) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad_request("error parsing delete_version_after: expected a duration such as \"3h25m\" or seconds")
    };
    match v {
        Value::Number(_) => as_u64(v).ok_or_else(bad),
        Value::String(s) if s.trim().chars().all(|c| c.is_ascii_digit()) && !s.trim().is_empty() => {
            s.trim().parse().map_err(|_| bad())
        }
        Value::String(s) => humantime::parse_duration(s.trim()).map(|d| d.as_secs()).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

fn parse_metadata(body: &Map<String, Value>) -> Result<MetadataUpdate, ApiError> {
    let mut u = MetadataUpdate::default();
    if let Some(v) = body.get("max_versions").filter(|v| !v.is_null()) {
        let n = as_u64(v)
            .filter(|n| *n <= u32::MAX as u64)
            .ok_or_else(|| ApiError::bad_request("max_versions must be a non-negative integer"))?;
        u.max_versions = Some(n as u32);
    }
    if let Some(v) = body.get("cas_required").filter(|v| !v.is_null()) {
        u.cas_required = Some(match v {
            Value::Bool(b) => *b,
            Value::String(s) if s == "true" || s == "false" => s == "true",
            _ => return Err(ApiError::bad_request("cas_required must be a boolean")),
        });
    }
    if let Some(v) = body.get("delete_version_after").filter(|v| !v.is_null()) {
        u.delete_version_after_secs = Some(parse_duration_secs(v)?);
    }
    if let Some(v) = body.get("custom_metadata").filter(|v| !v.is_null()) {
        let Value::Object(m) = v else { return Err(ApiError::bad_request("custom_metadata must be a map of strings")) };
        if m.len() > MAX_CUSTOM_METADATA {
            return Err(ApiError::bad_request(format!("custom_metadata may have at most {MAX_CUSTOM_METADATA} keys")));
        }
        let mut cm = BTreeMap::new();
        for (k, v) in m {
            let Value::String(s) = v else {
                return Err(ApiError::bad_request("custom_metadata values must be strings"));
            };
            if k.is_empty() || k.len() > 128 || s.len() > MAX_CUSTOM_METADATA_LEN {
                return Err(ApiError::bad_request("custom_metadata key or value too long"));
            }
            cm.insert(k.clone(), s.clone());
        }
        u.custom_metadata = Some(cm);
    }
    Ok(u)
}

/// Parse a write request on `mount` into a [`Command`].
pub fn parse(req: &ApiRequest, mount: &str, max_value_bytes: usize) -> Result<Command, ApiError> {
    let segs = req.segments();
    if segs.len() < 3 || segs[0] != mount {
        return Err(ApiError::unsupported_path());
    }
    let path = segs[2..].join("/");
    validate_secret_path(&path).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let method = req.method.as_str();
    match (segs[1], method) {
        ("data", "POST" | "PUT") => {
            let body = parse_json(&req.body)?;
            let data = match body.get("data") {
                None | Some(Value::Null) => return Err(ApiError::bad_request("no data provided")),
                Some(Value::Object(d)) => d.clone(),
                Some(_) => return Err(ApiError::bad_request("error parsing data: data must be a JSON object")),
            };
            let cas = parse_cas(&body)?;
            let size = serde_json::to_vec(&data).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > max_value_bytes {
                return Err(ApiError::new(413, format!("secret data is {size} bytes; the limit is {max_value_bytes}")));
            }
            Ok(Command::Put { path, data, cas })
        }
        ("data", "PATCH") => {
            let ct = req.content_type.as_deref().unwrap_or("");
            if !ct.starts_with("application/merge-patch+json") {
                return Err(ApiError::new(
                    415,
                    format!("Unsupported Media Type: {ct:?}; use application/merge-patch+json"),
                ));
            }
            let body = parse_json(&req.body)?;
            let patch = match body.get("data") {
                None | Some(Value::Null) => return Err(ApiError::bad_request("no data provided")),
                Some(Value::Object(d)) => d.clone(),
                Some(_) => return Err(ApiError::bad_request("error parsing data: data must be a JSON object")),
            };
            Ok(Command::Patch { path, patch, cas: parse_cas(&body)? })
        }
        ("data", "DELETE") => Ok(Command::DeleteLatest { path }),
        ("delete", "POST" | "PUT") => {
            Ok(Command::DeleteVersions { path, versions: parse_versions(&parse_json(&req.body)?)? })
        }
        ("undelete", "POST" | "PUT") => {
            Ok(Command::UndeleteVersions { path, versions: parse_versions(&parse_json(&req.body)?)? })
        }
        ("destroy", "POST" | "PUT") => {
            Ok(Command::DestroyVersions { path, versions: parse_versions(&parse_json(&req.body)?)? })
        }
        ("metadata", "POST" | "PUT") => {
            Ok(Command::UpdateMetadata { path, update: parse_metadata(&parse_json(&req.body)?)? })
        }
        ("metadata", "DELETE") => Ok(Command::DeleteMetadata { path }),
        ("data" | "delete" | "undelete" | "destroy" | "metadata", _) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::unsupported_path()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(method: &str, path: &str, body: &str) -> ApiRequest {
        ApiRequest {
            method: method.into(),
            path: path.into(),
            raw_query: String::new(),
            query: Default::default(),
            token: Some("t".into()),
            index: None,
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec().into(),
            request_id: "r".into(),
            forwarded: false,
        }
    }
    fn p(method: &str, path: &str, body: &str) -> Result<Command, ApiError> {
        parse(&req(method, path, body), "secret", 100)
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
        assert_eq!(status(p("POST", "v1/secret/data/x", r#"{"data":{"a":1},"options":{"cas":-1}}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/data/a/../b", r#"{"data":{}}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/data/a//b", r#"{"data":{}}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/data/x", &format!(r#"{{"data":{{"a":"{}"}}}}"#, "x".repeat(200)))), 413);
        assert_eq!(status(p("POST", "v1/secret/delete/x", r#"{"versions":[]}"#)), 400);
        assert_eq!(status(p("POST", "v1/secret/metadata/x", r#"{"max_versions":"many"}"#)), 400);
        assert_eq!(status(p("POST", "v1/other/data/x", r#"{"data":{}}"#)), 404);
        assert_eq!(status(p("PATCH", "v1/secret/data/x", r#"{"data":{}}"#)), 415);
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a":"b","c":{"d":"e","f":"g"}}).as_object().unwrap().clone();
        let patch = json!({"a":"z","c":{"f":null},"n":{"x":1}});
        merge_patch(&mut t, patch.as_object().unwrap());
        assert_eq!(Value::Object(t), json!({"a":"z","c":{"d":"e"},"n":{"x":1}}));
    }
}
