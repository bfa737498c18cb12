//! The `secretlog` operator CLI as a library, so tests drive exactly what operators run.
//!
//! * [`kafka`] — a real three-broker Kafka on loopback, without Docker;
//! * [`stack`] — `secretlog up`: the whole local stack, supervised;
//! * [`process`] — child processes that die with us (or outlive us on purpose);
//! * [`soak`] — `secretlog soak`: a month in an hour against a running stack, judged;
//! * [`status`], [`output`] — what operators see.

pub mod audit;
pub mod bench;
pub mod chart;
pub mod cli;
pub mod dr;
pub mod kafka;
pub mod output;
pub mod process;
pub mod rotate;
pub mod seal;
pub mod soak;
pub(crate) mod soak_chart;
pub mod stack;
pub mod status;
