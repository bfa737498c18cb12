//! The replicator: a complete log archive and consistent snapshots that new readers start from.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use secretlog_schemas::archive::{decode_segment, parse_segment_name};
use serde_json::{Value, json};

use crate::harness::{Stack, StackOpts, call, eventually, shared};
use crate::kv_api::digest;

/// Every committed record offset of the topic, per partition, read raw (read_committed).
fn committed_offsets(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, BTreeSet<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "it-raw-offsets")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    let mut eof = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while eof.len() < partitions as usize && std::time::Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.entry(m.partition()).or_default().insert(m.offset());
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            _ => {}
        }
    }
    out
}

/// Every archived record offset, per partition, checking segments do not overlap.
fn archived_offsets(objects: &std::path::Path) -> BTreeMap<i32, Vec<i64>> {
    let mut out: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    let Ok(parts) = std::fs::read_dir(objects.join("archive")) else { return out };
    for part in parts.flatten() {
        let p: i32 = part.file_name().to_string_lossy().trim_start_matches('p').parse().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(part.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names.iter().filter(|n| n.ends_with(".arrow")) {
            let (first, last) = parse_segment_name(n).unwrap();
            let recs = decode_segment(n, &std::fs::read(part.path().join(n)).unwrap()).unwrap();
            assert_eq!(recs.first().map(|r| r.offset), Some(first), "{n}");
            assert_eq!(recs.last().map(|r| r.offset), Some(last), "{n}");
            out.entry(p).or_default().extend(recs.iter().map(|r| r.offset));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_holds_every_committed_record_once_across_a_replicator_kill() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "archive", readers: 1, ..Default::default() }).await;
    let (url, dir) = s.local_objects();
    let mut rep = s.new_replicator(&url, &[]);
    rep.wait_health(200, Duration::from_secs(60)).await;
    let mut last = None;
    for i in 0..300 {
        last = Some(s.put(&format!("a/{}", i % 37), json!({"i": i})).await);
        if i == 150 {
            // kill -9 mid-stream, once some segments are out.
            eventually(Duration::from_secs(30), "first segments", || async {
                (!archived_offsets(&dir).is_empty()).then_some(())
            })
            .await;
            rep.kill9();
            rep.restart();
        }
    }
    rep.wait_health(200, Duration::from_secs(60)).await;
    let token: secretlog_schemas::ConsistencyToken = last.unwrap().parse().unwrap();
    let committed = committed_offsets(&s.bootstrap, &s.topic, 3);
    let expected: usize = committed.values().map(|v| v.len()).sum();
    let archived = eventually(Duration::from_secs(60), "the archive to catch up", || async {
        let a = archived_offsets(&dir);
        let n: usize = a.values().map(|v| v.len()).sum();
        (n >= expected
            && token.0.iter().all(|(p, off)| a.get(p).and_then(|v| v.last()).is_some_and(|l| *l + 1 >= *off)))
        .then_some(a)
    })
    .await;
    for (p, offsets) in &archived {
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {p}: offsets out of order or duplicated");
        let got: BTreeSet<i64> = offsets.iter().copied().collect();
        assert_eq!(&got, committed.get(p).unwrap(), "partition {p}: archive differs from the committed log");
    }
    let h: Value =
        crate::harness::client().get(format!("{}/v1/sys/health", rep.url)).send().await.unwrap().json().await.unwrap();
    assert!(h["secretlog"]["archive"]["archived"].is_object(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_reader_bootstraps_from_a_snapshot_and_matches_its_peer() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "snapshot", readers: 1, ..Default::default() }).await;
    let (url, dir) = s.local_objects();
    let rep = s.new_replicator(&url, &[]);
    rep.wait_health(200, Duration::from_secs(60)).await;
    let mut last = None;
    for i in 0..120 {
        last = Some(s.put(&format!("s/{}", i % 40), json!({"i": i})).await);
    }
    // The replicator has applied everything before the snapshot (its digest endpoint waits).
    let _ = digest(&rep.url, &s.token, last.as_deref()).await;
    let snap = call("POST", &format!("{}/v1/sys/secretlog/snapshot", rep.url), Some(&s.token), None, None).await;
    assert_eq!(snap.status, 200, "{:?}", snap.body);
    let manifest = &snap.body["data"];
    assert_eq!(manifest["secrets"], 40);
    assert_eq!(manifest["values"], 120, "3 versions of each of 40 secrets");
    let id = manifest["id"].as_str().unwrap().to_string();
    // A third-party Arrow reader agrees with the manifest.
    let out = tokio::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/read_snapshot.py"))
        .arg(dir.join("snapshots").join(&id))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // More writes after the snapshot: the new reader must take them from the log.
    for i in 0..30 {
        last = Some(s.put(&format!("after/{i}"), json!({"i": i})).await);
    }
    let fresh = s.new_reader("fresh", &[("SECRETLOG_OBJECT_STORE", url.as_str())]);
    fresh.wait_health(473, Duration::from_secs(60)).await;
    assert!(
        std::fs::read_to_string(&fresh.log).unwrap().contains("bootstrapped from snapshot"),
        "{}",
        fresh.log_tail()
    );
    let a = digest(&fresh.url, &s.token, last.as_deref()).await;
    let b = digest(&s.readers[0].url, &s.token, last.as_deref()).await;
    assert_eq!(a["digest"], b["digest"], "bootstrapped reader differs from its peer: {a} vs {b}");

    // A flipped byte in a snapshot file: a new reader refuses it, naming the file and checksum.
    let values = dir.join("snapshots").join(&id).join("values.arrow");
    let mut bytes = std::fs::read(&values).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&values, bytes).unwrap();
    let mut broken = s.new_reader("broken", &[("SECRETLOG_OBJECT_STORE", url.as_str())]);
    eventually(Duration::from_secs(30), "the reader to refuse the snapshot", || {
        let exited = broken.exited();
        async move { exited }
    })
    .await;
    let log = std::fs::read_to_string(&broken.log).unwrap();
    assert!(log.contains("values.arrow") && log.contains("checksum"), "{log}");
}
