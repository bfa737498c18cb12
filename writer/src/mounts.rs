//! Mounts on the leader: `secrets enable` (`POST sys/mounts/<path>`), `secrets tune`
//! (`POST sys/mounts/<path>/tune`), `secrets disable` (`DELETE sys/mounts/<path>`) and a KV
//! mount's settings (`POST <mount>/config`).
//!
//! A request is parsed here into a [`Command::Mount`] that says what the caller asked
//! ([`MountChange`]); the committer turns it into a `PutMount` or `DeleteMount` event with
//! [`decide`], against the mount table its own materializer applied. Mount changes are control
//! events, decided only when nothing is in flight, so two `secrets enable` of one path cannot
//! both pass the "already in use" check, and a tune of a mount disabled meanwhile does not bring
//! it back.
//!
//! Only KV version 2 is served: an enable of anything else is refused, saying so.

use rand::RngCore;
use secretlog_node::api::{ApiError, ApiRequest};
use secretlog_schemas::Operation;
use secretlog_schemas::event::MOUNTS_CONTROL_NAME;
use secretlog_schemas::mount::{MountRecord, normalize_mount_path, overlaps};
use secretlog_state::materializer::now_ms;
use secretlog_state::mounts::{DefaultMount, Mounts};
use serde_json::{Map, Value};

use crate::request::Command;
use crate::request::fields::{field_error, go_bool, go_duration_secs, go_int, go_type};

/// What a mount request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum MountChange {
    /// Mount this new record (fresh storage id): refused if the path overlaps a live mount.
    Enable(MountRecord),
    /// `secrets tune`: fields given change, the rest stay.
    Tune(Tune),
    /// `<mount>/config`: fields given change, the rest stay.
    Config(KvConfigUpdate),
    /// `secrets disable`: nothing to do if nothing is mounted there.
    Disable,
    /// A restore: mount exactly this record (its storage id, accessor and uuid) at the path,
    /// replacing what is there; refused if the path overlaps another live mount.
    Put(MountRecord),
}

/// The fields of a `secrets tune`; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tune {
    pub description: Option<String>,
    pub default_lease_ttl_secs: Option<u64>,
    pub max_lease_ttl_secs: Option<u64>,
}

/// The fields of a `<mount>/config` write; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvConfigUpdate {
    pub max_versions: Option<u32>,
    pub cas_required: Option<bool>,
    pub delete_version_after_secs: Option<u64>,
}

/// Parse a `sys/mounts/...` write into its command.
pub fn parse(req: &ApiRequest) -> Result<Command, ApiError> {
    let rest = req.path.strip_prefix("v1/sys/mounts/").unwrap_or_default();
    let method = req.method.as_str();
    let (raw, tune) = match rest.trim_end_matches('/').strip_suffix("/tune") {
        Some(p) => (p, true),
        None => (rest, false),
    };
    let path = normalize_mount_path(raw).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let change = match (method, tune) {
        ("DELETE", false) => MountChange::Disable,
        ("DELETE", true) => return Err(ApiError::method_not_allowed()),
        (_, true) => MountChange::Tune(parse_tune(&body(req)?)?),
        (_, false) => MountChange::Enable(parse_enable(&body(req)?)?),
    };
    Ok(Command::Mount { path, change })
}

/// The JSON object of a request (an empty body is no fields).
pub(crate) fn body(req: &ApiRequest) -> Result<Map<String, Value>, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(v) => Err(ApiError::bad_request(format!(
            "failed to decode JSON input: the body must be a JSON object, not {}",
            go_type(&v)
        ))),
        Err(e) => Err(ApiError::bad_request(format!("failed to decode JSON input: {e}"))),
    }
}

/// The KV version asked for in `options.version` (absent: 1, as Vault's `kv`).
fn options_version(body: &Map<String, Value>) -> Result<Option<i64>, ApiError> {
    match body.get("options") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => match o.get("version") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => go_int(v).map(Some).map_err(|e| field_error("options.version", e)),
        },
        Some(v) => Err(field_error(
            "options",
            format!("expected type 'map[string]string', got unconvertible type '{}'", go_type(v)),
        )),
    }
}

/// A lease TTL of `secrets enable` or `tune`: `""` (and absent) leaves it, `"system"` is the
/// system default (0), anything else a duration.
fn ttl(field: &str, v: Option<&Value>) -> Result<Option<u64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "system" => Ok(Some(0)),
        Some(v) => go_duration_secs(field, v).map(Some),
    }
}

fn only_kv2(kind: &str) -> ApiError {
    ApiError::bad_request(format!(
        "secretlog serves KV version 2 only: enable type \"kv\" with options version \"2\", or type \"kv-v2\" \
         (asked for type {kind:?})"
    ))
}

pub(crate) fn description(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match body.get("description") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => {
            Err(field_error("description", format!("expected type 'string', got unconvertible type '{}'", go_type(v))))
        }
    }
}

/// `POST sys/mounts/<path>`: a new KV v2 mount with a fresh storage id.
fn parse_enable(body: &Map<String, Value>) -> Result<MountRecord, ApiError> {
    let kind = match body.get("type") {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => return Err(ApiError::bad_request("missing mount type")),
        Some(v) => return Err(field_error("type", format!("expected type 'string', got '{}'", go_type(v)))),
    };
    let version = options_version(body)?;
    match (kind, version) {
        ("kv", Some(2)) | ("kv-v2", None | Some(2)) => {}
        ("kv", _) => return Err(only_kv2("kv, version 1")),
        ("kv-v2", Some(_)) => return Err(only_kv2("kv-v2 with another version")),
        (other, _) => return Err(only_kv2(other)),
    }
    let config = match body.get("config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(c)) => c.clone(),
        Some(v) => return Err(field_error("config", format!("expected a map, got '{}'", go_type(v)))),
    };
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let mut record = MountRecord::new_kv(id, description(body)?.unwrap_or_default(), now_ms());
    record.default_lease_ttl_secs = ttl("default_lease_ttl", config.get("default_lease_ttl"))?.unwrap_or(0);
    record.max_lease_ttl_secs = ttl("max_lease_ttl", config.get("max_lease_ttl"))?.unwrap_or(0);
    Ok(record)
}

/// `POST sys/mounts/<path>/tune`.
fn parse_tune(body: &Map<String, Value>) -> Result<Tune, ApiError> {
    if let Some(v) = options_version(body)?
        && v != 2
    {
        return Err(ApiError::bad_request("secretlog serves KV version 2 only: its version cannot be changed"));
    }
    Ok(Tune {
        description: description(body)?,
        default_lease_ttl_secs: ttl("default_lease_ttl", body.get("default_lease_ttl"))?,
        max_lease_ttl_secs: ttl("max_lease_ttl", body.get("max_lease_ttl"))?,
    })
}

/// `POST <mount>/config`, decoded as Vault decodes it (the CLI sends every value as a string).
pub fn parse_config(body: &Map<String, Value>) -> Result<KvConfigUpdate, ApiError> {
    let mut u = KvConfigUpdate::default();
    if let Some(v) = body.get("max_versions") {
        let n = go_int(v).map_err(|e| field_error("max_versions", e))?;
        u.max_versions = Some(
            u32::try_from(n)
                .map_err(|_| ApiError::bad_request(format!("max_versions must be between 0 and {}", u32::MAX)))?,
        );
    }
    if let Some(v) = body.get("cas_required") {
        u.cas_required = Some(go_bool(v).map_err(|e| field_error("cas_required", e))?);
    }
    if let Some(v) = body.get("delete_version_after").filter(|v| !v.is_null()) {
        u.delete_version_after_secs = Some(go_duration_secs("delete_version_after", v)?);
    }
    Ok(u)
}

/// Parse a `<mount>/config` write of the mount at `path`.
pub fn parse_config_write(req: &ApiRequest, path: &str) -> Result<Command, ApiError> {
    Ok(Command::Mount { path: path.to_string(), change: MountChange::Config(parse_config(&body(req)?)?) })
}

/// The event a mount change turns into on the table `mounts` (with the node's `default`
/// mount), or `None` when it changes nothing (answered 204 all the same).
pub fn decide(
    mounts: &Mounts,
    default: &DefaultMount,
    path: &str,
    change: &MountChange,
) -> Result<Option<Operation>, ApiError> {
    let put = |record: &MountRecord| Operation::PutMount { path: path.to_string(), record: record.encode() };
    match change {
        MountChange::Enable(record) => {
            if let Some(taken) = mounts.live(default).keys().find(|p| overlaps(p, path)) {
                return Err(ApiError::bad_request(format!("path is already in use at {taken}/")));
            }
            Ok(Some(put(record)))
        }
        MountChange::Tune(t) => {
            let Some(current) = mounts.get(default, path) else {
                return Err(ApiError::bad_request(format!("cannot tune \"{path}/\": nothing is mounted there")));
            };
            let mut next = current.clone();
            if let Some(d) = &t.description {
                next.description = d.clone();
            }
            if let Some(s) = t.default_lease_ttl_secs {
                next.default_lease_ttl_secs = s;
            }
            if let Some(s) = t.max_lease_ttl_secs {
                next.max_lease_ttl_secs = s;
            }
            if next.max_lease_ttl_secs > 0 && next.default_lease_ttl_secs > next.max_lease_ttl_secs {
                return Err(ApiError::bad_request("given default lease TTL greater than given max lease TTL"));
            }
            Ok((next != *current).then(|| put(&next)))
        }
        MountChange::Config(c) => {
            let Some(current) = mounts.get(default, path) else {
                return Err(ApiError::no_route(&format!("{path}/config")));
            };
            let mut next = current.clone();
            if let Some(n) = c.max_versions {
                next.kv.max_versions = n;
            }
            if let Some(b) = c.cas_required {
                next.kv.cas_required = b;
            }
            if let Some(s) = c.delete_version_after_secs {
                next.kv.delete_version_after_secs = s;
            }
            Ok((next != *current).then(|| put(&next)))
        }
        MountChange::Put(record) => {
            if let Some(taken) = mounts.live(default).keys().find(|p| **p != path && overlaps(p, path)) {
                return Err(ApiError::bad_request(format!(
                    "cannot mount {path}/ again: the path overlaps the mount at {taken}/"
                )));
            }
            Ok((mounts.get(default, path) != Some(record)).then(|| put(record)))
        }
        MountChange::Disable => {
            Ok(mounts.get(default, path).is_some().then(|| Operation::DeleteMount { path: path.to_string() }))
        }
    }
}

/// The control object every mount event is keyed by: one order for all mount changes.
pub const CONTROL_NAME: &str = MOUNTS_CONTROL_NAME;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(method: &str, path: &str, body: Value) -> ApiRequest {
        crate::request::test_request(method, path, &serde_json::to_vec(&body).unwrap())
    }

    fn change(method: &str, path: &str, body: Value) -> Result<(String, MountChange), ApiError> {
        match parse(&req(method, path, body))? {
            Command::Mount { path, change } => Ok((path, change)),
            other => panic!("{other:?}"),
        }
    }

    fn err(r: Result<(String, MountChange), ApiError>) -> String {
        r.unwrap_err().errors.join("|")
    }

    #[test]
    fn enable_takes_kv_version_2_as_the_cli_sends_it_and_refuses_the_rest() {
        let cli = json!({"type":"kv","description":"teamkv","config":{"options":null,"default_lease_ttl":"0s",
            "max_lease_ttl":"0s","force_no_cache":false},"local":false,"seal_wrap":false,
            "external_entropy_access":false,"options":{"version":"2"}});
        let (path, c) = change("POST", "v1/sys/mounts/team", cli).unwrap();
        assert_eq!(path, "team");
        let MountChange::Enable(r) = c else { panic!("{c:?}") };
        assert_eq!((r.kind.as_str(), r.version, r.description.as_str()), ("kv", 2, "teamkv"));
        assert!(r.storage.starts_with("kv-") && r.storage.len() == 35, "{}", r.storage);
        let (_, c) = change("PUT", "v1/sys/mounts/a/b/", json!({"type":"kv-v2"})).unwrap();
        let MountChange::Enable(other) = c else { panic!() };
        assert_ne!(other.storage, r.storage, "every enable gets a fresh storage id");
        let (_, c) = change(
            "POST",
            "v1/sys/mounts/x",
            json!({"type":"kv","options":{"version":2},"config":{"max_lease_ttl":"1h"}}),
        )
        .unwrap();
        let MountChange::Enable(r) = c else { panic!() };
        assert_eq!(r.max_lease_ttl_secs, 3600);
        for body in [json!({"type":"kv"}), json!({"type":"kv","options":{"version":"1"}}), json!({"type":"pki"})] {
            let why = err(change("POST", "v1/sys/mounts/x", body.clone()));
            assert!(why.contains("KV version 2 only"), "{body}: {why}");
        }
        assert!(err(change("POST", "v1/sys/mounts/x", json!({}))).contains("missing mount type"));
        for reserved in ["sys", "auth/x", "cubbyhole", "identity"] {
            let why = err(change("POST", &format!("v1/sys/mounts/{reserved}"), json!({"type":"kv-v2"})));
            assert!(why.contains("reserved"), "{reserved}: {why}");
        }
    }

    #[test]
    fn tune_changes_only_the_fields_given_and_empty_means_unchanged() {
        let cli = json!({"options":null,"default_lease_ttl":"1h0m0s","description":"tuned","max_lease_ttl":"",
            "force_no_cache":false});
        let (path, c) = change("POST", "v1/sys/mounts/team/tune", cli).unwrap();
        assert_eq!(path, "team");
        assert_eq!(
            c,
            MountChange::Tune(Tune {
                description: Some("tuned".into()),
                default_lease_ttl_secs: Some(3600),
                max_lease_ttl_secs: None
            })
        );
        let (_, c) = change("POST", "v1/sys/mounts/team/tune/", json!({"max_lease_ttl":"system"})).unwrap();
        assert_eq!(c, MountChange::Tune(Tune { max_lease_ttl_secs: Some(0), ..Default::default() }));
        assert!(
            err(change("POST", "v1/sys/mounts/team/tune", json!({"options":{"version":"1"}}))).contains("version 2")
        );
        assert_eq!(
            change("DELETE", "v1/sys/mounts/team/", json!(null)).unwrap(),
            ("team".into(), MountChange::Disable)
        );
    }

    #[test]
    fn config_decodes_the_strings_the_cli_sends() {
        let u = parse_config(
            json!({"max_versions":"3","cas_required":"false","delete_version_after":"1h"}).as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(
            u,
            KvConfigUpdate { max_versions: Some(3), cas_required: Some(false), delete_version_after_secs: Some(3600) }
        );
        assert_eq!(parse_config(&Map::new()).unwrap(), KvConfigUpdate::default(), "absent fields stay");
        let u = parse_config(json!({"cas_required":true,"max_versions":2}).as_object().unwrap()).unwrap();
        assert_eq!((u.max_versions, u.cas_required), (Some(2), Some(true)));
        for bad in [json!({"max_versions":"x"}), json!({"max_versions":-1}), json!({"cas_required":"maybe"})] {
            assert_eq!(parse_config(bad.as_object().unwrap()).unwrap_err().status, 400, "{bad}");
        }
    }

    fn table(paths: &[(&str, u8)]) -> Mounts {
        let mut m = Mounts::default();
        for (p, id) in paths {
            let record = MountRecord::new_kv([*id; 16], String::new(), 1).encode();
            m.apply(&Operation::PutMount { path: (*p).into(), record }).unwrap();
        }
        m
    }

    #[test]
    fn enabling_refuses_a_path_in_use_or_overlapping_one() {
        let d = DefaultMount::new("secret");
        let m = table(&[("team", 1)]);
        let enable = MountChange::Enable(MountRecord::new_kv([7; 16], String::new(), 1));
        for taken in ["team", "team/sub", "secret"] {
            let e = decide(&m, &d, taken, &enable).unwrap_err();
            assert_eq!(e.status, 400);
            let at = if taken == "secret" { "secret/" } else { "team/" };
            assert_eq!(e.errors, vec![format!("path is already in use at {at}")], "{taken}");
        }
        assert!(matches!(decide(&m, &d, "teams", &enable).unwrap(), Some(Operation::PutMount { .. })));
        // Disabled, the path is free again.
        let mut m2 = m.clone();
        m2.apply(&decide(&m, &d, "team", &MountChange::Disable).unwrap().unwrap()).unwrap();
        assert!(decide(&m2, &d, "team/sub", &enable).is_ok());
    }

    #[test]
    fn tune_and_config_keep_the_storage_id_and_change_only_what_is_given() {
        let d = DefaultMount::new("secret");
        let m = table(&[("team", 1)]);
        let tune = MountChange::Tune(Tune { description: Some("t".into()), ..Default::default() });
        let Some(Operation::PutMount { record, .. }) = decide(&m, &d, "team", &tune).unwrap() else { panic!() };
        let r = MountRecord::decode(&record).unwrap();
        assert_eq!((r.description.as_str(), r.storage.as_str()), ("t", format!("kv-{}", "01".repeat(16)).as_str()));
        let config = MountChange::Config(KvConfigUpdate {
            max_versions: Some(2),
            cas_required: Some(true),
            ..Default::default()
        });
        let Some(Operation::PutMount { path, record }) = decide(&m, &d, "secret", &config).unwrap() else { panic!() };
        let r = MountRecord::decode(&record).unwrap();
        assert_eq!(
            (path.as_str(), r.storage.as_str(), r.kv.max_versions, r.kv.cas_required),
            ("secret", "secret", 2, true)
        );
        assert_eq!(decide(&m, &d, "team", &MountChange::Config(KvConfigUpdate::default())).unwrap(), None);
        assert_eq!(decide(&m, &d, "nope", &config).unwrap_err().status, 404);
        assert_eq!(decide(&m, &d, "nope", &tune).unwrap_err().status, 400);
        assert_eq!(decide(&m, &d, "nope", &MountChange::Disable).unwrap(), None, "disabling nothing is a 204");
        let bad = MountChange::Tune(Tune {
            default_lease_ttl_secs: Some(7200),
            max_lease_ttl_secs: Some(3600),
            ..Default::default()
        });
        assert_eq!(decide(&m, &d, "team", &bad).unwrap_err().status, 400);
    }
}
