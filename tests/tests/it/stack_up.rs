//! The README's first command: `secretlog up` starts writers and readers, describes them in
//! `stack.json`, serves Vault clients, and stops everything on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{call, eventually, shared};

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()), Some("Z" | "X")))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secretlog_up_runs_the_stack_and_stops_it_cleanly() {
    let (cluster, _g) = shared();
    let dir = tempfile::Builder::new().prefix("it-up-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // A topic `up` creates itself, with the partitions it is told.
    let topic = format!("it.up.{:08x}", rand::random::<u32>());
    // Below Linux's ephemeral range (32768+), so no outgoing connection can hold these ports.
    let base = 10000 + (rand::random::<u16>() % 900) * 10;
    let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
    let mut up = secretlog_ops::process::spawn_attached({
        let mut c = Command::new(env!("CARGO_BIN_EXE_secretlog-it"));
        c.args(["up", "--data-dir"])
            .arg(dir.path())
            .args(["--writer-port", &base.to_string(), "--reader-port", &(base + 5).to_string()])
            .args(["--replicator-port", &(base + 9).to_string(), "--topic", &topic, "--partitions", "2"])
            .env("KAFKA_BOOTSTRAP_SERVERS", &cluster.bootstrap)
            .env("SECRETLOG_CACHE_DISK_MB", "16")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        c
    })
    .unwrap();
    let stack_file = dir.path().join("stack.json");
    let stack: Value = eventually(Duration::from_secs(120), "stack.json", || {
        if let Ok(Some(status)) = up.try_wait() {
            panic!(
                "secretlog up exited early ({status}):\n{}",
                std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
            );
        }
        let found = std::fs::read(&stack_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
        async move { found }
    })
    .await;
    assert_eq!(stack["topic"], topic.as_str());
    let partitions = secretlog_state::kafka::partition_count(&cluster.bootstrap, &topic, Duration::from_secs(10));
    assert_eq!(partitions.unwrap(), 2, "`up --partitions 2` creates the topic with 2 partitions");
    assert_eq!(stack["writers"].as_array().unwrap().len(), 2);
    let readers = stack["readers"].as_array().unwrap();
    assert_eq!(readers.iter().map(|r| r["region"].as_str().unwrap()).collect::<Vec<_>>(), ["east", "west"]);
    let token = std::fs::read_to_string(stack["root_token_file"].as_str().unwrap()).unwrap().trim().to_string();
    let key = std::fs::metadata(stack["root_key_file"].as_str().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600, "root key file is private");

    // A write through the east reader (forwarded to the leader), read back from the west one.
    let (east, west) = (readers[0]["url"].as_str().unwrap(), readers[1]["url"].as_str().unwrap());
    let w = call(
        "POST",
        &format!("{east}/v1/secret/data/up/check"),
        Some(&token),
        None,
        Some(json!({"data": {"ok": true}})),
    )
    .await;
    assert_eq!(
        w.status,
        200,
        "{:?}\n--- up.log ---\n{}",
        w.body,
        std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default()
    );
    let r = call("GET", &format!("{west}/v1/secret/data/up/check"), Some(&token), w.index.as_deref(), None).await;
    assert_eq!(r.body["data"]["data"]["ok"], true);

    // `secretlog status --json` sees every node.
    let out = Command::new(env!("CARGO_BIN_EXE_secretlog-it"))
        .args(["status", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let status: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    let codes: Vec<u64> =
        status["nodes"].as_array().unwrap().iter().map(|n| n["health_code"].as_u64().unwrap_or(0)).collect();
    let up_log = || std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    assert_eq!(codes, [200, 429, 473, 473, 200], "{status}\n--- up.log ---\n{}", up_log());

    // SIGTERM: every node stops, then `up` itself.
    let pids: Vec<u64> =
        stack["writers"].as_array().unwrap().iter().chain(readers).map(|n| n["pid"].as_u64().unwrap()).collect();
    secretlog_ops::process::signal(up.id(), libc::SIGTERM).unwrap();
    let status = eventually(Duration::from_secs(60), "secretlog up to exit", || {
        let exited = up.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(status.success(), "up exited with {status}\n--- up.log ---\n{}", up_log());
    for pid in pids {
        assert!(!alive(pid), "node {pid} still running after up stopped\n--- up.log ---\n{}", up_log());
    }
    assert!(!stack_file.exists(), "stack.json removed on a clean stop");
}
