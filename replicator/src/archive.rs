//! The log archive: every committed record, per partition, in offset-ranged Arrow segments.
//!
//! A segment is flushed once it holds `segment_max_records` records or its oldest record is
//! `segment_flush_ms` old. Its object name is derived from its first and last offsets, and the
//! archiver resumes after the newest segment it finds in the store — so a restart (even after
//! kill -9) neither loses nor duplicates a record, and a retried upload replaces the same object.
//! If object storage is down, records stay buffered, consumption pauses, the lag grows and is
//! reported; when storage returns the archive catches up with no gap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use secretlog_schemas::archive::{ArchivedRecord, encode_segment, parse_segment_name, segment_path};
use secretlog_state::kafka::LogContext;
use secretlog_state::materializer::now_ms;
use secretlog_state::objects::Objects;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::ReplicatorError;

/// Where the archive stands.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ArchiveStatus {
    /// Next offset to archive, per partition (everything before is in object storage).
    pub archived: BTreeMap<i32, i64>,
    /// Records consumed but not yet in object storage.
    pub buffered: usize,
    /// Commit time of the oldest record not yet archived.
    pub oldest_unarchived_ms: Option<i64>,
    /// The last object-storage error, cleared by the next successful upload.
    pub last_error: Option<String>,
    pub segments_written: u64,
}

impl ArchiveStatus {
    /// Seconds the archive is behind the log.
    pub fn lag_seconds(&self, now_ms: i64) -> f64 {
        self.oldest_unarchived_ms.map_or(0.0, |t| ((now_ms - t).max(0) as f64) / 1000.0)
    }
}

/// Next offset to archive per partition, from the segments already in the store.
pub async fn resume_points(objects: &Objects, partitions: i32) -> Result<BTreeMap<i32, i64>, ReplicatorError> {
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let prefix = objects.path(&format!("archive/p{p:05}"));
        let names: Vec<String> =
            objects.store.list(Some(&prefix)).map_ok(|m| m.location.to_string()).try_collect().await?;
        if let Some(last) = names.iter().filter_map(|n| parse_segment_name(n)).map(|(_, last)| last).max() {
            out.insert(p, last + 1);
        }
    }
    Ok(out)
}

struct Buffer {
    records: Vec<ArchivedRecord>,
    since: Instant,
}

/// Run the archiver until `cancel`.
pub async fn run(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    objects: Objects,
    max_records: usize,
    flush_every: Duration,
    status: &watch::Sender<ArchiveStatus>,
    cancel: CancellationToken,
) -> Result<(), ReplicatorError> {
    let start = loop {
        match resume_points(&objects, partitions).await {
            Ok(s) => break s,
            Err(e) => {
                status.send_modify(|s| s.last_error = Some(e.to_string()));
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let consumer: Arc<StreamConsumer<LogContext>> = Arc::new(
        secretlog_state::kafka::consumer_config(bootstrap, "secretlog-archiver").create_with_context(LogContext)?,
    );
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let off = start.get(&p).map_or(Offset::Beginning, |o| Offset::Offset(*o));
        tpl.add_partition_offset(topic, p, off)?;
    }
    consumer.assign(&tpl)?;
    status.send_modify(|s| s.archived = (0..partitions).map(|p| (p, start.get(&p).copied().unwrap_or(0))).collect());
    tracing::info!(?start, "archiver positioned");
    let mut buffers: BTreeMap<i32, Buffer> = BTreeMap::new();
    let mut tick = tokio::time::interval(flush_every / 4);
    loop {
        let full = buffers.values().map(|b| b.records.len()).sum::<usize>() >= max_records * partitions as usize * 4;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            m = consumer.recv(), if !full => match m {
                Ok(m) => {
                    let rec = ArchivedRecord {
                        offset: m.offset(),
                        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                        key: m.key().unwrap_or_default().to_vec(),
                        value: m.payload().unwrap_or_default().to_vec(),
                    };
                    buffers.entry(m.partition()).or_insert_with(|| Buffer { records: Vec::new(), since: Instant::now() }).records.push(rec);
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {}
                Err(e) => tracing::warn!(error = %e, "archiver consumer error"),
            },
        }
        flush_due(&objects, &mut buffers, max_records, flush_every, status, false).await;
    }
    // Shutting down or sealing: write out what is buffered (best effort; a restart re-reads
    // anything lost).
    flush_due(&objects, &mut buffers, max_records, flush_every, status, true).await;
    Ok(())
}

async fn flush_due(
    objects: &Objects,
    buffers: &mut BTreeMap<i32, Buffer>,
    max_records: usize,
    flush_every: Duration,
    status: &watch::Sender<ArchiveStatus>,
    all: bool,
) {
    // Publish what is waiting before uploading: an upload can take seconds to fail when the
    // store is down, and the lag must grow in health meanwhile, not only after.
    publish_buffered(buffers, status);
    for (p, buf) in buffers.iter_mut() {
        if buf.records.is_empty() || !(all || buf.records.len() >= max_records || buf.since.elapsed() >= flush_every) {
            continue;
        }
        let first = buf.records[0].offset;
        let last = buf.records[buf.records.len() - 1].offset;
        let name = segment_path(*p, first, last);
        let res = match encode_segment(&buf.records) {
            Ok(bytes) => {
                objects.store.put(&objects.path(&name), PutPayload::from(bytes)).await.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match res {
            Ok(_) => {
                metrics::counter!("secretlog_archive_records_total").increment(buf.records.len() as u64);
                metrics::counter!("secretlog_archive_segments_total").increment(1);
                buf.records.clear();
                buf.since = Instant::now();
                status.send_modify(|s| {
                    s.archived.insert(*p, last + 1);
                    s.last_error = None;
                    s.segments_written += 1;
                });
            }
            Err(e) => {
                metrics::counter!("secretlog_archive_upload_failures_total").increment(1);
                tracing::warn!(partition = p, segment = %name, error = %e, "archive upload failed; keeping the records and retrying");
                status.send_modify(|s| s.last_error = Some(format!("{name}: {e}")));
            }
        }
    }
    publish_buffered(buffers, status);
}

/// Publish what waits for upload, in the status (health) and as metrics. Called on every tick of
/// the archive loop, so `secretlog_archive_lag_seconds` grows while storage is down even when
/// nobody asks for health.
fn publish_buffered(buffers: &BTreeMap<i32, Buffer>, status: &watch::Sender<ArchiveStatus>) {
    let buffered = buffers.values().map(|b| b.records.len()).sum();
    let oldest = buffers.values().filter_map(|b| b.records.first().map(|r| r.timestamp_ms)).min();
    status.send_modify(|s| {
        s.buffered = buffered;
        s.oldest_unarchived_ms = oldest;
    });
    metrics::gauge!("secretlog_archive_buffered_records").set(buffered as f64);
    metrics::gauge!("secretlog_archive_lag_seconds").set(status.borrow().lag_seconds(now_ms()));
}
