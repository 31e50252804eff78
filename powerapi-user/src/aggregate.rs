//! Thread deltas → threads, processes, cgroups and machine totals. Pure.

use std::collections::BTreeMap;

use crate::{
    attribution::DomainJoules,
    delta::{Counters, IntervalDeltas, comm_string},
};

/// Time, counters and energy, summed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub on_cpu_ns: u64,
    pub counters: Counters,
    /// Attributed energy per domain (all zero without an energy source).
    pub joules: DomainJoules,
}

impl Usage {
    fn add(&mut self, other: &Usage) {
        self.on_cpu_ns += other.on_cpu_ns;
        for (sum, v) in self.counters.iter_mut().zip(&other.counters) {
            *sum = sum.saturating_add(*v);
        }
        for (sum, v) in self.joules.iter_mut().zip(&other.joules) {
            *sum += v;
        }
    }
}

/// A thread (all sockets merged), a process, or a cgroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    /// tgid for threads and processes; 0 for cgroups.
    pub pid: u32,
    /// The thread id (threads only).
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub usage: Usage,
    /// Threads (for processes) or processes (for cgroups) seen in the interval.
    pub members: u32,
    pub exited: bool,
}

/// One interval, aggregated every way a record or view needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aggregate {
    pub busy: Usage,
    pub idle: Usage,
    pub threads: Vec<Group>,
    pub processes: Vec<Group>,
    pub cgroups: Vec<Group>,
}

/// `task_joules` is parallel to `deltas.tasks` (from attribution), or empty without energy.
pub fn aggregate(deltas: &IntervalDeltas, task_joules: &[DomainJoules]) -> Aggregate {
    let mut out = Aggregate::default();
    let mut threads: BTreeMap<(u32, u32), Group> = BTreeMap::new();
    for (i, task) in deltas.tasks.iter().enumerate() {
        let usage = Usage {
            on_cpu_ns: task.on_cpu_ns,
            counters: task.counters,
            joules: task_joules.get(i).copied().unwrap_or_default(),
        };
        if task.key.is_idle() {
            out.idle.add(&usage);
            continue;
        }
        out.busy.add(&usage);
        let thread = threads
            .entry((task.key.tgid, task.key.pid))
            .or_insert_with(|| Group {
                pid: task.key.tgid,
                tid: task.key.pid,
                comm: comm_string(&task.comm),
                cgroup_id: task.cgroup_id,
                members: 1,
                ..Default::default()
            });
        thread.usage.add(&usage);
        thread.exited |= task.exited;
    }

    let mut processes: BTreeMap<u32, Group> = BTreeMap::new();
    for thread in threads.values() {
        let process = processes.entry(thread.pid).or_insert_with(|| Group {
            pid: thread.pid,
            comm: thread.comm.clone(),
            cgroup_id: thread.cgroup_id,
            ..Default::default()
        });
        // The main thread names the process (others may have set their own thread names).
        if thread.tid == thread.pid {
            process.comm = thread.comm.clone();
            process.cgroup_id = thread.cgroup_id;
            process.exited = thread.exited;
        }
        process.usage.add(&thread.usage);
        process.members += 1;
    }

    let mut cgroups: BTreeMap<u64, Group> = BTreeMap::new();
    for process in processes.values() {
        let cgroup = cgroups.entry(process.cgroup_id).or_insert_with(|| Group {
            cgroup_id: process.cgroup_id,
            ..Default::default()
        });
        cgroup.usage.add(&process.usage);
        cgroup.members += 1;
    }

    out.threads = threads.into_values().collect();
    out.processes = processes.into_values().collect();
    out.cgroups = cgroups.into_values().collect();
    out
}

#[cfg(test)]
mod tests {
    use powerapi_common::{NOT_IDLE, TaskKey};

    use super::*;
    use crate::delta::TaskDelta;

    fn task(
        tgid: u32,
        pid: u32,
        socket: u32,
        idle_cpu: u32,
        ns: u64,
        cg: u64,
        comm: &str,
    ) -> TaskDelta {
        TaskDelta {
            key: TaskKey {
                tgid,
                pid,
                socket,
                idle_cpu,
            },
            comm: {
                let mut bytes = [0u8; 16];
                bytes[..comm.len()].copy_from_slice(comm.as_bytes());
                bytes
            },
            cgroup_id: cg,
            on_cpu_ns: ns,
            counters: [ns * 2, 0, 0, 0],
            exited: false,
        }
    }

    #[test]
    fn groups_threads_processes_cgroups() {
        let deltas = IntervalDeltas {
            start_ns: 0,
            end_ns: 100,
            tasks: vec![
                task(10, 10, 0, NOT_IDLE, 20, 1, "web"),
                task(10, 10, 1, NOT_IDLE, 5, 1, "web"),
                task(10, 11, 0, NOT_IDLE, 7, 1, "worker"),
                task(20, 20, 0, NOT_IDLE, 3, 2, "db"),
                task(0, 0, 0, 0, 40, 0, "swapper/0"),
                task(0, 0, 0, 1, 25, 0, "swapper/1"),
            ],
            losses: Default::default(),
        };
        let mut joules = vec![[0.0; 6]; deltas.tasks.len()];
        joules[0][0] = 1.5;
        joules[2][0] = 0.5;
        let a = aggregate(&deltas, &joules);
        assert_eq!(a.processes[0].usage.joules[0], 2.0);
        assert_eq!(a.idle.on_cpu_ns, 65);
        assert_eq!(a.busy.on_cpu_ns, 35);
        assert_eq!(a.busy.counters, [70, 0, 0, 0]);
        assert_eq!(a.threads.len(), 3);
        assert_eq!(a.threads[0].usage.on_cpu_ns, 25, "sockets merged");
        assert_eq!(a.processes.len(), 2);
        let web = &a.processes[0];
        assert_eq!(
            (web.pid, web.comm.as_str(), web.usage.on_cpu_ns, web.members),
            (10, "web", 32, 2)
        );
        assert_eq!(a.cgroups.len(), 2);
        assert_eq!(
            (a.cgroups[0].cgroup_id, a.cgroups[0].usage.on_cpu_ns),
            (1, 32)
        );
    }
}
