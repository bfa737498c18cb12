//! Audit devices managed as Vault manages them (issue #22): enabled and disabled through
//! `sys/audit/<path>` as events in the log, so every node — leader, readers, a node started later
//! — opens the device at the same position of the log and records each request it answers there,
//! and stops once the device is disabled. A device a node cannot open refuses that node's requests
//! (failing closed, naming the device) until it can.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Stack, StackOpts, call, eventually, shared};

/// The entries of `file` (one JSON object a line; none if it does not exist).
fn entries(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect()
}

/// How many `request` and `response` entries `file` holds for request id `id`.
fn recorded(file: &Path, id: &str) -> (usize, usize) {
    let all = entries(file);
    let count = |kind: &str| all.iter().filter(|e| e["type"] == kind && e["request"]["id"] == id).count();
    (count("request"), count("response"))
}

/// Read the stack's test secret on `url` once `index` is applied there; its request id.
async fn read_on(url: &str, token: &str, index: &str) -> String {
    let r = call("GET", &format!("{url}/v1/secret/data/audit/devices"), Some(token), Some(index), None).await;
    assert_eq!(r.status, 200, "{url}: {:?}", r.body);
    r.body["request_id"].as_str().expect("a request id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enabled_through_the_log_is_followed_by_every_node_until_disabled() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "audit-devices", readers: 2, ..Default::default() }).await;
    let dir = tempfile::Builder::new().prefix("it-audit-dev-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let trail = dir.path().join("trail.log");
    let first = s.put("audit/devices", json!({ "password": "p" })).await;
    let nodes = [s.writer.url.as_str(), s.readers[0].url.as_str(), s.readers[1].url.as_str()];
    for url in nodes {
        let unaudited = read_on(url, &s.token, &first).await;
        assert_eq!(recorded(&trail, &unaudited), (0, 0));
    }

    // Enabled through a reader (forwarded to the leader), as `bao audit enable` sends it.
    let enable = json!({ "type": "file", "description": "the trail", "local": false,
                         "options": { "file_path": trail.display().to_string() } });
    let on = call("PUT", &format!("{}/v1/sys/audit/trail", nodes[1]), Some(&s.token), None, Some(enable.clone())).await;
    assert_eq!(on.status, 204, "{:?}", on.body);
    let on_index = on.index.clone().expect("the enable's position");

    // Refused, changing nothing: the path in use, a bad device, a token without sudo.
    let again = call("PUT", &format!("{}/v1/sys/audit/trail", nodes[0]), Some(&s.token), None, Some(enable)).await;
    assert_eq!(again.status, 400, "{:?}", again.body);
    assert!(again.body["errors"][0].as_str().unwrap_or_default().contains("path already in use"), "{:?}", again.body);
    let bad = json!({ "type": "file", "options": { "file_path": "relative.log" } });
    let bad = call("PUT", &format!("{}/v1/sys/audit/other", nodes[2]), Some(&s.token), None, Some(bad)).await;
    assert_eq!(bad.status, 400, "{:?}", bad.body);
    let weak = call(
        "POST",
        &format!("{}/v1/auth/token/create", nodes[0]),
        Some(&s.token),
        None,
        Some(json!({ "policies": ["default"] })),
    )
    .await;
    let weak_token = weak.body["auth"]["client_token"].as_str().expect("a token").to_string();
    let denied =
        call("DELETE", &format!("{}/v1/sys/audit/trail", nodes[1]), Some(&weak_token), weak.index.as_deref(), None)
            .await;
    assert_eq!(denied.status, 403, "{:?}", denied.body);

    for url in nodes {
        let listed = call("GET", &format!("{url}/v1/sys/audit"), Some(&s.token), Some(&on_index), None).await;
        assert_eq!(listed.status, 200, "{url}: {:?}", listed.body);
        let devices = listed.body["data"].as_object().expect("devices");
        assert_eq!(devices.keys().collect::<Vec<_>>(), ["trail/"], "{url}: {}", listed.body);
        let d = &devices["trail/"];
        assert_eq!((d["type"].as_str(), d["local"].as_bool()), (Some("file"), Some(false)), "{d}");
        assert_eq!(d["description"], "the trail");
        assert_eq!(d["options"]["file_path"], trail.display().to_string());
        // Every node records each request it answers, once: its request entry and its response.
        let id = read_on(url, &s.token, &on_index).await;
        assert_eq!(recorded(&trail, &id), (1, 1), "{url}: the read {id} in the trail");
        let hash = call(
            "POST",
            &format!("{url}/v1/sys/audit-hash/trail"),
            Some(&s.token),
            None,
            Some(json!({ "input": "p" })),
        )
        .await;
        assert_eq!(hash.status, 200, "{url}: {:?}", hash.body);
    }
    let read = entries(&trail)
        .into_iter()
        .find(|e| e["type"] == "response" && e["request"]["path"] == "v1/secret/data/audit/devices")
        .expect("a read's response entry");
    let recorded_value = read["response"]["body"]["data"]["data"]["password"].as_str().expect("the field");
    assert!(recorded_value.starts_with("hmac-sha256:"), "no plaintext: {read}");

    // A node started after the enable opens the device from the state it builds.
    let mut late = s.new_reader("reader-late", &[]);
    late.wait_health(473, Duration::from_secs(60)).await;
    let id = read_on(&late.url, &s.token, &on_index).await;
    assert_eq!(recorded(&trail, &id), (1, 1), "the late reader's read in the trail");

    // Disabled: every node stops recording there at the same position.
    let off = call("DELETE", &format!("{}/v1/sys/audit/trail/", nodes[2]), Some(&s.token), None, None).await;
    assert_eq!(off.status, 204, "{:?}", off.body);
    let off_index = off.index.clone().expect("the disable's position");
    for url in nodes.iter().copied().chain([late.url.as_str()]) {
        let id = read_on(url, &s.token, &off_index).await;
        assert_eq!(recorded(&trail, &id), (0, 0), "{url}: recorded after the device was disabled");
        let listed = call("GET", &format!("{url}/v1/sys/audit"), Some(&s.token), Some(&off_index), None).await;
        assert_eq!(listed.body["data"], json!({}), "{url}: {:?}", listed.body);
    }
    // Disabling what is not there is done (Vault's answer) and appends nothing.
    let none = call("DELETE", &format!("{}/v1/sys/audit/trail", nodes[0]), Some(&s.token), None, None).await;
    assert_eq!(none.status, 204, "{:?}", none.body);
    late.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_open_an_enabled_device_refuses_naming_it_until_it_can() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "audit-dev-closed", readers: 0, ..Default::default() }).await;
    let dir = tempfile::Builder::new().prefix("it-audit-dev2-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let trail = dir.path().join("trail.log");
    let first = s.put("audit/devices", json!({ "password": "p" })).await;
    let enable = json!({ "type": "file", "options": { "file_path": trail.display().to_string() } });
    let on = call("PUT", &format!("{}/v1/sys/audit/trail", s.writer.url), Some(&s.token), None, Some(enable)).await;
    assert_eq!(on.status, 204, "{:?}", on.body);
    let on_index = on.index.expect("a position");

    // The leader has the device open (a node opens it once it applied the enable).
    let id = read_on(&s.writer.url, &s.token, &on_index).await;
    assert_eq!(recorded(&trail, &id), (1, 1));

    // Where the file was, a directory: a reader started now cannot open the device.
    std::fs::remove_file(&trail).expect("the leader created the file");
    std::fs::create_dir(&trail).expect("a directory in its place");
    let mut reader = s.new_reader("reader-no-device", &[]);
    reader.wait_health(473, Duration::from_secs(60)).await;
    // It says so in its log once it applied the enable, before any request meets the device.
    eventually(Duration::from_secs(30), "the reader to report the device it cannot open", || async {
        reader.log_tail().contains("cannot open an audit device enabled through the log").then_some(())
    })
    .await;
    let url = format!("{}/v1/secret/data/audit/devices", reader.url);
    let refused = eventually(Duration::from_secs(30), "the reader to apply the enable and refuse", || async {
        let r = call("GET", &url, Some(&s.token), Some(&first), None).await;
        (r.status == 503).then_some(r)
    })
    .await;
    let err = refused.body["errors"][0].as_str().unwrap_or_default().to_string();
    assert!(err.starts_with("audit log unavailable: device trail/"), "names the device: {err}");
    assert!(!refused.body.to_string().contains("\"p\""), "served unaudited: {:?}", refused.body);
    let w = call("POST", &url, Some(&s.token), None, Some(json!({ "data": { "password": "q" } }))).await;
    assert_eq!(w.status, 503, "a write is refused before it is forwarded: {:?}", w.body);
    let still =
        call("GET", &format!("{}/v1/secret/data/audit/devices", s.writer.url), Some(&s.token), None, None).await;
    assert_eq!(still.body["data"]["metadata"]["version"], 1, "the refused write was executed: {:?}", still.body);

    // The path writable again: the node opens the device by itself and serves, audited.
    std::fs::remove_dir(&trail).expect("remove the directory");
    let served = eventually(Duration::from_secs(30), "the reader to open the device and serve", || async {
        let r = call("GET", &url, Some(&s.token), Some(&on_index), None).await;
        (r.status == 200).then_some(r)
    })
    .await;
    let id = served.body["request_id"].as_str().expect("a request id");
    assert_eq!(recorded(&trail, id), (1, 1), "the served read is in the trail");
    reader.stop();
}
