//! An unmodified Vault client library works against secretlog.

use crate::harness::{Stack, StackOpts, shared};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_writes_through_a_reader_and_reads_from_another() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "hvac", readers: 2, ..Default::default() }).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/hvac_compat.py");
    let out = tokio::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&script)
        .arg(&s.readers[0].url)
        .arg(&s.readers[1].url)
        .env("VAULT_TOKEN", &s.token)
        .output()
        .await
        .expect("running python3 (hvac is installed by .ci/run)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hvac script failed:\n{stdout}\n{stderr}\n--- reader log ---\n{}",
        s.readers[0].log_tail()
    );
    assert!(stdout.contains("all checks passed"));
}

/// Run the read-after-write script against `url` for `rounds`: its exit status and JSON line.
async fn read_after_write(url: &str, token: &str, rounds: u32) -> (bool, String, String) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/hvac_read_after_write.py");
    let out = tokio::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&script)
        .arg(url)
        .arg(rounds.to_string())
        .env("VAULT_TOKEN", token)
        .output()
        .await
        .expect("running python3 (hvac is installed by .ci/run)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue #19: a client that writes and reads back at once on the leader — hvac, sending no
/// secretlog header — sees its own write every time: versions, deletes, destroys, a list, a
/// metadata delete. 1,000 rounds; 0 stale answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_reads_its_own_writes_on_the_leader_without_a_header() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "hvac-raw", readers: 0, ..Default::default() }).await;
    let (ok, stdout, stderr) = read_after_write(&s.writer.url, &s.token, 1000).await;
    eprintln!("{stdout}");
    assert!(
        ok,
        "stale answers after the client's own writes:\n{stdout}\n{stderr}\n--- writer log ---\n{}",
        s.writer.log_tail()
    );
    assert!(stdout.contains("\"rounds\": 1000"), "{stdout}");
}

/// The same check can fail: a writer with the planted bug `ack-before-apply` (answering once a
/// write is delivered, before its own state applied it) is caught serving stale answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_write_catches_a_writer_that_acknowledges_before_applying() {
    let (cluster, _g) = shared();
    let opts = StackOpts {
        name: "hvac-planted",
        readers: 0,
        writer_env: vec![("SECRETLOG_TEST_PLANTED_BUG".into(), "ack-before-apply".into())],
        ..Default::default()
    };
    let s = Stack::start(cluster, opts).await;
    let (ok, stdout, stderr) = read_after_write(&s.writer.url, &s.token, 300).await;
    eprintln!("{stdout}");
    assert!(!ok, "the planted bug went unnoticed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("\"stale\""), "the script reports what was stale, not a crash:\n{stdout}\n{stderr}");
}
