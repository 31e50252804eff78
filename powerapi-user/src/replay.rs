//! `powerapi replay`: a recorded trace attributed again, offline, with another formula or
//! other options, through the same [`Attribution`] as the live path.
//!
//! Each interval is rebuilt from its records: one task per process, thread or cgroup record
//! (its on-CPU time and counters), the measured energy of every domain and socket, the
//! frequencies, and the model's own idle power where the energy came from the model. Tasks a
//! filter left out of the trace are one task more, carrying the machine's busy time and
//! counters the records do not (so the busy fraction behind the idle estimate, and the shares,
//! are the live ones). Replaying with the formula and options a trace was recorded with
//! reproduces its energy figures to the rounding of sums (proportional shares are linear in
//! usage, and so are SmartWatts' `w·x`), except `--idle-policy equal` on a trace of processes,
//! which shares by the number of threads that ran (record `--granularity thread` for it).

use std::collections::BTreeMap;

use powerapi_common::MAX_COUNTERS;
use thiserror::Error;

use crate::{
    attribution::{Attribution, AttributionConfig, IdleSource},
    delta::{IntervalDeltas, TaskDelta},
    energy::EnergySample,
    report::{
        MachineRecord, ModelRecord, Record, SCHEMA, SocketShare, machine_energy, task_energy,
    },
    smartwatts::{SmartWatts, SmartWattsConfig},
};

/// Why a trace cannot be replayed.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The trace holds no machine record.
    #[error("the trace holds no complete interval; give a file written by `powerapi record`")]
    Empty,
    /// The trace has no energy to attribute.
    #[error(
        "the trace has no energy figures (recorded with --energy-source none): nothing to attribute"
    )]
    NoEnergy,
    /// Several sockets, and records without their per-socket usage (an older trace).
    #[error(
        "the trace measured {0} sockets but its records do not say how each task's time split across them (recorded by an older powerapi); it cannot be replayed exactly"
    )]
    Sockets(usize),
}

/// The task standing for what the records do not hold (filtered-out tasks).
const UNRECORDED: u32 = u32::MAX;

fn task(pid: u32, tid: u32, on_cpu_ns: u64, counters: [u64; MAX_COUNTERS]) -> TaskDelta {
    TaskDelta::usage(pid, tid, 0, on_cpu_ns, counters)
}

fn counters_of(names: &[String], values: Option<&BTreeMap<String, u64>>) -> [u64; MAX_COUNTERS] {
    let mut out = [0; MAX_COUNTERS];
    for (slot, name) in names.iter().enumerate().take(MAX_COUNTERS) {
        out[slot] = values.and_then(|v| v.get(name)).copied().unwrap_or(0);
    }
    out
}

/// (socket, on-CPU time, counters by slot) of each share.
fn per_socket(names: &[String], shares: &[SocketShare]) -> Vec<(u32, u64, [u64; MAX_COUNTERS])> {
    shares
        .iter()
        .map(|s| {
            (
                s.socket,
                s.on_cpu_ns,
                counters_of(names, s.counters.as_ref()),
            )
        })
        .collect()
}

/// One interval of the trace: its machine record and the records after it.
struct Interval<'a> {
    machine: &'a MachineRecord,
    rest: Vec<&'a Record>,
}

fn intervals(records: &[Record]) -> Vec<Interval<'_>> {
    let mut out: Vec<Interval<'_>> = Vec::new();
    for record in records {
        match record {
            Record::Machine(m) => out.push(Interval {
                machine: m,
                rest: Vec::new(),
            }),
            // Models are fitted again by the replay.
            Record::Model(_) => {}
            other => {
                if let Some(last) = out.last_mut() {
                    last.rest.push(other);
                }
            }
        }
    }
    out
}

/// Attributes `records` again with `config` (and SmartWatts when `smartwatts` is given);
/// returns the records with their energy figures replaced, and the new `model` records.
pub fn replay(
    records: &[Record],
    config: AttributionConfig,
    smartwatts: Option<SmartWattsConfig>,
) -> Result<Vec<Record>, ReplayError> {
    let intervals = intervals(records);
    if intervals.is_empty() {
        return Err(ReplayError::Empty);
    }
    let sockets: std::collections::BTreeSet<u32> = intervals
        .iter()
        .flat_map(|i| i.machine.energy.iter().flat_map(|e| &e.domains))
        .map(|d| d.key.socket)
        .collect();
    if sockets.is_empty() {
        return Err(ReplayError::NoEnergy);
    }
    let multi_socket = sockets.len() > 1;
    // A multi-socket trace needs every record's usage per socket (written since they exist).
    if multi_socket
        && intervals.iter().any(|i| {
            i.machine.sockets.is_empty()
                || i.rest.iter().any(|r| match r {
                    Record::Process(t) | Record::Thread(t) => {
                        t.sockets.is_empty() && t.on_cpu_ns > 0
                    }
                    Record::Cgroup(c) => c.sockets.is_empty() && c.on_cpu_ns > 0,
                    _ => false,
                })
        })
    {
        return Err(ReplayError::Sockets(sockets.len()));
    }
    let only_socket = sockets.first().copied().unwrap_or(0);
    let mut attribution = match smartwatts {
        Some(s) => Attribution::with_formula(config, Box::new(SmartWatts::new(s))),
        None => Attribution::new(config),
    };
    // A live run that began from a saved idle estimate used it until its first quiet interval.
    if let Some(energy) = &intervals[0].machine.energy {
        let saved: Vec<_> = energy
            .domains
            .iter()
            .filter(|d| d.idle_source == IdleSource::Persisted)
            .map(|d| (d.key, d.idle_w))
            .collect();
        attribution.set_idle_prior(&saved, IdleSource::Persisted);
    }
    let mut out = Vec::with_capacity(records.len());
    for interval in &intervals {
        let m = interval.machine;
        let names = &m.counters;
        let mut tasks: Vec<TaskDelta> = Vec::with_capacity(interval.rest.len() + 1);
        // Per record, the range of `tasks` it stands for (one per socket it ran on).
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::with_capacity(interval.rest.len());
        // Per socket: what the records hold, to find what they do not.
        let mut recorded: BTreeMap<u32, (u64, [u64; MAX_COUNTERS])> = BTreeMap::new();
        for record in &interval.rest {
            let (pid, tid, on_cpu_ns, counters, shares) = match record {
                Record::Process(t) | Record::Thread(t) => (
                    t.pid,
                    t.tid.unwrap_or(t.pid),
                    t.on_cpu_ns,
                    t.counters.as_ref(),
                    &t.sockets,
                ),
                Record::Cgroup(c) => {
                    let id = c.cgroup.id as u32;
                    (id, id, c.on_cpu_ns, c.counters.as_ref(), &c.sockets)
                }
                Record::Machine(_) | Record::Model(_) => continue,
            };
            let start = tasks.len();
            let parts = if multi_socket {
                per_socket(names, shares)
            } else {
                vec![(only_socket, on_cpu_ns, counters_of(names, counters))]
            };
            for (socket, on_cpu_ns, counters) in parts {
                let sum = recorded.entry(socket).or_insert((0, [0; MAX_COUNTERS]));
                sum.0 += on_cpu_ns;
                for (total, v) in sum.1.iter_mut().zip(counters) {
                    *total += v;
                }
                let mut t = task(pid, tid, on_cpu_ns, counters);
                t.socket = socket;
                tasks.push(t);
            }
            ranges.push(start..tasks.len());
        }
        // The machine's own totals per socket, against which the records are short.
        let machine_totals = if multi_socket {
            per_socket(names, &m.sockets)
        } else {
            vec![(
                only_socket,
                m.busy_ns,
                counters_of(names, m.counter_totals.as_ref()),
            )]
        };
        for (socket, busy_ns, totals) in machine_totals {
            let (recorded_ns, recorded_counters) = recorded
                .get(&socket)
                .copied()
                .unwrap_or((0, [0; MAX_COUNTERS]));
            let mut missing = [0u64; MAX_COUNTERS];
            for ((miss, total), had) in missing.iter_mut().zip(totals).zip(recorded_counters) {
                *miss = total.saturating_sub(had);
            }
            let unrecorded_ns = busy_ns.saturating_sub(recorded_ns);
            if unrecorded_ns > 0 || missing.iter().any(|v| *v > 0) {
                let mut t = task(UNRECORDED, UNRECORDED, unrecorded_ns, missing);
                t.socket = socket;
                tasks.push(t);
            }
        }
        let deltas = IntervalDeltas {
            start_ns: m.interval.start_ns,
            end_ns: m.interval.end_ns,
            tasks,
            cpus: m.cpus,
            ..Default::default()
        };
        let mut machine = m.clone();
        let Some(energy) = &m.energy else {
            out.push(Record::Machine(machine));
            out.extend(interval.rest.iter().map(|r| (*r).clone()));
            continue;
        };
        let sample = EnergySample {
            source: energy.source.clone(),
            estimated: energy.estimated,
            domains: energy
                .domains
                .iter()
                .map(|d| (d.key, d.measured_j))
                .collect(),
            known_idle_w: energy
                .domains
                .iter()
                .filter(|d| d.idle_source == IdleSource::Model)
                .map(|d| (d.key, d.idle_w))
                .collect(),
            unmeasured: energy.unmeasured.clone(),
            estimate_error_w: energy.estimate_error_w,
            implausible_readings: energy.implausible_readings,
            unreadable_readings: energy.unreadable_readings,
        };
        let frequencies: Vec<(u32, f64)> =
            m.frequencies.iter().map(|f| (f.socket, f.mhz)).collect();
        attribution.set_frequencies(&frequencies);
        let cpus_by_socket: Vec<(u32, u32)> = if multi_socket {
            m.sockets
                .iter()
                .map(|s| (s.socket, s.cpus.unwrap_or(0)))
                .collect()
        } else {
            vec![(only_socket, m.cpus)]
        };
        let power = attribution.attribute(&deltas, names, &cpus_by_socket, &sample);
        machine.energy = Some(machine_energy(&power));
        out.push(Record::Machine(machine));
        for fit in &power.fits {
            out.push(Record::Model(ModelRecord {
                schema: SCHEMA,
                interval: m.interval.clone(),
                fit: fit.clone(),
            }));
        }
        let seconds = m.interval.duration_ns as f64 / 1e9;
        let mut ranges = ranges.into_iter();
        for record in &interval.rest {
            let mut record = (*record).clone();
            let joules = ranges.next().map(|range| {
                let mut sum = [0.0; crate::energy::Domain::ALL.len()];
                for j in &power.task_joules[range] {
                    for (s, v) in sum.iter_mut().zip(j) {
                        *s += v;
                    }
                }
                sum
            });
            match (&mut record, joules) {
                (Record::Process(t) | Record::Thread(t), Some(j)) => {
                    t.energy = Some(task_energy(&power, &j, seconds));
                }
                (Record::Cgroup(c), Some(j)) => c.energy = Some(task_energy(&power, &j, seconds)),
                _ => {}
            }
            out.push(record);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attribution::IdlePolicy, summary::read_records};

    const INTERVAL: &str = r#""interval":{"seq":1,"start_ns":0,"end_ns":1000000000,"duration_ns":1000000000,"time":"2026-11-24T21:22:04Z","time_unix_ns":1795555324000000000,"partial":false}"#;

    fn machine(busy_ns: u64, sockets: &[u32]) -> String {
        let domains: Vec<String> = sockets
            .iter()
            .map(|s| format!(r#"{{"domain":"package","socket":{s},"measured_j":30.0,"attributed_j":0.0,"idle_j":0.0,"unattributed_j":30.0,"power_w":30.0,"idle_w":0.0,"idle_source":"none","metric":"cpu-time"}}"#))
            .collect();
        format!(
            r#"{{"type":"machine","schema":3,{INTERVAL},"mode":"time-only","counters":[],"cpus":2,"busy_ns":{busy_ns},"idle_ns":1,"capacity_ns":2,"processes":2,"threads":2,"losses":{{"lost_slices":0,"lost_ns":0,"exit_overflow":0,"stale_slices":0,"counter_read_errors":0}},"meter":{{"cpu_ns":1,"drain_us":1,"peak_rss_kib":1}},"energy":{{"source":"powercap","estimated":false,"idle_policy":"none","domains":[{}]}}}}"#,
            domains.join(",")
        )
    }

    fn process(pid: u32, on_cpu_ns: u64) -> String {
        format!(
            r#"{{"type":"process","schema":3,{INTERVAL},"mode":"time-only","pid":{pid},"comm":"p","uid":0,"user":"root","on_cpu_ns":{on_cpu_ns},"cpu_percent":1.0,"cgroup":{{"id":1}},"exited":false}}"#
        )
    }

    fn records(lines: &[String]) -> Vec<Record> {
        read_records(lines.join("\n").as_bytes())
            .expect("in memory")
            .0
    }

    fn config(idle_watts: Option<f64>) -> AttributionConfig {
        AttributionConfig {
            idle_policy: IdlePolicy::None,
            idle_watts,
            ..Default::default()
        }
    }

    #[test]
    fn tasks_left_out_of_the_trace_keep_their_share() {
        // 1.0 s busy in the interval, 0.25 s of it recorded (a --pid filter).
        let trace = records(&[machine(1_000_000_000, &[0]), process(7, 250_000_000)]);
        let out = replay(&trace, config(Some(10.0)), None).expect("replayed");
        assert_eq!(out.len(), 2, "one record out per record in");
        let Record::Machine(m) = &out[0] else {
            panic!("machine first");
        };
        let d = &m.energy.as_ref().expect("energy").domains[0];
        // 30 J measured, 10 J idle (--idle-watts), 20 J active by CPU time.
        assert_eq!((d.idle_j, d.attributed_j), (10.0, 20.0));
        let Record::Process(p) = &out[1] else {
            panic!("the process");
        };
        let joules = p.energy.as_ref().expect("energy").joules[&crate::energy::Domain::Package];
        assert!(
            (joules - 5.0).abs() < 1e-12,
            "a quarter of the active 20 J: {joules}"
        );
    }

    #[test]
    fn traces_that_cannot_be_replayed_are_said() {
        assert!(matches!(
            replay(&[], config(None), None),
            Err(ReplayError::Empty)
        ));
        let two = records(&[machine(1, &[0, 1]), process(7, 1)]);
        assert!(matches!(
            replay(&two, config(None), None),
            Err(ReplayError::Sockets(2))
        ));
        let none = records(&[machine(1, &[]), process(7, 1)]);
        assert!(matches!(
            replay(&none, config(None), None),
            Err(ReplayError::NoEnergy)
        ));
    }
}
