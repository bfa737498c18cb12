//! Load against a running stack, measured on the client side: what every scenario and peer of
//! `secretlog bench` is built from — the options naming the stack ([`LoadArgs`]), the HTTP client,
//! the closed loop, histograms and their summaries, secretlog's own writes, reads and lag
//! measurements, preloading, and appending results. It imports nothing else of `bench`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Writer URL.
    #[arg(long, default_value = "http://127.0.0.1:8200")]
    pub writer: String,
    /// Reader URL.
    #[arg(long, default_value = "http://127.0.0.1:8300")]
    pub reader: String,
    /// File holding the token (never passed on the command line).
    #[arg(long, default_value = "./.secretlog/root-token")]
    pub token_file: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Bytes of secret value per write.
    #[arg(long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Append results as JSON lines to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub(crate) fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub(super) fn summary(name: &str, param: usize, ops: u64, errors: u64, secs: f64, h: &Histogram<u64>) -> Value {
    json!({
        "scenario": name,
        "concurrency": param,
        "ops": ops,
        "errors": errors,
        "seconds": secs,
        "ops_per_sec": ops as f64 / secs,
        "p50_ms": h.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
        "p999_ms": h.value_at_quantile(0.999) as f64 / 1000.0,
        "max_ms": h.max() as f64 / 1000.0,
    })
}

pub(crate) fn client(pool: usize) -> anyhow::Result<reqwest::Client> {
    Ok(secretlog_node::api::tls::client_builder(None)?
        .pool_max_idle_per_host(pool)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Run a closed loop of `conc` workers for `secs`, each calling `op(worker, i)`.
pub(super) async fn closed_loop<F, Fut>(conc: usize, secs: u64, op: F) -> (u64, u64, f64, Histogram<u64>)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..conc {
        let (op, stop, errors) = (op.clone(), stop.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if op(w, i).await {
                    h.record(t.elapsed().as_micros().max(1) as u64).ok();
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            h
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut h = hist();
    for t in tasks {
        if let Ok(th) = t.await {
            h.add(th).ok();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    (h.len(), errors.load(Ordering::Relaxed), elapsed, h)
}

/// Run an open loop for `secs`: `conc` workers together offer `rate` operations a second, each
/// worker sending its `i`-th when it is due (`rate / conc` a second each), whether or not its
/// earlier ones were answered in time — a late answer delays the worker's next send, never the
/// schedule. Two histograms: from each send to its answer (the service time), and from the time
/// it was due (what a client on that schedule waits, the load generator's own delays included).
/// Sends are as precise as tokio's timer, which rounds to the millisecond.
pub(super) async fn open_loop<F, Fut>(
    conc: usize,
    rate: u64,
    secs: u64,
    op: F,
) -> (u64, u64, f64, Histogram<u64>, Histogram<u64>)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let errors = Arc::new(AtomicU64::new(0));
    let conc = conc.max(1);
    let per_worker = Duration::from_secs_f64(conc as f64 / rate.max(1) as f64);
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..conc {
        let (op, errors) = (op.clone(), errors.clone());
        // Workers start evenly spread over one interval, so their sends interleave.
        let first = started + per_worker.mul_f64(w as f64 / conc as f64);
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut due) = (hist(), hist());
            let mut i = 0u64;
            loop {
                let at = first + per_worker.mul_f64(i as f64);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let t = Instant::now();
                if op(w, i).await {
                    let now = Instant::now();
                    sent.record((now - t).as_micros().max(1) as u64).ok();
                    due.record((now - at).as_micros().max(1) as u64).ok();
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            (sent, due)
        }));
    }
    let (mut sent, mut due) = (hist(), hist());
    for t in tasks {
        if let Ok((s, d)) = t.await {
            sent.add(s).ok();
            due.add(d).ok();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    (sent.len(), errors.load(Ordering::Relaxed), elapsed, sent, due)
}

/// Summaries as a table.
pub(super) fn table(results: &[Value]) -> comfy_table::Table {
    let mut t =
        crate::output::table(&["scenario", "concurrency/rate", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"]);
    for r in results {
        t.add_row(vec![
            r["scenario"].as_str().unwrap_or("").to_string(),
            match r["offered_per_sec"].as_u64() {
                Some(rate) => format!("{} @ {rate}/s", r["concurrency"]),
                None => r["concurrency"].to_string(),
            },
            format!("{:.0}", r["ops_per_sec"].as_f64().unwrap_or(0.0)),
            format!("{:.2}", r["p50_ms"].as_f64().unwrap_or(0.0)),
            format!("{:.2}", r["p99_ms"].as_f64().unwrap_or(0.0)),
            format!("{:.2}", r["p999_ms"].as_f64().unwrap_or(0.0)),
            r["errors"].to_string(),
        ]);
    }
    t
}

/// Writes at a fixed `rate` for `args.seconds` (open loop: a write is sent when it is due,
/// whether or not earlier ones have been answered), each followed at once by a read of the same
/// secret from the reader carrying the write's `X-Secretlog-Index`, which the reader answers the
/// moment it has applied that position. Two summaries:
/// * `write_to_visible` — from sending the write to the reader's answer: what a client that
///   writes and then reads elsewhere waits, the write's own commit included;
/// * `ack_to_visible` — from the writer's acknowledgement (the transaction has committed) to the
///   reader's answer: how far the reader trails the leader's commit, replication lag proper
///   (plus one loopback read round trip, well under a millisecond).
///
/// A reader that has not applied the write within its wait bound (2 s) forwards the read to the
/// leader, which would hide the lag: such reads are not counted as visible but as errors.
pub(super) async fn measure_lag(args: &LoadArgs, token: &str, value: &str, rate: u64) -> anyhow::Result<Vec<Value>> {
    const WAIT_BOUND: Duration = Duration::from_secs(2);
    let http = client(64)?;
    let (mut from_start, mut from_ack) = (hist(), hist());
    let mut errors = 0u64;
    let total = rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let run = format!("{:08x}", rand::random::<u32>());
    for i in 0..total {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        let (http, w, r, t, v, run) =
            (http.clone(), args.writer.clone(), args.reader.clone(), token.to_string(), value.to_string(), run.clone());
        tasks.spawn(async move {
            let t0 = Instant::now();
            let path = format!("bench/lag/{run}/k{}", i % 5000);
            let resp = http
                .post(format!("{w}/v1/secret/data/{path}"))
                .header("X-Vault-Token", &t)
                .json(&json!({"data": {"v": v}}))
                .send()
                .await
                .ok()?;
            let acked = Instant::now();
            if !resp.status().is_success() {
                return None;
            }
            let index = resp.headers().get("x-secretlog-index")?.to_str().ok()?.to_string();
            let read = http
                .get(format!("{r}/v1/secret/data/{path}"))
                .header("X-Vault-Token", &t)
                .header("X-Secretlog-Index", index)
                .send()
                .await
                .ok()?;
            let visible = Instant::now();
            (read.status().is_success() && visible - acked < WAIT_BOUND).then(|| (visible - t0, visible - acked))
        });
    }
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Some((a, b))) => {
                from_start.record(a.as_micros().max(1) as u64).ok();
                from_ack.record(b.as_micros().max(1) as u64).ok();
            }
            _ => errors += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(vec![
        summary("write_to_visible", rate as usize, from_start.len(), errors, secs, &from_start),
        summary("ack_to_visible", rate as usize, from_ack.len(), errors, secs, &from_ack),
    ])
}

/// Acknowledged writes through the writer for `args.seconds` at `c` clients: each client writes
/// its own 1000 keys in turn, so there are no CAS conflicts.
pub(super) async fn measure_writes(args: &LoadArgs, token: &str, value: &str, c: usize) -> anyhow::Result<Value> {
    let http = client(c)?;
    let (w, t, v) = (args.writer.clone(), token.to_string(), value.to_string());
    let run = format!("{:08x}", rand::random::<u32>());
    let (ops, errs, secs, h) = closed_loop(c, args.seconds, move |worker, i| {
        let (http, w, t, v, run) = (http.clone(), w.clone(), t.clone(), v.clone(), run.clone());
        async move {
            let url = format!("{w}/v1/secret/data/{}", write_key(&run, worker, i));
            match http.post(url).header("X-Vault-Token", t).json(&json!({"data": {"v": v}})).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            }
        }
    })
    .await;
    Ok(summary("writes", c, ops, errs, secs, &h))
}

/// The key the writes scenarios write for worker `worker`'s `i`-th request of run `run`: each
/// worker cycles through 1000 keys of its own.
pub(super) fn write_key(run: &str, worker: usize, i: u64) -> String {
    format!("bench/{run}/w{worker}/k{}", i % 1000)
}

/// The key the reads scenarios read for worker `worker`'s `i`-th request, out of `n` preloaded
/// ones `bench/keys/k{0..n}`: a spread-out walk, the same for every system measured.
pub(super) fn read_key(worker: usize, i: u64, n: u64) -> String {
    read_key_under("bench/keys", worker, i, n)
}

/// [`read_key`] over the keys `{prefix}/k{0..n}`.
pub(super) fn read_key_under(prefix: &str, worker: usize, i: u64, n: u64) -> String {
    format!("{prefix}/k{}", (i.wrapping_mul(2_654_435_761).wrapping_add(worker as u64 * 7919)) % n)
}

/// Reads from the reader for `args.seconds` over `c` keep-alive connections, over `keys`
/// preloaded secrets. With `header`, every read carries it (`X-Secretlog-Consistency: strong`
/// for linearizable reads, `X-Secretlog-Index` for a position).
pub(super) async fn measure_reads(
    args: &LoadArgs,
    token: &str,
    keys: usize,
    header: Option<(&'static str, String)>,
    c: usize,
) -> anyhow::Result<Value> {
    measure_reads_under(&args.reader, "bench/keys", args.seconds, token, keys, header, c).await
}

/// [`measure_reads`] from the reader at `reader`, over the keys `{prefix}/k{0..keys}`, for `secs`.
pub(super) async fn measure_reads_under(
    reader: &str,
    prefix: &str,
    secs: u64,
    token: &str,
    keys: usize,
    header: Option<(&'static str, String)>,
    c: usize,
) -> anyhow::Result<Value> {
    let http = client(c)?;
    let (r, p, t, n) = (reader.to_string(), prefix.to_string(), token.to_string(), keys as u64);
    let (ops, errs, secs, h) = closed_loop(c, secs, move |worker, i| {
        let (http, r, t, header) = (http.clone(), r.clone(), t.clone(), header.clone());
        let key = read_key_under(&p, worker, i, n);
        async move { read_secret(&http, &r, &key, &t, header).await }
    })
    .await;
    Ok(summary("reads", c, ops, errs, secs, &h))
}

/// One read of secret `key` from the node at `reader`, its whole answer received: whether it
/// succeeded.
async fn read_secret(
    http: &reqwest::Client,
    reader: &str,
    key: &str,
    token: &str,
    header: Option<(&'static str, String)>,
) -> bool {
    let mut req = http.get(format!("{reader}/v1/secret/data/{key}")).header("X-Vault-Token", token);
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => resp.bytes().await.is_ok(),
        _ => false,
    }
}

/// Reads from the reader for `args.seconds` at a fixed offered `rate` over `c` connections (an
/// open loop, [`open_loop`]), over `keys` preloaded secrets: the summary's latencies are from
/// each send, and `p50/p99_from_due_ms` from when each read was due.
pub(super) async fn measure_reads_at_rate(
    args: &LoadArgs,
    token: &str,
    keys: usize,
    c: usize,
    rate: u64,
) -> anyhow::Result<Value> {
    let http = client(c)?;
    let (r, t, n) = (args.reader.clone(), token.to_string(), keys as u64);
    let (ops, errs, secs, sent, due) = open_loop(c, rate, args.seconds, move |worker, i| {
        let (http, r, t) = (http.clone(), r.clone(), t.clone());
        let key = read_key(worker, i, n);
        async move { read_secret(&http, &r, &key, &t, None).await }
    })
    .await;
    let mut v = summary("reads_open_loop", c, ops, errs, secs, &sent);
    v["offered_per_sec"] = json!(rate);
    v["p50_from_due_ms"] = json!(due.value_at_quantile(0.50) as f64 / 1000.0);
    v["p99_from_due_ms"] = json!(due.value_at_quantile(0.99) as f64 / 1000.0);
    Ok(v)
}

/// Wait until the reader has every preloaded key (the last one written is enough: one writer,
/// per-key order; every key is checked by the reads themselves too).
pub(super) async fn wait_for_preloaded(reader: &str, token: &str, keys: usize) -> anyhow::Result<()> {
    let http = client(4)?;
    let last = format!("{reader}/v1/secret/data/bench/keys/k{}", keys.saturating_sub(1));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !matches!(http.get(&last).header("X-Vault-Token", token).send().await, Ok(r) if r.status().is_success()) {
        if Instant::now() > deadline {
            bail!("reader never showed the preloaded keys");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Append results as JSON lines to `out`, if given.
pub(super) fn append_results(out: Option<&std::path::Path>, results: &[Value]) -> anyhow::Result<()> {
    if let Some(out) = out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
        for r in results {
            writeln!(f, "{r}")?;
        }
    }
    Ok(())
}

/// Write `keys` secrets through the writer, 64 at a time, with a progress bar.
pub(super) async fn preload(writer: &str, token: &str, keys: usize, value: &str) -> anyhow::Result<()> {
    let http = client(64)?;
    let pb = indicatif::ProgressBar::new(keys as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("preloading {pos}/{len} secrets {bar:40} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (http, w, t, v, next, pb) =
            (http.clone(), writer.to_string(), token.to_string(), value.to_string(), next.clone(), pb.clone());
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys as u64 {
                    return Ok::<_, anyhow::Error>(());
                }
                let url = format!("{w}/v1/secret/data/bench/keys/k{k}");
                let mut tries = 0;
                loop {
                    match http.post(&url).header("X-Vault-Token", &t).json(&json!({"data": {"v": v}})).send().await {
                        Ok(r) if r.status().is_success() => break,
                        other if tries < 5 => {
                            tries += 1;
                            tracing::warn!(key = k, status = ?other.map(|r| r.status()), "preload write failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        other => bail!("preload write k{k} failed: {:?}", other.map(|r| r.status())),
                    }
                }
                pb.inc(1);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    pb.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every read due inside the window is sent, however fast or slow the answers: the count is
    /// the schedule's, not the server's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_loop_sends_what_is_due_at_the_offered_rate() {
        let (ops, errors, secs, sent, due) = open_loop(4, 2_000, 1, |_, _| async { true }).await;
        assert_eq!((ops, errors), (2_000, 0), "4 workers × 500 sends due in one second");
        assert!((0.9..1.5).contains(&secs), "the run took {secs} s");
        assert_eq!((sent.len(), due.len()), (2_000, 2_000));
    }

    /// When answers are slower than the schedule, the wait from the due time grows with the
    /// backlog while the service time stays what one answer takes: the open loop reports the
    /// queue a closed loop would hide.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_overloaded_open_loop_reports_the_delay_from_the_due_time() {
        let (ops, errors, secs, sent, due) = open_loop(2, 200, 1, |_, _| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            true
        })
        .await;
        // 100 sends due per worker, 10 ms apart, each answered after 20 ms: about 2 s of work.
        assert_eq!((ops, errors), (200, 0));
        assert!(secs > 1.5, "late sends still go out: the run took {secs} s");
        let (service, waited) = (sent.value_at_quantile(0.99), due.value_at_quantile(0.99));
        assert!((20_000..200_000).contains(&service), "service time p99 {service} µs");
        assert!(waited > 5 * service, "from the due time p99 {waited} µs, service p99 {service} µs");
    }
}
