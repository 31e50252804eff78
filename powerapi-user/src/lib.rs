//! powerapi: an eBPF, kernel-assisted software power meter, as a library.
//!
//! A meter is a [`pipeline::Pipeline`] of parts: the kernel [`sensor`] (on-CPU time and
//! counters per thread, booked at every context switch), an energy [`energy::Source`] (RAPL
//! through perf, powercap or MSRs; the linear model; or one's own), a [`formula::Formula`] that
//! splits each interval's energy among tasks ([`formula::Proportional`], or one's own), and any
//! number of [`sink::Sink`]s that receive every interval's [`report::Record`]s (the built-in ones
//! are in [`sinks`]: JSON lines and CSV files, [`influxdb`], [`tcp`]). `powerapi record` is the
//! same pipeline built from the command line; `examples/custom_meter.rs` builds one in under 60
//! lines.
//!
//! Data flows one way: [`sensor`] (kernel maps → cumulative totals) → [`delta`] (per-interval
//! deltas) → aggregation (threads, processes, cgroups) and [`attribution`] (energy per task) →
//! [`report`] records → sinks. [`collect`] strings the first stages together for every consumer.
//! Whatever the formula, attributed + idle + unattributed energy = measured, per domain and
//! socket, in every interval.

#![deny(missing_docs)]

pub(crate) mod aggregate;
pub mod attribution;
pub(crate) mod cgroup;
pub mod chart;
#[doc(hidden)]
pub mod cli;
pub mod collect;
pub(crate) mod config;
pub mod delta;
pub(crate) mod doctor;
pub mod energy;
pub(crate) mod export;
pub mod formula;
pub(crate) mod frequency;
pub(crate) mod identity;
pub(crate) mod idle;
pub mod idle_estimate;
pub mod influxdb;
pub mod pipeline;
pub(crate) mod privilege;
pub mod record;
pub(crate) mod relay;
pub mod replay;
pub mod report;
pub(crate) mod rotate;
pub(crate) mod run;
pub mod sensor;
pub(crate) mod serve;
pub mod sink;
pub mod sinks;
pub mod smartwatts;
pub(crate) mod smartwatts_bench;
pub mod summary;
pub(crate) mod table;
pub mod tcp;
pub(crate) mod topology;
pub(crate) mod tui;
