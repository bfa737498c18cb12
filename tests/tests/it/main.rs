//! secretlog's end-to-end tests: real processes, a real three-broker Kafka cluster.
//! One binary; the cluster is started once per run (see `harness`).

mod approle;
mod audit;
mod checker;
mod containers;
mod differential;
mod dr;
mod failover;
mod forwarding;
mod go_client;
mod harness;
mod hvac;
mod integrity;
mod kafka_auth;
mod kafka_faults;
mod kv_api;
mod metrics;
mod mounts;
mod openbao;
mod recovery;
mod replication;
mod rotation;
mod s3;
mod seal;
mod security;
mod soak;
mod stack_up;
mod staleness;
mod tidy;
mod transport;
mod vault_cli;
