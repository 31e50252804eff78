//! Turns the sensor into a stream of interval snapshots: read, delta, aggregate, resolve cgroups.
//! Every consumer (record, top, run) takes snapshots from here and nothing else.

use std::time::{Instant, SystemTime};

use crate::{
    aggregate::{Aggregate, aggregate},
    cgroup::{CgroupResolver, read_cgroup2_mount},
    delta::{IntervalDeltas, Tracker},
    report::MeterCost,
    sensor::{Sensor, SensorConfig, SensorError, SensorReading},
};

/// One interval, fully digested.
#[derive(Debug)]
pub struct Snapshot {
    pub deltas: IntervalDeltas,
    pub aggregate: Aggregate,
    pub wall_end: SystemTime,
    pub meter: MeterCost,
}

pub struct Collector {
    sensor: Sensor,
    tracker: Tracker,
    resolver: Option<CgroupResolver>,
    last_cpu_ns: u64,
    /// Reused every interval: its buffers are megabytes at 10,000 tasks.
    reading: SensorReading,
}

/// User + system CPU time and peak RSS of this process.
fn self_usage() -> (u64, u64) {
    // SAFETY: `usage` is a valid rusage to write into.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    (ns(usage.ru_utime) + ns(usage.ru_stime), usage.ru_maxrss as u64)
}

impl Collector {
    pub fn start(config: &SensorConfig) -> Result<Self, SensorError> {
        let mut sensor = Sensor::start(config)?;
        let mut reading = SensorReading::default();
        sensor.read_into(&mut reading)?;
        let tracker = Tracker::new(sensor.counter_names().len(), &reading);
        // Without a cgroup2 mount records carry only cgroup ids; that is worth a warning, not a stop.
        let resolver = read_cgroup2_mount(&config.root).ok().map(CgroupResolver::new);
        Ok(Self {
            sensor,
            tracker,
            resolver,
            last_cpu_ns: self_usage().0,
            reading,
        })
    }

    pub fn sensor(&self) -> &Sensor {
        &self.sensor
    }

    pub fn resolver(&self) -> Option<&CgroupResolver> {
        self.resolver.as_ref()
    }

    /// Closes the current interval now.
    pub fn collect(&mut self) -> Result<Snapshot, SensorError> {
        let began = Instant::now();
        self.sensor.read_into(&mut self.reading)?;
        let wall_end = SystemTime::now();
        let deltas = self.tracker.advance(&self.reading);
        let drain_us = began.elapsed().as_micros() as u64;
        let aggregate = aggregate(&deltas);
        if let Some(resolver) = &mut self.resolver {
            resolver.learn(aggregate.processes.iter().map(|p| p.cgroup_id));
        }
        let (cpu_ns, peak_rss_kib) = self_usage();
        let meter = MeterCost {
            cpu_ns: cpu_ns.saturating_sub(self.last_cpu_ns),
            drain_us,
            peak_rss_kib,
        };
        self.last_cpu_ns = cpu_ns;
        Ok(Snapshot { deltas, aggregate, wall_end, meter })
    }
}
