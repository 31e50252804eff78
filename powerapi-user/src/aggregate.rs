//! Thread deltas → threads, processes, cgroups and machine totals. Pure.

use std::collections::BTreeMap;

use crate::delta::{Counters, IntervalDeltas, TaskDelta, comm_string};

/// Time and counters, summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub on_cpu_ns: u64,
    pub counters: Counters,
}

impl Usage {
    fn add(&mut self, on_cpu_ns: u64, counters: &Counters) {
        self.on_cpu_ns += on_cpu_ns;
        for (sum, v) in self.counters.iter_mut().zip(counters) {
            *sum = sum.saturating_add(*v);
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

pub fn aggregate(deltas: &IntervalDeltas) -> Aggregate {
    let mut out = Aggregate::default();
    let mut threads: BTreeMap<(u32, u32), Group> = BTreeMap::new();
    for task in &deltas.tasks {
        if task.key.is_idle() {
            out.idle.add(task.on_cpu_ns, &task.counters);
            continue;
        }
        out.busy.add(task.on_cpu_ns, &task.counters);
        let thread = threads.entry((task.key.tgid, task.key.pid)).or_insert_with(|| Group {
            pid: task.key.tgid,
            tid: task.key.pid,
            comm: comm_string(&task.comm),
            cgroup_id: task.cgroup_id,
            members: 1,
            ..Default::default()
        });
        thread.usage.add(task.on_cpu_ns, &task.counters);
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
        process.usage.add(thread.usage.on_cpu_ns, &thread.usage.counters);
        process.members += 1;
    }

    let mut cgroups: BTreeMap<u64, Group> = BTreeMap::new();
    for process in processes.values() {
        let cgroup = cgroups.entry(process.cgroup_id).or_insert_with(|| Group {
            cgroup_id: process.cgroup_id,
            ..Default::default()
        });
        cgroup.usage.add(process.usage.on_cpu_ns, &process.usage.counters);
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

    fn task(tgid: u32, pid: u32, socket: u32, idle_cpu: u32, ns: u64, cg: u64, comm: &str) -> TaskDelta {
        TaskDelta {
            key: TaskKey { tgid, pid, socket, idle_cpu },
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
        let a = aggregate(&deltas);
        assert_eq!(a.idle.on_cpu_ns, 65);
        assert_eq!(a.busy.on_cpu_ns, 35);
        assert_eq!(a.busy.counters, [70, 0, 0, 0]);
        assert_eq!(a.threads.len(), 3);
        assert_eq!(a.threads[0].usage.on_cpu_ns, 25, "sockets merged");
        assert_eq!(a.processes.len(), 2);
        let web = &a.processes[0];
        assert_eq!((web.pid, web.comm.as_str(), web.usage.on_cpu_ns, web.members), (10, "web", 32, 2));
        assert_eq!(a.cgroups.len(), 2);
        assert_eq!((a.cgroups[0].cgroup_id, a.cgroups[0].usage.on_cpu_ns), (1, 32));
    }
}
