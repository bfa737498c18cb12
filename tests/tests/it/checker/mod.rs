//! Issue #9: a Jepsen-style fault-injection checker.
//!
//! Concurrent clients write and read a small key space — writes to either writer or through a
//! reader (forwarded to the leader), reads on a random reader carrying the client's session
//! token or, a third of them, strong (`X-Secretlog-Consistency: strong`, issue #20) — and put,
//! delete and undelete versions of keys of their own, while a nemesis (issue #19) makes the
//! leader writer a zombie (SIGSTOP until a standby leads and acknowledges writes, then SIGCONT while its clients still send to it), kills the leader writer, kills a Kafka broker
//! in the middle of a burst of writes, pauses a reader with SIGSTOP, kills a reader, kills the
//! replicator, and slows down then cuts the network of a reader that runs in its own network
//! namespace ([`netns`]). The writers re-send records after their key changed
//! (`SECRETLOG_TEST_RESEND`, see the writer's committer), which every node must refuse. Every
//! operation is recorded; afterwards the final state and the archive are read back and
//! [`model::check`], a pure function over the history and that state, looks for lost
//! acknowledged writes, versions given twice, real-time order broken, stale reads, writes that
//! landed twice or despite a definite refusal, deletes or undeletes undone, readers that did not
//! converge, an archive that lacks or repeats a committed record, and (issue #19) a key whose
//! operations have no linearization: [`linearizability`] searches every key's history, counting
//! writes with no definite answer (no answer, 503 "write outcome unknown", any other 5xx but 503
//! "write refused") as indeterminate, strong reads as linearizable and the others as snapshots
//! no older than their token. The summary gives the share of writes answered successfully
//! beside the violations.
//!
//! The checker can fail: the `planted` unit tests feed `check` histories with a known bug, and
//! [`checker_catches_a_writer_that_acknowledges_before_commit`] and
//! [`checker_catches_nodes_that_apply_a_record_sent_again_after_its_key_changed`] run it against
//! real nodes with a bug switched on (`SECRETLOG_TEST_PLANTED_BUG`, see the writer's committer and
//! the reader's materializer) and require the bug's effect to be reported.
//!
//! The long run is `scripts/checker --duration 10m` ([`checker_long_run`]).

mod client;
mod linearizability;
mod model;
pub(crate) mod netns;
pub(crate) mod run;

use std::path::PathBuf;
use std::time::Duration;

use run::{RunOpts, run};

use crate::harness::{exclusive, shared};

/// Keys the clients share.
const KEYS: usize = 20;
/// Concurrent clients.
const CLIENTS: usize = 6;
/// Set on every key before the load, so that no acknowledged version is pruned.
const MAX_VERSIONS: u64 = 1_000_000;
/// `SECRETLOG_TEST_RESEND` of the runs that re-send records: the first record of every third
/// accepted batch is sent again once its key changed.
const RESEND_EVERY: u32 = 3;
/// `SECRETLOG_TEST_LATE_DELIVERY` of the runs that deliver records late: every tenth batch of
/// data writes is held back until the barrier that answers its writes refused, then sent.
const LATE_EVERY: u32 = 10;

fn key_name(i: usize) -> String {
    format!("chk/k{i:02}")
}

/// Client `c`'s own key, whose versions it puts, deletes and undeletes ([`model::Kind::Delete`]).
fn lifecycle_key(c: usize) -> String {
    format!("chk/life{c:02}")
}

/// `SECRETLOG_CHECKER_RESULTS`: where a run writes its history and violations, if anywhere.
fn results_dir() -> Option<PathBuf> {
    std::env::var_os("SECRETLOG_CHECKER_RESULTS").map(PathBuf::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_finds_no_violation_under_faults() {
    let Some((cluster, _guard)) = exclusive() else {
        eprintln!("external cluster: broker faults are not injected");
        return;
    };
    let report = run(
        cluster,
        RunOpts {
            name: "checker",
            load: Duration::from_secs(60),
            min_acked: 100,
            nemesis: true,
            zombie: true,
            planted: None,
            resend: Some(RESEND_EVERY),
            late: Some(LATE_EVERY),
            // The pipelined committer (opt-in) under the same faults; every other test runs the default, 1.
            in_flight: 3,
            netns: true,
            archive: true,
            results: results_dir(),
        },
    )
    .await;
    let v = &report.violations;
    assert!(v.is_empty(), "{} violations, first: {:?}", v.len(), v.first());
    assert!(report.acked >= 100, "too few acknowledged writes ({}) for the check to mean much", report.acked);
    assert!(report.faults.iter().any(|f| f.contains("kill -9 replicator")), "{:?}", report.faults);
    assert!(report.faults.iter().any(|f| f.contains("a zombie")), "{:?}", report.faults);
    assert!(report.summary["archived_records"].as_u64() > Some(0), "{}", report.summary);
    // The re-sent records reached the log, and the readers refused them by their revision; the
    // records delivered after their barrier too, refused by their epoch.
    assert_refused_by(&report, "revision");
    assert_refused_by(&report, "stale_epoch");
}

/// Every reader refused records for `reason`: the test hook's records reached the log (a run
/// without them would pass the check vacuously).
fn assert_refused_by(report: &run::Report, reason: &str) {
    for (node, reasons) in report.refused.iter().filter(|(n, _)| n.starts_with("reader")) {
        assert!(reasons.get(reason).copied().unwrap_or(0) > 0, "{node} refused nothing by {reason}: {reasons:?}");
    }
}

/// With the late-delivery hook on, nodes that apply a record whatever epoch it carries
/// (`SECRETLOG_TEST_PLANTED_BUG=skip-epoch-check` on every node) apply the records their writer
/// held back until a barrier had answered their writes "write refused": the checker reports the
/// refused writes' values in the keys' histories. (With per-key revisions checked, a zombie's
/// late record is either refused by its revision or lands on exactly the state it was decided
/// on, so only a record delivered after its barrier shows what the epoch rule alone prevents.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_nodes_that_apply_a_record_delivered_after_its_barrier() {
    let (cluster, _guard) = shared();
    let report = run(
        cluster,
        RunOpts {
            name: "planted-epoch",
            load: Duration::from_secs(20),
            min_acked: 100,
            nemesis: false,
            zombie: false,
            planted: Some("skip-epoch-check"),
            resend: None,
            late: Some(5),
            in_flight: 1,
            netns: false,
            archive: false,
            results: None,
        },
    )
    .await;
    let present =
        report.violations.iter().filter(|v| matches!(v, model::Violation::RefusedWritePresent { .. })).count();
    assert!(present > 0, "the planted bug went unnoticed: {}", report.summary);
    eprintln!("[checker] planted bug caught: {present} writes answered refused whose records landed after all");
}

/// With the re-send hook on, nodes that apply a record whatever revision it was decided against
/// (`SECRETLOG_TEST_PLANTED_BUG=no-revision-check` on every node) apply a client's delete of a
/// version once more after its acknowledged undelete: the checker reports the undelete undone.
/// (A re-sent put is still refused as a version gap, and a re-sent register write leaves nothing
/// behind to see; the clients' lifecycle keys are what makes a re-send observable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_nodes_that_apply_a_record_sent_again_after_its_key_changed() {
    let (cluster, _guard) = shared();
    let report = run(
        cluster,
        RunOpts {
            name: "planted-revision",
            load: Duration::from_secs(20),
            min_acked: 100,
            nemesis: false,
            zombie: false,
            planted: Some("no-revision-check"),
            // Every accepted batch: the more records sent again, the more deletes among them.
            resend: Some(1),
            late: None,
            in_flight: 1,
            netns: false,
            archive: false,
            results: None,
        },
    )
    .await;
    let undone = report.violations.iter().filter(|v| matches!(v, model::Violation::DeletionUndone { .. })).count();
    assert!(undone > 0, "the planted bug went unnoticed: {}", report.summary);
    eprintln!("[checker] planted bug caught: {undone} acknowledged deletes or undeletes undone by a record sent again");
}

/// The other half of the proof: the same checker, against writers that answer every tenth
/// transaction before (instead of) committing it, reports the lost acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_a_writer_that_acknowledges_before_commit() {
    let (cluster, _guard) = shared();
    let report = run(
        cluster,
        RunOpts {
            name: "planted",
            load: Duration::from_secs(20),
            min_acked: 100,
            nemesis: false,
            zombie: false,
            planted: Some("ack-before-commit"),
            resend: None,
            late: None,
            in_flight: 1,
            netns: false,
            archive: false,
            results: None,
        },
    )
    .await;
    let lost = report.violations.iter().filter(|v| v.loses_acknowledged_write()).count();
    assert!(report.acked >= 100, "too few acknowledged writes ({})", report.acked);
    assert!(lost > 0, "the planted bug went unnoticed: {}", report.summary);
    eprintln!("[checker] planted bug caught: {lost} acknowledged writes reported lost of {}", report.acked);
}

/// The long run: `scripts/checker --duration 10m`. Settings from the environment:
/// `SECRETLOG_CHECKER_DURATION` (humantime, default 10m), `SECRETLOG_CHECKER_RESULTS` (default
/// `target/checker-results/<unix time>`), `SECRETLOG_CHECKER_PLANTED_BUG` (a planted bug the run
/// must then catch, set on every node), `SECRETLOG_CHECKER_RESEND` (the writers' re-send test hook,
/// every how many batches: default [`RESEND_EVERY`], 0 turns it off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with scripts/checker --duration <d>"]
async fn checker_long_run() {
    let load = std::env::var("SECRETLOG_CHECKER_DURATION")
        .map(|d| humantime::parse_duration(&d).expect("SECRETLOG_CHECKER_DURATION: a duration like 10m"))
        .unwrap_or(Duration::from_secs(600));
    let planted: Option<&'static str> =
        std::env::var("SECRETLOG_CHECKER_PLANTED_BUG").ok().filter(|p| !p.is_empty()).map(|p| &*p.leak());
    let resend = match std::env::var("SECRETLOG_CHECKER_RESEND") {
        Ok(n) => Some(n.parse().expect("SECRETLOG_CHECKER_RESEND: every how many batches (0: never)")),
        Err(_) => Some(RESEND_EVERY),
    };
    let late = match std::env::var("SECRETLOG_CHECKER_LATE_DELIVERY") {
        Ok(n) => Some(n.parse().expect("SECRETLOG_CHECKER_LATE_DELIVERY: every how many batches (0: never)")),
        Err(_) => Some(LATE_EVERY),
    };
    let results = results_dir().unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("..").join("checker-results").join(t.to_string())
    });
    let Some((cluster, _guard)) = exclusive() else {
        panic!("the long run injects broker faults: it needs the local cluster, not KAFKA_BOOTSTRAP_SERVERS");
    };
    let report = run(
        cluster,
        RunOpts {
            name: "long",
            load,
            min_acked: 0,
            nemesis: true,
            zombie: true,
            planted,
            resend: resend.filter(|n| *n > 0),
            late: late.filter(|n| *n > 0),
            in_flight: std::env::var("SECRETLOG_MAX_BATCHES_IN_FLIGHT").ok().and_then(|n| n.parse().ok()).unwrap_or(8),
            netns: true,
            archive: true,
            results: Some(results),
        },
    )
    .await;
    if planted.is_some() {
        assert!(!report.violations.is_empty(), "the planted bug went unnoticed: {}", report.summary);
    } else {
        let v = &report.violations;
        assert!(v.is_empty(), "{} violations, first: {:?}", v.len(), v.first());
    }
}
