//! A response as handlers build it, converted to warp's type at the edge.

use serde::Serialize;
use serde_json::json;
use warp::http::header::{HeaderName, HeaderValue};

use super::ApiError;

/// Status, headers and a JSON (or text) body.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// 200 with a Vault response envelope around `data`.
    pub fn data(request_id: &str, data: impl Serialize) -> Self {
        ApiResponse::json(200, &Envelope::new(request_id, data))
    }
    /// Any status with a JSON body.
    pub fn json(status: u16, body: &impl Serialize) -> Self {
        ApiResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }
    /// 204 No Content.
    pub fn no_content() -> Self {
        ApiResponse { status: 204, headers: vec![], body: vec![] }
    }
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Convert to warp's response type. Header values that are not valid HTTP are dropped.
    pub(crate) fn into_warp(self) -> warp::reply::Response {
        let mut resp = warp::reply::Response::new(self.body.into());
        *resp.status_mut() =
            warp::http::StatusCode::from_u16(self.status).unwrap_or(warp::http::StatusCode::INTERNAL_SERVER_ERROR);
        for (k, v) in self.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
                resp.headers_mut().append(k, v);
            }
        }
        resp
    }
}

impl From<ApiError> for ApiResponse {
    fn from(e: ApiError) -> Self {
        let mut r = ApiResponse::json(e.status, &json!({ "errors": e.errors }));
        if let Some(s) = e.retry_after {
            r = r.with_header("retry-after", s.to_string());
        }
        r
    }
}

/// Vault's response envelope around `data`, serialized as it stands (no intermediate JSON
/// tree: this is on every read's path). Fields in alphabetical order, as a JSON object
/// built with `json!` would print them.
#[derive(Serialize)]
pub struct Envelope<'a, T> {
    auth: Option<()>,
    data: T,
    lease_duration: u64,
    lease_id: &'static str,
    mount_type: &'static str,
    renewable: bool,
    request_id: &'a str,
    warnings: Option<()>,
    wrap_info: Option<()>,
}

impl<'a, T: Serialize> Envelope<'a, T> {
    pub fn new(request_id: &'a str, data: T) -> Self {
        Envelope {
            auth: None,
            data,
            lease_duration: 0,
            lease_id: "",
            mount_type: "kv",
            renewable: false,
            request_id,
            warnings: None,
            wrap_info: None,
        }
    }
}

/// Vault's timestamp format: RFC 3339 in UTC with nanoseconds; `""` for "never".
pub fn vault_time(ms: Option<i64>) -> String {
    match ms {
        Some(ms) if ms >= 0 => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            humantime::format_rfc3339_nanos(t).to_string()
        }
        _ => String::new(),
    }
}

/// Vault's duration format for `delete_version_after` ("0s", "1h0m0s", "90s" → "1m30s").
pub(crate) fn vault_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_prints_as_vault_builds_it() {
        let body = serde_json::to_value(Envelope::new("r-1", json!({"k": 1}))).unwrap();
        let want = json!({
            "request_id": "r-1", "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": {"k": 1}, "wrap_info": null, "warnings": null, "auth": null, "mount_type": "kv"
        });
        assert_eq!(body, want);
        // Same bytes as the JSON tree would print (keys sorted), so clients see no difference.
        assert_eq!(serde_json::to_string(&Envelope::new("r-1", json!({"k": 1}))).unwrap(), want.to_string());
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(vault_duration(0), "0s");
        assert_eq!(vault_duration(90), "1m30s");
        assert_eq!(vault_duration(3600), "1h0m0s");
        assert_eq!(vault_duration(3 * 3600 + 25 * 60 + 19), "3h25m19s");
    }

    #[test]
    fn times_are_rfc3339_nanos() {
        assert_eq!(vault_time(Some(1_521_685_446_945)), "2018-03-22T02:24:06.945000000Z");
        assert_eq!(vault_time(None), "");
    }
}
