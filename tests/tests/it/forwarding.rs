//! Requests through a reader: a write is forwarded to the leader with the path exactly as the
//! client sent it (issue 19: `POST /v1/secret/data/p%2F..%2Fzz` to a reader wrote `zz`), so a
//! request gets the same answer from every node.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Stack, StackOpts, call, eventually, shared};

/// Secret paths that are wrong by themselves, after `/v1/secret/{endpoint}/`: the differential
/// suite's (`differential::ops::BadPath` and the non-canonical paths of `documented`) and dot
/// segments in every spelling a URL parser resolves.
fn bad_secret_paths() -> Vec<String> {
    let mut paths: Vec<String> = [
        // The differential suite's.
        "a%2F..%2Fb",
        "x%2F.%2Fy",
        "dir/",
        "",
        "a//b",
        "%2Fa",
        "a%00b",
        // Issue 19's, and the same dot segments sent as such, encoded or not.
        "p%2F..%2Fzz",
        "p%2F%2e%2e%2Fzz",
        "p/../zz",
        "p/./zz",
        "p/%2e%2e/zz",
        "p/%2E%2E/zz",
        "p/.%2e/zz",
        "p/%2e./zz",
        "p/%2e/zz",
        "p/..",
        "p/.",
        "..",
        ".",
        "%2e%2e",
        "../zz",
        "./zz",
        "../../../zz",
        // Double slashes.
        "p//zz",
        "/zz",
        "p//",
    ]
    .map(String::from)
    .into();
    paths.push("p".repeat(1100));
    paths
}

/// Whole request paths with a dot segment or a double slash before the secret's path.
const BAD_ROUTES: &[&str] = &[
    "/v1/secret/../secret/data/zz",
    "/v1/./secret/data/zz",
    "/v1/secret/./data/zz",
    "/v1/secret/data/../data/zz",
    "/../v1/secret/data/zz",
    "/./v1/secret/data/zz",
    "//v1/secret/data/p/../zz",
    "/v1//secret/data/zz",
    "/v1/secret//data/zz",
];

/// The requests each path gets: every method of every KV v2 endpoint, with a valid body.
fn requests() -> Vec<(&'static str, &'static str, Option<Value>)> {
    let data = json!({"data": {"k": "v"}});
    let versions = json!({"versions": [1]});
    let mut r = vec![
        ("POST", "data", Some(data.clone())),
        ("PUT", "data", Some(data.clone())),
        ("PATCH", "data", Some(data)),
        ("DELETE", "data", None),
        ("GET", "data", None),
        ("POST", "metadata", Some(json!({"max_versions": 3}))),
        ("DELETE", "metadata", None),
        ("GET", "metadata", None),
        ("LIST", "metadata", None),
    ];
    for endpoint in ["delete", "undelete", "destroy"] {
        r.push(("POST", endpoint, Some(versions.clone())));
    }
    r
}

/// An answer as compared: status and body.
#[derive(Debug, PartialEq)]
struct Raw {
    status: u16,
    body: String,
}

/// One HTTP/1.1 request written byte for byte, so that no client library resolves or re-encodes
/// the path on the way.
async fn raw_request(base: &str, method: &str, target: &str, token: Option<&str>, body: Option<&Value>) -> Raw {
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let body = body.map(Value::to_string).unwrap_or_default();
    let content_type = if method == "PATCH" { "application/merge-patch+json" } else { "application/json" };
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("x-vault-token: {t}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.expect("sending the request");
    tcp.write_all(body.as_bytes()).await.expect("sending the body");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.expect("reading the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {target}: {answer:?}"));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{answer:?}"));
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    Raw { status, body: if chunked { dechunk(body) } else { body.to_string() } }
}

/// The payload of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_path_gets_the_same_answer_from_a_reader_as_from_the_leader() {
    let (cluster, _g) = shared();
    let s = Stack::start(cluster, StackOpts { name: "fwdpaths", readers: 1, ..Default::default() }).await;
    let (writer, reader) = (&s.writer.url, &s.readers[0].url);
    let root = s.token.as_str();
    // The reader knows the root token (and the leader) before anything is compared.
    eventually(Duration::from_secs(30), "the reader to serve reads with the root token", || async {
        let a = call("GET", &format!("{reader}/v1/secret/data/ready"), Some(root), None, None).await;
        (a.status == 404).then_some(())
    })
    .await;

    let mut targets: Vec<String> = Vec::new();
    for (method, endpoint, _) in requests() {
        for p in bad_secret_paths() {
            targets.push(format!("{method} /v1/secret/{endpoint}/{p}"));
        }
    }
    for route in BAD_ROUTES {
        targets.extend(["POST", "DELETE", "GET"].map(|m| format!("{m} {route}")));
    }
    let body_of = |method: &str, target: &str| {
        let endpoint = target.split('/').nth(3).unwrap_or("data");
        requests().into_iter().find(|(m, e, _)| *m == method && *e == endpoint).and_then(|(_, _, b)| b)
    };
    let mut compared = 0;
    for line in &targets {
        let (method, target) = line.split_once(' ').expect("method and path");
        let body = body_of(method, target);
        for (auth, token) in [("root", Some(root)), ("no", None), ("a wrong", Some("s.not-a-token"))] {
            let direct = raw_request(writer, method, target, token, body.as_ref()).await;
            let through_reader = raw_request(reader, method, target, token, body.as_ref()).await;
            assert_eq!(
                through_reader,
                direct,
                "{method} {target} with {auth} token: the reader's answer (left) is not the leader's (right)\n{}",
                s.readers[0].log_tail()
            );
            assert!((400..500).contains(&direct.status) || direct.status == 204, "{line} ({auth} token): {direct:?}");
            compared += 1;
        }
    }

    // Issue 19's request, answered as a relative path by both, and nothing was written.
    for base in [writer, reader] {
        let a = raw_request(base, "POST", "/v1/secret/data/p%2F..%2Fzz", Some(root), Some(&json!({"data": {}}))).await;
        assert_eq!(a, Raw { status: 400, body: r#"{"errors":["relative paths not supported"]}"#.into() }, "{base}");
    }
    let listed = call("LIST", &format!("{writer}/v1/secret/metadata/"), Some(root), None, None).await;
    assert_eq!(listed.status, 404, "no bad path wrote a secret: {:?}", listed.body);
    eprintln!("[forwarding] {compared} requests answered alike by the reader and the leader");
}
