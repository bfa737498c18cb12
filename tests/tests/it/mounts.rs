//! KV mounts end to end (issue 21): `secrets enable`, `tune`, `<mount>/config` and `disable` as the
//! Vault CLI sends them, written to the leader and followed by a reader through the log; secrets
//! of a second mount kept apart from `secret/`'s; the mount's `max_versions` pruning on the
//! reader, its `cas_required` enforced by the leader; a disabled mount's secrets unreachable, and
//! a mount enabled again at the same path empty.

use serde_json::{Value, json};

use crate::harness::{Answer, Stack, StackOpts, call, client, shared};

/// A request to `base` carrying `index` (the consistency token of the last write).
async fn send(base: &str, method: &str, path: &str, token: &str, index: Option<&str>, body: Option<Value>) -> Answer {
    call(method, &format!("{base}/v1/{path}"), Some(token), index, body).await
}

/// A JSON merge patch (`PATCH` with `application/merge-patch+json`, as the CLI sends it).
async fn merge_patch(base: &str, path: &str, token: &str, body: Value) -> (u16, Option<String>) {
    let r = client()
        .patch(format!("{base}/v1/{path}"))
        .header("X-Vault-Token", token)
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PATCH {path}: {e}"));
    let index = r.headers().get("x-secretlog-index").and_then(|v| v.to_str().ok()).map(str::to_string);
    (r.status().as_u16(), index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_kv_mount_is_enabled_tuned_configured_and_disabled_through_the_log() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "mounts", readers: 1, ..Default::default() }).await;
    let (w, r, root) = (s.writer.url.clone(), s.readers[0].url.clone(), s.token.clone());
    let root = root.as_str();
    let mut index: Option<String> = None;
    macro_rules! wr {
        ($base:expr, $method:expr, $path:expr, $body:expr, $status:expr) => {{
            let a = send(&$base, $method, $path, root, index.as_deref(), $body).await;
            assert_eq!(a.status, $status, "{} {}: {:?}", $method, $path, a.body);
            if a.index.is_some() {
                index = a.index.clone();
            }
            a
        }};
    }
    macro_rules! get {
        ($base:expr, $path:expr) => {
            send(&$base, "GET", $path, root, index.as_deref(), None).await
        };
    }

    // `bao secrets enable -path=team -version=2 -description=teamkv kv`, byte for byte.
    let enable = json!({"type":"kv","description":"teamkv","config":{"options":null,"default_lease_ttl":"0s",
        "max_lease_ttl":"0s","force_no_cache":false},"local":false,"seal_wrap":false,
        "external_entropy_access":false,"options":{"version":"2"}});
    wr!(w, "POST", "sys/mounts/team", Some(enable.clone()), 204);
    for (path, body) in [("sys/mounts/team", json!({"type":"kv-v2"})), ("sys/mounts/team/sub", json!({"type":"kv-v2"}))]
    {
        let a = wr!(w, "POST", path, Some(body), 400);
        assert_eq!(a.body["errors"][0], "path is already in use at team/", "{path}");
    }
    let a = wr!(w, "POST", "sys/mounts/old", Some(json!({"type":"kv"})), 400);
    assert!(a.body["errors"][0].as_str().unwrap_or_default().contains("KV version 2 only"), "{:?}", a.body);
    let a = wr!(w, "POST", "sys/mounts/sys/x", Some(json!({"type":"kv-v2"})), 400);
    assert!(a.body["errors"][0].as_str().unwrap_or_default().contains("reserved"), "{:?}", a.body);
    for base in [&w, &r] {
        let a = get!(base, "sys/mounts");
        assert_eq!(a.status, 200, "{base}: {:?}", a.body);
        assert_eq!(a.body["data"]["team/"]["description"], "teamkv", "{base}");
        assert_eq!(a.body["data"]["team/"]["options"]["version"], "2", "{base}");
        assert_eq!(a.body["data"]["secret/"]["type"], "kv", "{base}");
        assert!(a.body["data"].get("old/").is_none(), "{base}");
    }

    // The same path in two mounts: two secrets. Written to the leader and through the reader.
    let a = wr!(w, "POST", "team/data/x", Some(json!({"data": {"v": "team1"}})), 200);
    assert_eq!(a.body["data"]["version"], 1);
    wr!(r, "POST", "secret/data/x", Some(json!({"data": {"v": "secret1"}})), 200);
    wr!(r, "POST", "team/data/y", Some(json!({"data": {"v": "y1"}})), 200);
    for base in [&w, &r] {
        for (path, v) in [("team/data/x", "team1"), ("secret/data/x", "secret1"), ("team/data/y", "y1")] {
            let a = get!(base, path);
            assert_eq!(a.status, 200, "{base} {path}: {:?}", a.body);
            assert_eq!(a.body["data"]["data"]["v"], v, "{base} {path}");
        }
        assert_eq!(get!(base, "secret/data/y").status, 404, "{base}: team/y is not secret/y");
        assert_eq!(get!(base, "nomount/data/x").status, 404, "{base}");
    }
    let a = wr!(w, "POST", "nomount/data/x", Some(json!({"data": {"v": 1}})), 404);
    assert_eq!(a.body["errors"][0], "no handler for route \"nomount/data/x\". route entry not found.");

    // `bao secrets tune -description=tuned -default-lease-ttl=1h team/`: "" leaves max_lease_ttl.
    let tune = json!({"options":null,"default_lease_ttl":"1h0m0s","description":"tuned","max_lease_ttl":"",
        "force_no_cache":false});
    wr!(w, "POST", "sys/mounts/team/tune", Some(tune), 204);
    for base in [&w, &r] {
        let a = get!(base, "sys/mounts/team/tune");
        assert_eq!(a.status, 200, "{base}: {:?}", a.body);
        assert_eq!(a.body["data"]["description"], "tuned", "{base}");
        assert_eq!(a.body["data"]["default_lease_ttl"], 3600, "{base}");
        assert_eq!(get!(base, "sys/mounts").body["data"]["team/"]["description"], "tuned", "{base}");
    }

    // `bao write team/config max_versions=2 ...`: every value a string. Later puts prune to 2
    // versions on every node; `secret/` keeps its own settings.
    let config = json!({"max_versions":"2","cas_required":"false","delete_version_after":"1h"});
    wr!(w, "PUT", "team/config", Some(config), 204);
    for v in 2..=3 {
        wr!(w, "POST", "team/data/x", Some(json!({"data": {"v": format!("team{v}")}})), 200);
    }
    wr!(w, "POST", "secret/data/x", Some(json!({"data": {"v": "secret2"}})), 200);
    for base in [&w, &r] {
        let a = get!(base, "team/config");
        assert_eq!(a.status, 200, "{base}: {:?}", a.body);
        assert_eq!(a.body["data"]["max_versions"], 2, "{base}");
        assert_eq!(a.body["data"]["cas_required"], false, "{base}");
        assert_eq!(get!(base, "secret/config").body["data"]["max_versions"], 0, "{base}");
        let m = get!(base, "team/metadata/x");
        assert_eq!(m.status, 200, "{base}: {:?}", m.body);
        assert_eq!(m.body["data"]["current_version"], 3, "{base}");
        assert_eq!(m.body["data"]["oldest_version"], 2, "{base}: {:?}", m.body);
        let versions: Vec<&String> = m.body["data"]["versions"].as_object().expect("versions").keys().collect();
        assert_eq!(versions, ["2", "3"], "{base}: version 1 pruned by the mount's max_versions");
        assert_ne!(m.body["data"]["versions"]["3"]["deletion_time"], "", "{base}: the mount's delete_version_after");
        assert_eq!(get!(base, "team/data/x?version=1").status, 404, "{base}");
        assert_eq!(get!(base, "team/data/x").body["data"]["data"]["v"], "team3", "{base}");
        let m = get!(base, "secret/metadata/x");
        assert_eq!(m.body["data"]["versions"].as_object().map(|v| v.len()), Some(2), "{base}: {:?}", m.body);
        assert_eq!(m.body["data"]["versions"]["2"]["deletion_time"], "", "{base}: secret/ has no delete_version_after");
    }

    // cas_required on the mount: a put without cas is refused there, and only there.
    wr!(w, "POST", "team/config", Some(json!({"cas_required": true})), 204);
    let a = wr!(w, "POST", "team/data/x", Some(json!({"data": {"v": "nocas"}})), 400);
    assert_eq!(a.body["errors"][0], "check-and-set parameter required for this call");
    let a = wr!(r, "POST", "team/data/x", Some(json!({"data": {"v": "team4"}, "options": {"cas": 3}})), 200);
    assert_eq!(a.body["data"]["version"], 4);
    wr!(w, "POST", "secret/data/x", Some(json!({"data": {"v": "secret3"}})), 200);
    assert_eq!(get!(r, "team/data/x").body["data"]["data"]["v"], "team4");

    // `bao kv metadata patch -custom-metadata=team=t -delete-version-after=1h team/x`.
    let (status, at) = merge_patch(
        &w,
        "team/metadata/x",
        root,
        json!({"custom_metadata":{"team":"t","k":"v"},"delete_version_after":"1h0m0s"}),
    )
    .await;
    assert_eq!(status, 204);
    index = at.or(index);
    let (status, at) = merge_patch(&r, "team/metadata/x", root, json!({"custom_metadata":{"k":null}})).await;
    assert_eq!(status, 204);
    index = at.or(index);
    assert_eq!(merge_patch(&w, "team/metadata/missing", root, json!({"max_versions": 1})).await.0, 404);
    for base in [&w, &r] {
        let m = get!(base, "team/metadata/x");
        assert_eq!(m.body["data"]["custom_metadata"], json!({"team": "t"}), "{base}: {:?}", m.body);
        assert_eq!(m.body["data"]["delete_version_after"], "1h0m0s", "{base}");
        assert_eq!(m.body["data"]["current_version"], 4, "{base}: a metadata patch adds no version");
    }

    // `bao secrets disable team/`: its secrets are unreachable everywhere; disabling again is fine.
    wr!(w, "DELETE", "sys/mounts/team", None, 204);
    wr!(w, "DELETE", "sys/mounts/team/", None, 204);
    for base in [&w, &r] {
        for path in ["team/data/x", "team/metadata/x", "team/config"] {
            let a = get!(base, path);
            assert_eq!(a.status, 404, "{base} {path}: {:?}", a.body);
        }
        assert!(get!(base, "sys/mounts").body["data"].get("team/").is_none(), "{base}");
        assert_eq!(get!(base, "secret/data/x").body["data"]["data"]["v"], "secret3", "{base}");
    }
    wr!(w, "POST", "team/data/x", Some(json!({"data": {"v": "gone"}})), 404);

    // Enabled again at the same path: a new, empty mount with Vault's defaults.
    wr!(r, "POST", "sys/mounts/team", Some(enable), 204);
    for base in [&w, &r] {
        assert_eq!(get!(base, "team/data/x").status, 404, "{base}: a re-enabled mount starts empty");
        assert_eq!(get!(base, "team/config").body["data"]["max_versions"], 0, "{base}");
    }
    let a = wr!(w, "POST", "team/data/x", Some(json!({"data": {"v": "fresh"}})), 200);
    assert_eq!(a.body["data"]["version"], 1, "no cas required any more, numbering from 1");
    assert_eq!(get!(r, "team/data/x").body["data"]["data"]["v"], "fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rewrap_moves_the_values_of_every_mount_disabled_ones_included_so_the_old_term_retires() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "mounts-rewrap", readers: 1, ..Default::default() }).await;
    let (w, r, root) = (s.writer.url.clone(), s.readers[0].url.clone(), s.token.clone());
    let root = root.as_str();
    let mut index: Option<String> = None;
    macro_rules! wr {
        ($base:expr, $method:expr, $path:expr, $body:expr, $status:expr) => {{
            let a = send(&$base, $method, $path, root, index.as_deref(), $body).await;
            assert_eq!(a.status, $status, "{} {}: {:?}", $method, $path, a.body);
            if a.index.is_some() {
                index = a.index.clone();
            }
            a
        }};
    }
    for mount in ["team", "old"] {
        wr!(w, "POST", &format!("sys/mounts/{mount}"), Some(json!({"type": "kv-v2"})), 204);
        for v in 1..=2 {
            wr!(w, "POST", &format!("{mount}/data/a"), Some(json!({"data": {"v": format!("{mount}{v}")}})), 200);
        }
    }
    wr!(w, "POST", "secret/data/a", Some(json!({"data": {"v": "secret1"}})), 200);
    // A disabled mount's values stay stored (sealed): they too hold term 1 until rewrapped.
    wr!(w, "DELETE", "sys/mounts/old", None, 204);
    wr!(w, "POST", "sys/rotate", None, 204);
    let status = crate::harness::eventually(
        std::time::Duration::from_secs(120),
        "the rewrap to move every mount's values off term 1",
        || async {
            let a = send(&w, "GET", "sys/key-status", root, None, None).await;
            (a.status == 200 && a.body["rewrap"]["remaining"] == 0).then_some(a.body)
        },
    )
    .await;
    assert_eq!(status["term"], 2, "{status}");
    wr!(w, "POST", "sys/secretlog/retire-term", Some(json!({"term": 1})), 204);
    for base in [&w, &r] {
        for (path, v) in [("team/data/a", "team2"), ("secret/data/a", "secret1")] {
            let a = send(base, "GET", path, root, index.as_deref(), None).await;
            assert_eq!(a.status, 200, "{base} {path}: {:?}", a.body);
            assert_eq!(a.body["data"]["data"]["v"], v, "{base} {path}: opens after term 1 retired");
        }
        let a = send(base, "GET", "team/data/a?version=1", root, index.as_deref(), None).await;
        assert_eq!(a.body["data"]["data"]["v"], "team1", "{base}");
    }
}
