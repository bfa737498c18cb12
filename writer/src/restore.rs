//! `POST /v1/sys/secretlog/restore`: put secrets back into a state taken from a snapshot or a
//! point-in-time rebuild (`secretlog restore`).
//!
//! Each secret becomes one [`Command::Restore`], queued like any other write: the committer
//! orders it with every other write to the same secret and appends a `RestoreSecret` (or a
//! `DeleteMetadata`, for a secret the restored state does not hold) in a Kafka transaction. So a
//! restore reaches every reader through the log, and nothing is answered before it committed.
//!
//! Everything is checked before anything is queued — the metadata parses and agrees with the
//! values, every path is valid, every sealed value opens with this cluster's key for exactly its
//! mount, path and version — so a bad request changes nothing, and the log never carries an event
//! that would halt a reader.

use std::collections::BTreeMap;

use base64::Engine;
use secretlog_reader::api::{ApiError, ApiRequest};
use secretlog_reader::state::SecretMeta;
use secretlog_schemas::Keyring;
use secretlog_schemas::path::validate_secret_path;
use secretlog_schemas::sealed::{SealContext, SealedValue};
use serde::{Deserialize, Serialize};

use crate::request::Command;

/// Path of the endpoint, without the leading slash.
pub const RESTORE_PATH: &str = "v1/sys/secretlog/restore";

/// Most secrets in one request.
pub const MAX_SECRETS_PER_REQUEST: usize = 1000;

/// The request body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub secrets: Vec<RestoredSecret>,
}

/// One secret's state to restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoredSecret {
    pub path: String,
    /// The secret's metadata as snapshots carry it; `null` removes the secret.
    pub metadata: Option<serde_json::Value>,
    /// Sealed value of each version that has one, base64.
    #[serde(default)]
    pub values: BTreeMap<u64, String>,
}

/// Parse and check a restore request into commands, or refuse all of it.
pub fn parse(req: &ApiRequest, mount: &str, keyring: &Keyring) -> Result<Vec<Command>, ApiError> {
    let body: RestoreRequest = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("malformed restore request: {e}")))?;
    if body.secrets.len() > MAX_SECRETS_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "too many secrets in one restore request: {} (at most {MAX_SECRETS_PER_REQUEST})",
            body.secrets.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    body.secrets.into_iter().map(|s| command(s, mount, keyring, &mut seen)).collect()
}

fn command(
    s: RestoredSecret,
    mount: &str,
    keyring: &Keyring,
    seen: &mut std::collections::HashSet<String>,
) -> Result<Command, ApiError> {
    let bad = |reason: String| ApiError::bad_request(format!("restore of {:?}: {reason}", s.path));
    validate_secret_path(&s.path).map_err(|e| bad(e.to_string()))?;
    if !seen.insert(s.path.clone()) {
        return Err(bad("listed twice".into()));
    }
    let Some(metadata) = &s.metadata else {
        if !s.values.is_empty() {
            return Err(bad("values given for a secret to remove".into()));
        }
        return Ok(Command::Restore { path: s.path, metadata: None, values: vec![] });
    };
    let meta: SecretMeta = serde_json::from_value(metadata.clone()).map_err(|e| bad(format!("metadata: {e}")))?;
    let mut values = Vec::with_capacity(s.values.len());
    for (v, b64) in &s.values {
        match meta.versions.get(v) {
            Some(vm) if !vm.destroyed => {}
            _ => return Err(bad(format!("a value for version {v}, which the metadata does not hold"))),
        }
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(format!("value of version {v} is not base64: {e}")))?;
        let ctx = SealContext { mount, path: &s.path, version: *v };
        // A restore point may predate a term's retirement: its values are checked (and the plan
        // re-seals them under the active term), never served as they are.
        SealedValue::decode(&sealed)
            .and_then(|sv| sv.open_to_reseal(keyring, &ctx).map(drop))
            .map_err(|_| bad(format!("the value of version {v} does not open with this cluster's key")))?;
        values.push((*v, sealed));
    }
    let canonical = serde_json::to_vec(&meta).map_err(|_| ApiError::internal())?;
    Ok(Command::Restore { path: s.path, metadata: Some(canonical), values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secretlog_reader::state::VersionMeta;
    use secretlog_schemas::RootKey;

    fn ring() -> Keyring {
        Keyring::from_root(&RootKey::from_bytes([3; 32]))
    }

    fn req(body: serde_json::Value) -> ApiRequest {
        ApiRequest {
            method: "POST".into(),
            path: RESTORE_PATH.into(),
            body: body.to_string().into(),
            ..Default::default()
        }
    }

    fn secret(path: &str, version: u64, sealed_for: &str) -> RestoredSecret {
        let mut meta = SecretMeta { current_version: version, ..Default::default() };
        meta.versions.insert(version, VersionMeta::default());
        let ctx = SealContext { mount: "secret", path: sealed_for, version };
        let sealed = SealedValue::seal(&ring(), &ctx, b"{\"a\":1}").unwrap().encode();
        RestoredSecret {
            path: path.into(),
            metadata: Some(serde_json::to_value(&meta).unwrap()),
            values: BTreeMap::from([(version, base64::engine::general_purpose::STANDARD.encode(sealed))]),
        }
    }

    #[test]
    fn a_valid_request_becomes_one_command_per_secret() {
        let body = RestoreRequest {
            secrets: vec![
                secret("a/b", 2, "a/b"),
                RestoredSecret { path: "gone".into(), metadata: None, values: BTreeMap::new() },
            ],
        };
        let cmds = parse(&req(serde_json::to_value(body).unwrap()), "secret", &ring()).unwrap();
        assert_eq!(cmds.len(), 2);
        assert!(
            matches!(&cmds[0], Command::Restore { path, metadata: Some(_), values } if path == "a/b" && values.len() == 1)
        );
        assert_eq!(cmds[1], Command::Restore { path: "gone".into(), metadata: None, values: vec![] });
    }

    #[test]
    fn a_value_sealed_for_another_path_or_key_is_refused() {
        let body = RestoreRequest { secrets: vec![secret("a/b", 1, "other")] };
        let err = parse(&req(serde_json::to_value(body).unwrap()), "secret", &ring()).unwrap_err();
        assert_eq!(err.status, 400);
        let body = RestoreRequest { secrets: vec![secret("a/b", 1, "a/b")] };
        let other = Keyring::from_root(&RootKey::from_bytes([4; 32]));
        assert!(parse(&req(serde_json::to_value(body).unwrap()), "secret", &other).is_err());
    }

    #[test]
    fn inconsistent_or_malformed_requests_are_refused_whole() {
        let mut s = secret("a", 1, "a");
        s.values.insert(7, s.values[&1].clone());
        let body = RestoreRequest { secrets: vec![secret("ok", 1, "ok"), s] };
        assert!(parse(&req(serde_json::to_value(body).unwrap()), "secret", &ring()).is_err());
        let twice = RestoreRequest { secrets: vec![secret("x", 1, "x"), secret("x", 1, "x")] };
        assert!(parse(&req(serde_json::to_value(twice).unwrap()), "secret", &ring()).is_err());
        assert!(parse(&req(serde_json::json!({"secrets": "no"})), "secret", &ring()).is_err());
        let bad_path = RestoredSecret { path: "../x".into(), metadata: None, values: BTreeMap::new() };
        let body = RestoreRequest { secrets: vec![bad_path] };
        assert!(parse(&req(serde_json::to_value(body).unwrap()), "secret", &ring()).is_err());
    }
}
