//! `cargo xtask bench smartwatts`: SmartWatts' fitting and attribution timed on synthetic
//! intervals (kept apart from the formula: benchmark code is not what mutation testing checks).

use crate::energy::DomainKey;
use crate::smartwatts::{SmartWatts, SmartWattsConfig};

/// Times SmartWatts' fitting and attribution at `tasks` tasks over `layers` frequency layers
/// (`cargo xtask bench smartwatts`): per interval, in order. Each layer's truth steps every 100
/// of its intervals, so re-fits happen too.
pub(crate) fn run(tasks: usize, layers: usize, intervals: usize) -> Vec<std::time::Duration> {
    use crate::{
        attribution::{Attribution, AttributionConfig},
        delta::{IntervalDeltas, TaskDelta},
        energy::{Domain, EnergySample},
    };
    let key = DomainKey {
        domain: Domain::Package,
        socket: 0,
    };
    let mut attribution = Attribution::with_formula(
        AttributionConfig::default(),
        Box::new(SmartWatts::new(SmartWattsConfig::default())),
    );
    let counters = ["cycles".to_string(), "instructions".to_string()];
    let mut seed = 1u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut times = Vec::with_capacity(intervals);
    for i in 0..intervals {
        let mut deltas = IntervalDeltas {
            start_ns: 0,
            end_ns: 1_000_000_000,
            ..Default::default()
        };
        let (mut cycles, mut instructions) = (0.0, 0.0);
        for t in 0..tasks {
            let c = (next() * 4e7) as u64;
            let n = (next() * 6e7) as u64;
            cycles += c as f64;
            instructions += n as f64;
            let mut counters = [0; powerapi_common::MAX_COUNTERS];
            counters[0] = c;
            counters[1] = n;
            let id = t as u32 + 1;
            let task = TaskDelta::usage(id, id, 0, (next() * 2e6) as u64, counters);
            deltas.tasks.push(task);
        }
        let layer = i % layers.max(1);
        let step = if (i / layers.max(1)) % 100 < 50 {
            1.0
        } else {
            1.3
        };
        let watts = step * (30.0 + layer as f64 + 9.0 * cycles / 1e9 + 3.0 * instructions / 1e9);
        let sample = EnergySample {
            source: "bench".into(),
            domains: vec![(key, watts)],
            ..Default::default()
        };
        attribution.set_frequencies(&[(0, 1000.0 + 100.0 * layer as f64)]);
        let started = std::time::Instant::now();
        let report = attribution.attribute(&deltas, &counters, &[(0, 64)], &sample);
        times.push(started.elapsed());
        std::hint::black_box(report);
    }
    times
}
