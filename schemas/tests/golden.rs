//! Golden vectors: bytes that this and every later release must decode to the same events.
//! They were produced once with `SECRETLOG_BLESS=1 cargo test -p secretlog-schemas --test golden`;
//! once released they never change. A failure here means the wire format changed: add a new
//! schema version instead of editing these files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secretlog_schemas::sealed::{SealContext, SealedValue};
use secretlog_schemas::topic::partition_for;
use secretlog_schemas::*;

fn golden_ring() -> Keyring {
    Keyring::from_root(&RootKey::from_bytes([0x42; 32]))
}

fn golden_events() -> Vec<(&'static str, Event)> {
    let base = |path: &str, op| Event {
        event_id: [0x11; 16],
        timestamp_ms: 1_763_856_000_000,
        writer_epoch: 7,
        revision: None,
        mount: "secret".into(),
        path: path.into(),
        op,
    };
    vec![
        ("put", base("app/db", Operation::Put { version: 1, sealed: vec![0xA5; 45] })),
        (
            "put_with_defaults",
            Event {
                mount: "kv-abababababababababababababababab".into(),
                ..base(
                    "app/db",
                    Operation::PutWithDefaults {
                        version: 1,
                        sealed: vec![0xA5; 45],
                        max_versions: 3,
                        delete_version_after_secs: 86_400,
                    },
                )
            },
        ),
        ("delete_versions", base("app/db", Operation::DeleteVersions { versions: vec![1, 2] })),
        ("undelete_versions", base("app/db", Operation::UndeleteVersions { versions: vec![2] })),
        ("destroy_versions", base("app/db", Operation::DestroyVersions { versions: vec![1] })),
        (
            "update_metadata",
            base(
                "app/db",
                Operation::UpdateMetadata(MetadataUpdate {
                    max_versions: Some(5),
                    cas_required: Some(true),
                    delete_version_after_secs: Some(3600),
                    custom_metadata: Some(BTreeMap::from([("owner".into(), "payments".into())])),
                }),
            ),
        ),
        (
            "update_metadata_partial",
            base("app/db", Operation::UpdateMetadata(MetadataUpdate { max_versions: Some(2), ..Default::default() })),
        ),
        ("delete_metadata", base("app/db", Operation::DeleteMetadata)),
        (
            "restore_secret",
            base(
                "app/db",
                Operation::RestoreSecret {
                    metadata: br#"{"current_version":2,"versions":{}}"#.to_vec(),
                    values: vec![(1, vec![0xA5; 45]), (2, vec![0x5A; 45])],
                },
            ),
        ),
        (
            "leader_epoch",
            Event {
                mount: String::new(),
                path: "leader-epoch/2".into(),
                ..base("", Operation::LeaderEpoch { leader_url: "http://10.0.0.7:8200".into() })
            },
        ),
        (
            "put_policy",
            Event {
                mount: String::new(),
                path: "policy/app-read".into(),
                ..base(
                    "",
                    Operation::PutPolicy {
                        name: "app-read".into(),
                        policy: r#"path "secret/data/app/*" { capabilities = ["read"] }"#.into(),
                    },
                )
            },
        ),
        (
            "delete_policy",
            Event {
                mount: String::new(),
                path: "policy/app-read".into(),
                ..base("", Operation::DeletePolicy { name: "app-read".into() })
            },
        ),
        (
            "put_token",
            Event {
                mount: String::new(),
                path: "token".into(),
                ..base(
                    "",
                    Operation::PutToken { token_hash: [0x44; 32], record: br#"{"policies":["app-read"]}"#.to_vec() },
                )
            },
        ),
        (
            "revoke_token",
            Event {
                mount: String::new(),
                path: "token".into(),
                ..base("", Operation::RevokeToken { token_hash: [0x44; 32] })
            },
        ),
        (
            "rewrap_values",
            base(
                "app/db",
                Operation::RewrapValues {
                    values: vec![
                        Rewrapped { version: 1, replaces: [0x77; 32], sealed: vec![0xB6; 45] },
                        Rewrapped { version: 3, replaces: [0x78; 32], sealed: vec![0x6B; 45] },
                    ],
                },
            ),
        ),
        (
            "add_key_term",
            Event {
                mount: String::new(),
                path: event::KEYRING_CONTROL_NAME.into(),
                ..base("", Operation::AddKeyTerm { term: 2 })
            },
        ),
        (
            "retire_key_term",
            Event {
                mount: String::new(),
                path: event::KEYRING_CONTROL_NAME.into(),
                ..base("", Operation::RetireKeyTerm { term: 1 })
            },
        ),
        (
            "set_root_token",
            Event {
                mount: String::new(),
                path: "root-token".into(),
                ..base("", Operation::SetRootToken { token_hash: [0x33; 32] })
            },
        ),
        (
            "put_mount",
            Event {
                mount: String::new(),
                path: event::MOUNTS_CONTROL_NAME.into(),
                ..base(
                    "",
                    Operation::PutMount {
                        path: "team/kv".into(),
                        record: mount::MountRecord {
                            kv: mount::KvConfig { max_versions: 3, cas_required: true, delete_version_after_secs: 60 },
                            ..mount::MountRecord::new_kv([0xAB; 16], "team secrets".into(), 1_763_856_000_000)
                        }
                        .encode(),
                    },
                )
            },
        ),
        (
            "delete_mount",
            Event {
                mount: String::new(),
                path: event::MOUNTS_CONTROL_NAME.into(),
                ..base("", Operation::DeleteMount { path: "team/kv".into() })
            },
        ),
    ]
}

/// Each event must encode byte for byte as `event_v2_{name}.bin` (written once when blessing)
/// and decode from it to itself.
fn check_v2_vectors(ring: &Keyring, events: impl IntoIterator<Item = (&'static str, Event)>) {
    for (name, event) in events {
        let file = dir().join(format!("event_v2_{name}.bin"));
        let encoded = encode_event(ring, &event);
        if bless() && !file.exists() {
            std::fs::write(&file, &encoded).unwrap();
        }
        let golden = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let decoded = decode_event(ring, Some(&event.record_key()), &golden)
            .unwrap_or_else(|e| panic!("{name}: golden vector no longer decodes: {e}"));
        assert_eq!(decoded, event, "{name}: golden vector decodes differently");
        assert_eq!(encoded, golden, "{name}: encoding changed; that is a new schema version");
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn bless() -> bool {
    std::env::var("SECRETLOG_BLESS").is_ok_and(|v| v == "1")
}

/// Every golden event, encoded with `revision`, must be byte for byte `event_v{version}_*.bin`
/// and decode to itself.
fn check_event_vectors(version: u8, revision: Option<u64>) {
    let ring = golden_ring();
    for (name, mut event) in golden_events() {
        event.revision = revision;
        let file = dir().join(format!("event_v{version}_{name}.bin"));
        let encoded = encode_event(&ring, &event);
        assert_eq!(encoded[2], version, "{name}: schema version");
        if bless() {
            std::fs::write(&file, &encoded).unwrap();
        }
        let golden = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let decoded = decode_event(&ring, Some(&event.record_key()), &golden)
            .unwrap_or_else(|e| panic!("{name}: golden vector no longer decodes: {e}"));
        assert_eq!(decoded, event, "{name}: golden vector decodes differently");
        assert_eq!(encoded, golden, "{name}: encoding changed; that is a new schema version");
    }
}

#[test]
fn golden_event_vectors_decode_forever() {
    check_event_vectors(1, None);
}

/// Schema version 2: the same events, each carrying the per-key revision it was decided against.
#[test]
fn golden_event_vectors_v2_decode_forever() {
    check_event_vectors(2, Some(41));
}

#[test]
fn golden_sealed_value_opens_forever() {
    let ring = golden_ring();
    let ctx = SealContext { mount: "secret", path: "app/db", version: 1 };
    let file = dir().join("sealed_v1.bin");
    let plaintext = br#"{"password":"correct horse battery staple"}"#;
    if bless() {
        std::fs::write(&file, SealedValue::seal(&ring, &ctx, plaintext).unwrap().encode()).unwrap();
    }
    let golden = std::fs::read(&file).unwrap();
    let opened = SealedValue::decode(&golden).unwrap().open(&ring, &ctx).unwrap();
    assert_eq!(&opened[..], plaintext);
    let other = Keyring::from_root(&RootKey::from_bytes([0x43; 32]));
    assert_eq!(SealedValue::decode(&golden).unwrap().open(&other, &ctx), Err(SealError::Open));
}

/// A value sealed under term 2 and an event authenticated under term 2 (after a rotation) open
/// and verify forever — also on a node that has retired term 1, or not yet applied term 2.
#[test]
fn golden_term_2_vectors_open_forever() {
    let ring = Keyring::with_terms(&RootKey::from_bytes([0x42; 32]), 2);
    let ctx = SealContext { mount: "secret", path: "app/db", version: 1 };
    let file = dir().join("sealed_v1_term2.bin");
    let plaintext = br#"{"password":"rotated"}"#;
    if bless() {
        std::fs::write(&file, SealedValue::seal(&ring, &ctx, plaintext).unwrap().encode()).unwrap();
    }
    let golden = std::fs::read(&file).unwrap();
    let sealed = SealedValue::decode(&golden).unwrap();
    assert_eq!(sealed.term, 2);
    ring.retire(1);
    assert_eq!(&sealed.open(&ring, &ctx).unwrap()[..], plaintext);
    assert_eq!(&sealed.open(&golden_ring(), &ctx).unwrap()[..], plaintext, "before AddKeyTerm is applied");

    let event = Event {
        event_id: [0x12; 16],
        timestamp_ms: 1_763_856_000_000,
        writer_epoch: 8,
        revision: None,
        mount: "secret".into(),
        path: "app/db".into(),
        op: Operation::Put { version: 2, sealed: golden.clone() },
    };
    let file = dir().join("event_v1_put_term2.bin");
    let encoded = encode_event(&ring, &event);
    if bless() {
        std::fs::write(&file, &encoded).unwrap();
    }
    let golden_event = std::fs::read(&file).unwrap();
    assert_eq!(encoded, golden_event, "encoding changed; that is a new schema version");
    assert_eq!(decode_event(&golden_ring(), Some(&event.record_key()), &golden_event).unwrap(), event);
    assert_eq!(decode_event(&ring, Some(&event.record_key()), &golden_event).unwrap(), event);
}

#[test]
fn golden_partitioning_never_moves_keys() {
    let file = dir().join("partitions_v1.json");
    let keys: Vec<String> = (0..32).map(|i| format!("secret/app{i}/key")).collect();
    let parts: Vec<i32> = keys.iter().map(|k| partition_for(k.as_bytes(), 6)).collect();
    if bless() {
        std::fs::write(&file, serde_json::to_string_pretty(&parts).unwrap()).unwrap();
    }
    let golden: Vec<i32> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(parts, golden);
    assert!(golden.iter().collect::<std::collections::BTreeSet<_>>().len() == 6, "all partitions used");
}

/// The token tidy (tag 0x4C), in schema version 2 (the writer always decides it against the
/// revision of the token's key): `event_v2_tidy_token.bin` must decode forever.
#[test]
fn golden_tidy_token_vector_decodes_forever() {
    let ring = golden_ring();
    let event = Event {
        event_id: [0x14; 16],
        timestamp_ms: 1_763_856_000_000,
        writer_epoch: 9,
        revision: Some(2),
        mount: String::new(),
        path: "token/AbCdEfGhIjKlMnOpQrStUvWx".into(),
        op: Operation::TidyToken { token_hash: [0x44; 32] },
    };
    let file = dir().join("event_v2_tidy_token.bin");
    let encoded = encode_event(&ring, &event);
    if bless() && !file.exists() {
        std::fs::write(&file, &encoded).unwrap();
    }
    let golden = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let decoded = decode_event(&ring, Some(&event.record_key()), &golden)
        .unwrap_or_else(|e| panic!("tidy_token: golden vector no longer decodes: {e}"));
    assert_eq!(decoded, event, "tidy_token: golden vector decodes differently");
    assert_eq!(encoded, golden, "tidy_token: encoding changed; that is a new schema version");
    assert_eq!(golden[2], 2, "schema version 2");
    assert_eq!(golden[golden.len() - 32 - 33], 0x4C, "the tidy tag");
}

/// Audit-device control events (tags 0x4D, 0x4E) in schema version 2, and the JSON of the record
/// they carry: `event_v2_*_audit_device.bin` and `audit_device_v1.json` must decode forever.
#[test]
fn golden_audit_device_vectors_decode_forever() {
    use secretlog_schemas::audit::AuditDeviceRecord;
    use secretlog_schemas::event::AUDIT_CONTROL_NAME;
    let ring = golden_ring();
    let record = AuditDeviceRecord {
        kind: "file".into(),
        description: "the trail".into(),
        options: [("file_path".to_string(), "/var/log/secretlog/audit.log".to_string())].into(),
        created_ms: 1_763_856_000_000,
    };
    let control = |op| Event {
        event_id: [0x15; 16],
        timestamp_ms: 1_763_856_000_000,
        writer_epoch: 9,
        revision: Some(3),
        mount: String::new(),
        path: AUDIT_CONTROL_NAME.into(),
        op,
    };
    let events = [
        ("put_audit_device", control(Operation::PutAuditDevice { path: "trail".into(), record: record.encode() })),
        ("delete_audit_device", control(Operation::DeleteAuditDevice { path: "trail".into() })),
    ];
    check_v2_vectors(&ring, events);
    check_record_json("audit_device", &record);
}

/// Auth-object control events (tags 0x4A, 0x4B) in schema version 2, and the JSON of the records
/// they carry: `event_v2_*_auth_object*.bin` and `auth_*_v1.json` must decode forever.
#[test]
fn golden_auth_object_vectors_decode_forever() {
    use secretlog_schemas::auth::{AppRoleRecord, AuthMountRecord, AuthObjectKind, SecretIdRecord, UserRecord};
    let ring = golden_ring();
    let control = |op| Event {
        event_id: [0x13; 16],
        timestamp_ms: 1_763_856_000_000,
        writer_epoch: 9,
        revision: Some(5),
        mount: String::new(),
        path: auth::control_name("approle/"),
        op,
    };
    let events = [
        (
            "put_auth_object",
            control(Operation::PutAuthObject {
                mount: "approle/".into(),
                kind: AuthObjectKind::AppRoleRole,
                name: "web".into(),
                record: br#"{"role_id":"r"}"#.to_vec(),
                replaces: None,
            }),
        ),
        (
            "put_auth_object_replacing",
            control(Operation::PutAuthObject {
                mount: "approle/".into(),
                kind: AuthObjectKind::SecretId,
                name: format!("web/{}", "ab".repeat(32)),
                record: br#"{"uses_left":1}"#.to_vec(),
                replaces: Some([0x55; 32]),
            }),
        ),
        (
            "delete_auth_object",
            control(Operation::DeleteAuthObject {
                mount: "approle/".into(),
                kind: AuthObjectKind::Mount,
                name: String::new(),
                replaces: None,
            }),
        ),
        (
            "delete_auth_object_replacing",
            control(Operation::DeleteAuthObject {
                mount: "approle/".into(),
                kind: AuthObjectKind::SecretId,
                name: format!("web/{}", "cd".repeat(32)),
                replaces: Some([0x66; 32]),
            }),
        ),
    ];
    check_v2_vectors(&ring, events);

    fn record<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: T) {
        let file = dir().join(format!("auth_{name}_v1.json"));
        if bless() && !file.exists() {
            std::fs::write(&file, serde_json::to_string_pretty(&value).unwrap()).unwrap();
        }
        let golden = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let back: T = serde_json::from_slice(&golden).unwrap_or_else(|e| panic!("{name}: no longer reads: {e}"));
        assert_eq!(back, value, "{name}: the record's JSON changed meaning");
    }
    record(
        "mount",
        AuthMountRecord {
            method: "approle".into(),
            description: "apps".into(),
            accessor: "auth_approle_0a1b2c3d".into(),
            uuid: "6b1f8f2e-3c4d-4e5f-8a9b-0c1d2e3f4a5b".into(),
            created_ms: 1_763_856_000_000,
            default_lease_ttl_secs: 0,
            max_lease_ttl_secs: 0,
            // The golden JSON predates `options`: such a record lists `{}`.
            options: Some(Default::default()),
        },
    );
    record(
        "approle_role",
        AppRoleRecord {
            role_id: "9f0e1d2c-3b4a-4958-8776-655443322110".into(),
            token_policies: vec!["app".into()],
            token_ttl_secs: 3600,
            token_max_ttl_secs: 7200,
            bind_secret_id: true,
            secret_id_num_uses: 3,
            secret_id_ttl_secs: 600,
            secret_id_bound_cidrs: vec!["10.0.0.0/8".into()],
            token_bound_cidrs: vec!["127.0.0.1/32".into()],
            token_no_default_policy: false,
            token_explicit_max_ttl_secs: 0,
        },
    );
    record(
        "secret_id",
        SecretIdRecord {
            accessor: "1a2b3c4d-0000-4000-8000-000000000001".into(),
            created_ms: 1_763_856_000_000,
            expire_ms: Some(1_763_856_600_000),
            uses_left: 2,
            num_uses: 3,
            cidr_list: vec![],
            token_bound_cidrs: vec![],
            metadata: BTreeMap::from([("host".into(), "web-1".into())]),
        },
    );
    record(
        "userpass_user",
        UserRecord {
            password_hash:
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g".into(),
            token_policies: vec!["dev".into()],
            token_ttl_secs: 0,
            token_max_ttl_secs: 0,
            token_bound_cidrs: vec![],
            token_no_default_policy: false,
        },
    );
}

/// The JSON of a record that log records and snapshots carry, pinned by `{name}_v1.json`: the
/// golden file must read back as `value`, and `value` must still be written as exactly that file
/// (field names and order, which defaults are left out), so a changed serde attribute fails here.
fn check_record_json<T>(name: &str, value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let file = dir().join(format!("{name}_v1.json"));
    let encoded = serde_json::to_string_pretty(value).unwrap();
    if bless() && !file.exists() {
        std::fs::write(&file, &encoded).unwrap();
    }
    let golden = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let back: T = serde_json::from_str(&golden).unwrap_or_else(|e| panic!("{name}: no longer reads: {e}"));
    assert_eq!(&back, value, "{name}: the record's JSON changed meaning");
    assert_eq!(encoded, golden, "{name}: the record's JSON encoding changed");
}

/// A record as an earlier release wrote it, `{name}_v1.json`: written by hand (this release
/// cannot produce it, so blessing never writes it), it must still read as `value`.
fn check_older_record_json<T>(name: &str, value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let file = dir().join(format!("{name}_v1.json"));
    let golden = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let back: T = serde_json::from_str(&golden).unwrap_or_else(|e| panic!("{name}: no longer reads: {e}"));
    assert_eq!(&back, value, "{name}: a record of an earlier release reads differently");
    assert_ne!(serde_json::to_string_pretty(value).unwrap(), golden, "{name}: not an older shape");
}

/// The token record a `PutToken` carries (and `c/token/` rows of stores and snapshots hold):
/// `token_*_v1.json` must read forever.
#[test]
fn golden_token_record_json_reads_forever() {
    use secretlog_schemas::auth::TokenRecord;
    check_record_json(
        "token_full",
        &TokenRecord {
            accessor: "8f6f5d3e-2c1b-4a09-9e8d-7c6b5a493827".into(),
            policies: vec!["app-read".into(), "default".into()],
            display_name: "approle".into(),
            created_ms: 1_763_856_000_000,
            expire_ms: Some(1_763_863_200_000),
            max_expire_ms: Some(1_763_942_400_000),
            ttl_secs: 3600,
            renewable: true,
            self_by_policy: true,
            path: Some("auth/approle/login".into()),
            meta: Some(BTreeMap::from([("role_name".into(), "web".into())])),
            bound_cidrs: vec!["10.0.0.0/8".into()],
            renewed_ttl_secs: Some(7200),
        },
    );
    // Only the fields without a default: `path`, `meta`, `bound_cidrs` and `renewed_ttl_secs`
    // are left out, the expiries are written as `null`.
    let minimal = TokenRecord {
        accessor: "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d".into(),
        policies: vec!["default".into()],
        display_name: "token".into(),
        created_ms: 1_763_856_000_000,
        expire_ms: None,
        max_expire_ms: None,
        ttl_secs: 0,
        renewable: false,
        self_by_policy: true,
        ..Default::default()
    };
    check_record_json("token_minimal", &minimal);
    // As releases before the `default` policy wrote it: no `self_by_policy`, which reads `false`
    // (such a token keeps using its `-self` endpoints whatever its policies).
    check_older_record_json(
        "token_before_self_by_policy",
        &TokenRecord {
            accessor: "5d4c3b2a-1908-4f7e-8d6c-5b4a39281706".into(),
            policies: vec!["app-read".into()],
            display_name: "token".into(),
            created_ms: 1_763_856_000_000,
            expire_ms: Some(1_763_859_600_000),
            max_expire_ms: Some(1_763_942_400_000),
            ttl_secs: 3600,
            renewable: true,
            self_by_policy: false,
            ..Default::default()
        },
    );
}

/// A secret's metadata, as stores (`s/`), snapshots (`secrets.arrow`) and `RestoreSecret` events
/// carry it: `secret_meta_*_v1.json` must read forever.
#[test]
fn golden_secret_metadata_json_reads_forever() {
    use secretlog_schemas::metadata::{SecretMeta, VersionMeta};
    check_record_json(
        "secret_meta_full",
        &SecretMeta {
            current_version: 3,
            oldest_version: 2,
            max_versions: 2,
            cas_required: true,
            delete_version_after_secs: 86_400,
            custom_metadata: Some(BTreeMap::from([("owner".into(), "payments".into())])),
            created_ms: 1_763_856_000_000,
            updated_ms: 1_763_856_120_000,
            versions: BTreeMap::from([
                (
                    2,
                    VersionMeta {
                        created_ms: 1_763_856_060_000,
                        deletion_ms: Some(1_763_856_090_000),
                        destroyed: true,
                    },
                ),
                (
                    3,
                    VersionMeta {
                        created_ms: 1_763_856_120_000,
                        deletion_ms: Some(1_763_942_520_000),
                        destroyed: false,
                    },
                ),
            ]),
        },
    );
    // Every field at its default is left out.
    let minimal = SecretMeta {
        current_version: 1,
        created_ms: 1_763_856_000_000,
        updated_ms: 1_763_856_000_000,
        versions: BTreeMap::from([(1, VersionMeta { created_ms: 1_763_856_000_000, ..Default::default() })]),
        ..Default::default()
    };
    check_record_json("secret_meta_minimal", &minimal);
    // As releases before issue #24 wrote it, every default field present: the same metadata, and
    // stored (and digested) in the minimal form.
    check_older_record_json("secret_meta_defaults_written", &minimal);
    let older = std::fs::read(dir().join("secret_meta_defaults_written_v1.json")).unwrap();
    assert_eq!(SecretMeta::canonical(&older), Some(serde_json::to_vec(&minimal).unwrap()));
}
