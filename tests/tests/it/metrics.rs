//! Every node exposes Prometheus metrics with the documented series and sane values.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::harness::{Stack, StackOpts, call, client, eventually, shared};

/// The sum of every sample of `name` (over all label sets) in a Prometheus text page; `None`
/// when the series is absent.
pub(crate) fn sample(page: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_and_reader_export_the_documented_metrics() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "metrics", readers: 1, ..Default::default() }).await;
    let mut index = None;
    for i in 0..5 {
        let a = call(
            "POST",
            &format!("{}/v1/secret/data/m/{i}", s.writer.url),
            Some(&s.token),
            None,
            Some(json!({"data": {"i": i}})),
        )
        .await;
        assert_eq!(a.status, 200);
        index = a.index;
    }
    for _ in 0..3 {
        let a =
            call("GET", &format!("{}/v1/secret/data/m/0", s.readers[0].url), Some(&s.token), index.as_deref(), None)
                .await;
        assert_eq!(a.status, 200);
    }
    let page =
        |url: String| async move { client().get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap() };
    let w = page(s.writer.url.clone()).await;
    assert_eq!(sample(&w, "secretlog_writer_is_leader"), Some(1.0), "{w}");
    assert!(sample(&w, "secretlog_writer_epoch").is_some_and(|e| e >= 1.0));
    assert!(sample(&w, "secretlog_writer_writes_total").is_some_and(|n| n >= 5.0), "{w}");
    assert!(sample(&w, "secretlog_writer_batch_duration_seconds_count").is_some_and(|n| n >= 5.0));
    assert!(sample(&w, "secretlog_writer_batch_size_count").is_some());
    let r = page(s.readers[0].url.clone()).await;
    assert!(sample(&r, "secretlog_reader_events_applied_total").is_some_and(|n| n >= 5.0), "{r}");
    assert!(sample(&r, "secretlog_reader_applied_offset").is_some());
    assert!(sample(&r, "secretlog_reader_lag_records").is_some_and(|l| l >= 0.0));
    assert!(
        sample(&r, "secretlog_reader_cache_hits_total").is_some_and(|n| n >= 1.0),
        "repeated reads hit the cache: {r}"
    );
    assert!(sample(&r, "secretlog_http_requests_total").is_some_and(|n| n >= 3.0));
    assert!(sample(&r, "secretlog_http_request_duration_seconds_bucket").is_some());
    assert!(!r.contains(&s.token) && !w.contains(&s.token), "no token in metrics");
}

/// The `/metrics` page of the node at `url`; `None` while it does not answer.
async fn metrics_page(url: &str) -> Option<String> {
    client().get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()
}

/// Wait until `name` on the node at `url` satisfies `ok`; returns its value. Never asks the node
/// for its health, so what is checked is what the node publishes by itself.
async fn wait_sample(url: &str, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    eventually(Duration::from_secs(60), &format!("{name} on {url}"), || async {
        metrics_page(url).await.and_then(|p| sample(&p, name)).filter(|v| ok(*v))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_halted_archive_and_snapshot_gauges_follow_the_nodes_state() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "gauges", readers: 1, partitions: 1, ..Default::default() }).await;
    let last = s.put("g/0", json!({"a": 0})).await;
    let (writer, reader) = (s.writer.url.clone(), s.readers[0].url.clone());
    for url in [&writer, &reader] {
        assert_eq!(wait_sample(url, "secretlog_sealed", |_| true).await, 0.0, "{url} has its key");
        assert_eq!(wait_sample(url, "secretlog_reader_partitions_halted", |_| true).await, 0.0, "{url}");
    }
    // The batch size is a count: its buckets go up to the writer's batch limit, not to 5 (s).
    let w = metrics_page(&writer).await.unwrap();
    assert!(w.contains("secretlog_writer_batch_size_bucket{le=\"256\"}"), "{w}");

    // No key at all, and another cluster's key (found once the materializer meets a record).
    let missing = s.dir.path().join("missing.key");
    let keyless = s.new_reader("keyless", &[("SECRETLOG_ROOT_KEY_FILE", missing.to_str().unwrap())]);
    wait_sample(&keyless.url, "secretlog_sealed", |v| v == 1.0).await;
    let wrong = s.dir.path().join("wrong.key");
    secretlog_ops::stack::ensure_root_key(&wrong).unwrap();
    let wrongkey = s.new_reader("wrongkey", &[("SECRETLOG_ROOT_KEY_FILE", wrong.to_str().unwrap())]);
    wait_sample(&wrongkey.url, "secretlog_sealed", |v| v == 1.0).await;

    // The replicator publishes its archive lag from the archive loop (health is never asked
    // here), and after a restart the newest snapshot already in object storage.
    let objects = format!("file://{}", s.dir.path().join("objects").display());
    let mut rep = s.new_replicator(&objects, &[]);
    assert_eq!(wait_sample(&rep.url, "secretlog_sealed", |_| true).await, 0.0);
    wait_sample(&rep.url, "secretlog_archive_lag_seconds", |v| v >= 0.0).await;
    let snap = call("POST", &format!("{}/v1/sys/secretlog/snapshot", rep.url), Some(&s.token), Some(&last), None).await;
    assert_eq!(snap.status, 200, "{:?}", snap.body);
    let created = snap.body["data"]["created_ms"].as_i64().expect("manifest created_ms") as f64 / 1000.0;
    let near = move |v: f64| (v - created).abs() < 0.01;
    wait_sample(&rep.url, "secretlog_snapshot_last_created_timestamp_seconds", near).await;
    rep.restart();
    wait_sample(&rep.url, "secretlog_snapshot_last_created_timestamp_seconds", near).await;

    // A forged record halts the partition on every node that reads it, and the gauge stays up.
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &s.bootstrap).create().unwrap();
    let mut forged = b"SL\x01".to_vec();
    forged.extend_from_slice(&[0u8; 60]);
    p.send(FutureRecord::to(&s.topic).key("secret/g/0").payload(&forged).partition(0), Duration::from_secs(10))
        .await
        .unwrap();
    for url in [&reader, &writer, &rep.url] {
        wait_sample(url, "secretlog_reader_partitions_halted", |v| v == 1.0).await;
        assert!(wait_sample(url, "secretlog_reader_partition_halts_total", |v| v >= 1.0).await >= 1.0);
    }
}
