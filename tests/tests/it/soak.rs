//! `secretlog soak`, compressed: two minutes of mixed churn against a real stack (two readers, a
//! replicator with a short snapshot retention), judged with generous margins; then a reader
//! restarted after it catches up to its peer's state.

use std::time::Duration;

use clap::Parser;
use secretlog_ops::stack::{NodeEntry, StackFile};
use serde_json::Value;

use crate::harness::*;
use crate::kv_api::digest;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    soak: secretlog_ops::soak::SoakArgs,
}

fn entry(n: &Node, region: Option<&str>) -> NodeEntry {
    NodeEntry {
        name: n.name.clone(),
        url: n.url.clone(),
        pid: n.pid().expect("the node runs"),
        region: region.map(str::to_string),
        log: n.log.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compressed_soak_keeps_every_bound_and_a_restarted_reader_catches_up() {
    let (cluster, _g) = shared();
    let mut s = Stack::start(cluster, StackOpts { name: "soak", ..Default::default() }).await;
    let objects = format!("file://{}", s.dir.path().join("objects").display());
    // Snapshot retention compressed with the run: the newest 3, and nothing older than 30 s.
    let rep = s.new_replicator(&objects, &[("SECRETLOG_KEEP_SNAPSHOTS", "3"), ("SECRETLOG_KEEP_SNAPSHOTS_SECS", "30")]);
    rep.wait_health(200, Duration::from_secs(60)).await;
    let stack = StackFile {
        kafka_bootstrap: s.bootstrap.clone(),
        topic: s.topic.clone(),
        writers: vec![entry(&s.writer, None)],
        readers: s.readers.iter().enumerate().map(|(i, r)| entry(r, Some(&format!("region-{i}")))).collect(),
        replicator: Some(entry(&rep, None)),
        root_token_file: s.dir.path().join("root-token"),
        root_key_file: s.root_key_file.clone(),
        object_store: Some(objects),
        kafka_started_by_stack: false,
    };
    std::fs::write(s.dir.path().join("stack.json"), serde_json::to_vec(&stack).unwrap()).unwrap();
    let out = s.dir.path().join("soak-out");
    let data_dir = s.dir.path().display().to_string();
    let out_dir = out.display().to_string();
    #[rustfmt::skip]
    let args = Cli::parse_from([
        "soak", "--data-dir", &data_dir, "--out-dir", &out_dir,
        "--duration", "120s", "--baseline", "40s", "--sample-every", "4s",
        "--write-rate", "10", "--read-rate", "40", "--token-rate", "0.5", "--token-ttl", "8s",
        "--secrets", "100", "--max-versions", "3",
        "--tidy-every", "10s", "--snapshot-every", "15s", "--policy-every", "10s", "--rotate-at", "60s",
        // Generous: two cores shared with other builds.
        "--factor", "2", "--latency-factor", "4", "--p99-floor-ms", "50",
    ])
    .soak;
    let verdict = secretlog_ops::soak::run(args).await;
    {
        // Keep the last run's results and every node's log (the stack's directory goes with it).
        let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak-last");
        let _ = std::fs::remove_dir_all(&keep);
        std::fs::create_dir_all(&keep).unwrap();
        for e in std::fs::read_dir(s.dir.path()).unwrap().flatten() {
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".log") {
                std::fs::copy(e.path(), keep.join(&name)).unwrap();
            }
        }
        for f in ["soak.json", "soak.png"] {
            let _ = std::fs::copy(out.join(f), keep.join(f));
        }
        eprintln!("kept in {}", keep.display());
    }

    let results: Value = serde_json::from_slice(&std::fs::read(out.join("soak.json")).unwrap()).unwrap();
    assert!(std::fs::metadata(out.join("soak.png")).unwrap().len() > 10_000, "the chart is drawn");
    verdict.unwrap_or_else(|e| panic!("{e}: {}", serde_json::to_string_pretty(&results["bounds"]).unwrap()));
    let samples = results["samples"].as_array().unwrap();
    assert!(samples.len() >= 25, "sampled all along: {}", samples.len());
    assert!(results["ops"].as_u64().unwrap() > 3000, "the load ran: {}", results["ops"]);
    let bounds = results["bounds"].as_array().unwrap();
    for series in ["rss reader-0", "fds reader-1", "rss replicator", "tokens in state", "read p99 ms", "write p99 ms"] {
        assert!(bounds.iter().any(|b| b["series"] == series), "{series} judged: {bounds:?}");
    }
    assert!(bounds.iter().any(|b| b["series"].as_str().unwrap().starts_with("disk reader-0/")), "{bounds:?}");
    assert!(bounds.iter().any(|b| b["series"] == "disk objects/snapshots"), "{bounds:?}");
    // Tokens expire every few seconds and the tidies keep up: far fewer than were created.
    let tokens = samples.last().unwrap()["tokens"].as_u64().unwrap();
    assert!(tokens < 30, "{tokens} tokens in state after ~60 created");

    // A reader restarted after the soak catches up and holds its peer's state.
    s.readers[0].restart();
    s.readers[0].wait_health(473, Duration::from_secs(60)).await;
    // A write after it: every node's digest is taken once that write is applied there.
    let index = s.put("soak-end/marker", serde_json::json!({"done": true})).await;
    let w = digest(&s.writer.url, &s.token, Some(&index)).await;
    let a = digest(&s.readers[0].url, &s.token, Some(&index)).await;
    let b = digest(&s.readers[1].url, &s.token, Some(&index)).await;
    assert_eq!(a["digest"], b["digest"], "the restarted reader matches its peer");
    assert_eq!(a["digest"], w["digest"], "and the leader");
}
