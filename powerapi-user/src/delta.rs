//! Cumulative totals → per-interval deltas. Pure: no syscalls, unit-tested on plain values.
//!
//! The kernel never resets its accumulators, so a delta is `now − previous reading` of the same
//! task *incarnation*, identified by its slot and `first_seen_ns` (not by pid): a reused pid or
//! slot is a new task that starts from zero, and a thread whose pid changed at exec keeps its
//! history. Each thread's delta is split by the socket lanes it ran on.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use powerapi_common::{
    CounterReading, MAX_COUNTERS, MAX_SOCKETS, SensorStats, TaskKey, TaskTotals,
};

use crate::sensor::{CpuMark, SensorReading, TaskEntry};

/// Counter values by slot. A fixed array, not a Vec: the drain path must not allocate per task.
pub type Counters = [u64; MAX_COUNTERS];

/// What one thread did on one socket during one interval.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDelta {
    /// The thread and its process.
    pub key: TaskKey,
    /// The socket whose lane this delta was booked in.
    pub socket: u32,
    /// With the slot, the identity of this thread incarnation.
    pub first_seen_ns: u64,
    /// The thread-group leader's `first_seen_ns` when this thread was first seen: tells the
    /// processes that reused one pid apart.
    pub group_first_seen_ns: u64,
    /// When the thread died (0 while it lives).
    pub exit_ns: u64,
    /// `task->comm`, NUL-padded (kept as bytes: the drain path must not allocate per task).
    pub comm: [u8; 16],
    /// The cgroup v2 id (inode) of the thread at the end of the interval.
    pub cgroup_id: u64,
    /// Real uid of the thread (read by the kernel with comm).
    pub uid: u32,
    /// Time on CPU during the interval, in nanoseconds.
    pub on_cpu_ns: u64,
    /// One value per counter slot, scaled for multiplexing; slots beyond those in use stay 0.
    pub counters: Counters,
    /// The thread died during the interval; these are its last figures.
    pub exited: bool,
}

impl TaskDelta {
    /// A live, non-idle thread's usage with no identity beyond its ids (replays, benchmarks,
    /// tests).
    pub fn usage(tgid: u32, tid: u32, socket: u32, on_cpu_ns: u64, counters: Counters) -> Self {
        Self {
            key: TaskKey {
                tgid,
                pid: tid,
                idle_cpu: powerapi_common::NOT_IDLE,
                _reserved: 0,
            },
            socket,
            first_seen_ns: 1,
            group_first_seen_ns: 1,
            exit_ns: 0,
            comm: [0; 16],
            cgroup_id: 0,
            uid: 0,
            on_cpu_ns,
            counters,
            exited: false,
        }
    }
}

/// A live thread-group leader at the end of an interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Leader {
    /// When the leader was first seen (its incarnation).
    pub first_seen_ns: u64,
    /// `task->comm`, NUL-padded.
    pub comm: [u8; 16],
    /// The leader's cgroup v2 id.
    pub cgroup_id: u64,
    /// The leader's real uid.
    pub uid: u32,
}

/// All deltas of one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntervalDeltas {
    /// CLOCK_MONOTONIC at the previous reading.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC at this reading.
    pub end_ns: u64,
    /// Every thread that ran, or died, in the interval; idle tasks included (per CPU).
    pub tasks: Vec<TaskDelta>,
    /// Losses counted by the kernel during this interval.
    pub losses: SensorStats,
    /// Of the processes in `tasks`, those that still have a live thread at the end: a process
    /// has exited only when none is left, whichever thread went first.
    pub live_tgids: HashSet<u32>,
    /// Live leaders of the processes in `tasks` (a leader that did not run this interval still
    /// names its process).
    pub leaders: HashMap<u32, Leader>,
    /// CPUs online at the end of the interval.
    pub cpus: u32,
    /// The machine's sockets (those of the sensor's lanes), ascending.
    pub sockets: Vec<u32>,
    /// CPUs went offline or online during the interval.
    pub cpus_changed: bool,
    /// CPU time the CPUs booked in this interval, each from its own flush (or offline) instant
    /// to the next: what busy + idle + lost must add up to. It differs from
    /// `cpus × duration` by the time changed CPUs were away and by how late each CPU's flush
    /// ran after the round began.
    pub capacity_ns: u64,
}

impl IntervalDeltas {
    /// `end_ns - start_ns`.
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

/// `comm` up to its first NUL, invalid UTF-8 replaced.
pub fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn stats_delta(now: &SensorStats, before: &SensorStats) -> SensorStats {
    SensorStats {
        lost_slices: now.lost_slices.saturating_sub(before.lost_slices),
        lost_ns: now.lost_ns.saturating_sub(before.lost_ns),
        exit_overflow: now.exit_overflow.saturating_sub(before.exit_overflow),
        stale_slices: now.stale_slices.saturating_sub(before.stale_slices),
        counter_read_errors: now
            .counter_read_errors
            .saturating_sub(before.counter_read_errors),
    }
}

/// How many readings an incarnation's previous totals survive without it being seen. An exit
/// reaches userspace at most one reading after the slot stopped showing the task (the ring is
/// drained before the slots are read, and an overflowed exit stays in its slot until read), so
/// 3 is a margin, not a guess; it also covers a slot skipped once because it could not be read
/// consistently.
const KEEP_UNSEEN: u64 = 3;

/// `(slot, first_seen_ns)`: one task incarnation.
type Incarnation = (u32, u64);

/// Remembers the previous reading and turns each new one into deltas.
#[derive(Debug)]
pub struct Tracker {
    num_counters: usize,
    /// Previous totals of each incarnation, with the number of the reading that last saw it.
    previous: HashMap<Incarnation, (TaskTotals, u64)>,
    previous_stats: SensorStats,
    previous_ns: u64,
    /// Each CPU's mark at the previous reading, by CPU id.
    previous_marks: HashMap<u32, CpuMark>,
    readings: u64,
}

/// What one CPU booked, and lost, between its previous mark (`None` for a CPU never seen: it
/// booked everything since load in this interval) and `mark`. The kernel counts only time the
/// CPU was online and booked to someone, so the time it was away is in neither.
pub fn booked_between(before: Option<&CpuMark>, mark: &CpuMark) -> (u64, u64) {
    let (booked, lost) = before.map_or((0, 0), |b| (b.booked_ns, b.lost_ns));
    (
        mark.booked_ns.saturating_sub(booked),
        mark.lost_ns.saturating_sub(lost),
    )
}

/// `now − before` for a cumulative figure of one incarnation (never negative).
fn grew(now: u64, before: Option<u64>) -> u64 {
    before.map_or(now, |b| now.checked_sub(b).unwrap_or(now))
}

impl Tracker {
    /// Starts from a baseline reading, whose totals are not reported; `expected_tasks` sizes the
    /// map of previous totals.
    pub fn new(num_counters: usize, baseline: &SensorReading, expected_tasks: usize) -> Self {
        let mut tracker = Self {
            num_counters: num_counters.min(MAX_COUNTERS),
            previous: HashMap::with_capacity_and_hasher(
                expected_tasks.max(baseline.live.len() * 2),
                Default::default(),
            ),
            previous_stats: SensorStats::default(),
            previous_ns: 0,
            previous_marks: HashMap::default(),
            readings: 0,
        };
        // Touch the table's memory now rather than in the first interval (page faults are slow
        // in VMs); clear() keeps the allocation.
        for slot in 0..expected_tasks as u32 {
            tracker
                .previous
                .insert((slot, 0), (TaskTotals::default(), 0));
        }
        tracker.previous.clear();
        tracker.advance(baseline);
        tracker
    }

    /// Appends the deltas of one incarnation against `before` (its previous totals, if any), one
    /// per socket lane it ran on. An exit is always reported, even with nothing left to count:
    /// its last figures may have been read live just before the exit arrived.
    fn push_deltas(
        &self,
        entry: &TaskEntry,
        before: Option<&TaskTotals>,
        exited: bool,
        lane_sockets: &[u32],
        out: &mut Vec<TaskDelta>,
    ) {
        let now = &entry.totals;
        let on_cpu_ns = grew(now.on_cpu_ns(), before.map(TaskTotals::on_cpu_ns));
        let zero = CounterReading::default();
        let mut counters = [0; MAX_COUNTERS];
        for (slot, value) in counters.iter_mut().enumerate().take(self.num_counters) {
            *value = counter_delta(
                &now.counters[slot],
                before.map_or(&zero, |b| &b.counters[slot]),
            );
        }
        if on_cpu_ns == 0 && counters.iter().all(|&c| c == 0) && !exited {
            return;
        }
        let socket_of = |lane: usize| {
            lane_sockets
                .get(lane)
                .or(lane_sockets.last())
                .copied()
                .unwrap_or(0)
        };
        let delta = |lane: usize, on_cpu_ns: u64, counters: Counters| TaskDelta {
            key: entry.key,
            socket: socket_of(lane),
            first_seen_ns: now.first_seen_ns,
            group_first_seen_ns: now.group_first_seen_ns,
            exit_ns: now.exit_ns,
            comm: now.comm,
            cgroup_id: now.cgroup_id,
            uid: now.uid,
            on_cpu_ns,
            counters,
            exited,
        };
        let mut lane_ns = [0u64; MAX_SOCKETS];
        for (lane, ns) in lane_ns.iter_mut().enumerate() {
            *ns = grew(now.lane_ns[lane], before.map(|b| b.lane_ns[lane]));
        }
        let lanes_used = lane_ns.iter().filter(|&&ns| ns > 0).count();
        if lanes_used <= 1 {
            // The common case: one socket (or nothing timed, e.g. a bare exit): all of it goes to
            // the lane the thread ran on most.
            let lane = match lane_ns.iter().position(|&ns| ns > 0) {
                Some(lane) => lane,
                None => (0..MAX_SOCKETS)
                    .max_by_key(|&l| now.lane_ns[l])
                    .unwrap_or(0),
            };
            out.push(delta(lane, on_cpu_ns, counters));
            return;
        }
        // Several sockets: time is exact per lane; counters are split in proportion to time
        // (the kernel keeps them per thread, not per lane), remainders to the last lane so the
        // parts add up to the whole.
        let total_ns: u64 = lane_ns.iter().sum();
        let mut given = [0u64; MAX_COUNTERS];
        let mut remaining = lanes_used;
        for (lane, &ns) in lane_ns.iter().enumerate() {
            if ns == 0 {
                continue;
            }
            remaining -= 1;
            let mut part = [0; MAX_COUNTERS];
            for slot in 0..MAX_COUNTERS {
                part[slot] = if remaining == 0 {
                    counters[slot] - given[slot]
                } else {
                    (u128::from(counters[slot]) * u128::from(ns) / u128::from(total_ns)) as u64
                };
                given[slot] += part[slot];
            }
            out.push(delta(lane, ns, part));
        }
    }

    /// Deltas since the previous reading. Tasks that did not run are left out; exits never are.
    pub fn advance(&mut self, reading: &SensorReading) -> IntervalDeltas {
        self.readings += 1;
        let generation = self.readings;
        let mut tasks = Vec::with_capacity(reading.live.len() + reading.exited.len());
        // The kernel sends an exit and then frees the slot; a read between the two sees both.
        let exited: HashSet<Incarnation> = reading
            .exited
            .iter()
            .map(|e| (e.slot, e.totals.first_seen_ns))
            .collect();
        for entry in &reading.exited {
            let before = self
                .previous
                .remove(&(entry.slot, entry.totals.first_seen_ns))
                .map(|(t, _)| t);
            self.push_deltas(
                entry,
                before.as_ref(),
                true,
                &reading.lane_sockets,
                &mut tasks,
            );
        }
        for entry in &reading.live {
            let id = (entry.slot, entry.totals.first_seen_ns);
            if !exited.is_empty() && exited.contains(&id) {
                continue;
            }
            let before = self.previous.get(&id).map(|(t, _)| t);
            self.push_deltas(entry, before, false, &reading.lane_sockets, &mut tasks);
            self.previous.insert(id, (entry.totals, generation));
        }
        // An incarnation not seen this time either died (its exit is on its way: see
        // KEEP_UNSEEN) or its slot could not be read consistently; keep its totals a little, or
        // its next delta would count everything again.
        self.previous
            .retain(|_, (_, seen)| generation - *seen <= KEEP_UNSEEN);

        let mut live_tgids = HashSet::default();
        let mut leaders = HashMap::default();
        let in_interval: HashSet<u32> = tasks
            .iter()
            .filter(|t| !t.key.is_idle())
            .map(|t| t.key.tgid)
            .collect();
        if !in_interval.is_empty() {
            for entry in &reading.live {
                let tgid = entry.key.tgid;
                if !in_interval.contains(&tgid)
                    || exited.contains(&(entry.slot, entry.totals.first_seen_ns))
                {
                    continue;
                }
                live_tgids.insert(tgid);
                if entry.key.pid == tgid {
                    leaders.insert(
                        tgid,
                        Leader {
                            first_seen_ns: entry.totals.first_seen_ns,
                            comm: entry.totals.comm,
                            cgroup_id: entry.totals.cgroup_id,
                            uid: entry.totals.uid,
                        },
                    );
                }
            }
        }

        let (mut capacity_ns, mut lost_ns) = (0, 0);
        for mark in &reading.cpu_marks {
            let (booked, lost) = booked_between(self.previous_marks.get(&mark.cpu), mark);
            capacity_ns += booked;
            lost_ns += lost;
            self.previous_marks.insert(mark.cpu, *mark);
        }
        let mut losses = stats_delta(&reading.stats, &self.previous_stats);
        // Lost time by drain epoch, like the rest of the books (the kernel's running count
        // includes slices lost while this drain ran).
        losses.lost_ns = lost_ns;

        let deltas = IntervalDeltas {
            start_ns: self.previous_ns,
            end_ns: reading.taken_at_ns,
            tasks,
            losses,
            live_tgids,
            leaders,
            cpus: reading.cpus.len() as u32,
            sockets: {
                let mut sockets = reading.lane_sockets.clone();
                sockets.sort_unstable();
                sockets.dedup();
                sockets
            },
            cpus_changed: reading.cpus_changed,
            capacity_ns,
        };
        self.previous_stats = reading.stats;
        self.previous_ns = reading.taken_at_ns;
        deltas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32, pid: u32) -> TaskKey {
        TaskKey {
            tgid,
            pid,
            idle_cpu: powerapi_common::NOT_IDLE,
            _reserved: 0,
        }
    }

    /// A single-lane thread.
    fn totals(first_seen: u64, on_cpu: u64, cycles: u64) -> TaskTotals {
        let mut t = TaskTotals {
            first_seen_ns: first_seen,
            group_first_seen_ns: first_seen,
            ..Default::default()
        };
        t.lane_ns[0] = on_cpu;
        t.counters[0] = CounterReading {
            value: cycles,
            enabled_ns: on_cpu,
            running_ns: on_cpu,
        };
        t.comm[..4].copy_from_slice(b"burn");
        t
    }

    fn entry(slot: u32, key: TaskKey, totals: TaskTotals) -> TaskEntry {
        TaskEntry { slot, key, totals }
    }

    fn reading(at: u64, live: Vec<TaskEntry>, exited: Vec<TaskEntry>) -> SensorReading {
        SensorReading {
            taken_at_ns: at,
            live,
            exited,
            lane_sockets: vec![0, 1],
            ..Default::default()
        }
    }

    fn summary(d: &IntervalDeltas) -> Vec<(u32, u64, u64, bool)> {
        let mut got: Vec<_> = d
            .tasks
            .iter()
            .map(|t| (t.key.pid, t.on_cpu_ns, t.counters[0], t.exited))
            .collect();
        got.sort();
        got
    }

    #[test]
    fn deltas_between_readings() {
        let mut tracker = Tracker::new(
            1,
            &reading(100, vec![entry(0, key(7, 7), totals(1, 50, 500))], vec![]),
            0,
        );
        let d = tracker.advance(&reading(
            200,
            vec![entry(0, key(7, 7), totals(1, 80, 800))],
            vec![],
        ));
        assert_eq!((d.start_ns, d.end_ns), (100, 200));
        assert_eq!(summary(&d), vec![(7, 30, 300, false)]);
        assert_eq!(comm_string(&d.tasks[0].comm), "burn");
        // Tasks that did not run are left out.
        let d = tracker.advance(&reading(
            300,
            vec![entry(0, key(7, 7), totals(1, 80, 800))],
            vec![],
        ));
        assert!(d.tasks.is_empty());
        assert_eq!(
            (d.start_ns, d.end_ns),
            (200, 300),
            "intervals are contiguous"
        );
    }

    #[test]
    fn new_task_counts_from_zero_including_first_slice() {
        let mut tracker = Tracker::new(0, &reading(0, vec![], vec![]), 0);
        let d = tracker.advance(&reading(
            10,
            vec![entry(4, key(9, 9), totals(5, 4, 0))],
            vec![],
        ));
        assert_eq!(summary(&d), vec![(9, 4, 0, false)]);
    }

    #[test]
    fn exit_reported_once_even_if_also_still_in_its_slot() {
        let mut tracker = Tracker::new(
            0,
            &reading(0, vec![entry(2, key(3, 3), totals(1, 10, 0))], vec![]),
            0,
        );
        let last = entry(2, key(3, 3), totals(1, 25, 0));
        let d = tracker.advance(&reading(10, vec![last], vec![last]));
        assert_eq!(summary(&d), vec![(3, 15, 0, true)]);
        assert!(
            d.live_tgids.is_empty() && d.leaders.is_empty(),
            "its only thread exited: the process is not live"
        );
        let d = tracker.advance(&reading(20, vec![], vec![]));
        assert!(d.tasks.is_empty());
    }

    #[test]
    fn an_exit_with_nothing_left_to_count_is_still_reported() {
        // The slot was read live with its final totals just before the exit arrived.
        let last = entry(2, key(3, 3), totals(1, 25, 0));
        let mut tracker = Tracker::new(0, &reading(0, vec![last], vec![]), 0);
        let d = tracker.advance(&reading(10, vec![], vec![last]));
        assert_eq!(summary(&d), vec![(3, 0, 0, true)]);
    }

    #[test]
    fn pid_reuse_neither_negative_nor_merged() {
        let mut tracker = Tracker::new(
            1,
            &reading(0, vec![entry(0, key(4, 4), totals(1, 1000, 9000))], vec![]),
            0,
        );
        // pid 4 died (final 1200) and a new pid 4 ran 30 ns in another slot, in one interval.
        let d = tracker.advance(&reading(
            10,
            vec![entry(1, key(4, 4), totals(777, 30, 60))],
            vec![entry(0, key(4, 4), totals(1, 1200, 9500))],
        ));
        assert_eq!(summary(&d), vec![(4, 30, 60, false), (4, 200, 500, true)]);
        let firsts: HashSet<u64> = d.tasks.iter().map(|t| t.first_seen_ns).collect();
        assert_eq!(firsts.len(), 2, "two incarnations");
        // The new incarnation's next delta is against itself.
        let d = tracker.advance(&reading(
            20,
            vec![entry(1, key(4, 4), totals(777, 50, 100))],
            vec![],
        ));
        assert_eq!(summary(&d), vec![(4, 20, 40, false)]);
    }

    #[test]
    fn a_late_exit_after_its_slot_was_reused_is_not_counted_twice() {
        let a = key(4, 4);
        let mut tracker = Tracker::new(
            0,
            &reading(0, vec![entry(3, a, totals(1, 100, 0))], vec![]),
            0,
        );
        // A died and its slot 3 went to B before this reading saw A's exit on the ring.
        let d = tracker.advance(&reading(
            10,
            vec![entry(3, key(8, 8), totals(50, 7, 0))],
            vec![],
        ));
        assert_eq!(summary(&d), vec![(8, 7, 0, false)]);
        let d = tracker.advance(&reading(
            20,
            vec![entry(3, key(8, 8), totals(50, 7, 0))],
            vec![entry(3, a, totals(1, 130, 0))],
        ));
        assert_eq!(
            summary(&d),
            vec![(4, 30, 0, true)],
            "A's delta is against A's last totals, not zero"
        );
    }

    #[test]
    fn a_thread_whose_pid_changes_at_exec_keeps_its_history() {
        let mut tracker = Tracker::new(
            0,
            &reading(0, vec![entry(5, key(10, 12), totals(3, 100, 0))], vec![]),
            0,
        );
        // Thread 12 exec'd and became pid 10; same slot, same incarnation.
        let d = tracker.advance(&reading(
            10,
            vec![entry(5, key(10, 10), totals(3, 140, 0))],
            vec![],
        ));
        assert_eq!(summary(&d), vec![(10, 40, 0, false)]);
    }

    #[test]
    fn a_task_missing_from_one_reading_is_not_counted_twice() {
        let mut tracker = Tracker::new(
            0,
            &reading(0, vec![entry(0, key(5, 5), totals(1, 100, 0))], vec![]),
            0,
        );
        let d = tracker.advance(&reading(10, vec![], vec![]));
        assert!(d.tasks.is_empty());
        let d = tracker.advance(&reading(
            20,
            vec![entry(0, key(5, 5), totals(1, 160, 0))],
            vec![],
        ));
        assert_eq!(
            summary(&d),
            vec![(5, 60, 0, false)],
            "against the last totals seen"
        );
    }

    #[test]
    fn an_incarnation_unseen_for_longer_than_the_grace_is_forgotten() {
        let mut tracker = Tracker::new(
            0,
            &reading(0, vec![entry(0, key(5, 5), totals(1, 100, 0))], vec![]),
            0,
        );
        // Seen at reading 1, then missing for KEEP_UNSEEN + 1 readings: its totals are
        // dropped (memory stays bounded), so a reappearance counts from zero.
        let d = tracker.advance(&reading(
            10,
            vec![entry(0, key(5, 5), totals(1, 120, 0))],
            vec![],
        ));
        assert_eq!(summary(&d), vec![(5, 20, 0, false)]);
        for t in 0..=KEEP_UNSEEN {
            assert!(
                tracker
                    .advance(&reading(20 + t, vec![], vec![]))
                    .tasks
                    .is_empty()
            );
        }
        assert!(tracker.previous.is_empty(), "forgotten");
        let d = tracker.advance(&reading(
            40,
            vec![entry(0, key(5, 5), totals(1, 130, 0))],
            vec![],
        ));
        assert_eq!(summary(&d), vec![(5, 130, 0, false)]);
    }

    #[test]
    fn a_thread_that_ran_on_another_socket_this_interval_is_booked_there() {
        // 1000 ns on lane 0 before, 50 ns on lane 1 now: the delta is lane 1's, although the
        // thread's history is mostly lane 0.
        let mut before = totals(1, 1000, 0);
        before.lane_ns = [1000, 0, 0, 0, 0, 0, 0, 0];
        let mut tracker =
            Tracker::new(0, &reading(0, vec![entry(0, key(6, 6), before)], vec![]), 0);
        let mut now = totals(1, 1050, 0);
        now.lane_ns = [1000, 50, 0, 0, 0, 0, 0, 0];
        let mut r = reading(10, vec![entry(0, key(6, 6), now)], vec![]);
        r.lane_sockets = vec![0, 1];
        let d = tracker.advance(&r);
        assert_eq!((d.tasks[0].socket, d.tasks[0].on_cpu_ns), (1, 50));
    }

    #[test]
    fn time_split_by_socket_lane_and_counters_in_proportion() {
        let mut before = totals(1, 0, 0);
        before.counters[0].value = 0;
        let mut tracker =
            Tracker::new(1, &reading(0, vec![entry(0, key(6, 6), before)], vec![]), 0);
        let mut now = totals(1, 400, 1001);
        now.lane_ns = [300, 100, 0, 0, 0, 0, 0, 0];
        let d = tracker.advance(&reading(10, vec![entry(0, key(6, 6), now)], vec![]));
        let mut got: Vec<_> = d
            .tasks
            .iter()
            .map(|t| (t.socket, t.on_cpu_ns, t.counters[0]))
            .collect();
        got.sort();
        // 1001 × 300/400 = 750 (rounded down); the last lane takes the remainder, 251.
        assert_eq!(got, vec![(0, 300, 750), (1, 100, 251)]);
    }

    #[test]
    fn lanes_map_to_their_sockets() {
        let mut tracker = Tracker::new(0, &reading(0, vec![], vec![]), 0);
        let mut t = totals(1, 50, 0);
        t.lane_ns = [0, 50, 0, 0, 0, 0, 0, 0];
        let mut r = reading(10, vec![entry(0, key(6, 6), t)], vec![]);
        r.lane_sockets = vec![3, 7];
        let d = tracker.advance(&r);
        assert_eq!(d.tasks[0].socket, 7);
    }

    #[test]
    fn liveness_and_leaders_of_the_processes_that_ran() {
        let mut tracker = Tracker::new(0, &reading(0, vec![], vec![]), 0);
        // Process 20: the leader exited, a worker lives on. Process 30: a worker ran, its
        // leader did not but is alive. Process 40: its only thread exited.
        let d = tracker.advance(&reading(
            10,
            vec![
                entry(1, key(20, 21), totals(2, 5, 0)),
                entry(2, key(30, 31), totals(3, 5, 0)),
                entry(3, key(30, 30), totals(1, 0, 0)),
            ],
            vec![
                entry(0, key(20, 20), totals(1, 5, 0)),
                entry(4, key(40, 40), totals(4, 5, 0)),
            ],
        ));
        let mut live: Vec<_> = d.live_tgids.iter().copied().collect();
        live.sort();
        assert_eq!(live, vec![20, 30]);
        assert_eq!(d.leaders.len(), 1);
        assert_eq!(d.leaders[&30].first_seen_ns, 1);
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
        next.stats.stale_slices = 1;
        // Lost time comes from the CPUs' marks (by drain epoch), the counts from the stats.
        next.cpu_marks = vec![CpuMark {
            cpu: 0,
            booked_ns: 100,
            lost_ns: 40,
        }];
        let d = tracker.advance(&next);
        assert_eq!(
            (
                d.losses.lost_slices,
                d.losses.lost_ns,
                d.losses.stale_slices
            ),
            (2, 40, 1)
        );
    }

    fn mark(cpu: u32, booked_ns: u64, lost_ns: u64) -> CpuMark {
        CpuMark {
            cpu,
            booked_ns,
            lost_ns,
        }
    }

    #[test]
    fn a_cpu_books_what_it_booked_between_its_marks() {
        assert_eq!(
            booked_between(Some(&mark(0, 1_000, 5)), &mark(0, 2_007, 9)),
            (1_007, 4)
        );
        // Offline throughout: nothing booked, nothing lost.
        assert_eq!(
            booked_between(Some(&mark(1, 1_300, 0)), &mark(1, 1_300, 0)),
            (0, 0)
        );
        // Never seen before (offline since the meter started): all it booked since load.
        assert_eq!(booked_between(None, &mark(3, 250, 7)), (250, 7));
    }

    #[test]
    fn capacity_and_lost_time_sum_each_cpu_between_its_own_marks() {
        let mut base = reading(1_000, vec![], vec![]);
        base.cpu_marks = vec![mark(0, 1_000, 0), mark(1, 1_002, 2)];
        let mut tracker = Tracker::new(0, &base, 0);
        let mut next = reading(2_000, vec![], vec![]);
        // CPU 0 booked 1_001 ns; CPU 1 400 ns before going offline, 30 of them lost; CPU 2
        // appeared and booked 203 ns.
        next.cpu_marks = vec![mark(0, 2_001, 0), mark(1, 1_402, 32), mark(2, 203, 0)];
        // The kernel's running count of lost time includes slices lost after the flush: the
        // interval's lost time comes from the marks.
        next.stats.lost_ns = 1_000_000;
        let d = tracker.advance(&next);
        assert_eq!(d.capacity_ns, 1_001 + 400 + 203);
        assert_eq!(d.losses.lost_ns, 30);
        // The next interval counts from these marks, not the baseline's.
        let mut last = reading(3_000, vec![], vec![]);
        last.cpu_marks = vec![mark(0, 3_000, 0), mark(1, 1_402, 32), mark(2, 1_201, 1)];
        let d = tracker.advance(&last);
        assert_eq!((d.capacity_ns, d.losses.lost_ns), (999 + 998, 1));
    }
}
