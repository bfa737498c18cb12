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
