//! The cluster itself behaves as secretlog's durability settings promise.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::harness::{BrokerFaults, exclusive, fresh_topic};

/// An acks=all producer that gives up on a record after `timeout_ms`.
fn producer(bootstrap: &str, timeout_ms: u32) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", timeout_ms.to_string())
        .create()
        .expect("producer")
}

async fn produce(p: &FutureProducer, topic: &str, i: u32) -> Result<(), String> {
    let payload = format!("probe-{i}");
    p.send(FutureRecord::to(topic).key("k").payload(&payload), Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_produce_survives_one_broker_down_and_fails_fast_with_two_down() {
    let Some((cluster, _guard)) = exclusive() else {
        eprintln!("external cluster: broker faults are not injected");
        return;
    };
    let kafka = cluster.brokers().expect("brokers the harness started");
    let topic = fresh_topic(&cluster.bootstrap, "faults", 3).await;
    // Patient while partition leadership moves away from a killed broker...
    let p = producer(&cluster.bootstrap, 60_000);
    produce(&p, &topic, 0).await.expect("produce with all brokers up");

    let mut faults = BrokerFaults::new(kafka);
    faults.kill(3);
    // With one of three brokers gone, ISR >= 2 = min.insync.replicas: acks=all still succeeds
    // (after leadership of partitions led by broker 3 moves).
    for i in 1..=20 {
        produce(&p, &topic, i).await.unwrap_or_else(|e| panic!("produce {i} with one broker down: {e}"));
    }

    faults.kill(2);
    // With two gone, ISR = 1 < 2: the write must be refused — within the producer's bound
    // (message.timeout.ms = 5 s; generous slack for a loaded 2-core machine), not hang.
    let impatient = producer(&cluster.bootstrap, 5_000);
    let started = Instant::now();
    let res = produce(&impatient, &topic, 99).await;
    let took = started.elapsed();
    assert!(res.is_err(), "acks=all produce succeeded with two of three brokers down");
    assert!(took < Duration::from_secs(30), "failure took {took:?}: expected a bounded failure");
    eprintln!("two brokers down: produce refused after {took:?}: {}", res.unwrap_err());

    faults.heal();
    produce(&producer(&cluster.bootstrap, 60_000), &topic, 100).await.expect("produce after recovery");
}
