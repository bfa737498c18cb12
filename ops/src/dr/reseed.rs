//! `secretlog reseed`: after losing a whole Kafka cluster, write the last recoverable state
//! (newest snapshot + the log archive after it, or any earlier point) into a fresh cluster's
//! topic, so writers and readers can start on it.
//!
//! The whole reseed is **one Kafka transaction**: a reader sees all of it or nothing, and an
//! interrupted reseed leaves nothing behind (the next run's `init_transactions` aborts it).
//! Its last records are a `LeaderEpoch` in every partition naming `reseed:<source>`, which is
//! how a later run recognises a completed reseed and does nothing — running it again is safe.
//! A topic holding anything else is refused.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use secretlog_schemas::topic::{
    DEFAULT_PARTITIONS, MUTATIONS_TOPIC, control_key, leader_epoch_name, partition_for, record_key,
};
use secretlog_schemas::{Event, Keyring, Operation, decode_event, encode_event};
use secretlog_state::materializer::now_ms;
use secretlog_state::store::keys;
use secretlog_writer::producer::{Record, TxProducer};
use serde_json::json;

use super::rebuild::PointArgs;
use super::{StoreArgs, emit};

/// Set in tests only: the reseed appends its records in a transaction and then dies without
/// committing, as a reseed killed at the worst moment would. Read only in builds with the
/// `planted-faults` feature, which only the end-to-end tests turn on.
#[cfg(feature = "planted-faults")]
const CRASH_FOR_TESTS: &str = "SECRETLOG_TEST_RESEED_CRASH";

#[cfg(feature = "planted-faults")]
fn crash_mid_transaction(bootstrap: &str, topic: &str, records: &[Record]) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let config = secretlog_writer::producer::producer_config(bootstrap, &format!("secretlog-reseed-{topic}"), 600_000);
    let p: ThreadedProducer<DefaultProducerContext> = config.create()?;
    p.init_transactions(Duration::from_secs(60))?;
    p.begin_transaction()?;
    for r in records {
        p.send(BaseRecord::to(topic).key(&r.key).payload(&r.payload).partition(r.partition)).map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(60))?;
    eprintln!("reseed: crashing on purpose with {} records appended and not committed", records.len());
    std::process::exit(86);
}

#[derive(Debug, clap::Args)]
pub struct ReseedArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Bootstrap servers of the fresh cluster.
    #[arg(long)]
    pub bootstrap: String,
    /// Topic to seed (created if missing).
    #[arg(long, default_value = MUTATIONS_TOPIC)]
    pub topic: String,
    /// Partitions of the topic, if it must be created.
    #[arg(long, default_value_t = DEFAULT_PARTITIONS)]
    pub partitions: i32,
    #[command(flatten)]
    pub point: PointArgs,
    #[arg(long)]
    pub json: bool,
}

/// What the topic holds already.
enum Found {
    Empty,
    /// A completed reseed from this source.
    Reseeded {
        records: u64,
    },
    Other {
        records: u64,
    },
}

/// Read every committed record of `topic` (a fresh cluster's topic is small or empty).
fn inspect(bootstrap: &str, topic: &str, keyring: &Keyring, marker: &str) -> anyhow::Result<Found> {
    let c: BaseConsumer = secretlog_state::kafka::consumer_config(bootstrap, "secretlog-reseed-inspect").create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len() as i32);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let (mut records, mut marked, mut eof) = (0u64, 0i32, std::collections::BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while (eof.len() as i32) < partitions {
        if Instant::now() > deadline {
            bail!("reading the existing records of {topic} timed out");
        }
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                records += 1;
                if let Ok(e) = decode_event(keyring, m.key(), m.payload().unwrap_or_default())
                    && matches!(&e.op, Operation::LeaderEpoch { leader_url } if leader_url == marker)
                {
                    marked += 1;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(match (records, marked) {
        (0, _) => Found::Empty,
        (n, m) if m == partitions => Found::Reseeded { records: n },
        (n, _) => Found::Other { records: n },
    })
}

pub async fn run(args: ReseedArgs) -> anyhow::Result<()> {
    let report = reseed(&args).await?;
    emit(args.json, &report, || {
        if report["already_done"] == true {
            println!(
                "{} already holds this reseed ({} records, {}); nothing to do.",
                args.topic, report["records"], report["source"]
            );
            return;
        }
        println!(
            "Reseeded {} on {}: {} secrets from snapshot {} + {} archived records, {} records in one transaction, {:.1} s.",
            args.topic,
            args.bootstrap,
            report["secrets"],
            report["snapshot"].as_str().unwrap_or(""),
            report["replayed_records"],
            report["records"],
            report["seconds"].as_f64().unwrap_or(0.0)
        );
        println!(
            "Start writers and readers on it with EMPTY data directories (their old offsets belong to the lost cluster)."
        );
    })
}

/// The control events that build `control` (a snapshot's `c/` records) again on an empty log,
/// each with its control object's name and the time to give it (`now`, or the time a key term
/// was added or retired, so the new site's key history is the old one's), in an order that
/// applies (an auth mount before its roles, a role before its secret ids, a key term added before
/// it is retired). Records a node derives while applying (accessor and role-id indexes, key
/// revisions) and the old site's leader are not events; any other record this release does not
/// know how to carry stops the reseed, naming it, rather than leave it behind.
pub fn control_events(control: &[(Vec<u8>, Vec<u8>)], now: i64) -> anyhow::Result<Vec<(String, i64, Operation)>> {
    use secretlog_schemas::auth::{AuthObjectKind, control_name};
    use secretlog_schemas::event::{AUDIT_CONTROL_NAME, KEYRING_CONTROL_NAME, MOUNTS_CONTROL_NAME};
    let mut out = Vec::new();
    let mut auth_objects = Vec::new();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for (k, v) in control {
        let key = text(k);
        if k.as_slice() == keys::ROOT_TOKEN {
            let token_hash: [u8; 32] =
                v.as_slice().try_into().context("the snapshot's root token hash is malformed")?;
            out.push(("root-token".to_string(), now, Operation::SetRootToken { token_hash }));
        } else if let Some(name) = key.strip_prefix("c/policy/") {
            let op = Operation::PutPolicy { name: name.to_string(), policy: text(v) };
            out.push((format!("policy/{name}"), now, op));
        } else if let Some(h) = key.strip_prefix("c/token/") {
            let token_hash: [u8; 32] = hex::decode(h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .with_context(|| format!("the snapshot's token record {key:?} is not named by a hash"))?;
            let accessor = serde_json::from_slice::<serde_json::Value>(v)
                .ok()
                .and_then(|r| r["accessor"].as_str().map(str::to_string))
                .unwrap_or_else(|| h[..16].to_string());
            out.push((format!("token/{accessor}"), now, Operation::PutToken { token_hash, record: v.clone() }));
        } else if let Some(path) = key.strip_prefix("c/mount/") {
            // An empty record is a disabled mount (the default one, disabled, stays disabled).
            let op = if v.is_empty() {
                Operation::DeleteMount { path: path.to_string() }
            } else {
                Operation::PutMount { path: path.to_string(), record: v.clone() }
            };
            out.push((MOUNTS_CONTROL_NAME.to_string(), now, op));
        } else if let Some(path) = key.strip_prefix("c/audit/") {
            let op = Operation::PutAuditDevice { path: path.to_string(), record: v.clone() };
            out.push((AUDIT_CONTROL_NAME.to_string(), now, op));
        } else if let Some(mount) = key.strip_prefix("c/auth-mount/") {
            let op = Operation::PutAuthObject {
                mount: mount.to_string(),
                kind: AuthObjectKind::Mount,
                name: String::new(),
                record: v.clone(),
                replaces: None,
            };
            out.push((control_name(mount), now, op));
        } else if let Some(rest) = key.strip_prefix("c/auth/") {
            let (mount, object) =
                rest.split_once('\0').with_context(|| format!("auth record {key:?} names no mount"))?;
            let (kind, name) = object.split_once('/').with_context(|| format!("auth record {key:?} names no kind"))?;
            let kind = match kind {
                // The role-id index: written by a node applying the role.
                "role-id" => continue,
                "role" => AuthObjectKind::AppRoleRole,
                "secret-id" => AuthObjectKind::SecretId,
                "user" => AuthObjectKind::User,
                other => bail!("the snapshot holds auth records of a kind this release cannot carry: {other:?}"),
            };
            let op = Operation::PutAuthObject {
                mount: mount.to_string(),
                kind,
                name: name.to_string(),
                record: v.clone(),
                replaces: None,
            };
            // A secret id after its role (and every object after its mount, above).
            auth_objects.push((kind == AuthObjectKind::SecretId, control_name(mount), op));
        } else if k.as_slice() == keys::KEY_TERMS {
            let terms: secretlog_state::model::KeyTerms =
                serde_json::from_slice(v).context("the snapshot's key terms are malformed")?;
            for (term, info) in &terms.terms {
                if *term > 1 {
                    out.push((KEYRING_CONTROL_NAME.to_string(), info.added_ms, Operation::AddKeyTerm { term: *term }));
                }
            }
            for (term, info) in &terms.terms {
                if let Some(at) = info.retired_ms {
                    out.push((KEYRING_CONTROL_NAME.to_string(), at, Operation::RetireKeyTerm { term: *term }));
                }
            }
        } else if key.starts_with("c/accessor/") || k.starts_with(keys::REVISION_PREFIX) || k.as_slice() == keys::LEADER
        {
            // Derived while applying, or the old site's own.
        } else {
            bail!("the snapshot holds a control record this release cannot carry to a new log: {key:?}");
        }
    }
    auth_objects.sort_by_key(|(secret_id, _, _)| *secret_id);
    out.extend(auth_objects.into_iter().map(|(_, name, op)| (name, now, op)));
    Ok(out)
}

/// Do the reseed; the report says what was written (or that it was already done).
pub async fn reseed(args: &ReseedArgs) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let objects = args.store.objects()?;
    let keyring = args.store.keyring()?;
    let rebuilt = args.point.rebuild(&objects, &keyring).await?;
    let m = rebuilt.snapshot.clone();
    let source = format!(
        "reseed:{}:{}",
        m.id,
        rebuilt.positions.iter().map(|(p, s)| format!("{p}:{}", s.next_offset)).collect::<Vec<_>>().join(",")
    );

    crate::kafka::ensure_topic(&args.bootstrap, &args.topic, args.partitions)
        .await
        .with_context(|| format!("creating {} on {}", args.topic, args.bootstrap))?;
    let partitions = secretlog_state::kafka::partition_count(&args.bootstrap, &args.topic, Duration::from_secs(10))?;
    let (b, t, k, s) = (args.bootstrap.clone(), args.topic.clone(), args.store.keyring()?, source.clone());
    match tokio::task::spawn_blocking(move || inspect(&b, &t, &k, &s)).await?? {
        Found::Empty => {}
        Found::Reseeded { records } => {
            return Ok(json!({ "already_done": true, "source": source, "records": records, "topic": args.topic }));
        }
        Found::Other { records } => bail!(
            "{} on {} already holds {records} records that are not this reseed ({source}); refusing to mix them",
            args.topic,
            args.bootstrap
        ),
    }

    let data = rebuilt.export("").await?;
    let epoch = rebuilt.positions.values().map(|s| s.max_epoch).max().unwrap_or(0).max(1);
    let ts = now_ms();
    let event = |mount: &str, path: &str, op: Operation| Event {
        event_id: rand::random(),
        timestamp_ms: ts,
        writer_epoch: epoch,
        revision: None,
        mount: mount.to_string(),
        path: path.to_string(),
        op,
    };
    let mut values: BTreeMap<(String, String), Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for (mount, path, v, sealed) in data.values {
        values.entry((mount, path)).or_default().push((v, sealed));
    }
    let mut records = Vec::with_capacity(data.secrets.len() + partitions as usize + 1);
    for (mount, path, meta) in &data.secrets {
        let vals = values.remove(&(mount.clone(), path.clone())).unwrap_or_default();
        let e = event(mount, path, Operation::RestoreSecret { metadata: meta.clone().into_bytes(), values: vals });
        let key = record_key(mount, path);
        records.push(Record { partition: partition_for(&key, partitions), key, payload: encode_event(&keyring, &e) });
    }
    // Every control record comes along: the root token, policies and tokens (a token keeps
    // working on the new site until it expires), mounts, auth methods with their roles, secret
    // ids and users, key terms, audit devices.
    for (name, at, op) in control_events(&data.control, ts)? {
        let mut e = event("", &name, op);
        e.timestamp_ms = at;
        let key = control_key(&name);
        records.push(Record { partition: partition_for(&key, partitions), key, payload: encode_event(&keyring, &e) });
    }
    for p in 0..partitions {
        let name = leader_epoch_name(p);
        let e = event("", &name, Operation::LeaderEpoch { leader_url: source.clone() });
        records.push(Record { partition: p, key: control_key(&name), payload: encode_event(&keyring, &e) });
    }
    let n = records.len();
    #[cfg(feature = "planted-faults")]
    if std::env::var_os(CRASH_FOR_TESTS).is_some() {
        crash_mid_transaction(&args.bootstrap, &args.topic, &records)?;
    }
    let producer = TxProducer::new(&args.bootstrap, &format!("secretlog-reseed-{}", args.topic), 600_000, &args.topic)?;
    producer.init(Duration::from_secs(60)).await?;
    let pb = crate::output::spinner(&format!("writing {n} records in one transaction"));
    producer
        .commit(records, Duration::from_secs(600))
        .await
        .context("the reseed transaction did not commit; run it again")?;
    pb.finish_and_clear();
    let report = json!({
        "already_done": false,
        "source": source,
        "snapshot": m.id,
        "replayed_records": rebuilt.replayed.values().sum::<u64>(),
        "secrets": data.secrets.len(),
        "records": n,
        "topic": args.topic,
        "bootstrap": args.bootstrap,
        "epoch": epoch,
        "seconds": started.elapsed().as_secs_f64(),
    });
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secretlog_schemas::auth::{
        AppRoleRecord, AuthMountRecord, AuthObjectKind, SecretIdRecord, TokenRecord, UserRecord, control_name,
    };
    use secretlog_schemas::event::{AUDIT_CONTROL_NAME, KEYRING_CONTROL_NAME, MOUNTS_CONTROL_NAME};
    use secretlog_schemas::mount::MountRecord;
    use secretlog_schemas::{RootKey, audit::AuditDeviceRecord};
    use secretlog_state::materializer::Staging;
    use secretlog_state::store::{PartitionState, Store, StoreConfig};
    use std::sync::Arc;

    async fn store(dir: &std::path::Path) -> Arc<Store> {
        Store::open(&StoreConfig { dir: dir.to_path_buf(), cache_memory_bytes: 1 << 20, cache_disk_bytes: 0 })
            .await
            .unwrap()
    }

    /// Apply `events` (control name, time, op) to `store` as one partition's records, in order;
    /// every one must be accepted.
    async fn apply(store: &Store, ring: &Keyring, events: &[(String, i64, Operation)]) {
        let mut st = PartitionState::default();
        for (name, at, op) in events {
            let e = Event {
                event_id: rand::random(),
                timestamp_ms: *at,
                writer_epoch: 1,
                revision: None,
                mount: String::new(),
                path: name.clone(),
                op: op.clone(),
            };
            let key = control_key(name);
            let mut staging = Staging::new(None);
            let offset = st.next_offset;
            let staged = staging
                .stage(store, ring, 0, offset, Some(&key), &encode_event(ring, &e), &mut st)
                .await
                .unwrap_or_else(|err| panic!("{} of {name}: {err}", op.name()));
            assert!(staged.refused.is_none(), "{} of {name} refused: {:?}", op.name(), staged.refused);
            st.next_offset = offset + 1;
            staging.batch.partitions.insert(0, st);
            store.commit(staging.batch).await.unwrap();
        }
    }

    /// The control records a reseed must carry, as `store` holds them (positions, revisions and
    /// the leader are the site's own).
    async fn control(store: &Store) -> Vec<(String, Vec<u8>)> {
        let (data, _) = store.export().await.unwrap();
        data.control
            .into_iter()
            .filter(|(k, _)| !k.starts_with(keys::REVISION_PREFIX) && k.as_slice() != keys::LEADER)
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect()
    }

    #[tokio::test]
    async fn the_events_of_a_sites_control_records_build_the_same_records_on_a_new_log() {
        let ring = Keyring::from_root(&RootKey::from_bytes([5; 32]));
        let json = |v: &dyn erased::Json| v.bytes();
        let (t0, t1, t2) = (1_700_000_000_000, 1_700_000_100_000, 1_700_000_200_000);
        let token = TokenRecord { accessor: "acc1".into(), policies: vec!["app".into()], ..Default::default() };
        let approle =
            AuthMountRecord { method: "approle".into(), accessor: "auth_approle_1".into(), ..Default::default() };
        let userpass =
            AuthMountRecord { method: "userpass".into(), accessor: "auth_userpass_1".into(), ..Default::default() };
        let role = AppRoleRecord { role_id: "rid-1".into(), token_policies: vec!["app".into()], ..Default::default() };
        let secret_id = SecretIdRecord { accessor: "sid-acc".into(), uses_left: 2, ..Default::default() };
        let user = UserRecord { password_hash: "$argon2id$x".into(), ..Default::default() };
        let device = AuditDeviceRecord {
            kind: "file".into(),
            description: "trail".into(),
            options: [("file_path".to_string(), "/var/log/a.log".to_string())].into(),
            created_ms: t0,
        };
        let object = |mount: &str, kind, name: &str, record: Vec<u8>| {
            (
                control_name(mount),
                t0,
                Operation::PutAuthObject { mount: mount.into(), kind, name: name.into(), record, replaces: None },
            )
        };
        let history = vec![
            ("root-token".to_string(), t0, Operation::SetRootToken { token_hash: [1; 32] }),
            ("policy/app".to_string(), t0, Operation::PutPolicy { name: "app".into(), policy: "path \"x\" {}".into() }),
            ("token/acc1".to_string(), t0, Operation::PutToken { token_hash: [2; 32], record: json(&token) }),
            (
                MOUNTS_CONTROL_NAME.to_string(),
                t0,
                Operation::PutMount {
                    path: "team".into(),
                    record: MountRecord::new_kv([3; 16], "t".into(), t0).encode(),
                },
            ),
            (MOUNTS_CONTROL_NAME.to_string(), t0, Operation::DeleteMount { path: "secret".into() }),
            (
                AUDIT_CONTROL_NAME.to_string(),
                t0,
                Operation::PutAuditDevice { path: "trail".into(), record: device.encode() },
            ),
            object("approle/", AuthObjectKind::Mount, "", json(&approle)),
            object("approle/", AuthObjectKind::AppRoleRole, "web", json(&role)),
            object("approle/", AuthObjectKind::SecretId, &format!("web/{}", "ab".repeat(32)), json(&secret_id)),
            object("userpass/", AuthObjectKind::Mount, "", json(&userpass)),
            object("userpass/", AuthObjectKind::User, "alice", json(&user)),
            (KEYRING_CONTROL_NAME.to_string(), t1, Operation::AddKeyTerm { term: 2 }),
            (KEYRING_CONTROL_NAME.to_string(), t2, Operation::RetireKeyTerm { term: 1 }),
        ];
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let old = store(a.path()).await;
        apply(&old, &ring, &history).await;
        let (data, _) = old.export().await.unwrap();
        let before = control(&old).await;
        for prefix in ["c/root_token", "c/policy/", "c/token/", "c/accessor/", "c/mount/", "c/audit/", "c/auth-mount/"]
        {
            assert!(before.iter().any(|(k, _)| k.starts_with(prefix)), "the history wrote no {prefix} record");
        }
        assert!(before.iter().any(|(k, _)| k.contains("\0role-id/")), "the role's role-id index");

        let events = control_events(&data.control, t2 + 1).unwrap();
        let new = store(b.path()).await;
        apply(&new, &ring, &events).await;
        assert_eq!(control(&new).await, before, "the reseeded control records differ from the site's");

        // A record it does not know stops it, naming the record.
        let mut unknown = data.control.clone();
        unknown.push((b"c/something-new/x".to_vec(), b"{}".to_vec()));
        let err = control_events(&unknown, 0).unwrap_err().to_string();
        assert!(err.contains("c/something-new/x"), "{err}");
    }

    /// JSON of a record, for the test's events.
    mod erased {
        pub trait Json {
            fn bytes(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Json for T {
            fn bytes(&self) -> Vec<u8> {
                serde_json::to_vec(self).unwrap()
            }
        }
    }
}
