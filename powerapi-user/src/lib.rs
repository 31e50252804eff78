//! powerapi: an eBPF, kernel-assisted software power meter.
//!
//! Data flows one way: [`sensor`] (kernel maps → cumulative totals) → [`delta`] (per-interval
//! deltas) → [`aggregate`] (threads, processes, cgroups) → [`report`] records → [`sinks`] (files
//! in [`sink`], JSON lines or CSV from [`table`]; [`influxdb`]).
//! [`collect`] strings the first stages together for every consumer.

pub mod aggregate;
pub mod attribution;
pub mod cgroup;
pub mod cli;
pub mod collect;
pub mod config;
pub mod delta;
pub mod doctor;
pub mod energy;
pub mod export;
pub mod formula;
pub mod identity;
pub mod idle;
pub mod influxdb;
pub mod pipeline;
pub mod privilege;
pub mod record;
pub mod relay;
pub mod report;
pub mod rotate;
pub mod run;
pub mod sensor;
pub mod serve;
pub mod sink;
pub mod sinks;
pub mod table;
pub mod tcp;
pub mod topology;
pub mod tui;
