//! Bounded fuzzing of request handling before any state is touched: 100,000 generated requests
//! (methods, paths with odd segments and bytes, mutated JSON bodies, queries) through the
//! writer's parser and the ACL requirement mapping every node uses. No panic, and every refusal
//! is a 4xx with a reason — bad input never becomes a 5xx.

use secretlog_node::api::ApiRequest;
use secretlog_node::api::auth::need;
use secretlog_schemas::fuzz::Mutator;

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "LIST", "HEAD"];
const KINDS: [&str; 8] = ["data", "metadata", "delete", "undelete", "destroy", "config", "subkeys", ""];
const SEGMENTS: [&str; 10] = ["a", "b/c", "..", ".", "", "%2F", "x y", "é", "+", "*"];

#[test]
fn request_parsing_survives_generated_requests() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"data": {"k": "v"}, "options": {"cas": 1}}"#,
        r#"{"versions": [1, 2, 3]}"#,
        r#"{"max_versions": 3, "cas_required": true, "delete_version_after": "1h", "custom_metadata": {"a": "b"}}"#,
        r#"{"policy": "path \"a\" { capabilities = [\"read\"] }"}"#,
        r#"{"policies": ["p"], "ttl": "1h", "renewable": true}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut m = Mutator::new(0x0EE5_F022);
    let (mut ok, mut refused) = (0u64, 0u64);
    for _ in 0..100_000 {
        let method = METHODS[m.below(METHODS.len())];
        let mut path = format!("v1/secret/{}", KINDS[m.below(KINDS.len())]);
        for _ in 0..m.below(4) {
            path.push('/');
            path.push_str(SEGMENTS[m.below(SEGMENTS.len())]);
        }
        if m.below(8) == 0 {
            let mut raw = path.into_bytes();
            m.mutate(&mut raw);
            path = String::from_utf8_lossy(&raw).into_owned();
        }
        let body = m.input(&seeds, 64);
        let mut req = ApiRequest { method: method.into(), path, body: body.into(), ..Default::default() };
        if m.below(4) == 0 {
            req.query.insert("version".into(), String::from_utf8_lossy(&m.bytes(4)).into_owned());
        }
        let _ = need(&req, Some("secret"), |_| m.below(2) == 0);
        let (mounts, default) = (Default::default(), secretlog_state::mounts::DefaultMount::new("secret"));
        match secretlog_writer::request::parse_on(&req, &mounts, &default, 64 * 1024) {
            Ok(_) => ok += 1,
            Err(e) => {
                refused += 1;
                assert!((400..500).contains(&e.status), "bad input answered {}: {req:?}", e.status);
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} parsed, {refused} refused");
}
