//! Field values decoded as Vault's request framework decodes them (Go's weakly typed decoding),
//! with its error messages: integers, booleans and durations.

use secretlog_node::api::ApiError;
use serde_json::Value;

/// 400 for a field whose value does not decode, worded as Vault's request framework words it.
pub(crate) fn field_error(field: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error converting input for field \"{field}\": {detail}"))
}

/// The Go type a JSON value decodes to, for messages.
pub(crate) fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(_) => "json.Number",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

/// An integer field, decoded as Vault decodes one (Go's weak typing): integers and decimal
/// strings; `""`, `null` and `false` are 0, `true` is 1. Fractions are refused.
pub(crate) fn go_int(v: &Value) -> Result<i64, String> {
    let syntax = || "cannot parse value as 'int': strconv.ParseInt: invalid syntax".to_string();
    match v {
        Value::Null => Ok(0),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Number(n) if n.is_u64() => {
            n.as_i64().ok_or_else(|| "cannot parse value as 'int': strconv.ParseInt: value out of range".into())
        }
        Value::Number(n) => n.as_i64().ok_or_else(syntax),
        Value::String(s) if s.is_empty() => Ok(0),
        Value::String(s) => s.parse().map_err(|_| syntax()),
        Value::Array(_) | Value::Object(_) => {
            Err(format!("expected type 'int', got unconvertible type '{}'", go_type(v)))
        }
    }
}

/// A boolean field, decoded as Vault decodes one: booleans, and the strings and numbers Go's
/// `strconv.ParseBool` takes ("true", "t", "1", "false", "f", "0"...); `""` and `null` are false.
pub(crate) fn go_bool(v: &Value) -> Result<bool, String> {
    let text = match v {
        Value::Null => return Ok(false),
        Value::Bool(b) => return Ok(*b),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.is_empty() => return Ok(false),
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => {
            return Err(format!("expected type 'bool', got unconvertible type '{}'", go_type(v)));
        }
    };
    match text.as_str() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("cannot parse value as 'bool': strconv.ParseBool: invalid syntax".into()),
    }
}

/// A duration in seconds, as Vault's `TypeDurationSecond` reads one: a number or numeric string
/// of seconds, `"<n>d"` days, or a Go duration (`"1h30m"`, `"1.5h"`, `"90s"`), truncated to
/// whole seconds. `""` is 0; negative values are refused.
pub(crate) fn go_duration_secs(field: &str, v: &Value) -> Result<u64, ApiError> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return Err(field_error(field, "could not parse duration from input")),
    };
    let secs: i64 = if text.is_empty() {
        0
    } else if let Ok(n) = text.parse::<i64>() {
        n
    } else if let Some(days) = text.strip_suffix('d') {
        days.parse::<i64>()
            .map_err(|_| field_error(field, format!("strconv.ParseInt: parsing {days:?}: invalid syntax")))?
            .saturating_mul(86_400)
    } else {
        let nanos = go_parse_duration(&text).map_err(|e| field_error(field, e))?;
        (nanos / 1_000_000_000) as i64
    };
    u64::try_from(secs).map_err(|_| field_error(field, format!("cannot provide negative value '{secs}'")))
}

/// Go's `time.ParseDuration`, in nanoseconds, with its error messages.
pub(crate) fn go_parse_duration(orig: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let (neg, mut s) = match orig.as_bytes().first() {
        Some(b'-') => (true, &orig[1..]),
        Some(b'+') => (false, &orig[1..]),
        _ => (false, orig),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int: i128 = if int_len > 0 { s[..int_len].parse().map_err(|_| invalid())? } else { 0 };
        s = &s[int_len..];
        let (mut frac, mut scale, mut frac_len) = (0i128, 1i128, 0);
        if let Some(rest) = s.strip_prefix('.') {
            frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            for d in rest[..frac_len].bytes().take(18) {
                frac = frac * 10 + i128::from(d - b'0');
                scale *= 10;
            }
            s = &rest[frac_len..];
        }
        if int_len == 0 && frac_len == 0 {
            return Err(invalid());
        }
        let unit_len = s.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let unit: i128 = match &s[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            u => return Err(format!("time: unknown unit {u:?} in duration {orig:?}")),
        };
        s = &s[unit_len..];
        total = total.saturating_add(int.saturating_mul(unit)).saturating_add(frac * unit / scale);
    }
    Ok(if neg { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_like_vault() {
        let secs = |v: Value| go_duration_secs("f", &v).map_err(|e| e.errors.join("|"));
        for (v, want) in [
            (json!(90), 90),
            (json!("90"), 90),
            (json!(""), 0),
            (json!("0"), 0),
            (json!("1h30m"), 5400),
            (json!("1.5h"), 5400),
            (json!("1s500ms"), 1),
            (json!("100ms"), 0),
            (json!("+5s"), 5),
            (json!("2d"), 172_800),
            (json!("1h0m0s"), 3600),
        ] {
            assert_eq!(secs(v.clone()), Ok(want), "{v}");
        }
        let field = "error converting input for field \"f\": ";
        assert_eq!(secs(json!("bogus")), Err(format!("{field}time: invalid duration \"bogus\"")));
        assert_eq!(secs(json!(3.5)), Err(format!("{field}time: missing unit in duration \"3.5\"")));
        assert_eq!(secs(json!("1x")), Err(format!("{field}time: unknown unit \"x\" in duration \"1x\"")));
        assert_eq!(secs(json!("-5s")), Err(format!("{field}cannot provide negative value '-5'")));
        assert_eq!(secs(json!(-5)), Err(format!("{field}cannot provide negative value '-5'")));
        assert_eq!(secs(json!([1])), Err(format!("{field}could not parse duration from input")));
    }
}
