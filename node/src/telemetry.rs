//! Process-wide logging and the Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets of every histogram not listed below: request and commit latencies, in seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// `secretlog_writer_batch_size` counts commands per Kafka transaction (1 up to the writer's
/// `--max-batch`, 256 by default), not seconds.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// `secretlog_snapshot_duration_seconds`: a snapshot takes seconds to minutes, past the top
/// latency bucket.
const SNAPSHOT_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// The exporter's configuration: latency buckets by default, count or long-duration buckets for
/// the histograms that are not request latencies.
fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("secretlog_writer_batch_size".into()), BATCH_SIZE_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("secretlog_snapshot_duration_seconds".into()), SNAPSHOT_BUCKETS)
}

/// Install the Prometheus recorder once per process; later calls reuse it.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS.get_or_init(|| builder().ok().and_then(|b| b.install_recorder().ok())).as_ref()
}

/// Initialise `tracing` output: human-readable by default, JSON lines with `SECRETLOG_LOG_JSON=1`;
/// level from `RUST_LOG` (default `info`). Safe to call more than once.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,slatedb=warn,foyer=warn"));
    let json = std::env::var("SECRETLOG_LOG_JSON").is_ok_and(|v| v == "1");
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_counts_commands_while_latencies_keep_second_buckets() {
        let recorder = builder().expect("valid buckets").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("secretlog_writer_batch_size").record(100.0);
            metrics::histogram!("secretlog_http_request_duration_seconds").record(0.002);
            metrics::histogram!("secretlog_snapshot_duration_seconds").record(42.0);
        });
        let page = handle.render();
        let bucket = |name: &str, le: &str| {
            let prefix = format!("{name}_bucket{{le=\"{le}\"}} ");
            page.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map(str::to_string)
        };
        let batch = "secretlog_writer_batch_size";
        assert_eq!(bucket(batch, "64").as_deref(), Some("0"), "{page}");
        assert_eq!(bucket(batch, "128").as_deref(), Some("1"), "{page}");
        assert_eq!(bucket(batch, "0.0001"), None, "no latency buckets on a count: {page}");
        let http = "secretlog_http_request_duration_seconds";
        assert_eq!(bucket(http, "0.001").as_deref(), Some("0"), "{page}");
        assert_eq!(bucket(http, "0.0025").as_deref(), Some("1"), "{page}");
        let snap = "secretlog_snapshot_duration_seconds";
        assert_eq!(bucket(snap, "30").as_deref(), Some("0"), "{page}");
        assert_eq!(bucket(snap, "60").as_deref(), Some("1"), "{page}");
    }
}
