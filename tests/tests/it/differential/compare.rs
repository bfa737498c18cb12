//! Comparing an answer of secretlog with OpenBao's, field by field, after removing what
//! legitimately differs. Every rule here is a section of docs/compatibility.md.

use serde_json::Value;

use super::ops::Op;
use crate::harness::Answer;

/// Gap above which two timestamps of one answer are different instants. OpenBao stamps each
/// version of one request separately (nanoseconds apart); two of our requests are at least a
/// Kafka transaction (milliseconds) apart, and OpenBao's requests of a sequence are separated by
/// ours.
const SAME_INSTANT_NS: i128 = 100_000;

/// An answer reduced to what must be equal on both servers.
pub fn canonical(a: &Answer) -> Value {
    let mut body = a.body.clone();
    if let Value::Object(m) = &mut body {
        // docs/compatibility.md#response-envelope: ids are random; `mount_type` is sent by Vault
        // and secretlog, not by OpenBao.
        m.remove("request_id");
        m.remove("mount_type");
        if let Some(Value::Object(data)) = m.get_mut("data") {
            // docs/compatibility.md#openbao-extensions: OpenBao's metadata CAS.
            data.remove("current_metadata_version");
            data.remove("metadata_cas_required");
        }
        if let Some(Value::Array(errors)) = m.get_mut("errors") {
            for e in errors.iter_mut() {
                if let Value::String(s) = e {
                    *s = canonical_error(s);
                }
            }
        }
        label_times(&mut body);
    }
    serde_json::json!({ "status": a.status, "body": body })
}

/// docs/compatibility.md#error-messages: the wording of Go's decoders after the field name is
/// not reproduced, and not compared.
fn canonical_error(msg: &str) -> String {
    let inner = msg.strip_prefix("1 error occurred:\n\t* ").and_then(|m| m.strip_suffix("\n\n")).unwrap_or(msg);
    for prefix in ["failed to decode JSON input: ", "custom_metadata validation failed: '' expected type"] {
        if inner.starts_with(prefix) {
            return format!("{prefix}…");
        }
    }
    for head in ["Field validation failed: error converting input for field \"", "error converting input for field \""]
    {
        if let Some(rest) = inner.strip_prefix(head)
            && let Some(end) = rest.find("\": ")
        {
            return format!("{head}{}\": …", &rest[..end]);
        }
    }
    inner.to_string()
}

/// docs/compatibility.md#timestamps: timestamps are compared by their order, not their value.
/// Every non-empty `*_time` of an answer becomes `t0`, `t1`, ... by instant (instants closer
/// than [`SAME_INSTANT_NS`] are one), so "deleted when", "updated by which write" and "the same
/// write" are all still compared.
fn label_times(body: &mut Value) {
    fn collect(v: &Value, out: &mut Vec<i128>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        Value::String(s) if k.ends_with("_time") && !s.is_empty() => {
                            if let Some(t) = parse_time(s) {
                                out.push(t);
                            }
                        }
                        _ => collect(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    fn relabel(v: &mut Value, classes: &[(i128, usize)]) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    match v {
                        Value::String(s) if k.ends_with("_time") && !s.is_empty() => {
                            *s = match parse_time(s) {
                                Some(t) => {
                                    let (_, label) =
                                        classes.iter().find(|(at, _)| *at == t).expect("every time was collected");
                                    format!("t{label}")
                                }
                                None => format!("unparsable time {s:?}"),
                            };
                        }
                        _ => relabel(v, classes),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| relabel(v, classes)),
            _ => {}
        }
    }
    let mut times = Vec::new();
    collect(body, &mut times);
    times.sort_unstable();
    times.dedup();
    let mut classes = Vec::with_capacity(times.len());
    let mut label = 0;
    for (i, t) in times.iter().enumerate() {
        if i > 0 && t - times[i - 1] > SAME_INSTANT_NS {
            label += 1;
        }
        classes.push((*t, label));
    }
    relabel(body, &classes);
}

/// Nanoseconds since the epoch of an RFC 3339 UTC time (as both servers print them).
fn parse_time(s: &str) -> Option<i128> {
    let t = humantime::parse_rfc3339(s).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_nanos() as i128)
}

/// Compare one answer of ours with OpenBao's for `op`. `Err` holds the two canonical answers.
pub fn compare(op: &Op, bao: &Answer, ours: &Answer) -> Result<(), String> {
    let (mut b, mut o) = (canonical(bao), canonical(ours));
    allow_documented(op, &mut b, &mut o);
    equal(&b, &o)
}

/// Two canonical answers, equal or reported side by side.
pub fn equal(bao: &Value, ours: &Value) -> Result<(), String> {
    if bao == ours {
        Ok(())
    } else {
        Err(format!(
            "openbao:   {}\nsecretlog: {}",
            serde_json::to_string(bao).unwrap_or_default(),
            serde_json::to_string(ours).unwrap_or_default()
        ))
    }
}

/// Make the documented differences equal — exactly those, for exactly the requests they are about.
fn allow_documented(op: &Op, b: &mut Value, o: &mut Value) {
    // docs/compatibility.md#unknown-parameters: OpenBao warns about parameters it does not
    // know; secretlog ignores them silently.
    if op.has_unknown_param()
        && b["body"]["warnings"]
            == serde_json::json!([format!(
                "Endpoint ignored these unrecognized parameters: [{}]",
                super::ops::UNKNOWN_PARAM
            )])
        && o["body"]["warnings"].is_null()
    {
        b["body"]["warnings"] = Value::Null;
    }
    if let Op::Unauthorized { op: inner, .. } = op {
        // docs/compatibility.md#token-first: OpenBao refuses malformed JSON, relative paths and
        // writes to folder paths before it looks at the token; secretlog looks at the token first.
        let pre_auth = matches!(**inner, Op::RawBody { .. } | Op::OnBadPath { .. });
        if pre_auth
            && b["status"] == 400
            && o["status"] == 403
            && o["body"] == serde_json::json!({"errors": ["permission denied"]})
        {
            *b = o.clone();
        }
    }
}

/// docs/compatibility.md#policy-extensions: OpenBao's policy CAS and identity-template
/// settings, removed from the fields `m` of a policy read (`name` and `policy`, or `rules` under
/// Vault's older `sys/policy`).
pub fn strip_policy_extensions(m: &mut serde_json::Map<String, serde_json::Value>) {
    if !(m.contains_key("name") && (m.contains_key("policy") || m.contains_key("rules"))) {
        return;
    }
    for k in [
        "cas_required",
        "version",
        "modified",
        "allow_slashes_in_identity_templates",
        "allow_wildcards_in_identity_templates",
    ] {
        m.remove(k);
    }
}
