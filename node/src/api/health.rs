//! `GET /v1/sys/health` with Vault's status codes and query parameters.
//!
//! | state | default code | parameter that overrides it |
//! |---|---|---|
//! | active (leader) writer | 200 | `activecode` |
//! | standby writer | 429 | `standbycode`, or `standbyok=true` → active code |
//! | reader (performance standby) | 473 | `performancestandbycode`, or `perfstandbyok=true` → active code |
//! | sealed (no root key) | 503 | `sealedcode` |
//! | halted partition, or lag over the threshold | 503 | `haltedcode` (secretlog's own) |
//!
//! The body is Vault's, plus a `secretlog` object with role, region, applied offsets, high
//! watermarks, lag and the reason of any halt.

use serde_json::json;

use super::{ApiRequest, ApiResponse};
use secretlog_state::materializer::{Progress, now_ms};

/// What kind of node answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    ActiveWriter,
    StandbyWriter { leader: Option<String> },
    Reader { region: String },
}

/// The facts health is computed from.
#[derive(Debug, Clone)]
pub struct HealthInput {
    pub role: Role,
    /// Why the node is sealed, if it is.
    pub sealed: Option<String>,
    pub progress: Option<Progress>,
    /// Lag (seconds) above which a node reports itself unhealthy.
    pub max_lag_seconds: f64,
    /// A reader's staleness bound (`--max-staleness`): past it, health reports why.
    pub max_staleness: Option<std::time::Duration>,
    /// Extra reason the node cannot serve (e.g. the writer cannot reach Kafka).
    pub unavailable: Option<String>,
    /// The leader's lease left (writers; `None` elsewhere and when lapsed): while it holds, the
    /// leader answers reads from its own state.
    pub lease_left: Option<std::time::Duration>,
}

fn code(req: &ApiRequest, name: &str, default: u16) -> u16 {
    req.query.get(name).and_then(|v| v.parse().ok()).filter(|c| (100..600).contains(c)).unwrap_or(default)
}

/// Build the health answer.
pub fn health(input: &HealthInput, req: &ApiRequest) -> ApiResponse {
    let now = now_ms();
    let active = code(req, "activecode", 200);
    let (lag_records, lag_seconds) =
        input.progress.as_ref().map(|p| (p.lag_records(), p.lag_seconds(now))).unwrap_or((0, 0.0));
    let halted = input.progress.as_ref().map(|p| p.halted.clone()).unwrap_or_default();
    let mut problem = input.sealed.clone().map(|s| format!("sealed: {s}"));
    if problem.is_none() && !halted.is_empty() {
        problem = Some(format!("{} partition(s) halted", halted.len()));
    }
    if problem.is_none() && lag_seconds > input.max_lag_seconds {
        problem = Some(format!("lagging {lag_seconds:.1} s behind the log (threshold {:.1} s)", input.max_lag_seconds));
    }
    let instant = std::time::Instant::now();
    let staleness = input.progress.as_ref().and_then(|p| p.confirmations.oldest(0..p.partitions, instant));
    if problem.is_none()
        && let (Some(bound), Some(p)) = (input.max_staleness, input.progress.as_ref())
        && p.partitions > 0
        && let Err(why) = secretlog_state::freshness::within_bound(&p.confirmations, p.partitions, bound, instant)
    {
        problem = Some(why);
    }
    if problem.is_none() && input.progress.as_ref().is_some_and(|p| p.partitions == 0 || p.high.is_empty()) {
        problem = Some("starting: positioning on the log".into());
    }
    if problem.is_none() {
        problem = input.unavailable.clone();
    }
    let status = if input.sealed.is_some() {
        code(req, "sealedcode", 503)
    } else if problem.is_some() {
        code(req, "haltedcode", 503)
    } else {
        match &input.role {
            Role::ActiveWriter => active,
            Role::StandbyWriter { .. } if req.query_bool("standbyok") == Some(true) => active,
            Role::StandbyWriter { .. } => code(req, "standbycode", 429),
            Role::Reader { .. } if req.query_bool("perfstandbyok") == Some(true) => active,
            Role::Reader { .. } => code(req, "performancestandbycode", 473),
        }
    };
    let (role, region, leader) = match &input.role {
        Role::ActiveWriter => ("writer", None, None),
        Role::StandbyWriter { leader } => ("standby_writer", None, leader.clone()),
        Role::Reader { region } => ("reader", Some(region.clone()), None),
    };
    let body = json!({
        "initialized": true,
        "sealed": input.sealed.is_some(),
        "standby": !matches!(input.role, Role::ActiveWriter),
        "performance_standby": matches!(input.role, Role::Reader { .. }),
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": now / 1000,
        "version": concat!(env!("CARGO_PKG_VERSION"), "+secretlog"),
        "cluster_name": "secretlog",
        "secretlog": {
            "role": role,
            "region": region,
            "leader_address": leader,
            "leader_epoch": input.progress.as_ref().and_then(|p| p.leader.as_ref().map(|l| l.epoch)),
            "problem": problem,
            "applied": input.progress.as_ref().map(|p| p.applied.clone()),
            "high_watermarks": input.progress.as_ref().map(|p| p.high.clone()),
            "lag_records": lag_records,
            "lag_seconds": lag_seconds,
            "staleness_seconds": staleness.map(|d| d.as_secs_f64()),
            "lease_seconds_left": input.lease_left.map(|d| d.as_secs_f64()),
            "halted": halted,
            "consumer_error": input.progress.as_ref().and_then(|p| p.consumer_error.clone()),
        }
    });
    ApiResponse::json(status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn req(q: &str) -> ApiRequest {
        ApiRequest {
            method: "GET".into(),
            path: "v1/sys/health".into(),
            raw_path: "v1/sys/health".into(),
            raw_query: q.into(),
            query: q
                .split('&')
                .filter(|s| !s.is_empty())
                .filter_map(|p| p.split_once('='))
                .map(|(a, b)| (a.into(), b.into()))
                .collect(),
            request_id: "r".into(),
            ..Default::default()
        }
    }
    fn input(role: Role) -> HealthInput {
        HealthInput {
            lease_left: None,
            role,
            sealed: None,
            progress: Some(Progress { partitions: 1, high: BTreeMap::from([(0, 0)]), ..Default::default() }),
            max_lag_seconds: 10.0,
            max_staleness: None,
            unavailable: None,
        }
    }

    #[test]
    fn vault_codes_by_role() {
        assert_eq!(health(&input(Role::ActiveWriter), &req("")).status, 200);
        assert_eq!(health(&input(Role::StandbyWriter { leader: None }), &req("")).status, 429);
        assert_eq!(health(&input(Role::StandbyWriter { leader: None }), &req("standbyok=true")).status, 200);
        let reader = input(Role::Reader { region: "east".into() });
        assert_eq!(health(&reader, &req("")).status, 473);
        assert_eq!(health(&reader, &req("perfstandbyok=true")).status, 200);
        assert_eq!(health(&reader, &req("performancestandbycode=299")).status, 299);
    }

    #[test]
    fn sealed_halted_and_lagging_nodes_are_unhealthy() {
        let mut sealed = input(Role::Reader { region: "east".into() });
        sealed.sealed = Some("no root key".into());
        assert_eq!(health(&sealed, &req("")).status, 503);
        assert_eq!(health(&sealed, &req("sealedcode=200")).status, 200);

        let mut halted = input(Role::Reader { region: "east".into() });
        halted.progress.as_mut().unwrap().halted = BTreeMap::from([(2, "offset 7: bad mac".into())]);
        let r = health(&halted, &req(""));
        assert_eq!(r.status, 503);
        assert!(String::from_utf8_lossy(&r.body).contains("bad mac"));

        let mut lagging = input(Role::Reader { region: "east".into() });
        let p = lagging.progress.as_mut().unwrap();
        p.high = BTreeMap::from([(0, 100)]);
        p.applied = BTreeMap::from([(0, 10)]);
        p.last_event_ms = now_ms() - 60_000;
        assert_eq!(health(&lagging, &req("")).status, 503);
    }
}
