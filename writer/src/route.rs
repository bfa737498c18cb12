//! Where a write goes: decided here, by this node as leader, or forwarded to the leader the log
//! announced — and, while no leader can take it, held until one can, for a bounded time.
//!
//! Why hold it at all: leadership has gaps. A writer whose election session lapses (librdkafka
//! declares the session lost when the group coordinator has not answered a heartbeat for
//! `--election-session-timeout-ms`, 2 s, which a CPU-starved broker or a coordinator moving
//! between brokers can cause) is revoked, rejoins, is elected again and takes over anew: fences
//! the transactional ids, appends a claim and an epoch record to every partition and waits until
//! its own materializer applied them. With one writer that is a gap of its own making with no one
//! else to forward to; with a standby, a killed leader leaves its URL announced until the standby
//! has taken over. Vault clients (hvac, the vault CLI) do not retry a 503 on a write, so every
//! write in such a gap failed for its client.
//!
//! The wait ends the moment the node's own state or the materializer's progress (a leader epoch
//! applied) allows a route: both are watch channels, nothing polls on a timer. After
//! `--leader-wait-ms` the write is answered 503, saying what it waited for. Holding happens before
//! any byte of the request is sent anywhere, and a forward is sent again after a wait only when it
//! provably never left ([`secretlog_node::api::forward::NotSent`]), so rule 7 (forward at most
//! once) holds.

use secretlog_state::materializer::Progress;
use secretlog_state::store::LeaderRecord;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::node::WriterState;

/// Where a write goes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    /// This node leads and its committer takes writes: decide the write here.
    Here,
    /// Another writer leads, as the log announced: forward the write there.
    Forward(LeaderRecord),
    /// No leader can take the write yet, and why.
    Wait(String),
}

/// What a writer knows of itself when it routes a write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Standing<'a> {
    pub state: &'a WriterState,
    /// A newer leader's epoch was applied here: this node decides nothing more.
    pub fenced: bool,
    /// The committer's queue is open.
    pub accepting: bool,
    /// The URL this writer announces when it leads.
    pub me: &'a str,
    /// The write was forwarded here already (a reader found the announced leader unreachable):
    /// it may not be forwarded again, only decided here.
    pub forwarded: bool,
}

/// Route a write, given the leader the log `announced` and the epoch of a leader already found
/// `unreachable` for this write (a dead leader stays announced until its successor's epoch is
/// applied).
pub(crate) fn route(node: Standing<'_>, announced: Option<&LeaderRecord>, unreachable: Option<u64>) -> Destination {
    if *node.state == WriterState::Active && node.accepting && !node.fenced {
        return Destination::Here;
    }
    // Only a writer that is not taking leadership itself forwards: one that is elected (Starting)
    // would send the write to the leader it is replacing.
    let deposed = node.fenced || matches!(node.state, WriterState::Standby | WriterState::Fenced);
    let other = announced.filter(|l| l.url != node.me);
    match (other, node.state) {
        (Some(_), _) if deposed && node.forwarded => {
            Destination::Wait("this writer does not lead and the write was already forwarded once".into())
        }
        (Some(l), _) if deposed && Some(l.epoch) != unreachable => Destination::Forward(l.clone()),
        (Some(l), _) if deposed => {
            Destination::Wait(format!("the leader the log announces ({}, epoch {}) cannot be reached", l.url, l.epoch))
        }
        (_, WriterState::Starting(why)) => Destination::Wait(format!("this writer is taking leadership ({why})")),
        (_, WriterState::Fenced) => Destination::Wait("fenced by a newer leader the log has not announced yet".into()),
        _ if node.fenced => Destination::Wait("fenced by a newer leader the log has not announced yet".into()),
        (_, WriterState::Active) => Destination::Wait("this writer is stepping down or taking leadership anew".into()),
        (_, WriterState::Standby) if announced.is_some() => {
            Destination::Wait("this writer lost its election session and no leader has taken over yet".into())
        }
        (_, WriterState::Standby) => Destination::Wait("no leader writer is known yet".into()),
    }
}

/// Wait until `decide` routes the write somewhere, deciding again each time the node's `state` or
/// the materializer's `progress` changes; after `deadline`, the last reason it had to wait.
pub(crate) async fn until_routed(
    state: &mut watch::Receiver<WriterState>,
    progress: &mut watch::Receiver<Progress>,
    deadline: Instant,
    mut decide: impl FnMut(&WriterState, Option<&LeaderRecord>) -> Destination,
) -> Result<Destination, String> {
    let mut held = None;
    loop {
        // Marked seen before deciding: a change after the decision wakes the wait below.
        let route = {
            let s = state.borrow_and_update();
            let p = progress.borrow_and_update();
            decide(&s, p.leader.as_ref())
        };
        let Destination::Wait(why) = route else { return Ok(route) };
        held.get_or_insert_with(Held::new);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(why),
            r = progress.changed() => if r.is_err() {
                return Err(format!("{why}; the writer's materializer stopped"));
            },
            r = state.changed() => if r.is_err() {
                return Err(format!("{why}; the writer stopped"));
            },
        }
    }
}

/// One write held for a leader, counted in `secretlog_writer_held_writes` while it waits.
struct Held;

impl Held {
    fn new() -> Held {
        metrics::gauge!("secretlog_writer_held_writes").increment(1.0);
        Held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::gauge!("secretlog_writer_held_writes").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ME: &str = "http://w1:8200";

    fn leader(url: &str, epoch: u64) -> LeaderRecord {
        LeaderRecord { epoch, url: url.into() }
    }

    fn standing(state: &WriterState) -> Standing<'_> {
        Standing { state, fenced: false, accepting: false, me: ME, forwarded: false }
    }

    fn waits(r: Destination) -> String {
        match r {
            Destination::Wait(why) => why,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn a_leader_with_its_queue_open_decides_here_whatever_the_log_announced() {
        let active = WriterState::Active;
        let node = Standing { accepting: true, ..standing(&active) };
        for announced in [None, Some(leader(ME, 7)), Some(leader("http://w2:8200", 3))] {
            assert_eq!(route(node, announced.as_ref(), None), Destination::Here);
        }
    }

    #[test]
    fn a_writer_between_two_terms_of_its_own_waits_instead_of_answering_no_leader() {
        // The CI flake: the only writer's session lapsed; the log still names it.
        let standby = WriterState::Standby;
        let why = waits(route(standing(&standby), Some(&leader(ME, 7)), None));
        assert!(why.contains("lost its election session"), "{why}");
        assert_eq!(waits(route(standing(&standby), None, None)), "no leader writer is known yet");
        // Elected again and taking over: its old epoch is no one to forward to.
        let starting = WriterState::Starting("fencing the previous leader".into());
        let why = waits(route(standing(&starting), Some(&leader(ME, 7)), None));
        assert!(why.contains("taking leadership (fencing the previous leader)"), "{why}");
        // Its committer stopped, the campaign has not stepped down yet.
        let active = WriterState::Active;
        waits(route(standing(&active), Some(&leader(ME, 7)), None));
    }

    #[test]
    fn a_standby_forwards_to_the_announced_leader_until_that_leader_proved_unreachable() {
        let standby = WriterState::Standby;
        let other = leader("http://w2:8200", 9);
        assert_eq!(route(standing(&standby), Some(&other), None), Destination::Forward(other.clone()));
        let why = waits(route(standing(&standby), Some(&other), Some(9)));
        assert!(why.contains("http://w2:8200, epoch 9") && why.contains("cannot be reached"), "{why}");
        // Its successor announced: forwarded there.
        let next = leader("http://w3:8200", 12);
        assert_eq!(route(standing(&standby), Some(&next), Some(9)), Destination::Forward(next));
    }

    #[test]
    fn a_write_forwarded_once_waits_for_this_writer_to_lead_instead_of_going_on() {
        // A reader found the announced leader dead and sent the write to this standby, which is
        // about to take over.
        let standby = WriterState::Standby;
        let node = Standing { forwarded: true, ..standing(&standby) };
        let why = waits(route(node, Some(&leader("http://w2:8200", 9)), None));
        assert!(why.contains("already forwarded once"), "{why}");
        // Once it leads, it decides the write.
        let active = WriterState::Active;
        let node = Standing { state: &active, accepting: true, forwarded: true, ..standing(&active) };
        assert_eq!(route(node, Some(&leader("http://w2:8200", 9)), None), Destination::Here);
    }

    #[test]
    fn an_elected_writer_never_forwards_to_the_leader_it_replaces() {
        let starting = WriterState::Starting("writing the leader epoch".into());
        waits(route(standing(&starting), Some(&leader("http://w2:8200", 9)), None));
    }

    #[test]
    fn a_fenced_writer_forwards_to_its_successor_once_the_log_names_it() {
        for state in [WriterState::Fenced, WriterState::Active] {
            let node = Standing { fenced: true, accepting: true, ..standing(&state) };
            let why = waits(route(node, Some(&leader(ME, 7)), None));
            assert!(why.starts_with("fenced by a newer leader"), "{state:?}: {why}");
            let next = leader("http://w2:8200", 8);
            assert_eq!(route(node, Some(&next), None), Destination::Forward(next), "{state:?}");
        }
    }

    fn channels(
        state: WriterState,
        leader: Option<LeaderRecord>,
    ) -> (watch::Sender<WriterState>, watch::Sender<Progress>) {
        let (s, _) = watch::channel(state);
        let (p, _) = watch::channel(Progress { leader, ..Default::default() });
        (s, p)
    }

    /// Route as the writer does, with its queue open exactly when it is Active.
    fn decide(s: &WriterState, announced: Option<&LeaderRecord>) -> Destination {
        let node = Standing { accepting: *s == WriterState::Active, ..standing(s) };
        route(node, announced, None)
    }

    /// A wait that ends on a change, never on its deadline, which is out of reach.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    #[tokio::test]
    async fn a_held_write_is_routed_the_moment_its_node_leads_again() {
        let (state, progress) = channels(WriterState::Standby, Some(leader(ME, 7)));
        let (mut s, mut p) = (state.subscribe(), progress.subscribe());
        let waiting = tokio::spawn(async move { until_routed(&mut s, &mut p, far(), decide).await });
        tokio::task::yield_now().await;
        // The new term's epoch is applied first and the queue opens after it: only the second is
        // a route, and the wait must still be woken by it.
        progress.send_modify(|p| p.leader = Some(leader(ME, 8)));
        tokio::task::yield_now().await;
        state.send_replace(WriterState::Starting("reading the log to its end".into()));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "held while taking leadership");
        state.send_replace(WriterState::Active);
        assert_eq!(waiting.await.unwrap(), Ok(Destination::Here));
    }

    #[tokio::test]
    async fn a_held_write_is_forwarded_the_moment_another_leader_is_announced() {
        let (state, progress) = channels(WriterState::Standby, None);
        let (mut s, mut p) = (state.subscribe(), progress.subscribe());
        let waiting = tokio::spawn(async move { until_routed(&mut s, &mut p, far(), decide).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "held while no leader is known");
        progress.send_modify(|p| p.leader = Some(leader("http://w2:8200", 3)));
        assert_eq!(waiting.await.unwrap(), Ok(Destination::Forward(leader("http://w2:8200", 3))));
    }

    #[tokio::test]
    async fn a_held_write_gives_up_at_the_deadline_saying_what_it_waited_for() {
        let (state, progress) = channels(WriterState::Standby, Some(leader(ME, 7)));
        let (mut s, mut p) = (state.subscribe(), progress.subscribe());
        // Records applied meanwhile change the progress without giving a route: no early end.
        let churn = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for applied in 0.. {
                tick.tick().await;
                progress.send_modify(|p| {
                    p.applied.insert(0, applied);
                });
            }
        });
        let started = Instant::now();
        let bound = Duration::from_millis(300);
        let why = until_routed(&mut s, &mut p, started + bound, decide).await.unwrap_err();
        churn.abort();
        assert!(why.contains("lost its election session"), "{why}");
        assert!(started.elapsed() >= bound, "gave up after {:?}", started.elapsed());
        drop(state);
    }

    #[tokio::test]
    async fn a_held_write_is_not_held_past_its_materializer() {
        let (state, progress) = channels(WriterState::Standby, None);
        let (mut s, mut p) = (state.subscribe(), progress.subscribe());
        drop(progress);
        let why = until_routed(&mut s, &mut p, far(), decide).await.unwrap_err();
        assert!(why.ends_with("the writer's materializer stopped"), "{why}");
        drop(state);
    }
}
