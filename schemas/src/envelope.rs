//! The authenticated binary envelope of an event, as stored in Kafka and in the archive.
//!
//! ```text
//! header: magic "SL" | schema_version u8 | mac_term u32 | key_check [8] | body_len u32
//! body:   event_id [16] | timestamp_ms i64 | writer_epoch u64 | [revision u64, version 2 only]
//!         | mount str16 | path str16 | op_tag u8 | op payload
//! tag:    HMAC-SHA256(event-mac key of mac_term, header ‖ body)   [32]
//! ```
//! Integers are big-endian; `str16` is a u16 length and UTF-8 bytes. Op payloads:
//! `Put` = version u64, sealed bytes32; `Delete/Undelete/DestroyVersions` = count u16, u64 each;
//! `UpdateMetadata` = presence flags u8 (bit0 max_versions u32, bit1 cas_required u8,
//! bit2 delete_version_after u64 seconds, bit3 custom_metadata count u16 + (str16, str16)...);
//! `DeleteMetadata` = nothing; `RestoreSecret` = metadata bytes32, count u16, (version u64,
//! sealed bytes32)...; `RewrapValues` = count u16, (version u64, replaces [32], sealed bytes32)...;
//! `SetRootToken` = hash [32]; `LeaderEpoch` = leader URL str16; `AddKeyTerm` and
//! `RetireKeyTerm` = term u32; `PutWithDefaults` = version u64, sealed bytes32, max_versions u32,
//! delete_version_after u64 seconds; `PutMount` = path str16, record bytes32; `DeleteMount` =
//! path str16; `PutAuthObject` = mount str16, kind u8, name str16, flags u8 (bit0: replaces
//! [32] follows), record bytes32; `DeleteAuthObject` = the same without the record;
//! `TidyToken` = hash [32]; `PutAuditDevice` = path str16, record bytes32; `DeleteAuditDevice` =
//! path str16.
//!
//! `mac_term` is the key term whose event-authentication key made the tag: the active term of
//! the writer when it appended the record. Every term derives from the root key, so a record
//! verifies under its term for as long as the root key is the cluster's — whatever was retired
//! since (see [`crate::Keyring`]).
//!
//! The tag is checked before the body is parsed: nothing of a forged record is interpreted.
//! A version this build does not know is reported as such, so a reader halts instead of guessing.
//!
//! Schema version 2 is version 1 with the event's `revision` (the per-key revision it was decided
//! against: DESIGN.md, "Write path", rule 3). An event without one is written as version 1, byte
//! for byte as before, so every golden vector of version 1 still holds.

use std::collections::BTreeMap;

use subtle::ConstantTimeEq;

use crate::error::DecodeError;
use crate::event::*;
use crate::keyring::Keyring;
use crate::wire::{In, Out};

/// Magic bytes at the start of every record.
pub const MAGIC: [u8; 2] = *b"SL";
/// The newest schema version this build writes and reads (it reads every older one too).
pub const SCHEMA_VERSION: u8 = 2;
/// Largest record this build accepts.
pub const MAX_RECORD_LEN: usize = MAX_SEALED_LEN + 256 * 1024;
const HEADER_LEN: usize = 2 + 1 + 4 + 8 + 4;
const TAG_LEN: usize = 32;

/// Encode and authenticate an event under the keyring's active term.
pub fn encode_event(keyring: &Keyring, event: &Event) -> Vec<u8> {
    let mut body = Vec::with_capacity(128);
    encode_body(event, &mut Out(&mut body));
    let term = keyring.active_term();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
    let mut o = Out(&mut out);
    o.raw(&MAGIC);
    o.u8(if event.revision.is_some() { 2 } else { 1 });
    o.u32(term);
    o.raw(&keyring.key_check());
    o.u32(body.len() as u32);
    o.raw(&body);
    let tag = keyring.mac(term, &[&out]).expect("the active term is in the keyring");
    out.extend_from_slice(&tag);
    out
}

/// Verify and decode a record. When `record_key` is given (a Kafka record's key), it must be the
/// event's own key, so a valid event cannot be replayed under another secret's key.
pub fn decode_event(keyring: &Keyring, record_key: Option<&[u8]>, bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() > MAX_RECORD_LEN {
        return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_RECORD_LEN });
    }
    let mut r = In::new(bytes);
    let magic: [u8; 2] = r.array()?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let version = r.u8()?;
    if !(1..=SCHEMA_VERSION).contains(&version) {
        return Err(DecodeError::UnknownVersion { found: version, supported: SCHEMA_VERSION });
    }
    let term = r.u32()?;
    let key_check: [u8; 8] = r.array()?;
    let body_len = r.u32()? as usize;
    let body = r.take(body_len)?;
    let tag: [u8; TAG_LEN] = r.array()?;
    r.finish()?;
    if key_check != keyring.key_check() {
        return Err(DecodeError::WrongKey { found: hex::encode(key_check), ours: hex::encode(keyring.key_check()) });
    }
    let expected = keyring.mac(term, &[&bytes[..HEADER_LEN + body_len]]).ok_or(DecodeError::UnknownKeyTerm { term })?;
    if !bool::from(expected.ct_eq(&tag)) {
        return Err(DecodeError::BadMac);
    }
    let event = decode_body(body, version)?;
    if let Some(k) = record_key {
        let expected = event.record_key();
        if k != expected.as_slice() {
            return Err(DecodeError::KeyMismatch {
                expected: String::from_utf8_lossy(&expected).into_owned(),
                found: String::from_utf8_lossy(k).into_owned(),
            });
        }
    }
    Ok(event)
}

fn encode_versions(o: &mut Out<'_>, versions: &[u64]) {
    o.u16(versions.len() as u16);
    for v in versions {
        o.u64(*v);
    }
}

fn encode_body(e: &Event, o: &mut Out<'_>) {
    o.raw(&e.event_id);
    o.i64(e.timestamp_ms);
    o.u64(e.writer_epoch);
    if let Some(rev) = e.revision {
        o.u64(rev);
    }
    o.str16(&e.mount);
    o.str16(&e.path);
    o.u8(e.op.tag());
    match &e.op {
        Operation::Put { version, sealed } => {
            o.u64(*version);
            o.bytes32(sealed);
        }
        Operation::PutWithDefaults { version, sealed, max_versions, delete_version_after_secs } => {
            o.u64(*version);
            o.bytes32(sealed);
            o.u32(*max_versions);
            o.u64(*delete_version_after_secs);
        }
        Operation::DeleteVersions { versions }
        | Operation::UndeleteVersions { versions }
        | Operation::DestroyVersions { versions } => encode_versions(o, versions),
        Operation::UpdateMetadata(m) => {
            let flags = u8::from(m.max_versions.is_some())
                | u8::from(m.cas_required.is_some()) << 1
                | u8::from(m.delete_version_after_secs.is_some()) << 2
                | u8::from(m.custom_metadata.is_some()) << 3;
            o.u8(flags);
            if let Some(v) = m.max_versions {
                o.u32(v);
            }
            if let Some(v) = m.cas_required {
                o.u8(u8::from(v));
            }
            if let Some(v) = m.delete_version_after_secs {
                o.u64(v);
            }
            if let Some(cm) = &m.custom_metadata {
                o.u16(cm.len() as u16);
                for (k, v) in cm {
                    o.str16(k);
                    o.str16(v);
                }
            }
        }
        Operation::DeleteMetadata => {}
        Operation::RestoreSecret { metadata, values } => {
            o.bytes32(metadata);
            o.u16(values.len() as u16);
            for (v, sealed) in values {
                o.u64(*v);
                o.bytes32(sealed);
            }
        }
        Operation::RewrapValues { values } => {
            o.u16(values.len() as u16);
            for r in values {
                o.u64(r.version);
                o.raw(&r.replaces);
                o.bytes32(&r.sealed);
            }
        }
        Operation::AddKeyTerm { term } | Operation::RetireKeyTerm { term } => o.u32(*term),
        Operation::SetRootToken { token_hash } => o.raw(token_hash),
        Operation::LeaderEpoch { leader_url } => o.str16(leader_url),
        Operation::PutPolicy { name, policy } => {
            o.str16(name);
            o.bytes32(policy.as_bytes());
        }
        Operation::DeletePolicy { name } => o.str16(name),
        Operation::PutToken { token_hash, record } => {
            o.raw(token_hash);
            o.bytes32(record);
        }
        Operation::RevokeToken { token_hash } | Operation::TidyToken { token_hash } => o.raw(token_hash),
        Operation::PutMount { path, record } => {
            o.str16(path);
            o.bytes32(record);
        }
        Operation::DeleteMount { path } | Operation::DeleteAuditDevice { path } => o.str16(path),
        Operation::PutAuditDevice { path, record } => {
            o.str16(path);
            o.bytes32(record);
        }
        Operation::PutAuthObject { mount, kind, name, record, replaces } => {
            encode_auth_object(o, mount, *kind, name, replaces.as_ref());
            o.bytes32(record);
        }
        Operation::DeleteAuthObject { mount, kind, name, replaces } => {
            encode_auth_object(o, mount, *kind, name, replaces.as_ref())
        }
    }
}

fn encode_auth_object(o: &mut Out<'_>, mount: &str, kind: AuthObjectKind, name: &str, replaces: Option<&[u8; 32]>) {
    o.str16(mount);
    o.u8(kind.tag());
    o.str16(name);
    o.u8(u8::from(replaces.is_some()));
    if let Some(r) = replaces {
        o.raw(r);
    }
}

/// The fields common to `PutAuthObject` and `DeleteAuthObject`.
type AuthObjectHead = (String, AuthObjectKind, String, Option<[u8; 32]>);

fn decode_auth_object(r: &mut In<'_>) -> Result<AuthObjectHead, DecodeError> {
    let mount = r.str16("auth mount", crate::auth::MAX_AUTH_MOUNT_LEN)?.to_owned();
    let kind = AuthObjectKind::from_tag(r.u8()?)
        .ok_or(DecodeError::InvalidField { field: "auth object kind", reason: "unknown kind" })?;
    let name = r.str16("auth object name", MAX_PATH_LEN)?.to_owned();
    let replaces = match r.u8()? {
        0 => None,
        1 => Some(r.array()?),
        _ => return Err(DecodeError::InvalidField { field: "auth object flags", reason: "unknown flag bits" }),
    };
    Ok((mount, kind, name, replaces))
}

fn decode_versions(r: &mut In<'_>) -> Result<Vec<u64>, DecodeError> {
    let n = version_count(r, "versions")?;
    (0..n).map(|_| r.u64()).collect()
}

/// A u16 count of per-version entries, at most [`MAX_VERSIONS_PER_EVENT`].
fn version_count(r: &mut In<'_>, field: &'static str) -> Result<usize, DecodeError> {
    let n = r.u16()? as usize;
    if n > MAX_VERSIONS_PER_EVENT {
        return Err(DecodeError::InvalidField { field, reason: "too many" });
    }
    Ok(n)
}

/// Parse an event body of schema `version` (already authenticated by the caller).
pub(crate) fn decode_body(body: &[u8], version: u8) -> Result<Event, DecodeError> {
    let mut r = In::new(body);
    let event_id = r.array()?;
    let timestamp_ms = r.i64()?;
    let writer_epoch = r.u64()?;
    let revision = if version >= 2 { Some(r.u64()?) } else { None };
    let mount = r.str16("mount", MAX_PATH_LEN)?.to_owned();
    let path = r.str16("path", MAX_PATH_LEN)?.to_owned();
    let tag = r.u8()?;
    let op = match tag {
        0x01 => {
            let version = r.u64()?;
            let sealed = r.bytes32("sealed", MAX_SEALED_LEN)?.to_vec();
            Operation::Put { version, sealed }
        }
        0x09 => {
            let version = r.u64()?;
            let sealed = r.bytes32("sealed", MAX_SEALED_LEN)?.to_vec();
            Operation::PutWithDefaults { version, sealed, max_versions: r.u32()?, delete_version_after_secs: r.u64()? }
        }
        0x02 => Operation::DeleteVersions { versions: decode_versions(&mut r)? },
        0x03 => Operation::UndeleteVersions { versions: decode_versions(&mut r)? },
        0x04 => Operation::DestroyVersions { versions: decode_versions(&mut r)? },
        0x05 => {
            let flags = r.u8()?;
            if flags & !0x0f != 0 {
                return Err(DecodeError::InvalidField { field: "metadata flags", reason: "unknown flag bits" });
            }
            let mut m = MetadataUpdate::default();
            if flags & 1 != 0 {
                m.max_versions = Some(r.u32()?);
            }
            if flags & 2 != 0 {
                m.cas_required = Some(match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::InvalidField { field: "cas_required", reason: "not a boolean" }),
                });
            }
            if flags & 4 != 0 {
                m.delete_version_after_secs = Some(r.u64()?);
            }
            if flags & 8 != 0 {
                let n = r.u16()? as usize;
                if n > MAX_CUSTOM_METADATA {
                    return Err(DecodeError::InvalidField { field: "custom_metadata", reason: "too many entries" });
                }
                let mut cm = BTreeMap::new();
                for _ in 0..n {
                    let k = r.str16("custom_metadata key", MAX_CUSTOM_METADATA_LEN)?.to_owned();
                    let v = r.str16("custom_metadata value", MAX_CUSTOM_METADATA_LEN)?.to_owned();
                    cm.insert(k, v);
                }
                m.custom_metadata = Some(cm);
            }
            Operation::UpdateMetadata(m)
        }
        0x06 => Operation::DeleteMetadata,
        0x07 => {
            let metadata = r.bytes32("metadata", MAX_RESTORE_METADATA_LEN)?.to_vec();
            let n = version_count(&mut r, "values")?;
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                let v = r.u64()?;
                values.push((v, r.bytes32("sealed", MAX_SEALED_LEN)?.to_vec()));
            }
            Operation::RestoreSecret { metadata, values }
        }
        0x08 => {
            let n = version_count(&mut r, "values")?;
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                let version = r.u64()?;
                let replaces = r.array()?;
                values.push(Rewrapped { version, replaces, sealed: r.bytes32("sealed", MAX_SEALED_LEN)?.to_vec() });
            }
            Operation::RewrapValues { values }
        }
        0x40 => Operation::SetRootToken { token_hash: r.array()? },
        0x41 => Operation::LeaderEpoch { leader_url: r.str16("leader_url", MAX_PATH_LEN)?.to_owned() },
        0x42 => {
            let name = r.str16("policy name", MAX_PATH_LEN)?.to_owned();
            let policy = std::str::from_utf8(r.bytes32("policy", MAX_CONTROL_DOC_LEN)?)
                .map_err(|_| DecodeError::InvalidField { field: "policy", reason: "not UTF-8" })?
                .to_owned();
            Operation::PutPolicy { name, policy }
        }
        0x43 => Operation::DeletePolicy { name: r.str16("policy name", MAX_PATH_LEN)?.to_owned() },
        0x44 => {
            let token_hash = r.array()?;
            Operation::PutToken { token_hash, record: r.bytes32("token record", MAX_CONTROL_DOC_LEN)?.to_vec() }
        }
        0x45 => Operation::RevokeToken { token_hash: r.array()? },
        0x46 => Operation::AddKeyTerm { term: r.u32()? },
        0x47 => Operation::RetireKeyTerm { term: r.u32()? },
        0x48 => {
            let path = r.str16("mount path", MAX_PATH_LEN)?.to_owned();
            Operation::PutMount { path, record: r.bytes32("mount record", MAX_CONTROL_DOC_LEN)?.to_vec() }
        }
        0x49 => Operation::DeleteMount { path: r.str16("mount path", MAX_PATH_LEN)?.to_owned() },
        0x4A => {
            let (mount, kind, name, replaces) = decode_auth_object(&mut r)?;
            let record = r.bytes32("auth object record", MAX_CONTROL_DOC_LEN)?.to_vec();
            Operation::PutAuthObject { mount, kind, name, record, replaces }
        }
        0x4B => {
            let (mount, kind, name, replaces) = decode_auth_object(&mut r)?;
            Operation::DeleteAuthObject { mount, kind, name, replaces }
        }
        0x4C => Operation::TidyToken { token_hash: r.array()? },
        0x4D => {
            let path = r.str16("audit device path", MAX_PATH_LEN)?.to_owned();
            Operation::PutAuditDevice { path, record: r.bytes32("audit device record", MAX_CONTROL_DOC_LEN)?.to_vec() }
        }
        0x4E => Operation::DeleteAuditDevice { path: r.str16("audit device path", MAX_PATH_LEN)?.to_owned() },
        tag => return Err(DecodeError::UnknownOperation { tag }),
    };
    r.finish()?;
    Ok(Event { event_id, timestamp_ms, writer_epoch, revision, mount, path, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::RootKey;
    use proptest::prelude::*;

    fn ring(b: u8) -> Keyring {
        Keyring::from_root(&RootKey::from_bytes([b; 32]))
    }

    /// A small valid event: `DeleteMetadata` of `secret/a`.
    fn delete_a() -> Event {
        Event {
            event_id: [1; 16],
            timestamp_ms: 1,
            writer_epoch: 1,
            revision: None,
            mount: "secret".into(),
            path: "a".into(),
            op: Operation::DeleteMetadata,
        }
    }

    pub(crate) fn arb_op() -> impl Strategy<Value = Operation> {
        let versions = proptest::collection::vec(any::<u64>(), 0..20);
        prop_oneof![
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(version, sealed)| Operation::Put { version, sealed }),
            versions.clone().prop_map(|versions| Operation::DeleteVersions { versions }),
            versions.clone().prop_map(|versions| Operation::UndeleteVersions { versions }),
            versions.prop_map(|versions| Operation::DestroyVersions { versions }),
            (
                proptest::option::of(any::<u32>()),
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(proptest::collection::btree_map("[a-z]{1,8}", ".{0,16}", 0..5)),
            )
                .prop_map(|(max_versions, cas_required, delete_version_after_secs, custom_metadata)| {
                    Operation::UpdateMetadata(MetadataUpdate {
                        max_versions,
                        cas_required,
                        delete_version_after_secs,
                        custom_metadata,
                    })
                }),
            Just(Operation::DeleteMetadata),
            (
                proptest::collection::vec(any::<u8>(), 0..200),
                proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100)), 0..5)
            )
                .prop_map(|(metadata, values)| Operation::RestoreSecret { metadata, values }),
            any::<[u8; 32]>().prop_map(|token_hash| Operation::SetRootToken { token_hash }),
            "http://[a-z0-9.:]{1,30}".prop_map(|leader_url| Operation::LeaderEpoch { leader_url }),
            ("[a-z-]{1,12}", ".{0,80}").prop_map(|(name, policy)| Operation::PutPolicy { name, policy }),
            "[a-z-]{1,12}".prop_map(|name| Operation::DeletePolicy { name }),
            (any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(token_hash, record)| Operation::PutToken { token_hash, record }),
            any::<[u8; 32]>().prop_map(|token_hash| Operation::RevokeToken { token_hash }),
            any::<[u8; 32]>().prop_map(|token_hash| Operation::TidyToken { token_hash }),
            proptest::collection::vec(
                (any::<u64>(), any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..100)),
                0..5
            )
            .prop_map(|v| Operation::RewrapValues {
                values: v
                    .into_iter()
                    .map(|(version, replaces, sealed)| Rewrapped { version, replaces, sealed })
                    .collect()
            }),
            any::<u32>().prop_map(|term| Operation::AddKeyTerm { term }),
            any::<u32>().prop_map(|term| Operation::RetireKeyTerm { term }),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100), any::<u32>(), any::<u64>()).prop_map(
                |(version, sealed, max_versions, delete_version_after_secs)| Operation::PutWithDefaults {
                    version,
                    sealed,
                    max_versions,
                    delete_version_after_secs
                }
            ),
            ("[a-z/-]{1,20}", proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(path, record)| Operation::PutMount { path, record }),
            "[a-z/-]{1,20}".prop_map(|path| Operation::DeleteMount { path }),
            ("[a-z/-]{1,20}", proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(path, record)| Operation::PutAuditDevice { path, record }),
            "[a-z/-]{1,20}".prop_map(|path| Operation::DeleteAuditDevice { path }),
            (
                "[a-z/]{1,20}",
                arb_auth_kind(),
                "[a-z0-9/-]{0,40}",
                proptest::collection::vec(any::<u8>(), 0..100),
                proptest::option::of(any::<[u8; 32]>())
            )
                .prop_map(|(mount, kind, name, record, replaces)| Operation::PutAuthObject {
                    mount,
                    kind,
                    name,
                    record,
                    replaces
                }),
            ("[a-z/]{1,20}", arb_auth_kind(), "[a-z0-9/-]{0,40}", proptest::option::of(any::<[u8; 32]>()))
                .prop_map(|(mount, kind, name, replaces)| Operation::DeleteAuthObject { mount, kind, name, replaces }),
        ]
    }

    fn arb_auth_kind() -> impl Strategy<Value = AuthObjectKind> {
        (1u8..=4).prop_map(|t| AuthObjectKind::from_tag(t).expect("1..=4 are kinds"))
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            any::<[u8; 16]>(),
            any::<i64>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
            "[a-z]{1,10}",
            "[a-zA-Z0-9/_.-]{1,40}",
            arb_op(),
        )
            .prop_map(|(event_id, timestamp_ms, writer_epoch, revision, mount, path, op)| Event {
                event_id,
                timestamp_ms,
                writer_epoch,
                revision,
                mount,
                path,
                op,
            })
    }

    proptest! {
        #[test]
        fn round_trips(e in arb_event()) {
            let r = ring(1);
            let bytes = encode_event(&r, &e);
            let back = decode_event(&r, Some(&e.record_key()), &bytes).unwrap();
            prop_assert_eq!(back, e);
        }

        #[test]
        fn any_single_byte_change_is_refused(e in arb_event(), pos in any::<prop::sample::Index>(), x in 1u8..=255) {
            let r = ring(1);
            let mut bytes = encode_event(&r, &e);
            let i = pos.index(bytes.len());
            bytes[i] ^= x;
            prop_assert!(decode_event(&r, None, &bytes).is_err());
        }

        #[test]
        fn truncation_is_an_error_not_a_panic(e in arb_event(), cut in any::<prop::sample::Index>()) {
            let r = ring(1);
            let bytes = encode_event(&r, &e);
            let n = cut.index(bytes.len());
            prop_assert!(decode_event(&r, None, &bytes[..n]).is_err());
        }
    }

    #[test]
    fn forged_event_under_other_key_is_reported_as_wrong_key() {
        let e = delete_a();
        let bytes = encode_event(&ring(1), &e);
        assert!(matches!(decode_event(&ring(2), None, &bytes), Err(DecodeError::WrongKey { .. })));
        // An attacker who copies our key check but not our key is caught by the MAC.
        let mut forged = encode_event(&ring(2), &e);
        forged[7..15].copy_from_slice(&ring(1).key_check());
        assert_eq!(decode_event(&ring(1), None, &forged), Err(DecodeError::BadMac));
    }

    #[test]
    fn records_of_other_and_retired_terms_verify() {
        let r = ring(1);
        let e = delete_a();
        let old = encode_event(&r, &e);
        let newer = Keyring::with_terms(&RootKey::from_bytes([1; 32]), 3);
        let new = encode_event(&newer, &e);
        assert_eq!(u32::from_be_bytes(new[3..7].try_into().unwrap()), 3, "authenticated under the active term");
        assert_eq!(decode_event(&r, None, &new).unwrap(), e, "a term this node has not applied yet still verifies");
        newer.retire(1);
        assert_eq!(decode_event(&newer, None, &old).unwrap(), e, "a retired term's records stay replayable");
        let mut zero = old.clone();
        zero[3..7].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(decode_event(&r, None, &zero), Err(DecodeError::UnknownKeyTerm { term: 0 }));
    }

    #[test]
    fn record_key_must_match() {
        let e = delete_a();
        let bytes = encode_event(&ring(1), &e);
        assert!(matches!(decode_event(&ring(1), Some(b"secret/b"), &bytes), Err(DecodeError::KeyMismatch { .. })));
    }

    #[test]
    fn unknown_version_and_oversize_are_typed() {
        let mut b = vec![b'S', b'L', 9];
        b.extend_from_slice(&[0; 40]);
        assert_eq!(
            decode_event(&ring(1), None, &b),
            Err(DecodeError::UnknownVersion { found: 9, supported: SCHEMA_VERSION })
        );
        let big = vec![0u8; MAX_RECORD_LEN + 1];
        assert!(matches!(decode_event(&ring(1), None, &big), Err(DecodeError::TooLarge { .. })));
    }

    /// A small, fast, deterministic generator (xorshift) so the fuzz-style test can afford
    /// millions of inputs in a debug build.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// One million generated inputs through both the authenticated decoder and the body parser
    /// (which the MAC would otherwise shield from random input): garbage, and valid encodings
    /// with random bytes overwritten, inserted or cut. The decoder must answer every one with a
    /// value or a typed error — a panic fails the test.
    #[test]
    fn decoder_survives_a_million_generated_inputs() {
        let r = ring(1);
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let seeds: Vec<Vec<u8>> = [
            Operation::Put { version: 3, sealed: vec![1; 40] },
            Operation::DeleteVersions { versions: vec![1, 2] },
            Operation::UpdateMetadata(MetadataUpdate {
                max_versions: Some(5),
                cas_required: Some(true),
                delete_version_after_secs: Some(60),
                custom_metadata: Some(BTreeMap::from([("owner".into(), "ops".into())])),
            }),
            Operation::SetRootToken { token_hash: [7; 32] },
            Operation::RestoreSecret { metadata: b"{}".to_vec(), values: vec![(1, vec![3; 20])] },
            Operation::PutPolicy { name: "p".into(), policy: "path \"a\" {}".into() },
            Operation::PutToken { token_hash: [8; 32], record: b"{}".to_vec() },
            Operation::RevokeToken { token_hash: [9; 32] },
            Operation::TidyToken { token_hash: [10; 32] },
            Operation::PutAuditDevice { path: "trail".into(), record: b"{}".to_vec() },
            Operation::DeleteAuditDevice { path: "trail".into() },
            Operation::RewrapValues { values: vec![Rewrapped { version: 2, replaces: [4; 32], sealed: vec![5; 40] }] },
            Operation::AddKeyTerm { term: 2 },
            Operation::RetireKeyTerm { term: 1 },
            Operation::PutAuthObject {
                mount: "approle/".into(),
                kind: AuthObjectKind::SecretId,
                name: "r/ab".into(),
                record: b"{}".to_vec(),
                replaces: Some([3; 32]),
            },
            Operation::DeleteAuthObject {
                mount: "userpass/".into(),
                kind: AuthObjectKind::User,
                name: "u".into(),
                replaces: None,
            },
        ]
        .into_iter()
        .map(|op| {
            let e = Event {
                event_id: [2; 16],
                timestamp_ms: 5,
                writer_epoch: 2,
                revision: None,
                mount: "secret".into(),
                path: "x/y".into(),
                op,
            };
            let mut body = Vec::new();
            encode_body(&e, &mut Out(&mut body));
            body
        })
        .collect();
        let (mut ok, mut err) = (0u64, 0u64);
        for i in 0..1_000_000u64 {
            let mut input = if i % 4 == 0 {
                let len = (rng.next() % 96) as usize;
                (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
            } else {
                seeds[(rng.next() % seeds.len() as u64) as usize].clone()
            };
            if !input.is_empty() {
                match rng.next() % 3 {
                    0 => {
                        let at = (rng.next() as usize) % input.len();
                        input[at] = rng.next() as u8;
                    }
                    1 => input.truncate((rng.next() as usize) % input.len()),
                    _ => {
                        let at = (rng.next() as usize) % input.len();
                        input.insert(at, rng.next() as u8);
                    }
                }
            }
            match decode_body(&input, 1) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
            if i % 64 == 0 {
                // The full decoder is slower (HMAC); a sample keeps the test quick.
                let mut rec = b"SL\x01".to_vec();
                rec.extend_from_slice(&input);
                assert!(decode_event(&r, None, &rec).is_err());
            }
        }
        assert_eq!(ok + err, 1_000_000);
        assert!(ok > 0 && err > 0, "generator should produce both valid and invalid bodies ({ok} ok, {err} err)");
    }
}
