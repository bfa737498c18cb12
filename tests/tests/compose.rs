//! The compose topology (compose/docker-compose.yml with compose/docker-compose.local.yml) started
//! for real in Docker and tested end to end: every health check passes, a secret written through
//! one region's reader with hvac is read in the other region, the write reaches the replicator's
//! archive in object storage, Prometheus scrapes every node, and `down -v` leaves no container,
//! network or volume behind.
//!
//! `scripts/compose-local build` runs `scripts/bootstrap --docker` (Docker engine, Compose, the
//! debootstrapped base image) and builds the images, cached by tag and layer; the secretlog image
//! gets this package's `secretlog-it` binary (the same main.rs as `secretlog`, already built for
//! the tests), or `SECRETLOG_BIN` when set (say, the release binary). Where Docker cannot run,
//! the test fails and says why: it never passes without the topology.
//!
//! The project is `secretlog` (compose/.env), ports 8200-8400 and 9090 on 127.0.0.1, so only one
//! run at a time per Docker host; it is a test binary of its own, apart from the `it` suite.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use secretlog_schemas::archive::decode_segment;
use secretlog_schemas::topic::{partition_for, record_key};
use serde_json::Value;

/// The Compose project name (compose/.env): what labels every container, network and volume.
const PROJECT: &str = "secretlog";

/// Partitions of the mutation topic as kafka-init creates it (compose/docker-compose.local.yml).
const PARTITIONS: i32 = 6;

/// The object-store prefix of the nodes (`SECRETLOG_OBJECT_STORE=s3://secretlog-dr/cluster-1`).
const BUCKET: &str = "secretlog-dr";
const PREFIX: &str = "cluster-1";

/// Services that run and report healthy, and those that run once and must exit 0.
const LONG_RUNNING: &[&str] = &[
    "kafka-1",
    "kafka-2",
    "kafka-3",
    "s3",
    "writer-1",
    "writer-2",
    "reader-eu",
    "reader-us",
    "replicator",
    "prometheus",
];
const ONE_SHOT: &[&str] = &["root-key", "kafka-init", "s3-init"];

/// Every node Prometheus must scrape (compose/local/prometheus/prometheus.yml), as `job/instance`.
const SCRAPED: &[&str] = &[
    "secretlog-writer/writer-1:8200",
    "secretlog-writer/writer-2:8200",
    "secretlog-reader/reader-eu:8300",
    "secretlog-reader/reader-us:8300",
    "secretlog-replicator/replicator:8400",
    "prometheus/localhost:9090",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `scripts/compose-local ARGS` (docker-compose with both files), its output; panics on failure.
fn compose(args: &[&str]) -> String {
    let out = compose_output(args, None);
    assert!(out.status.success(), "scripts/compose-local {} failed:\n{}", args.join(" "), text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn compose_output(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(repo().join("scripts/compose-local"));
    cmd.args(args).current_dir(repo()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("running scripts/compose-local");
    if let Some(bytes) = stdin {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(bytes).expect("writing to compose's stdin");
    }
    child.wait_with_output().expect("waiting for scripts/compose-local")
}

/// `docker ARGS`, its stdout; panics on failure.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("running docker");
    assert!(out.status.success(), "docker {} failed:\n{}", args.join(" "), text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes the topology down (with its volumes) when the test ends, passed or not, so a failed run
/// leaves nothing running; the test's own `down -v` comes first and is asserted on.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = compose_output(&["logs", "--no-color", "--tail=40"], None);
            eprintln!("--- compose logs (last 40 lines per service) ---\n{}", text(&logs));
        }
        let _ = compose_output(&["down", "-v", "--remove-orphans"], None);
    }
}

/// Poll `f` until it returns `Ok`, or panic after `timeout` with the last `Err`.
fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}; last: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Service name → (state, exit code, health) of every container of the project.
fn containers() -> BTreeMap<String, (String, i64, Option<String>)> {
    let ids = docker(&["ps", "-aq", "--filter", &format!("label=com.docker.compose.project={PROJECT}")]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return BTreeMap::new();
    }
    let mut args = vec!["inspect"];
    args.extend(&ids);
    let all: Value = serde_json::from_str(&docker(&args)).expect("docker inspect prints JSON");
    let mut out = BTreeMap::new();
    for c in all.as_array().expect("an array of containers") {
        let service = c["Config"]["Labels"]["com.docker.compose.service"].as_str().unwrap_or("?").to_string();
        let state = &c["State"];
        out.insert(
            service,
            (
                state["Status"].as_str().unwrap_or("?").to_string(),
                state["ExitCode"].as_i64().unwrap_or(-1),
                state["Health"]["Status"].as_str().map(str::to_string),
            ),
        );
    }
    out
}

/// Ok once every long-running service is healthy and every one-shot exited 0.
fn all_healthy() -> Result<(), String> {
    let cs = containers();
    let mut waiting = Vec::new();
    for s in LONG_RUNNING {
        match cs.get(*s) {
            Some((state, _, Some(h))) if state == "running" && h == "healthy" => {}
            Some((state, _, None)) => waiting.push(format!("{s}: {state}, no health check")),
            Some((state, _, h)) => waiting.push(format!("{s}: {state}/{}", h.as_deref().unwrap_or("-"))),
            None => waiting.push(format!("{s}: no container")),
        }
    }
    for s in ONE_SHOT {
        match cs.get(*s) {
            Some((state, 0, _)) if state == "exited" => {}
            Some((state, code, _)) if state == "exited" => {
                // A one-shot that failed will not be retried: stop waiting.
                panic!("{s} exited with {code}; containers: {cs:?}")
            }
            Some((state, _, _)) => waiting.push(format!("{s}: {state}")),
            None => waiting.push(format!("{s}: no container")),
        }
    }
    if waiting.is_empty() { Ok(()) } else { Err(waiting.join(", ")) }
}

/// Every archive segment of `partition` in the S3 server, name → bytes, read with boto3 inside the
/// `s3` container (moto's venv has it; the S3 port is not published).
fn archive_segments(partition: i32) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let script = format!(
        r#"
import base64, json, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:5000", region_name="us-east-1",
                  aws_access_key_id="moto", aws_secret_access_key="moto")
out = {{}}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="{BUCKET}", Prefix="{PREFIX}/archive/p{partition:05}/"):
    for o in page.get("Contents", []):
        body = s3.get_object(Bucket="{BUCKET}", Key=o["Key"])["Body"].read()
        out[o["Key"]] = base64.b64encode(body).decode()
print(json.dumps(out))
"#
    );
    let out = compose_output(&["exec", "-T", "s3", "/opt/moto/bin/python", "-"], Some(script.as_bytes()));
    if !out.status.success() {
        return Err(format!("listing the archive failed: {}", text(&out)));
    }
    let v: BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
    use base64::Engine as _;
    v.into_iter()
        .map(|(k, b)| {
            base64::engine::general_purpose::STANDARD.decode(b).map(|bytes| (k, bytes)).map_err(|e| e.to_string())
        })
        .collect()
}

/// Prometheus' `up` per `job/instance`, from its HTTP API on the published port.
fn prometheus_up(rt: &tokio::runtime::Runtime) -> Result<BTreeMap<String, String>, String> {
    let url = "http://127.0.0.1:9090/api/v1/query?query=up";
    let body: Value =
        rt.block_on(async { reqwest::get(url).await?.error_for_status()?.json().await }).map_err(|e| e.to_string())?;
    let mut up = BTreeMap::new();
    for r in body["data"]["result"].as_array().ok_or_else(|| format!("no result: {body}"))? {
        let m = &r["metric"];
        let key = format!("{}/{}", m["job"].as_str().unwrap_or("?"), m["instance"].as_str().unwrap_or("?"));
        up.insert(key, r["value"][1].as_str().unwrap_or("?").to_string());
    }
    Ok(up)
}

/// Names of the project's containers, networks and volumes that still exist.
fn leftovers() -> Vec<String> {
    let label = format!("label=com.docker.compose.project={PROJECT}");
    let name = format!("name={PROJECT}_");
    let mut left = BTreeSet::new();
    for filter in [&label, &name] {
        for (what, args) in [
            ("container", vec!["ps", "-a", "--format", "{{.Names}}", "--filter", filter]),
            ("network", vec!["network", "ls", "--format", "{{.Name}}", "--filter", filter]),
            ("volume", vec!["volume", "ls", "--format", "{{.Name}}", "--filter", filter]),
        ] {
            for n in docker(&args).lines().filter(|l| !l.trim().is_empty()) {
                left.insert(format!("{what} {n}"));
            }
        }
    }
    left.into_iter().collect()
}

#[test]
fn compose_topology_serves_both_regions_archives_is_scraped_and_leaves_nothing_behind() {
    let started = Instant::now();
    // Bootstrap Docker and build the images; fails with its reason where Docker cannot run.
    let bin = std::env::var("SECRETLOG_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_secretlog-it").to_string());
    let out = Command::new(repo().join("scripts/compose-local"))
        .arg("build")
        .env("SECRETLOG_BIN", &bin)
        .current_dir(repo())
        .output()
        .expect("running scripts/compose-local build");
    assert!(out.status.success(), "Docker or the images are not available here:\n{}", text(&out));
    eprintln!("compose: images ready after {:?}", started.elapsed());

    // A run that died before its `down` must not leave state (keys, Kafka data) to this one.
    compose(&["down", "-v", "--remove-orphans"]);
    let _down = Down;
    compose(&["up", "-d", "--no-build"]);
    eventually(Duration::from_secs(300), "every health check passing", all_healthy);
    eprintln!("compose: all healthy after {:?}", started.elapsed());

    // The root token, as compose/README.md reads it: from the writer's view of the keys volume.
    let token = compose(&["exec", "-T", "writer-1", "cat", "/var/lib/secretlog/keys/root-token"]).trim().to_string();
    assert!(!token.is_empty(), "the root token file is empty");

    // Written through the eu-west reader (forwarded to the leader), read in us-east.
    let path = format!("compose/e2e-{:08x}", rand::random::<u32>());
    let script = repo().join("tests/python/hvac_cross_region.py");
    let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&script)
        .args(["http://127.0.0.1:8300", "http://127.0.0.1:8301", &path, "60"])
        .env("VAULT_TOKEN", &token)
        .output()
        .expect("running python3 (hvac is installed by scripts/bootstrap)");
    assert!(out.status.success(), "the write was not read in the other region:\n{}", text(&out));
    eprintln!("compose: {}", String::from_utf8_lossy(&out.stdout).trim());

    // The write's Kafka record (key `secret/<path>`) in an archive segment of its partition.
    let key = record_key("secret", &path);
    let partition = partition_for(&key, PARTITIONS);
    let offset = eventually(Duration::from_secs(120), "the write in the S3 archive", || {
        for (name, bytes) in archive_segments(partition)? {
            let records = decode_segment(&name, &bytes).map_err(|e| format!("{name}: {e}"))?;
            if let Some(r) = records.iter().find(|r| r.key == key) {
                return Ok(r.offset);
            }
        }
        Err(format!("no record keyed secret/{path} in partition {partition}'s segments yet"))
    });
    eprintln!("compose: archived at partition {partition} offset {offset}");

    // Prometheus scrapes every node.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    eventually(Duration::from_secs(90), "Prometheus scraping every node (up == 1)", || {
        let up = prometheus_up(&rt)?;
        let missing: Vec<String> = SCRAPED
            .iter()
            .filter(|t| up.get(**t).map(String::as_str) != Some("1"))
            .map(|t| format!("{t}={}", up.get(*t).map(String::as_str).unwrap_or("absent")))
            .collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("{missing:?} (all: {up:?})")) }
    });

    compose(&["down", "-v", "--remove-orphans"]);
    let left = leftovers();
    assert!(left.is_empty(), "`down -v` left behind: {left:?}");
    eprintln!("compose: done in {:?}", started.elapsed());
}
