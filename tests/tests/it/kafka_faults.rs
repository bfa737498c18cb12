//! The cluster itself behaves as secretlog's durability settings promise.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::harness::{exclusive, fresh_topic};

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "8000")
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
    let kafka = cluster.local.as_ref().expect("local cluster");
    let topic = fresh_topic(&cluster.bootstrap, "faults", 3).await;
    let p = producer(&cluster.bootstrap);
    produce(&p, &topic, 0).await.expect("produce with all brokers up");

    kafka.kill_broker(3).expect("kill broker 3");
    // With one of three brokers gone, ISR >= 2 = min.insync.replicas: acks=all still succeeds
    // (after leadership of partitions led by broker 3 moves).
    for i in 1..=20 {
        produce(&p, &topic, i).await.unwrap_or_else(|e| panic!("produce {i} with one broker down: {e}"));
    }

    kafka.kill_broker(2).expect("kill broker 2");
    // With two gone, ISR = 1 < 2: the write must be refused — within the producer's bound,
    // not hang.
    let started = Instant::now();
    let res = produce(&p, &topic, 99).await;
    let took = started.elapsed();
    assert!(res.is_err(), "acks=all produce succeeded with two of three brokers down");
    assert!(took < Duration::from_secs(15), "failure took {took:?}: expected a bounded failure");
    eprintln!("two brokers down: produce refused after {took:?}: {}", res.unwrap_err());

    kafka.restart_broker(2).expect("restart broker 2");
    kafka.restart_broker(3).expect("restart broker 3");
    kafka.wait_ready(Duration::from_secs(180)).expect("cluster healthy again");
    produce(&producer(&cluster.bootstrap), &topic, 100).await.expect("produce after recovery");
}
