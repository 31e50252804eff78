//! Cumulative totals → per-interval deltas. Pure: no syscalls, unit-tested on plain values.
//!
//! The kernel never resets its accumulators, so a delta is `now − previous reading` of the same
//! task *incarnation*: an entry whose `first_seen_ns` changed is a new task that reused the pid,
//! and starts from zero instead of producing a negative or merged delta.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use powerapi_common::{CounterReading, MAX_COUNTERS, SensorStats, TaskKey, TaskTotals};

use crate::sensor::SensorReading;

/// Counter values by slot. A fixed array, not a Vec: the drain path must not allocate per task.
pub type Counters = [u64; MAX_COUNTERS];

/// What one thread did on one socket during one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDelta {
    pub key: TaskKey,
    /// `task->comm`, NUL-padded (kept as bytes: the drain path must not allocate per task).
    pub comm: [u8; 16],
    pub cgroup_id: u64,
    pub on_cpu_ns: u64,
    /// One value per counter slot, scaled for multiplexing; slots beyond those in use stay 0.
    pub counters: Counters,
    /// The thread died during the interval; these are its last figures.
    pub exited: bool,
}

/// All deltas of one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntervalDeltas {
    pub start_ns: u64,
    pub end_ns: u64,
    pub tasks: Vec<TaskDelta>,
    /// Losses counted by the kernel during this interval.
    pub losses: SensorStats,
}

impl IntervalDeltas {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// `value × enabled / running`: what a counter that was multiplexed off the PMU part of the
/// time would have counted had it run all along.
pub fn scale_counter(value: u64, enabled_ns: u64, running_ns: u64) -> u64 {
    if running_ns == 0 || running_ns >= enabled_ns {
        return value;
    }
    (u128::from(value) * u128::from(enabled_ns) / u128::from(running_ns)).min(u128::from(u64::MAX))
        as u64
}

/// Counter delta between two cumulative readings; counters are modular, so a wrap is fine.
pub fn counter_delta(now: &CounterReading, before: &CounterReading) -> u64 {
    scale_counter(
        now.value.wrapping_sub(before.value),
        now.enabled_ns.wrapping_sub(before.enabled_ns),
        now.running_ns.wrapping_sub(before.running_ns),
    )
}

pub fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn stats_delta(now: &SensorStats, before: &SensorStats) -> SensorStats {
    SensorStats {
        lost_slices: now.lost_slices.saturating_sub(before.lost_slices),
        lost_ns: now.lost_ns.saturating_sub(before.lost_ns),
        exit_overflow: now.exit_overflow.saturating_sub(before.exit_overflow),
        overwritten_dead: now.overwritten_dead.saturating_sub(before.overwritten_dead),
        counter_read_errors: now
            .counter_read_errors
            .saturating_sub(before.counter_read_errors),
    }
}

/// How many readings a task's previous totals survive without the task being seen.
const KEEP_UNSEEN: u64 = 3;

/// Remembers the previous reading and turns each new one into deltas.
#[derive(Debug)]
pub struct Tracker {
    num_counters: usize,
    /// Previous totals of each live entry, with the number of the reading that last saw it.
    previous: HashMap<TaskKey, (TaskTotals, u64)>,
    previous_stats: SensorStats,
    previous_ns: u64,
    readings: u64,
}

impl Tracker {
    /// Starts from a baseline reading, whose totals are not reported; `expected_tasks` sizes the
    /// map of previous totals.
    pub fn new(num_counters: usize, baseline: &SensorReading, expected_tasks: usize) -> Self {
        let mut tracker = Self {
            num_counters: num_counters.min(MAX_COUNTERS),
            previous: HashMap::with_capacity_and_hasher(
                expected_tasks.max(baseline.live_keys.len() * 2),
                Default::default(),
            ),
            previous_stats: SensorStats::default(),
            previous_ns: 0,
            readings: 0,
        };
        // Touch the table's memory now rather than in the first interval (page faults are slow
        // in VMs); clear() keeps the allocation.
        for pid in 0..expected_tasks as u32 {
            let key = TaskKey {
                pid,
                ..TaskKey::default()
            };
            tracker.previous.insert(key, (TaskTotals::default(), 0));
        }
        tracker.previous.clear();
        tracker.advance(baseline);
        tracker
    }

    /// The delta of one task against `before` (same incarnation) or zero; `None` if it did not run.
    fn delta(
        &self,
        key: &TaskKey,
        now: &TaskTotals,
        before: Option<&TaskTotals>,
        exited: bool,
    ) -> Option<TaskDelta> {
        let before = before.filter(|p| p.first_seen_ns == now.first_seen_ns);
        let on_cpu_ns = match before {
            Some(b) => now
                .on_cpu_ns
                .checked_sub(b.on_cpu_ns)
                .unwrap_or(now.on_cpu_ns),
            None => now.on_cpu_ns,
        };
        let zero = CounterReading::default();
        let mut counters = [0; MAX_COUNTERS];
        for (slot, value) in counters.iter_mut().enumerate().take(self.num_counters) {
            *value = counter_delta(
                &now.counters[slot],
                before.map_or(&zero, |b| &b.counters[slot]),
            );
        }
        if on_cpu_ns == 0 && counters.iter().all(|&c| c == 0) {
            return None;
        }
        Some(TaskDelta {
            key: *key,
            comm: now.comm,
            cgroup_id: now.cgroup_id,
            on_cpu_ns,
            counters,
            exited,
        })
    }

    /// Deltas since the previous reading. Tasks that did not run are left out.
    pub fn advance(&mut self, reading: &SensorReading) -> IntervalDeltas {
        self.readings += 1;
        let generation = self.readings;
        let mut tasks = Vec::with_capacity(reading.live_keys.len() + reading.exited.len());
        // The kernel sends an exit and then removes the entry; a read between the two sees both.
        let exited: HashSet<(TaskKey, u64)> = reading
            .exited
            .iter()
            .map(|(k, t)| (*k, t.first_seen_ns))
            .collect();
        for (key, totals) in &reading.exited {
            let before = self.previous.remove(key).map(|(t, _)| t);
            tasks.extend(self.delta(key, totals, before.as_ref(), true));
        }
        for (key, totals) in reading.live_keys.iter().zip(&reading.live_totals) {
            if !exited.is_empty() && exited.contains(&(*key, totals.first_seen_ns)) {
                continue;
            }
            let before = self.previous.get(key).map(|(t, _)| t);
            if let Some(delta) = self.delta(key, totals, before, false) {
                tasks.push(delta);
            }
            self.previous.insert(*key, (*totals, generation));
        }
        // A slot the sensor could not read consistently this time shows up next time: keep its
        // previous totals a little, or its next delta would count everything again. Entries gone
        // for longer left without an exit event (none expected) and are forgotten.
        self.previous
            .retain(|_, (_, seen)| generation - *seen <= KEEP_UNSEEN);
        let deltas = IntervalDeltas {
            start_ns: self.previous_ns,
            end_ns: reading.taken_at_ns,
            tasks,
            losses: stats_delta(&reading.stats, &self.previous_stats),
        };
        self.previous_stats = reading.stats;
        self.previous_ns = reading.taken_at_ns;
        deltas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32) -> TaskKey {
        TaskKey {
            tgid: pid,
            pid,
            socket: 0,
            idle_cpu: powerapi_common::NOT_IDLE,
        }
    }

    fn totals(first_seen: u64, on_cpu: u64, cycles: u64) -> TaskTotals {
        let mut t = TaskTotals {
            first_seen_ns: first_seen,
            on_cpu_ns: on_cpu,
            ..Default::default()
        };
        t.counters[0] = CounterReading {
            value: cycles,
            enabled_ns: on_cpu,
            running_ns: on_cpu,
        };
        t.comm[..4].copy_from_slice(b"burn");
        t
    }

    fn reading(
        at: u64,
        live: Vec<(TaskKey, TaskTotals)>,
        exited: Vec<(TaskKey, TaskTotals)>,
    ) -> SensorReading {
        SensorReading {
            taken_at_ns: at,
            live_keys: live.iter().map(|(k, _)| *k).collect(),
            live_totals: live.iter().map(|(_, t)| *t).collect(),
            exited,
            stats: SensorStats::default(),
        }
    }

    #[test]
    fn deltas_between_readings() {
        let mut tracker = Tracker::new(
            1,
            &reading(100, vec![(key(7), totals(1, 50, 500))], vec![]),
            0,
        );
        let d = tracker.advance(&reading(200, vec![(key(7), totals(1, 80, 800))], vec![]));
        assert_eq!((d.start_ns, d.end_ns), (100, 200));
        assert_eq!(d.tasks.len(), 1);
        assert_eq!(d.tasks[0].on_cpu_ns, 30);
        assert_eq!(d.tasks[0].counters, [300, 0, 0, 0]);
        assert_eq!(comm_string(&d.tasks[0].comm), "burn");
        // Idle tasks that did not run are left out.
        let d = tracker.advance(&reading(300, vec![(key(7), totals(1, 80, 800))], vec![]));
        assert!(d.tasks.is_empty());
    }

    #[test]
    fn new_task_counts_from_zero_including_first_slice() {
        let mut tracker = Tracker::new(0, &reading(0, vec![], vec![]), 0);
        let d = tracker.advance(&reading(10, vec![(key(9), totals(5, 4, 0))], vec![]));
        assert_eq!(d.tasks[0].on_cpu_ns, 4);
    }

    #[test]
    fn exit_reported_once_even_if_also_still_in_map() {
        let mut tracker = Tracker::new(0, &reading(0, vec![(key(3), totals(1, 10, 0))], vec![]), 0);
        let final_totals = totals(1, 25, 0);
        let d = tracker.advance(&reading(
            10,
            vec![(key(3), final_totals)],
            vec![(key(3), final_totals)],
        ));
        assert_eq!(d.tasks.len(), 1);
        assert_eq!((d.tasks[0].on_cpu_ns, d.tasks[0].exited), (15, true));
        let d = tracker.advance(&reading(20, vec![], vec![]));
        assert!(d.tasks.is_empty());
    }

    #[test]
    fn pid_reuse_neither_negative_nor_merged() {
        let mut tracker = Tracker::new(
            1,
            &reading(0, vec![(key(4), totals(1, 1000, 9000))], vec![]),
            0,
        );
        // pid 4 died (final 1200) and a new pid 4 ran 30 ns, both within one interval.
        let d = tracker.advance(&reading(
            10,
            vec![(key(4), totals(777, 30, 60))],
            vec![(key(4), totals(1, 1200, 9500))],
        ));
        let mut got: Vec<_> = d
            .tasks
            .iter()
            .map(|t| (t.on_cpu_ns, t.counters[0], t.exited))
            .collect();
        got.sort();
        assert_eq!(got, vec![(30, 60, false), (200, 500, true)]);
        // The new incarnation's next delta is against itself.
        let d = tracker.advance(&reading(20, vec![(key(4), totals(777, 50, 100))], vec![]));
        assert_eq!((d.tasks[0].on_cpu_ns, d.tasks[0].counters[0]), (20, 40));
    }

    #[test]
    fn a_task_missing_from_one_reading_is_not_counted_twice() {
        let mut tracker =
            Tracker::new(0, &reading(0, vec![(key(5), totals(1, 100, 0))], vec![]), 0);
        let d = tracker.advance(&reading(10, vec![], vec![]));
        assert!(d.tasks.is_empty());
        let d = tracker.advance(&reading(20, vec![(key(5), totals(1, 160, 0))], vec![]));
        assert_eq!(
            d.tasks[0].on_cpu_ns, 60,
            "delta against the last totals seen, not zero"
        );
    }

    #[test]
    fn counter_wrap_and_multiplexing() {
        let before = CounterReading {
            value: u64::MAX - 5,
            enabled_ns: 100,
            running_ns: 100,
        };
        let now = CounterReading {
            value: 4,
            enabled_ns: 200,
            running_ns: 150,
        };
        // 10 counted while running 50 of 100 enabled ns → 20.
        assert_eq!(counter_delta(&now, &before), 20);
        assert_eq!(scale_counter(10, 100, 100), 10);
        assert_eq!(scale_counter(10, 100, 0), 10);
        assert_eq!(scale_counter(u64::MAX, 4, 1), u64::MAX);
    }

    #[test]
    fn losses_are_per_interval() {
        let mut base = reading(0, vec![], vec![]);
        base.stats.lost_slices = 3;
        let mut tracker = Tracker::new(0, &base, 0);
        let mut next = reading(10, vec![], vec![]);
        next.stats.lost_slices = 5;
        next.stats.lost_ns = 40;
        let d = tracker.advance(&next);
        assert_eq!((d.losses.lost_slices, d.losses.lost_ns), (2, 40));
    }
}
