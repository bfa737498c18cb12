//! Audit devices on the leader: `bao audit enable` (`PUT sys/audit/<path>`) and `bao audit
//! disable` (`DELETE sys/audit/<path>`).
//!
//! A request is parsed here into a [`Command::AuditDevice`]; the committer turns it into a
//! `PutAuditDevice` or `DeleteAuditDevice` event with [`decide`], against the device table its
//! own materializer applied, with nothing else in flight (as mount changes are), so two enables
//! of one path cannot both pass the "already in use" check. Every node opens the device once it
//! applied the event (`secretlog_node::audit`): its file path is opened on every node's host.
//!
//! As in Vault, the leader opens a file device before it is enabled, so a path it cannot write is
//! refused at once rather than enabled and failing on every node.

use std::path::Path;

use secretlog_node::api::{ApiError, ApiRequest};
use secretlog_schemas::Operation;
use secretlog_schemas::audit::{self, AuditDeviceRecord, normalize_device_path};
use secretlog_state::audit_devices::AuditDevices;
use secretlog_state::materializer::now_ms;
use serde_json::{Map, Value};

use crate::mounts::{body, description};
use crate::request::Command;
use crate::request::fields::{field_error, go_bool, go_type};

/// The control object every audit-device event is keyed by: one order for all of them.
pub const CONTROL_NAME: &str = secretlog_schemas::event::AUDIT_CONTROL_NAME;

const PREFIX: &str = "v1/sys/audit/";

/// What an audit-device request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditChange {
    /// Enable this device: refused if the path is in use.
    Enable(AuditDeviceRecord),
    /// Disable: nothing to do if no device is there.
    Disable,
}

/// Parse a `sys/audit/<path>` write into its command.
pub fn parse(req: &ApiRequest) -> Result<Command, ApiError> {
    let raw = req.path.strip_prefix(PREFIX).unwrap_or_default();
    let path = normalize_device_path(raw).map_err(ApiError::bad_request)?;
    let change = match req.method.as_str() {
        "DELETE" => AuditChange::Disable,
        _ => AuditChange::Enable(parse_enable(&body(req)?)?),
    };
    Ok(Command::AuditDevice { path, change })
}

fn parse_enable(body: &Map<String, Value>) -> Result<AuditDeviceRecord, ApiError> {
    let kind = match body.get("type") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(ApiError::bad_request("the audit device type is required (file or kafka)"));
        }
        Some(v) => return Err(field_error("type", format!("expected type 'string', got '{}'", go_type(v)))),
    };
    if let Some(local) = body.get("local")
        && go_bool(local).map_err(|_| field_error("local", "expected a boolean".to_string()))?
    {
        return Err(ApiError::bad_request(
            "a local audit device is a node's own: give it with the node's --audit-file or --audit-kafka-topic",
        ));
    }
    let options = match body.get("options") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(v) => return Err(field_error("options", format!("expected a map, got '{}'", go_type(v)))),
    };
    let mut opts = std::collections::BTreeMap::new();
    for (k, v) in options {
        match v {
            Value::String(s) => opts.insert(k, s),
            v => {
                return Err(field_error(
                    "options",
                    format!("the value of {k:?} must be a string, not {}", go_type(&v)),
                ));
            }
        };
    }
    let allowed: &[&str] = match kind.as_str() {
        audit::FILE => &["file_path"],
        audit::KAFKA => &["topic"],
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown audit device type {other:?}: secretlog audits to a file (file) or a Kafka topic (kafka)"
            )));
        }
    };
    if let Some(k) = opts.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "option {k:?} is not supported by a {kind} audit device (supported: {})",
            allowed.join(", ")
        )));
    }
    let record = AuditDeviceRecord {
        kind,
        description: description(body)?.unwrap_or_default(),
        options: opts,
        created_ms: now_ms(),
    };
    check_device(&record)?;
    Ok(record)
}

/// Refuse a device no node could open: a file path that is not absolute or not writable here,
/// a topic name Kafka refuses.
fn check_device(record: &AuditDeviceRecord) -> Result<(), ApiError> {
    match record.kind.as_str() {
        audit::FILE => {
            let file_path = record.option("file_path");
            if file_path.is_empty() {
                return Err(ApiError::bad_request("file_path is required"));
            }
            if matches!(file_path, "stdout" | "discard") {
                return Err(ApiError::bad_request(format!("file_path {file_path:?} is not supported: give a file")));
            }
            let path = Path::new(file_path);
            if !path.is_absolute() {
                return Err(ApiError::bad_request("file_path must be an absolute path: every node opens it"));
            }
            open_for_append(path).map_err(|e| {
                ApiError::bad_request(format!("sanity check failed; unable to open {file_path:?} for writing: {e}"))
            })
        }
        _ => {
            let topic = record.option("topic");
            let valid = !topic.is_empty()
                && topic.len() <= 249
                && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(ApiError::bad_request(
                    "topic is required: a Kafka topic name of letters, digits, '.', '_' and '-'",
                ));
            }
            Ok(())
        }
    }
}

/// Open (creating with mode 0600, as the node will) `path` for appending, and close it again.
fn open_for_append(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map(drop)
}

/// The event `change` makes of the device at `path`, decided on `devices` (the table the leader
/// applied, with nothing in flight); `None`: nothing changes.
pub fn decide(devices: &AuditDevices, path: &str, change: &AuditChange) -> Result<Option<Operation>, ApiError> {
    match change {
        AuditChange::Enable(record) => {
            if devices.get(path).is_some() {
                // Vault's words, which `bao audit enable` prints.
                return Err(ApiError::bad_request("path already in use"));
            }
            Ok(Some(Operation::PutAuditDevice { path: path.to_string(), record: record.encode() }))
        }
        AuditChange::Disable => {
            Ok(devices.get(path).is_some().then(|| Operation::DeleteAuditDevice { path: path.to_string() }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(method: &str, path: &str, body: Value) -> ApiRequest {
        crate::request::test_request(method, path, &serde_json::to_vec(&body).unwrap())
    }

    fn change(method: &str, path: &str, body: Value) -> Result<(String, AuditChange), ApiError> {
        match parse(&req(method, path, body))? {
            Command::AuditDevice { path, change } => Ok((path, change)),
            other => panic!("{other:?}"),
        }
    }

    fn refused(method: &str, path: &str, body: Value) -> String {
        let e = change(method, path, body).expect_err("refused");
        assert_eq!(e.status, 400);
        e.errors.join("; ")
    }

    #[test]
    fn an_enable_is_parsed_as_the_cli_sends_it_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("trail.log");
        let file_path = file.to_str().unwrap();
        let body = json!({"type": "file", "description": "d", "local": false, "options": {"file_path": file_path}});
        let (path, AuditChange::Enable(r)) = change("PUT", "v1/sys/audit/trail/", body).unwrap() else { panic!() };
        assert_eq!((path.as_str(), r.kind.as_str(), r.description.as_str()), ("trail", "file", "d"));
        assert_eq!(r.option("file_path"), file_path);
        assert!(file.exists(), "the leader opened the file before enabling it");
        let kafka = json!({"type": "kafka", "options": {"topic": "secretlog.audit"}});
        assert!(matches!(change("POST", "v1/sys/audit/k", kafka).unwrap().1, AuditChange::Enable(_)));
        assert_eq!(
            change("DELETE", "v1/sys/audit/trail", Value::Null).unwrap(),
            ("trail".into(), AuditChange::Disable)
        );

        let missing = dir.path().join("no/such/dir/a.log");
        for (body, says) in [
            (json!({}), "type is required"),
            (json!({"type": "socket"}), "unknown audit device type"),
            (json!({"type": "file"}), "file_path is required"),
            (json!({"type": "file", "options": {"file_path": "rel.log"}}), "absolute"),
            (json!({"type": "file", "options": {"file_path": missing}}), "unable to open"),
            (json!({"type": "file", "options": {"file_path": file_path, "mode": "0644"}}), "not supported"),
            (json!({"type": "file", "options": {"file_path": 7}}), "must be a string"),
            (json!({"type": "file", "local": true, "options": {"file_path": file_path}}), "--audit-file"),
            (json!({"type": "kafka", "options": {"topic": "a topic"}}), "topic is required"),
        ] {
            let err = refused("PUT", "v1/sys/audit/x", body.clone());
            assert!(err.contains(says), "{body}: {err}");
        }
        assert!(refused("PUT", "v1/sys/audit/a/../b", json!({"type": "file"})).contains("invalid audit device path"));
        assert!(!missing.exists());
    }

    #[test]
    fn enabling_a_path_in_use_is_refused_and_disabling_nothing_changes_nothing() {
        let record = AuditDeviceRecord {
            kind: "file".into(),
            description: String::new(),
            options: [("file_path".to_string(), "/tmp/a.log".to_string())].into(),
            created_ms: 1,
        };
        let mut table = AuditDevices::default();
        let enable = AuditChange::Enable(record.clone());
        let op = decide(&table, "trail", &enable).unwrap().expect("an event");
        table.apply(&op).unwrap();
        let e = decide(&table, "trail", &enable).unwrap_err();
        assert!(e.errors.join("; ").contains("path already in use"), "{e:?}");
        assert!(decide(&table, "other", &AuditChange::Disable).unwrap().is_none());
        assert_eq!(
            decide(&table, "trail", &AuditChange::Disable).unwrap(),
            Some(Operation::DeleteAuditDevice { path: "trail".into() })
        );
    }
}
