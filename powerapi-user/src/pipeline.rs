//! A meter assembled from parts: the sensor, an energy [`Source`], a [`Formula`] and any number
//! of [`Sink`]s, run interval by interval. `powerapi record` is this with the parts the command
//! line names; a library user swaps in parts of their own:
//!
//! ```no_run
//! # use std::time::Duration;
//! # use powerapi::{pipeline::Pipeline, sink::{Sink, SinkError}, report::Record};
//! struct Count(usize);
//! impl Sink for Count {
//!     fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError> {
//!         self.0 += records.len();
//!         Ok(())
//!     }
//! }
//! let (_stop_tx, stop) = std::sync::mpsc::channel();
//! let mut meter = Pipeline::builder()
//!     .interval(Duration::from_millis(500))
//!     .duration(Duration::from_secs(2))
//!     .sink("count", Count(0))
//!     .start()?;
//! meter.run(&stop)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use crate::{
    attribution::IdlePolicy,
    collect::{CollectError, Collector, Parts},
    energy::{Source, SourceSpec},
    formula::Formula,
    identity::Identities,
    record::{Filter, Granularity, RecordConfig, RecordError, RunInfo, build_records, run_info},
    sensor::SensorConfig,
    sink::{Sink, SinkError},
    sinks::Fanout,
};

/// A running meter: the sensor is attached from [`PipelineBuilder::start`] until it is dropped.
pub struct Pipeline {
    config: RecordConfig,
    collector: Collector,
    run: RunInfo,
    sinks: Vec<(String, Box<dyn Sink>)>,
    ids: Identities,
}

/// Sets a [`Pipeline`] up; every setting left alone is the command line's default.
#[derive(Default)]
pub struct PipelineBuilder {
    config: RecordConfig,
    parts: Parts,
    sinks: Vec<(String, Box<dyn Sink>)>,
}

impl PipelineBuilder {
    /// Everything at once, as the command line builds it.
    pub fn config(mut self, config: RecordConfig) -> Self {
        self.config = config;
        self
    }

    /// How often an interval closes (default 1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// Stop after this long (default: until `stop`).
    pub fn duration(mut self, duration: Duration) -> Self {
        self.config.duration = Some(duration);
        self
    }

    /// One record per process (default), thread or cgroup.
    pub fn granularity(mut self, granularity: Granularity) -> Self {
        self.config.granularity = granularity;
        self
    }

    /// Which tasks are reported.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.config.filter = filter;
        self
    }

    /// Counters, table size, where `/sys` is.
    pub fn sensor(mut self, sensor: SensorConfig) -> Self {
        self.config.collector.sensor = sensor;
        self
    }

    /// A built-in energy source (default: auto).
    pub fn energy(mut self, spec: SourceSpec) -> Self {
        self.config.collector.energy = spec;
        self
    }

    /// An energy source of the caller's, instead of a built-in one.
    pub fn source(mut self, source: impl Source + 'static) -> Self {
        self.parts.source = Some(Box::new(source));
        self
    }

    /// A formula of the caller's, instead of the proportional one.
    pub fn formula(mut self, formula: impl Formula + 'static) -> Self {
        self.parts.formula = Some(Box::new(formula));
        self
    }

    /// Whether idle energy stays its own figure (default) or is handed to tasks.
    pub fn idle_policy(mut self, policy: IdlePolicy) -> Self {
        self.config.collector.attribution.idle_policy = policy;
        self
    }

    /// Another destination; `name` is how failures are reported.
    pub fn sink(mut self, name: impl Into<String>, sink: impl Sink + 'static) -> Self {
        self.sinks.push((name.into(), Box::new(sink)));
        self
    }

    /// Attaches the sensor and opens the energy source. Nothing is measured before this.
    pub fn start(self) -> Result<Pipeline, CollectError> {
        let collector = Collector::start_with(&self.config.collector, self.parts)?;
        let run = run_info(&collector);
        Ok(Pipeline {
            ids: Identities::new(self.config.cmdline),
            config: self.config,
            collector,
            run,
            sinks: self.sinks,
        })
    }
}

impl Pipeline {
    /// A pipeline with the command line's defaults, to adjust.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::default()
    }

    /// Adds a destination once the sensor runs (the command line opens its files only then, so
    /// a start that fails leaves an existing file untouched).
    pub fn add_sink(&mut self, name: impl Into<String>, sink: Box<dyn Sink>) {
        self.sinks.push((name.into(), sink));
    }

    /// The parts measuring: the sensor, the energy source, the formula.
    pub fn collector(&self) -> &Collector {
        &self.collector
    }

    /// The mode and counters this run measures with.
    pub fn run_info(&self) -> &RunInfo {
        &self.run
    }

    /// Runs until the duration ends, `stop` receives (or disconnects) or every sink's reader is
    /// gone; returns how many intervals were written. With one sink its failure ends the run;
    /// with several, a failing one is said and retried while the others go on.
    pub fn run(&mut self, stop: &Receiver<()>) -> Result<u64, RecordError> {
        let mut sink = Fanout::new(std::mem::take(&mut self.sinks));
        let config = &self.config;
        let started = Instant::now();
        let end = config.duration.map(|d| started + d);
        let mut seq = 0;
        loop {
            seq += 1;
            let full_deadline = started + config.interval * seq as u32;
            let deadline = end.map_or(full_deadline, |e| e.min(full_deadline));
            let stopped = !matches!(
                stop.recv_timeout(deadline.saturating_duration_since(Instant::now())),
                Err(RecvTimeoutError::Timeout)
            );
            let partial = stopped || deadline < full_deadline;
            let last = stopped || end.is_some_and(|e| deadline >= e);
            let mut snapshot = self.collector.collect()?;
            snapshot.meter.dropped_records = sink.dropped_records();
            let interval = snapshot.interval(seq, partial);
            let records = build_records(
                &self.run,
                &snapshot,
                self.collector.resolver(),
                &interval,
                config.granularity,
                &config.filter,
                &mut self.ids,
            );
            match sink.write_interval(&records) {
                Err(SinkError::Closed { .. }) => return Ok(seq),
                result => result?,
            }
            if last {
                return Ok(seq);
            }
        }
    }
}
