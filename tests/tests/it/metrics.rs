//! Every node exposes Prometheus metrics with the documented series and sane values.

use serde_json::json;

use crate::harness::{Stack, StackOpts, call, client, shared};

/// The sum of every sample of `name` (over all label sets) in a Prometheus text page; `None`
/// when the series is absent.
fn sample(page: &str, name: &str) -> Option<f64> {
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
    assert!(sample(&w, "secretlog_writer_transactions_total").is_some_and(|n| n >= 5.0), "{w}");
    assert!(sample(&w, "secretlog_writer_transaction_duration_seconds_count").is_some_and(|n| n >= 5.0));
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
