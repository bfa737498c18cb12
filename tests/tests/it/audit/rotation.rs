//! The audit file as an operator manages it (issue #22): renamed and reopened on SIGHUP under
//! load without losing or doubling an entry, rotated by size keeping N files, and a full disk that
//! stops the node serving — without executing anything unaudited — until space is freed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Node, Stack, StackOpts, call, eventually, shared, try_call};

/// The sum of a series on a node's `/metrics` (all label sets).
async fn metric(url: &str, name: &str) -> f64 {
    let text = crate::harness::client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every line of an audit file as JSON; a line that does not parse fails the test (an audit
/// trail with a broken line is not one to trust).
fn entries(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: a line that is not JSON ({e}): {l}", path.display()))
        })
        .collect()
}

/// `(request entries, response entries)` per request id.
fn by_request(entries: impl IntoIterator<Item = Value>) -> HashMap<String, (u32, u32)> {
    let mut out: HashMap<String, (u32, u32)> = HashMap::new();
    for e in entries {
        let id =
            e["request"]["id"].as_str().unwrap_or_else(|| panic!("an entry without a request id: {e}")).to_string();
        let c = out.entry(id).or_default();
        match e["type"].as_str() {
            Some("request") => c.0 += 1,
            Some("response") => c.1 += 1,
            _ => panic!("an entry of no known type: {e}"),
        }
    }
    out
}

/// `secretlog audit reopen --pid PID`, as an operator (or logrotate's postrotate) runs it.
fn audit_reopen(node: &Node) {
    let pid = node.pid().expect("the node runs").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_secretlog-it"))
        .args(["audit", "reopen", "--pid", &pid])
        .output()
        .expect("running secretlog audit reopen");
    assert!(
        out.status.success(),
        "secretlog audit reopen: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Read `url` from `tasks` concurrent clients until `stop`; every answer's status and request id.
fn load(
    tasks: usize,
    url: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(u16, String)>>> {
    (0..tasks)
        .map(|_| {
            let (url, token, stop) = (url.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let a = call("GET", &url, Some(&token), None, None).await;
                    answers.push((a.status, a.body["request_id"].as_str().unwrap_or_default().to_string()));
                }
                answers
            })
        })
        .collect()
}

async fn answers_of(tasks: Vec<tokio::task::JoinHandle<Vec<(u16, String)>>>) -> Vec<(u16, String)> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a load task"));
    }
    all
}

fn line_count(path: &Path) -> usize {
    std::fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_audit_file_reopened_on_sighup_under_load_continues_in_a_new_file_with_each_entry_once() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "audit-reopen", readers: 0, ..Default::default() }).await;
    let idx = s.put("audit/reopen", json!({ "password": "p" })).await;
    let logs =
        tempfile::Builder::new().prefix("it-audit-reopen-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = logs.path().join("audit.log");
    let renamed = logs.path().join("audit.log.1");
    let file = path.display().to_string();
    let reader = s.new_reader("reader-audit-reopen", &[("SECRETLOG_AUDIT_FILE", file.as_str())]);
    reader.wait_health(473, Duration::from_secs(60)).await;
    let url = format!("{}/v1/secret/data/audit/reopen", reader.url);
    assert_eq!(call("GET", &url, Some(&s.token), Some(&idx), None).await.status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(8, url, s.token.clone(), stop.clone());
    eventually(Duration::from_secs(30), "entries under load", || async { (line_count(&path) >= 500).then_some(()) })
        .await;

    // logrotate: rename, then signal.
    std::fs::rename(&path, &renamed).expect("renaming the audit file");
    audit_reopen(&reader);
    eventually(Duration::from_secs(20), "a new audit file at the configured path", || async {
        (line_count(&path) >= 1).then_some(())
    })
    .await;
    // The renamed file takes nothing from now on: every entry after the reopen is in the new one.
    let frozen = len(&renamed);
    eventually(Duration::from_secs(30), "entries in the new file under load", || async {
        (line_count(&path) >= 500).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let answers = answers_of(tasks).await;
    assert_eq!(len(&renamed), frozen, "the renamed file still grew after the reopen");

    assert!(answers.iter().all(|(status, id)| *status == 200 && !id.is_empty()), "a read failed under rotation");
    let (old, new) = (entries(&renamed), entries(&path));
    assert!(new.len() >= 500 && old.len() >= 500, "{} entries before, {} after", old.len(), new.len());
    let counts = by_request(old.into_iter().chain(new));
    for (_, id) in &answers {
        let c = counts.get(id).copied().unwrap_or_default();
        assert_eq!(c, (1, 1), "request {id}: {} request and {} response entries across the two files", c.0, c.1);
    }
    // And nothing else: the first read, and one entry pair per answer of the load.
    assert_eq!(counts.len(), answers.len() + 1, "entries of requests that were never answered");
    assert!(counts.values().all(|c| *c == (1, 1)), "a request with its entries missing or doubled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_rotation_keeps_n_files_of_whole_entries_and_drops_the_oldest() {
    const MAX: u64 = 16 * 1024;
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "audit-size", readers: 0, ..Default::default() }).await;
    let idx = s.put("audit/size", json!({ "password": "p" })).await;
    let logs =
        tempfile::Builder::new().prefix("it-audit-size-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let path = logs.path().join("audit.log");
    let file = path.display().to_string();
    let max = MAX.to_string();
    let reader = s.new_reader(
        "reader-audit-size",
        &[
            ("SECRETLOG_AUDIT_FILE", file.as_str()),
            ("SECRETLOG_AUDIT_MAX_BYTES", max.as_str()),
            ("SECRETLOG_AUDIT_KEEP", "2"),
        ],
    );
    reader.wait_health(473, Duration::from_secs(60)).await;
    let url = format!("{}/v1/secret/data/audit/size", reader.url);
    assert_eq!(call("GET", &url, Some(&s.token), Some(&idx), None).await.status, 200);

    // Enough for five files: at least three rotated away and one of them dropped.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(4, url, s.token.clone(), stop.clone());
    eventually(Duration::from_secs(60), "five files' worth of audit entries", || async {
        (metric(&reader.url, "secretlog_audit_bytes_total").await >= 5.0 * MAX as f64).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let answers = answers_of(tasks).await;
    assert!(answers.iter().all(|(status, _)| *status == 200));

    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    assert!(!rotated(3).exists(), "--audit-keep 2 kept a third rotated file");
    let files: Vec<String> = std::fs::read_dir(logs.path())
        .expect("the log dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 3, "the current file and two rotated ones, nothing else: {files:?}");
    for n in [1, 2] {
        let size = len(&rotated(n));
        // Rotated after the entry that reached MAX: whole entries, ending at most one past it.
        assert!((MAX..MAX + 4096).contains(&size), "{} is {size} bytes", rotated(n).display());
        assert!(entries(&rotated(n)).len() > 10);
    }
    assert!(len(&path) < MAX + 4096);
    entries(&path);
    // The files are in order: .2 holds the oldest entries, then .1, then the current file. An
    // entry's time is taken when it is built, before four concurrent requests queue to append, so
    // a file's first entries may be a little older than the previous file's last ones; the
    // earliest and the latest entry of each file must still move forward file by file.
    let time = |e: &Value| e["time"].as_str().expect("time").to_string();
    let last = |p: &Path| entries(p).iter().map(time).max().expect("entries");
    let first = |p: &Path| entries(p).iter().map(time).min().expect("entries");
    // The current file may still be empty: the load can stop right after a rotation.
    let order: Vec<PathBuf> =
        [rotated(2), rotated(1), path.clone()].into_iter().filter(|p| !entries(p).is_empty()).collect();
    assert!(order.len() >= 2, "both rotated files hold entries");
    for pair in order.windows(2) {
        let (older, newer) = (&pair[0], &pair[1]);
        assert!(
            first(older) < first(newer) && last(older) < last(newer),
            "{} ({}..{}) is not older than {} ({}..{})",
            older.display(),
            first(older),
            last(older),
            newer.display(),
            first(newer),
            last(newer)
        );
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new().prefix("it-audit-tmpfs-").tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fill the filesystem of `path` with a file there, to the last byte.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("the filler file");
    let mut chunk = 64 * 1024;
    while chunk > 0 {
        match f.write(&vec![0; chunk]) {
            Ok(n) if n == chunk => {}
            Ok(_) | Err(_) => chunk /= 2,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_refuses_naming_the_file_executes_nothing_and_serves_again_once_space_is_freed() {
    // Never passes quietly: no tmpfs, no test.
    let disk =
        Tmpfs::mount("1m").unwrap_or_else(|why| panic!("this test needs to mount a small tmpfs (run as root): {why}"));
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "audit-disk-full", readers: 0, ..Default::default() }).await;
    let idx = s.put("audit/disk", json!({ "password": "p" })).await;
    let path = disk.path().join("audit.log");
    let file = path.display().to_string();
    let reader = s.new_reader("reader-audit-disk-full", &[("SECRETLOG_AUDIT_FILE", file.as_str())]);
    reader.wait_health(473, Duration::from_secs(60)).await;
    let url = format!("{}/v1/secret/data/audit/disk", reader.url);
    assert_eq!(call("GET", &url, Some(&s.token), Some(&idx), None).await.status, 200);

    let filler = disk.path().join("filler");
    fill(&filler);
    // The audit file's last page may still take an entry or two. Read until a read's own request
    // entry is refused (not just its answer withheld): then no request entry fits any more.
    let refused = eventually(Duration::from_secs(20), "a read refused for its request entry", || async {
        let a = call("GET", &url, Some(&s.token), None, None).await;
        let err = a.body["errors"][0].as_str().unwrap_or_default().to_string();
        (a.status == 503 && !err.contains("withheld")).then_some(err)
    })
    .await;
    assert!(refused.starts_with("audit log unavailable: ") && refused.contains(&file), "names the file: {refused}");
    assert!(metric(&reader.url, "secretlog_audit_failures_total").await >= 1.0);
    let avail = metric(&reader.url, "secretlog_audit_filesystem_avail_bytes").await;
    assert!(avail < 64.0 * 1024.0, "the disk gauge shows a full disk: {avail}");

    // A write through the full node is refused before it runs: the secret stays at version 1.
    let w = call("POST", &url, Some(&s.token), None, Some(json!({ "data": { "password": "unaudited" } }))).await;
    assert_eq!(w.status, 503, "{:?}", w.body);
    let still = call("GET", &format!("{}/v1/secret/data/audit/disk", s.writer.url), Some(&s.token), None, None).await;
    assert_eq!(still.body["data"]["metadata"]["version"], 1, "the refused write was executed: {:?}", still.body);

    // Space comes back: the node serves again by itself.
    std::fs::remove_file(&filler).expect("removing the filler");
    let started = Instant::now();
    let ok = eventually(Duration::from_secs(20), "a read served once the disk has space", || async {
        let a = try_call("GET", &url, Some(&s.token), None, None).await.ok()?;
        (a.status == 200).then_some(a)
    })
    .await;
    eprintln!("served again {:?} after the space was freed", started.elapsed());
    assert_eq!(ok.body["data"]["data"]["password"], "p");
    let id = ok.body["request_id"].as_str().expect("request id").to_string();

    // Every line of the file is a whole entry (fragments of refused entries were cut off), and
    // the read served has both.
    let counts = by_request(entries(&path));
    assert_eq!(counts.get(&id).copied(), Some((1, 1)), "the read served after the disk had room");
    assert!(counts.values().all(|&(req, resp)| req == 1 && resp <= 1), "{counts:?}");
}
