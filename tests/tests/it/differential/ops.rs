//! The requests of the differential tests, as data: KV v2 operations, valid and invalid, that
//! proptest generates and shrinks, a regression file stores, and [`Op::request`] turns into
//! HTTP. Paths are relative to a sequence's own prefix, so sequences never see each other.
//!
//! Generated inputs are those both servers are meant to treat alike. Inputs whose answers differ
//! on purpose (docs/compatibility.md) are not generated; the curated test checks that each such
//! difference is still exactly what the document says.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// A secret of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Leaf {
    A,
    B,
    /// In a sub-folder, so lists have a folder to show.
    DirC,
}

impl Leaf {
    pub fn rel(self) -> &'static str {
        match self {
            Leaf::A => "a",
            Leaf::B => "b",
            Leaf::DirC => "dir/c",
        }
    }
    pub const ALL: [Leaf; 3] = [Leaf::A, Leaf::B, Leaf::DirC];
}

/// A folder to list, relative to the sequence's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Folder {
    /// The prefix itself.
    Top,
    Dir,
    /// A folder nothing was ever written under.
    Missing,
    /// The name of a secret, which is not a folder.
    Secret,
}

impl Folder {
    fn rel(self) -> &'static str {
        match self {
            Folder::Top => "",
            Folder::Dir => "dir",
            Folder::Missing => "nothing-here",
            Folder::Secret => "a",
        }
    }
}

/// The endpoints that take a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    Data,
    Metadata,
    Delete,
    Undelete,
    Destroy,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Data => "data",
            Endpoint::Metadata => "metadata",
            Endpoint::Delete => "delete",
            Endpoint::Undelete => "undelete",
            Endpoint::Destroy => "destroy",
        }
    }
}

/// The token a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Auth {
    Root,
    Missing,
    Wrong,
    Empty,
}

/// A secret path that is wrong by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BadPath {
    /// `a/../b`, percent-encoded so no client library resolves it first.
    DotDot,
    /// `x/./y`, likewise.
    Dot,
    /// A folder name where a secret is expected.
    TrailingSlash,
    /// No path at all (`/v1/secret/data/`).
    Empty,
}

impl BadPath {
    fn rel(self, prefix: &str) -> String {
        match self {
            BadPath::DotDot => format!("{prefix}/a%2F..%2Fb"),
            BadPath::Dot => format!("{prefix}/x%2F.%2Fy"),
            BadPath::TrailingSlash => format!("{prefix}/dir/"),
            BadPath::Empty => String::new(),
        }
    }
}

/// One request of a sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `POST` (or `PUT`) `data/:path` with this body: a write, with or without `options.cas`.
    Write { leaf: Leaf, put: bool, body: Value },
    /// `GET data/:path`, with `?version=` when given.
    Read { leaf: Leaf, version: Option<String> },
    /// `GET metadata/:path`.
    ReadMetadata { leaf: Leaf },
    /// `LIST metadata/:folder`, or `GET ...?list=true`.
    List { folder: Folder, query_form: bool },
    /// `DELETE data/:path`.
    DeleteLatest { leaf: Leaf },
    /// `POST delete|undelete|destroy/:path` with this body (`versions`).
    Versions { endpoint: Endpoint, leaf: Leaf, body: Value },
    /// `POST` (or `PUT`) `metadata/:path` with this body.
    UpdateMetadata { leaf: Leaf, put: bool, body: Value },
    /// `DELETE metadata/:path`.
    DeleteMetadata { leaf: Leaf },
    /// `GET config`.
    ReadConfig,
    /// A body that is not a JSON object (malformed, an array, a string...).
    RawBody { endpoint: Endpoint, leaf: Leaf, body: String },
    /// A request on a path that is wrong by itself.
    OnBadPath { method: String, endpoint: Endpoint, path: BadPath },
    /// A method the endpoint does not support.
    WrongMethod { method: String, endpoint: Endpoint, leaf: Leaf, list_query: bool },
    /// A mount that does not exist.
    NoMount { method: String },
    /// Any other request, with a missing or wrong token.
    Unauthorized { auth: Auth, op: Box<Op> },
}

/// An HTTP request, ready to send.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// After `/v1/`.
    pub path: String,
    pub query: Option<String>,
    pub body: Option<String>,
    pub auth: Auth,
    /// `application/json` when not given.
    pub content_type: Option<&'static str>,
}

impl Req {
    fn new(method: &str, path: String) -> Req {
        Req { method: method.into(), path, query: None, body: None, auth: Auth::Root, content_type: None }
    }
    fn json(mut self, body: &Value) -> Req {
        self.body = Some(body.to_string());
        self
    }
    /// Whether this request changes nothing (it is sent to the reader too).
    pub fn is_read(&self) -> bool {
        matches!(self.method.as_str(), "GET" | "LIST")
    }
}

/// The body key no endpoint knows (OpenBao warns about it).
pub const UNKNOWN_PARAM: &str = "unknown_param";

impl Op {
    /// The request for this operation under `prefix`.
    pub fn request(&self, prefix: &str) -> Req {
        let at = |ep: &str, leaf: Leaf| format!("secret/{ep}/{prefix}/{}", leaf.rel());
        match self {
            Op::Write { leaf, put, body } => Req::new(if *put { "PUT" } else { "POST" }, at("data", *leaf)).json(body),
            Op::Read { leaf, version } => {
                let mut r = Req::new("GET", at("data", *leaf));
                r.query = version.as_ref().map(|v| format!("version={v}"));
                r
            }
            Op::ReadMetadata { leaf } => Req::new("GET", at("metadata", *leaf)),
            Op::List { folder, query_form } => {
                let rel = folder.rel();
                let path = if rel.is_empty() {
                    format!("secret/metadata/{prefix}/")
                } else {
                    format!("secret/metadata/{prefix}/{rel}")
                };
                if *query_form {
                    let mut r = Req::new("GET", path);
                    r.query = Some("list=true".into());
                    r
                } else {
                    Req::new("LIST", path)
                }
            }
            Op::DeleteLatest { leaf } => Req::new("DELETE", at("data", *leaf)),
            Op::Versions { endpoint, leaf, body } => Req::new("POST", at(endpoint.name(), *leaf)).json(body),
            Op::UpdateMetadata { leaf, put, body } => {
                Req::new(if *put { "PUT" } else { "POST" }, at("metadata", *leaf)).json(body)
            }
            Op::DeleteMetadata { leaf } => Req::new("DELETE", at("metadata", *leaf)),
            Op::ReadConfig => Req::new("GET", "secret/config".into()),
            Op::RawBody { endpoint, leaf, body } => {
                let mut r = Req::new("POST", at(endpoint.name(), *leaf));
                r.body = Some(body.clone());
                r
            }
            Op::OnBadPath { method, endpoint, path } => {
                let mut r = Req::new(method, format!("secret/{}/{}", endpoint.name(), path.rel(prefix)));
                if matches!(method.as_str(), "POST" | "PUT") {
                    r = r.json(&match endpoint {
                        Endpoint::Data => json!({"data": {"k": "v"}}),
                        Endpoint::Metadata => json!({"max_versions": 3}),
                        _ => json!({"versions": [1]}),
                    });
                }
                r
            }
            Op::WrongMethod { method, endpoint, leaf, list_query } => {
                let mut r = Req::new(method, at(endpoint.name(), *leaf));
                if *list_query {
                    r.query = Some("list=true".into());
                }
                r
            }
            Op::NoMount { method } => {
                let r = Req::new(method, format!("nomount/data/{prefix}/a"));
                if method == "POST" { r.json(&json!({"data": {"k": "v"}})) } else { r }
            }
            Op::Unauthorized { auth, op } => {
                let mut r = op.request(prefix);
                r.auth = *auth;
                r
            }
        }
    }

    /// Whether the body carries a parameter OpenBao does not know (and warns about).
    pub fn has_unknown_param(&self) -> bool {
        match self {
            Op::Write { body, .. } | Op::UpdateMetadata { body, .. } | Op::Versions { body, .. } => {
                body.get(UNKNOWN_PARAM).is_some()
            }
            _ => false,
        }
    }
}

// ---- strategies ----

fn leaf() -> impl Strategy<Value = Leaf> {
    prop_oneof![3 => Just(Leaf::A), 2 => Just(Leaf::B), 2 => Just(Leaf::DirC)]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z0-9 ]{0,8}".prop_map(Value::from),
        (-5i64..1000).prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!("ключ ✓")),
        Just(json!(2.5)),
    ]
}

fn secret_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => scalar(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::from),
        1 => prop::collection::btree_map("[a-z]{1,3}", scalar(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    ]
}

/// `data` of a write: usually a map; sometimes missing or of a wrong type.
fn data_field() -> impl Strategy<Value = Option<Value>> {
    let key =
        prop_oneof![Just("password".to_string()), Just("user".to_string()), "[a-z]{1,6}", Just("ключ".to_string())];
    prop_oneof![
        14 => prop::collection::btree_map(key, secret_value(), 0..4)
            .prop_map(|m| Some(Value::Object(m.into_iter().collect()))),
        1 => Just(None),
        1 => Just(Some(json!("text"))),
        1 => Just(Some(json!(42))),
        1 => Just(Some(json!([1, 2]))),
        1 => Just(Some(json!(true))),
    ]
}

/// A CAS value: mostly plausible versions; also every other JSON type.
fn cas_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        10 => (0i64..5).prop_map(Value::from),
        2 => (0i64..4).prop_map(|n| Value::from(n.to_string())),
        1 => Just(json!(-1)),
        1 => Just(json!("x")),
        1 => Just(json!(1.5)),
        1 => Just(json!(2.0)),
        1 => Just(Value::Null),
        1 => Just(json!(true)),
        1 => Just(json!("")),
        1 => Just(json!([1])),
        1 => Just(json!({"v": 1})),
    ]
}

/// `options` of a write.
fn options_field() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        10 => Just(None),
        8 => cas_value().prop_map(|c| Some(json!({ "cas": c }))),
        1 => Just(Some(json!({}))),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(json!("cas=1"))),
        1 => Just(Some(json!(7))),
    ]
}

fn write() -> impl Strategy<Value = Op> {
    (leaf(), prop::bool::weighted(0.2), data_field(), options_field(), prop::bool::weighted(0.1)).prop_map(
        |(leaf, put, data, mut options, unknown)| {
            // One field of a wrong type at most: OpenBao reports the first it meets in a Go map,
            // whose order is random.
            let bad_data = data.as_ref().is_some_and(|d| !d.is_object());
            if bad_data && options.as_ref().is_some_and(|o| !o.is_object() && !o.is_null()) {
                options = None;
            }
            let mut body = Map::new();
            if let Some(d) = data {
                body.insert("data".into(), d);
            }
            if let Some(o) = options {
                body.insert("options".into(), o);
            }
            if unknown {
                body.insert(UNKNOWN_PARAM.into(), json!(1));
            }
            Op::Write { leaf, put, body: Value::Object(body) }
        },
    )
}

fn read() -> impl Strategy<Value = Op> {
    let version = prop_oneof![
        6 => Just(None),
        6 => (0u64..6).prop_map(|v| Some(v.to_string())),
        1 => Just(Some("-1".to_string())),
        1 => Just(Some("abc".to_string())),
        1 => Just(Some("1.0".to_string())),
        1 => Just(Some(String::new())),
        1 => Just(Some("+2".to_string())),
    ];
    (leaf(), version).prop_map(|(leaf, version)| Op::Read { leaf, version })
}

fn list() -> impl Strategy<Value = Op> {
    let folder = prop_oneof![3 => Just(Folder::Top), 2 => Just(Folder::Dir), 1 => Just(Folder::Missing), 1 => Just(Folder::Secret)];
    (folder, any::<bool>()).prop_map(|(folder, query_form)| Op::List { folder, query_form })
}

/// `versions` of delete/undelete/destroy: usually a list of versions, in every accepted form.
fn versions_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        10 => prop::collection::vec(0i64..7, 1..4).prop_map(|v| Some(Value::from(v))),
        2 => (1i64..6).prop_map(|v| Some(Value::from(v))),
        2 => prop::collection::vec(1i64..6, 1..3)
            .prop_map(|v| Some(Value::from(v.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")))),
        1 => prop::collection::vec(1i64..6, 1..3)
            .prop_map(|v| Some(Value::from(v.iter().map(|n| Value::from(n.to_string())).collect::<Vec<_>>()))),
        1 => Just(Some(json!([-1]))),
        1 => Just(Some(json!([]))),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(json!(""))),
        1 => Just(Some(json!("x"))),
        1 => Just(Some(json!([1.5]))),
        1 => Just(Some(json!([[1]]))),
        1 => Just(Some(json!({"v": 1}))),
        1 => Just(Some(json!(" 1, 2"))),
    ]
}

fn versions() -> impl Strategy<Value = Op> {
    let endpoint = prop_oneof![Just(Endpoint::Delete), Just(Endpoint::Undelete), Just(Endpoint::Destroy)];
    (endpoint, leaf(), versions_value(), prop::bool::weighted(0.05)).prop_map(|(endpoint, leaf, v, unknown)| {
        let mut body = Map::new();
        if let Some(v) = v {
            body.insert("versions".into(), v);
        }
        if unknown {
            body.insert(UNKNOWN_PARAM.into(), json!(1));
        }
        Op::Versions { endpoint, leaf, body: Value::Object(body) }
    })
}

/// A valid value for one metadata field.
fn metadata_field() -> impl Strategy<Value = (&'static str, Value)> {
    let custom = prop::collection::btree_map("[a-z]{1,4}", "[a-z0-9]{1,6}", 0..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, Value::from(v))).collect()));
    prop_oneof![
        3 => (0i64..5).prop_map(|n| ("max_versions", Value::from(n))),
        1 => (0i64..5).prop_map(|n| ("max_versions", Value::from(n.to_string()))),
        1 => Just(("max_versions", Value::Null)),
        3 => any::<bool>().prop_map(|b| ("cas_required", Value::from(b))),
        1 => prop_oneof![Just(json!("true")), Just(json!("false")), Just(json!(1)), Just(json!(0)), Just(json!("t")), Just(json!("")), Just(Value::Null)]
            .prop_map(|v| ("cas_required", v)),
        // Long enough that nothing scheduled passes while a sequence runs.
        3 => prop_oneof![Just(json!("0s")), Just(json!("1h")), Just(json!("30m")), Just(json!(7200)), Just(json!("1h30m")),
                Just(json!("1.5h")), Just(json!("1d")), Just(json!("")), Just(json!("3600")), Just(json!("0")), Just(Value::Null)]
            .prop_map(|v| ("delete_version_after", v)),
        3 => custom.prop_map(|v| ("custom_metadata", v)),
        1 => Just(("custom_metadata", Value::Null)),
        1 => Just(("custom_metadata", json!({"n": 7, "b": true}))),
    ]
}

/// A value for one metadata field that is wrong.
fn bad_metadata_field() -> impl Strategy<Value = (&'static str, Value)> {
    prop_oneof![
        Just(("max_versions", json!("x"))),
        Just(("max_versions", json!(2.5))),
        Just(("max_versions", json!([1]))),
        Just(("cas_required", json!("yes"))),
        Just(("cas_required", json!(2))),
        Just(("cas_required", json!([]))),
        Just(("delete_version_after", json!("bogus"))),
        Just(("delete_version_after", json!(-5))),
        Just(("delete_version_after", json!("-5s"))),
        Just(("delete_version_after", json!(3.5))),
        Just(("delete_version_after", json!("1x"))),
        Just(("delete_version_after", json!(true))),
        Just(("delete_version_after", json!("1h 30m"))),
        Just(("custom_metadata", json!("k=v"))),
        Just(("custom_metadata", json!(["k"]))),
        Just(("custom_metadata", json!({"k": ""}))),
        Just(("custom_metadata", json!({"": "v"}))),
        Just(("custom_metadata", json!({"k": null}))),
        Just(("custom_metadata", json!({"k": [1]}))),
        Just(("custom_metadata", json!({"k": {"x": "y"}}))),
        Just(("custom_metadata", json!({ "k".repeat(129): "v" }))),
        Just(("custom_metadata", json!({ "k": "v".repeat(513) }))),
        Just(("custom_metadata", Value::Object((0..65).map(|i| (format!("k{i}"), json!("v"))).collect()))),
    ]
}

fn update_metadata() -> impl Strategy<Value = Op> {
    (
        leaf(),
        prop::bool::weighted(0.2),
        prop::collection::vec(metadata_field(), 0..3),
        prop::option::weighted(0.25, bad_metadata_field()),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(leaf, put, fields, bad, unknown)| {
            let mut body = Map::new();
            for (k, v) in fields {
                body.insert(k.into(), v);
            }
            // One wrong field at most: OpenBao reports the first it meets in a Go map, whose
            // order is random.
            if let Some((k, v)) = bad {
                body.insert(k.into(), v);
            }
            if unknown {
                body.insert(UNKNOWN_PARAM.into(), json!(1));
            }
            Op::UpdateMetadata { leaf, put, body: Value::Object(body) }
        })
}

fn body_endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        3 => Just(Endpoint::Data),
        2 => Just(Endpoint::Metadata),
        1 => Just(Endpoint::Delete),
        1 => Just(Endpoint::Undelete),
        1 => Just(Endpoint::Destroy),
    ]
}

fn raw_body() -> impl Strategy<Value = Op> {
    let body = prop_oneof![
        Just("{not json"),
        Just("{\"data\":"),
        Just("[1,2]"),
        Just("\"text\""),
        Just("42"),
        Just("null"),
        Just(""),
        Just("  \n"),
        Just("{\"data\":{\"a\":1}} trailing"),
    ];
    (body_endpoint(), leaf(), body).prop_map(|(endpoint, leaf, body)| Op::RawBody { endpoint, leaf, body: body.into() })
}

fn on_bad_path() -> impl Strategy<Value = Op> {
    let target = prop_oneof![
        Just(("GET", Endpoint::Data)),
        Just(("GET", Endpoint::Metadata)),
        Just(("LIST", Endpoint::Metadata)),
        Just(("POST", Endpoint::Data)),
        Just(("DELETE", Endpoint::Data)),
        Just(("POST", Endpoint::Metadata)),
        Just(("DELETE", Endpoint::Metadata)),
        Just(("POST", Endpoint::Delete)),
        Just(("POST", Endpoint::Undelete)),
        Just(("POST", Endpoint::Destroy)),
    ];
    let path =
        prop_oneof![Just(BadPath::DotDot), Just(BadPath::Dot), Just(BadPath::TrailingSlash), Just(BadPath::Empty)];
    (target, path).prop_map(|((method, endpoint), path)| Op::OnBadPath { method: method.into(), endpoint, path })
}

fn wrong_method() -> impl Strategy<Value = Op> {
    let pair = prop_oneof![
        Just(("GET", Endpoint::Delete, false)),
        Just(("GET", Endpoint::Undelete, false)),
        Just(("GET", Endpoint::Destroy, false)),
        Just(("DELETE", Endpoint::Destroy, false)),
        Just(("DELETE", Endpoint::Undelete, false)),
        Just(("LIST", Endpoint::Data, false)),
        Just(("GET", Endpoint::Data, true)),
        Just(("LIST", Endpoint::Delete, false)),
    ];
    (pair, leaf()).prop_map(|((method, endpoint, list_query), leaf)| Op::WrongMethod {
        method: method.into(),
        endpoint,
        leaf,
        list_query,
    })
}

fn bad_request() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => raw_body(),
        3 => on_bad_path(),
        2 => wrong_method(),
        1 => prop_oneof![Just("GET"), Just("POST")].prop_map(|m| Op::NoMount { method: m.into() }),
    ]
}

fn unauthorized() -> impl Strategy<Value = Op> {
    let auth = prop_oneof![Just(Auth::Missing), Just(Auth::Wrong), Just(Auth::Empty)];
    let inner = prop_oneof![
        3 => write(),
        2 => read(),
        1 => leaf().prop_map(|leaf| Op::ReadMetadata { leaf }),
        1 => list(),
        1 => leaf().prop_map(|leaf| Op::DeleteLatest { leaf }),
        1 => versions(),
        1 => update_metadata(),
        1 => leaf().prop_map(|leaf| Op::DeleteMetadata { leaf }),
        2 => bad_request(),
    ];
    (auth, inner).prop_map(|(auth, op)| Op::Unauthorized { auth, op: Box::new(op) })
}

/// One operation of a generated sequence.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => write(),
        4 => read(),
        2 => leaf().prop_map(|leaf| Op::ReadMetadata { leaf }),
        2 => list(),
        2 => leaf().prop_map(|leaf| Op::DeleteLatest { leaf }),
        4 => versions(),
        4 => update_metadata(),
        1 => leaf().prop_map(|leaf| Op::DeleteMetadata { leaf }),
        1 => Just(Op::ReadConfig),
        3 => bad_request(),
        1 => unauthorized(),
    ]
}

/// A generated sequence: short, over a handful of paths.
pub fn sequence() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 3..=8)
}
