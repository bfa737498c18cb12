//! `secretlog reseed`: after losing a whole Kafka cluster, write the last recoverable state
//! (newest snapshot + the log archive after it, or any earlier point) into a fresh cluster's
//! topic, so writers and readers can start on it.
//!
//! The whole reseed is **one Kafka transaction**: a reader sees all of it or nothing, and an
//! interrupted reseed leaves nothing behind (the next run's `init_transactions` aborts it).
//! Its last records are a `LeaderEpoch` in every partition naming `reseed:<source>`, which is
//! how a later run recognises a completed reseed and does nothing — running it again is safe.
//! A topic holding anything else is refused.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use secretlog_reader::materializer::now_ms;
use secretlog_reader::store::keys;
use secretlog_schemas::topic::{
    DEFAULT_PARTITIONS, MUTATIONS_TOPIC, control_key, leader_epoch_name, partition_for, record_key,
};
use secretlog_schemas::{Event, Keyring, Operation, decode_event, encode_event};
use secretlog_writer::producer::{Record, TxProducer};
use serde_json::json;

use super::rebuild::PointArgs;
use super::{StoreArgs, emit};

/// Set in tests only: the reseed appends its records in a transaction and then dies without
/// committing, as a reseed killed at the worst moment would. Read only in builds with the
/// `planted-faults` feature, which only the end-to-end tests turn on.
#[cfg(feature = "planted-faults")]
const CRASH_FOR_TESTS: &str = "SECRETLOG_TEST_RESEED_CRASH";

#[cfg(feature = "planted-faults")]
fn crash_mid_transaction(bootstrap: &str, topic: &str, records: &[Record]) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let config = secretlog_writer::producer::producer_config(bootstrap, &format!("secretlog-reseed-{topic}"), 600_000);
    let p: ThreadedProducer<DefaultProducerContext> = config.create()?;
    p.init_transactions(Duration::from_secs(60))?;
    p.begin_transaction()?;
    for r in records {
        p.send(BaseRecord::to(topic).key(&r.key).payload(&r.payload).partition(r.partition)).map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(60))?;
    eprintln!("reseed: crashing on purpose with {} records appended and not committed", records.len());
    std::process::exit(86);
}

#[derive(Debug, clap::Args)]
pub struct ReseedArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Bootstrap servers of the fresh cluster.
    #[arg(long)]
    pub bootstrap: String,
    /// Topic to seed (created if missing).
    #[arg(long, default_value = MUTATIONS_TOPIC)]
    pub topic: String,
    /// Partitions of the topic, if it must be created.
    #[arg(long, default_value_t = DEFAULT_PARTITIONS)]
    pub partitions: i32,
    #[command(flatten)]
    pub point: PointArgs,
    #[arg(long)]
    pub json: bool,
}

/// What the topic holds already.
enum Found {
    Empty,
    /// A completed reseed from this source.
    Reseeded {
        records: u64,
    },
    Other {
        records: u64,
    },
}

/// Read every committed record of `topic` (a fresh cluster's topic is small or empty).
fn inspect(bootstrap: &str, topic: &str, keyring: &Keyring, marker: &str) -> anyhow::Result<Found> {
    let c: BaseConsumer = secretlog_reader::kafka::consumer_config(bootstrap, "secretlog-reseed-inspect").create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len() as i32);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let (mut records, mut marked, mut eof) = (0u64, 0i32, std::collections::BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(120);
    while (eof.len() as i32) < partitions {
        if Instant::now() > deadline {
            bail!("reading the existing records of {topic} timed out");
        }
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                records += 1;
                if let Ok(e) = decode_event(keyring, m.key(), m.payload().unwrap_or_default())
                    && matches!(&e.op, Operation::LeaderEpoch { leader_url } if leader_url == marker)
                {
                    marked += 1;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(match (records, marked) {
        (0, _) => Found::Empty,
        (n, m) if m == partitions => Found::Reseeded { records: n },
        (n, _) => Found::Other { records: n },
    })
}

pub async fn run(args: ReseedArgs) -> anyhow::Result<()> {
    let report = reseed(&args).await?;
    emit(args.json, &report, || {
        if report["already_done"] == true {
            println!(
                "{} already holds this reseed ({} records, {}); nothing to do.",
                args.topic, report["records"], report["source"]
            );
            return;
        }
        println!(
            "Reseeded {} on {}: {} secrets from snapshot {} + {} archived records, {} records in one transaction, {:.1} s.",
            args.topic,
            args.bootstrap,
            report["secrets"],
            report["snapshot"].as_str().unwrap_or(""),
            report["replayed_records"],
            report["records"],
            report["seconds"].as_f64().unwrap_or(0.0)
        );
        println!(
            "Start writers and readers on it with EMPTY data directories (their old offsets belong to the lost cluster)."
        );
    })
}

/// Do the reseed; the report says what was written (or that it was already done).
pub async fn reseed(args: &ReseedArgs) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let objects = args.store.objects()?;
    let keyring = args.store.keyring()?;
    let rebuilt = args.point.rebuild(&objects, &keyring).await?;
    let m = rebuilt.snapshot.clone();
    let source = format!(
        "reseed:{}:{}",
        m.id,
        rebuilt.positions.iter().map(|(p, s)| format!("{p}:{}", s.next_offset)).collect::<Vec<_>>().join(",")
    );

    crate::kafka::ensure_topic(&args.bootstrap, &args.topic, args.partitions)
        .await
        .with_context(|| format!("creating {} on {}", args.topic, args.bootstrap))?;
    let partitions = secretlog_reader::kafka::partition_count(&args.bootstrap, &args.topic, Duration::from_secs(10))?;
    let (b, t, k, s) = (args.bootstrap.clone(), args.topic.clone(), args.store.keyring()?, source.clone());
    match tokio::task::spawn_blocking(move || inspect(&b, &t, &k, &s)).await?? {
        Found::Empty => {}
        Found::Reseeded { records } => {
            return Ok(json!({ "already_done": true, "source": source, "records": records, "topic": args.topic }));
        }
        Found::Other { records } => bail!(
            "{} on {} already holds {records} records that are not this reseed ({source}); refusing to mix them",
            args.topic,
            args.bootstrap
        ),
    }

    let data = rebuilt.export("").await?;
    let epoch = rebuilt.positions.values().map(|s| s.max_epoch).max().unwrap_or(0).max(1);
    let ts = now_ms();
    let event = |mount: &str, path: &str, op: Operation| Event {
        event_id: rand::random(),
        timestamp_ms: ts,
        writer_epoch: epoch,
        revision: None,
        mount: mount.to_string(),
        path: path.to_string(),
        op,
    };
    let mut values: BTreeMap<(String, String), Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for (mount, path, v, sealed) in data.values {
        values.entry((mount, path)).or_default().push((v, sealed));
    }
    let mut records = Vec::with_capacity(data.secrets.len() + partitions as usize + 1);
    for (mount, path, meta) in &data.secrets {
        let vals = values.remove(&(mount.clone(), path.clone())).unwrap_or_default();
        let e = event(mount, path, Operation::RestoreSecret { metadata: meta.clone().into_bytes(), values: vals });
        let key = record_key(mount, path);
        records.push(Record { partition: partition_for(&key, partitions), key, payload: encode_event(&keyring, &e) });
    }
    if let Some((_, hash)) = data.control.iter().find(|(k, _)| k.as_slice() == keys::ROOT_TOKEN) {
        let token_hash: [u8; 32] = hash.as_slice().try_into().context("the snapshot's root token hash is malformed")?;
        let e = event("", "root-token", Operation::SetRootToken { token_hash });
        let key = control_key("root-token");
        records.push(Record { partition: partition_for(&key, partitions), key, payload: encode_event(&keyring, &e) });
    }
    // Policies and tokens come along (a token keeps working on the new site until it expires).
    let mut control = |name: String, op: Operation| {
        let e = event("", &name, op);
        let key = control_key(&name);
        records.push(Record { partition: partition_for(&key, partitions), key, payload: encode_event(&keyring, &e) });
    };
    for (k, v) in &data.control {
        let k = String::from_utf8_lossy(k);
        if let Some(name) = k.strip_prefix("c/policy/") {
            let op = Operation::PutPolicy { name: name.to_string(), policy: String::from_utf8_lossy(v).into_owned() };
            control(format!("policy/{name}"), op);
        } else if let Some(h) = k.strip_prefix("c/token/")
            && let Ok(Ok(token_hash)) = hex::decode(h).map(<[u8; 32]>::try_from)
        {
            let accessor = serde_json::from_slice::<serde_json::Value>(v)
                .ok()
                .and_then(|r| r["accessor"].as_str().map(str::to_string))
                .unwrap_or_else(|| h[..16].to_string());
            control(format!("token/{accessor}"), Operation::PutToken { token_hash, record: v.clone() });
        }
    }
    for p in 0..partitions {
        let name = leader_epoch_name(p);
        let e = event("", &name, Operation::LeaderEpoch { leader_url: source.clone() });
        records.push(Record { partition: p, key: control_key(&name), payload: encode_event(&keyring, &e) });
    }
    let n = records.len();
    #[cfg(feature = "planted-faults")]
    if std::env::var_os(CRASH_FOR_TESTS).is_some() {
        crash_mid_transaction(&args.bootstrap, &args.topic, &records)?;
    }
    let producer = TxProducer::new(&args.bootstrap, &format!("secretlog-reseed-{}", args.topic), 600_000, &args.topic)?;
    producer.init(Duration::from_secs(60)).await?;
    let pb = crate::output::spinner(&format!("writing {n} records in one transaction"));
    producer
        .commit(records, Duration::from_secs(600))
        .await
        .context("the reseed transaction did not commit; run it again")?;
    pb.finish_and_clear();
    let report = json!({
        "already_done": false,
        "source": source,
        "snapshot": m.id,
        "replayed_records": rebuilt.replayed.values().sum::<u64>(),
        "secrets": data.secrets.len(),
        "records": n,
        "topic": args.topic,
        "bootstrap": args.bootstrap,
        "epoch": epoch,
        "seconds": started.elapsed().as_secs_f64(),
    });
    Ok(report)
}
