//! An unmodified Vault client library works against secretlog.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Stack, StackOpts, call, shared};

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
    read_after_write_with(url, token, rounds, &[]).await
}

/// [`read_after_write`] with the script's options (`--read-url`, `--strong`).
async fn read_after_write_with(url: &str, token: &str, rounds: u32, opts: &[&str]) -> (bool, String, String) {
    let out = read_after_write_script(url, token, rounds, opts)
        .output()
        .await
        .expect("running python3 (hvac is installed by .ci/run)");
    script_outcome(out)
}

/// The read-after-write script's command line.
fn read_after_write_script(url: &str, token: &str, rounds: u32, opts: &[&str]) -> tokio::process::Command {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/hvac_read_after_write.py");
    let mut cmd = tokio::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    cmd.arg(&script).arg(url).arg(rounds.to_string()).args(opts).env("VAULT_TOKEN", token);
    cmd
}

/// Its exit status, standard output and standard error.
fn script_outcome(out: std::process::Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue #19, across a leader failover: hvac writing through a reader (forwarded to whichever
/// writer leads) and reading back at once from it, no header, while the leader is killed with
/// SIGKILL part way through (the script still running, about 570 rounds to go). The script
/// retries a write that fails while no writer leads, as a client riding out a failover would;
/// every read right after an acknowledged write must show it (620 rounds, 0 stale), and the last
/// version the client was told it wrote is the new leader's current version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_reads_its_own_writes_across_a_leader_failover() {
    let (cluster, _g) = shared();
    let mut s =
        Stack::start(cluster, StackOpts { name: "hvac-failover", readers: 1, standbys: 1, ..Default::default() }).await;
    crate::failover::leader_first(&mut s).await;
    // 620 rounds: the run does not end on a round that deletes the secret's metadata.
    let mut child = read_after_write_script(&s.readers[0].url, &s.token, 620, &["--retry-writes", "60"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("running python3 (hvac is installed by .ci/run)");
    // The script moves to a new secret every 50 rounds (`raw/s50`, ...): kill the leader once the
    // first has been left behind.
    let list = format!("{}/v1/secret/metadata/raw?list=true", s.writer.url);
    crate::harness::eventually(Duration::from_secs(60), "50 rounds before the kill", || async {
        let a = call("GET", &list, Some(&s.token), None, None).await;
        a.body["data"]["keys"].as_array().is_some_and(|k| k.iter().any(|k| k != "s0")).then_some(())
    })
    .await;
    s.writer.kill9();
    assert!(child.try_wait().expect("the script's status").is_none(), "the script ended before the leader was killed");
    let (ok, stdout, stderr) = script_outcome(child.wait_with_output().await.expect("the script ran"));
    eprintln!("{stdout}");
    assert!(
        ok,
        "stale answers across the failover:
{stdout}
{stderr}
--- reader log ---
{}",
        s.readers[0].log_tail()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(report["rounds"], 620, "{stdout}");
    // Writes sent while no writer leads are held by the reader until one does (it never sent
    // them), so the client may see no failure at all; any it does see, it retries.
    eprintln!("[hvac-failover] writes the client retried: {}", report["writes_retried"]);
    let (path, version) = (report["last"]["path"].as_str().expect("last path"), &report["last"]["version"]);
    let new_leader = &s.standbys[0];
    new_leader.wait_health(200, Duration::from_secs(30)).await;
    let m = call("GET", &format!("{}/v1/secret/metadata/{path}", new_leader.url), Some(&s.token), None, None).await;
    assert_eq!(&m.body["data"]["current_version"], version, "the new leader's {path}: {:?}", m.body);
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

/// Issue #20, session reads: hvac writing through a reader (forwarded to the leader) and reading
/// back at once from the same reader, with no secretlog header, sees its own write every time —
/// the reader remembers where the token's writes landed. 1,000 rounds; 0 stale answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_reads_its_own_writes_through_a_reader_without_a_header() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "hvac-session", readers: 1, ..Default::default() }).await;
    let (ok, stdout, stderr) = read_after_write(&s.readers[0].url, &s.token, 1000).await;
    eprintln!("{stdout}");
    assert!(
        ok,
        "stale answers after the client's own writes through the reader:\n{stdout}\n{stderr}\n--- reader log ---\n{}",
        s.readers[0].log_tail()
    );
    assert!(stdout.contains("\"rounds\": 1000"), "{stdout}");
}

/// The session check can fail: the same client against a reader told to serve `latest` (no
/// session memory) is caught reading an older version than its own write. The reader applies
/// the log 200 ms late (planted `slow-apply`), so that whether it has caught up by the next read
/// is not left to the machine's timing; the same lag does not fool a reader with session
/// memory (`hvac_reads_its_own_writes_through_a_lagging_reader`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_write_catches_a_reader_without_session_memory() {
    let (cluster, _g) = shared();
    let opts = StackOpts {
        name: "hvac-latest",
        readers: 1,
        reader_args: vec!["--consistency".into(), "latest".into()],
        reader_env: vec![("SECRETLOG_TEST_PLANTED_BUG".into(), "slow-apply".into())],
        ..Default::default()
    };
    let s = Stack::start(cluster, opts).await;
    let (ok, stdout, stderr) = read_after_write(&s.readers[0].url, &s.token, 300).await;
    eprintln!("{stdout}");
    assert!(!ok, "a reader without session memory went unnoticed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("\"stale\""), "the script reports what was stale, not a crash:\n{stdout}\n{stderr}");
}

/// Session memory holds against a reader that applies the log 200 ms late (planted
/// `slow-apply`): each read waits for the token's own write. 100 rounds; 0 stale answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_reads_its_own_writes_through_a_lagging_reader() {
    let (cluster, _g) = shared();
    let opts = StackOpts {
        name: "hvac-lagging",
        readers: 1,
        reader_env: vec![("SECRETLOG_TEST_PLANTED_BUG".into(), "slow-apply".into())],
        ..Default::default()
    };
    let s = Stack::start(cluster, opts).await;
    let (ok, stdout, stderr) = read_after_write(&s.readers[0].url, &s.token, 100).await;
    eprintln!("{stdout}");
    assert!(ok, "stale answers through a lagging reader with session memory:\n{stdout}\n{stderr}");
    assert!(stdout.contains("\"rounds\": 100"), "{stdout}");
}

/// Issue #20, strong reads: writes through the leader, each read at once from a reader with
/// `X-Secretlog-Consistency: strong` — linearizable, so every read shows every write acknowledged
/// before it was sent. 1,000 rounds; 0 stale answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_reads_on_a_reader_see_every_write_the_leader_acknowledged_before_them() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "hvac-strong", readers: 1, ..Default::default() }).await;
    let (ok, stdout, stderr) =
        read_after_write_with(&s.writer.url, &s.token, 1000, &["--read-url", &s.readers[0].url, "--strong"]).await;
    eprintln!("{stdout}");
    assert!(ok, "stale strong reads:\n{stdout}\n{stderr}\n--- reader log ---\n{}", s.readers[0].log_tail());
    assert!(stdout.contains("\"rounds\": 1000"), "{stdout}");
}

/// Issue #20, no denial from unconfirmed state: a token created through reader east and used at
/// once, with no header, on reader west is accepted — west checks the log's end before it would
/// refuse a token it has not seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_created_through_one_reader_works_at_once_on_another() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "token-east-west", readers: 2, ..Default::default() }).await;
    let (east, west) = (&s.readers[0].url, &s.readers[1].url);
    let created =
        call("POST", &format!("{east}/v1/secret/data/shared/x"), Some(&s.token), None, Some(json!({"data": {"v": 1}})))
            .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    for round in 0..50 {
        // A policy and a token, both new, both through east; used on west at once.
        let policy = format!("reader-{round}");
        let rules = "path \"secret/data/shared/*\" { capabilities = [\"read\"] }";
        let p = call(
            "PUT",
            &format!("{east}/v1/sys/policies/acl/{policy}"),
            Some(&s.token),
            None,
            Some(json!({ "policy": rules })),
        )
        .await;
        assert_eq!(p.status, 204, "round {round}: {:?}", p.body);
        let body = json!({ "policies": [policy] });
        let a = call("POST", &format!("{east}/v1/auth/token/create"), Some(&s.token), None, Some(body)).await;
        assert_eq!(a.status, 200, "round {round}: {:?}", a.body);
        let token = a.body["auth"]["client_token"].as_str().expect("client_token").to_string();
        let r = call("GET", &format!("{west}/v1/secret/data/shared/x"), Some(&token), None, None).await;
        assert_eq!(r.status, 200, "round {round}: the new token was refused on west: {:?}", r.body);
        assert_eq!(r.body["data"]["data"]["v"], 1, "round {round}");
    }
}

/// Issue #20: a reader restarted on an old data directory serves nothing older than the log's
/// end as of its start — from its very first answer, not once it has caught up by chance. While
/// it is down, the secret gets newer versions; every read right after the restart (no header,
/// the token with no session on the new process) shows the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_restarted_on_old_state_serves_nothing_older_than_the_log_at_its_start() {
    let (cluster, _g) = shared();
    let mut s = Stack::start(cluster, StackOpts { name: "restart-old-state", readers: 1, ..Default::default() }).await;
    let index = s.put("old/x", json!({"v": 1})).await;
    let url = format!("{}/v1/secret/data/old/x", s.readers[0].url);
    assert_eq!(call("GET", &url, Some(&s.token), Some(&index), None).await.body["data"]["data"]["v"], 1);
    s.readers[0].stop();
    for v in 2..=5 {
        s.put("old/x", json!({"v": v})).await;
    }
    s.readers[0].spawn();
    let mut answered = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while answered < 20 {
        assert!(std::time::Instant::now() < deadline, "the restarted reader answered {answered} reads in 30 s");
        let a = crate::harness::try_call("GET", &url, Some(&s.token), None, None).await;
        let Some(a) = a.ok().filter(|a| a.status != 0) else {
            // Not listening yet: poll again.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        assert_eq!(a.status, 200, "{:?}\n{}", a.body, s.readers[0].log_tail());
        assert_eq!(a.body["data"]["metadata"]["version"], 5, "an answer older than the log at the start: {:?}", a.body);
        answered += 1;
    }
}
