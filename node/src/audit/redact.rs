//! What of a request or an answer the audit log may show: tokens, accessors and secret values
//! become `hmac-sha256:<hex>` under the keyring's audit key; everything else is kept.
//!
//! Bodies are redacted on their way from the JSON text they arrived or left as to the JSON text
//! of the entry — read once with a `serde_json` deserializer and printed as they are read, never
//! built into a `Value` tree first: an audited read redacts its answer on every request, and
//! the tree (its maps, strings and their drop) cost as much as the rest of the entry.

use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use secretlog_schemas::Keyring;

/// What replaces secrets when the node has no keyring to HMAC them with (a sealed node).
const NO_KEY: &str = "hmac-sha256:unavailable-node-sealed";

/// Keys whose values are always HMACed, wherever they appear.
const SENSITIVE_KEYS: &[&str] = &["client_token", "token", "accessor"];

/// HMACs tokens and secret values, under the keyring's audit key.
#[derive(Clone)]
pub(crate) struct Redactor {
    keyring: Option<Arc<Keyring>>,
}

impl Redactor {
    pub fn new(keyring: Option<Arc<Keyring>>) -> Self {
        Redactor { keyring }
    }

    pub fn hmac(&self, data: &[u8]) -> String {
        match &self.keyring {
            Some(k) => k.audit_hmac(data),
            None => NO_KEY.to_string(),
        }
    }

    /// Append a request body as the audit log shows it to `out`: JSON with every scalar HMACed
    /// (object keys and `null`s kept), other bytes as one HMAC'd string. `false`, and nothing
    /// appended, for an empty body.
    pub fn body(&self, body: &[u8], out: &mut Vec<u8>) -> bool {
        if body.iter().all(u8::is_ascii_whitespace) {
            return false;
        }
        self.transcode(body, Scope::Secret, out);
        true
    }

    /// Append an answer's body as the audit log shows it to `out`: of a JSON object, its members
    /// but `errors` and those that are `null`, with every scalar under a `data` key and the value
    /// of every token or accessor key HMACed; any other JSON with every scalar HMACed; other
    /// bytes as one HMAC'd string.
    pub fn answer(&self, body: &[u8], out: &mut Vec<u8>) {
        self.transcode(body, Scope::Answer, out);
    }

    /// `input` redacted into `out` as `scope` says; not JSON (or not only JSON): its HMAC.
    fn transcode(&self, input: &[u8], scope: Scope, out: &mut Vec<u8>) {
        let start = out.len();
        let mut de = serde_json::Deserializer::from_slice(input);
        let seed = Redact { redactor: self, out: &mut *out, scope, comma: false };
        if seed.deserialize(&mut de).and_then(|_| de.end()).is_err() {
            out.truncate(start);
            json_string(out, &self.hmac(input));
        }
    }
}

/// Where a value sits, which says what of it is HMACed.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    /// An answer's body: if an object, its members are dropped if `errors` or `null`, and
    /// redacted as [`Scope::Kept`] ones; anything else is [`Scope::Secret`].
    Answer,
    /// Kept as it is, except under a `data` key or a token's or accessor's key.
    Kept,
    /// Every scalar HMACed (`null` kept).
    Secret,
}

impl Scope {
    /// The scope of the value under `key` in an object of this scope.
    fn member(self, key: &str) -> Scope {
        match self {
            Scope::Secret => Scope::Secret,
            Scope::Answer | Scope::Kept if key == "data" || SENSITIVE_KEYS.contains(&key) => Scope::Secret,
            Scope::Answer | Scope::Kept => Scope::Kept,
        }
    }

    fn hides_scalars(self) -> bool {
        self != Scope::Kept
    }
}

/// Append `s` as a JSON string.
pub(super) fn json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// One value read and printed into `out` (after a comma if `comma`); its result says whether
/// it was `null`.
struct Redact<'a> {
    redactor: &'a Redactor,
    out: &'a mut Vec<u8>,
    scope: Scope,
    comma: bool,
}

impl Redact<'_> {
    fn start(&mut self) {
        if self.comma {
            self.out.push(b',');
        }
    }

    /// A scalar other than `null`: a string's text (`quoted`), or any other's JSON text. What is
    /// HMACed is that text either way.
    fn scalar(mut self, text: &str, quoted: bool) -> bool {
        self.start();
        if self.scope.hides_scalars() {
            json_string(self.out, &self.redactor.hmac(text.as_bytes()));
        } else if quoted {
            json_string(self.out, text);
        } else {
            self.out.extend_from_slice(text.as_bytes());
        }
        false
    }
}

impl<'de> DeserializeSeed<'de> for Redact<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Redact<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(mut self) -> Result<bool, E> {
        self.start();
        self.out.extend_from_slice(b"null");
        Ok(true)
    }

    fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
        Ok(self.scalar(if v { "true" } else { "false" }, false))
    }

    fn visit_i64<E>(self, v: i64) -> Result<bool, E> {
        Ok(self.scalar(itoa::Buffer::new().format(v), false))
    }

    fn visit_u64<E>(self, v: u64) -> Result<bool, E> {
        Ok(self.scalar(itoa::Buffer::new().format(v), false))
    }

    fn visit_f64<E>(self, v: f64) -> Result<bool, E> {
        // As `serde_json` prints a parsed float (JSON has no infinities or NaN to meet here).
        let text = serde_json::Number::from_f64(v).map_or_else(|| "null".to_string(), |n| n.to_string());
        Ok(self.scalar(&text, false))
    }

    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(self.scalar(v, true))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<bool, A::Error> {
        self.start();
        self.out.push(b'[');
        // An answer that is an array is redacted whole.
        let scope = if self.scope == Scope::Kept { Scope::Kept } else { Scope::Secret };
        let mut comma = false;
        while seq.next_element_seed(Redact { redactor: self.redactor, out: &mut *self.out, scope, comma })?.is_some() {
            comma = true;
        }
        self.out.push(b']');
        Ok(false)
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<bool, A::Error> {
        self.start();
        self.out.push(b'{');
        let mut comma = false;
        while let Some(key) = map.next_key_seed(Key)? {
            if self.scope == Scope::Answer && key.as_ref() == "errors" {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let member = self.out.len();
            if comma {
                self.out.push(b',');
            }
            json_string(self.out, &key);
            self.out.push(b':');
            let scope = self.scope.member(&key);
            let null =
                map.next_value_seed(Redact { redactor: self.redactor, out: &mut *self.out, scope, comma: false })?;
            if null && self.scope == Scope::Answer {
                self.out.truncate(member);
            } else {
                comma = true;
            }
        }
        self.out.push(b'}');
        Ok(false)
    }
}

/// An object's key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.to_string().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secretlog_schemas::RootKey;
    use serde_json::{Value, json};

    fn redactor() -> Redactor {
        Redactor::new(Some(Arc::new(Keyring::from_root(&RootKey::from_bytes([9; 32])))))
    }

    fn answer(r: &Redactor, v: &Value) -> Value {
        let mut out = Vec::new();
        r.answer(v.to_string().as_bytes(), &mut out);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out)))
    }

    fn body(r: &Redactor, input: &[u8]) -> Option<Value> {
        let mut out = Vec::new();
        r.body(input, &mut out).then(|| serde_json::from_slice(&out).unwrap())
    }

    #[test]
    fn an_answer_hmacs_nested_data_and_tokens_and_keeps_keys() {
        let r = redactor();
        let v = json!({
            "request_id": "x",
            "lease_duration": 0,
            "data": {"data": {"password": "hunter2", "n": {"pin": 1234, "ok": true, "f": 1.5, "l": ["a", null]}}},
            "auth": {"client_token": "hvs.tok", "accessor": "acc", "policies": ["app"], "renewable": false},
            "wrap_info": null,
            "warnings": ["w"],
            "errors": ["nope"],
            "mount_type": "kv",
        });
        let out = answer(&r, &v);
        let text = out.to_string();
        for plain in ["hunter2", "1234", "hvs.tok", "\"acc\"", "nope"] {
            assert!(!text.contains(plain), "{plain} in {text}");
        }
        assert_eq!(out["request_id"], "x");
        assert_eq!(out["lease_duration"], 0);
        assert_eq!(out["auth"]["policies"], json!(["app"]));
        assert_eq!(out["auth"]["renewable"], false);
        assert_eq!(out["warnings"], json!(["w"]));
        assert_eq!(out["mount_type"], "kv");
        assert_eq!(out["data"]["data"]["password"], json!(r.hmac(b"hunter2")));
        assert_eq!(out["data"]["data"]["n"]["pin"], json!(r.hmac(b"1234")));
        assert_eq!(out["data"]["data"]["n"]["ok"], json!(r.hmac(b"true")));
        assert_eq!(out["data"]["data"]["n"]["f"], json!(r.hmac(b"1.5")));
        assert_eq!(out["data"]["data"]["n"]["l"], json!([r.hmac(b"a"), null]));
        assert_eq!(out["auth"]["client_token"], json!(r.hmac(b"hvs.tok")));
        assert_eq!(out["auth"]["accessor"], json!(r.hmac(b"acc")));
        // The answer's `null` members and its errors are left out; nothing else is.
        let members: Vec<&str> = out.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(members, ["auth", "data", "lease_duration", "mount_type", "request_id", "warnings"]);
    }

    #[test]
    fn an_answer_that_is_not_an_object_is_hidden_whole() {
        let r = redactor();
        assert_eq!(answer(&r, &json!(["a", 2, {"k": "v"}])), json!([r.hmac(b"a"), r.hmac(b"2"), {"k": r.hmac(b"v")}]));
        assert_eq!(answer(&r, &json!("hunter2")), json!(r.hmac(b"hunter2")));
        let mut out = Vec::new();
        r.answer(b"{\"data\": \"unterminated", &mut out);
        assert_eq!(out, serde_json::to_vec(&r.hmac(b"{\"data\": \"unterminated")).unwrap());
        out.clear();
        r.answer(b"{} trailing hunter2", &mut out);
        assert_eq!(out, serde_json::to_vec(&r.hmac(b"{} trailing hunter2")).unwrap());
    }

    #[test]
    fn a_request_body_hides_every_scalar_whatever_its_key() {
        let r = redactor();
        let b = body(&r, br#"{"data": {"k": "v"}, "options": {"cas": 3}, "token": "hvs.x", "n": null, "e\"sc": "a"}"#)
            .unwrap();
        assert_eq!(
            b,
            json!({
                "data": {"k": r.hmac(b"v")},
                "options": {"cas": r.hmac(b"3")},
                "token": r.hmac(b"hvs.x"),
                "n": null,
                "e\"sc": r.hmac(b"a"),
            })
        );
        assert_eq!(body(&r, b"not json: hunter2"), Some(json!(r.hmac(b"not json: hunter2"))));
        assert_eq!(body(&r, b" \n"), None);
        assert_eq!(body(&r, b""), None);
    }

    #[test]
    fn hmac_is_stable_for_the_same_input_and_keyed() {
        let (a, b) = (redactor(), redactor());
        assert_eq!(a.hmac(b"hunter2"), b.hmac(b"hunter2"));
        assert_ne!(a.hmac(b"hunter2"), a.hmac(b"hunter3"));
        let other = Redactor::new(Some(Arc::new(Keyring::from_root(&RootKey::from_bytes([8; 32])))));
        assert_ne!(a.hmac(b"hunter2"), other.hmac(b"hunter2"));
        assert_eq!(Redactor::new(None).hmac(b"hunter2"), NO_KEY);
    }
}
