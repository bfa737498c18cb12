//! Vault's `GET /v1/sys/key-status`, with secretlog's per-term counts — answered by every node
//! from its own materialized state, so a reader shows how far *it* has applied a rotation, a
//! rewrap and a retirement.
//!
//! The body is Vault's `term` (the active key term), `install_time` (when the log added it) and
//! `encryptions` (values sealed under it here), plus `terms` (per term: when it was added and
//! retired, how many stored values it seals) and `rewrap.remaining` (values still under older
//! terms). A writer adds its rewrap throttle (`rate`, `paused`); a reader does not know the
//! leader's and leaves them out. Access: the root token, or a token whose policies grant `read`
//! on `sys/key-status` (see [`super::auth::need`]).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::response::vault_time;
use super::{ApiError, ApiRequest, ApiResponse};
use crate::context::ReadContext;
use secretlog_state::model::KeyTerms;
use secretlog_state::store::TermCounts;

/// The background rewrap's throttle, as the writer running it knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Values per second; 0 while paused.
    pub rate: u64,
}

/// Values under terms older than `active`: what the rewrap still has to move.
pub fn remaining(counts: &TermCounts, active: u32) -> u64 {
    counts.iter().filter(|(t, _)| **t < active).map(|(_, n)| n).sum()
}

/// Answer `GET /v1/sys/key-status` from this node's state (after authorization).
pub async fn answer(ctx: &ReadContext, req: &ApiRequest, throttle: Option<Throttle>) -> Result<ApiResponse, ApiError> {
    if req.method != "GET" {
        return Err(ApiError::method_not_allowed());
    }
    let terms = ctx.store.key_terms().await?;
    let counts = ctx.store.sealed_per_term().await?;
    let data = body(&terms, &counts, ctx.keyring.active_term(), throttle);
    // Vault answers sys endpoints with the fields at the top level and under `data`.
    let mut out = data.clone();
    out["request_id"] = json!(req.request_id);
    out["data"] = data;
    Ok(ApiResponse::json(200, &out))
}

/// The key status of a node whose keyring's active term is `active`, whose log added and
/// retired `terms` and whose stored values are `counts` per term.
pub fn body(terms: &KeyTerms, counts: &TermCounts, active: u32, throttle: Option<Throttle>) -> Value {
    let mut all: BTreeMap<u32, Value> = BTreeMap::new();
    for t in 1..=active.max(counts.keys().copied().max().unwrap_or(1)) {
        let info = terms.terms.get(&t);
        let n = counts.get(&t).copied().unwrap_or(0);
        if info.is_none() && n == 0 && t != 1 && t != active {
            continue;
        }
        all.insert(
            t,
            json!({
                "term": t,
                "install_time": info.filter(|i| i.added_ms > 0).map(|i| vault_time(Some(i.added_ms))),
                "retired": info.is_some_and(|i| i.retired_ms.is_some()),
                "retire_time": info.and_then(|i| i.retired_ms).map(|ms| vault_time(Some(ms))),
                "values": n,
                "active": t == active,
            }),
        );
    }
    let install = terms.terms.get(&active).filter(|i| i.added_ms > 0).map(|i| vault_time(Some(i.added_ms)));
    let mut rewrap = json!({ "remaining": remaining(counts, active) });
    if let Some(t) = throttle {
        rewrap["rate"] = json!(t.rate);
        rewrap["paused"] = json!(t.rate == 0);
    }
    json!({
        "term": active,
        "install_time": install,
        "encryptions": counts.get(&active).copied().unwrap_or(0),
        "terms": all.into_values().collect::<Vec<_>>(),
        "rewrap": rewrap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secretlog_state::model::TermInfo;

    #[test]
    fn remaining_counts_only_terms_older_than_the_active_one() {
        let counts = TermCounts::from([(1, 5), (2, 7), (3, 1)]);
        assert_eq!(remaining(&counts, 1), 0);
        assert_eq!(remaining(&counts, 3), 12);
        assert_eq!(remaining(&TermCounts::new(), 4), 0);
    }

    #[test]
    fn the_body_shows_every_term_with_its_counts_and_the_throttle_only_when_known() {
        let terms = KeyTerms {
            terms: BTreeMap::from([
                (2, TermInfo { added_ms: 1_700_000_000_000, retired_ms: Some(1_700_000_100_000) }),
                (3, TermInfo { added_ms: 1_700_000_200_000, retired_ms: None }),
            ]),
        };
        let counts = TermCounts::from([(1, 4), (3, 9)]);
        let b = body(&terms, &counts, 3, None);
        assert_eq!((b["term"].clone(), b["encryptions"].clone()), (json!(3), json!(9)));
        assert!(b["install_time"].is_string(), "{b}");
        let t: Vec<(Value, Value, Value, Value)> = b["terms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["term"].clone(), t["values"].clone(), t["retired"].clone(), t["active"].clone()))
            .collect();
        assert_eq!(
            t,
            vec![
                (json!(1), json!(4), json!(false), json!(false)),
                (json!(2), json!(0), json!(true), json!(false)),
                (json!(3), json!(9), json!(false), json!(true)),
            ]
        );
        assert_eq!(b["rewrap"], json!({ "remaining": 4 }), "a reader does not know the leader's throttle");
        let w = body(&terms, &counts, 3, Some(Throttle { rate: 0 }));
        assert_eq!(w["rewrap"], json!({ "remaining": 4, "rate": 0, "paused": true }));
        // A fresh cluster: term 1 alone, no install time (it exists from the start).
        let fresh = body(&KeyTerms::default(), &TermCounts::new(), 1, None);
        assert_eq!(fresh["terms"].as_array().map(Vec::len), Some(1), "{fresh}");
        assert_eq!(fresh["install_time"], Value::Null);
    }
}
