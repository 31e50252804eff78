//! Thread deltas → threads, processes, cgroups and machine totals. Pure.
//!
//! Identities are incarnations, not ids: a thread is (tgid, tid, first seen), a process is
//! (tgid, its leader's first seen), so two processes that reused one pid within an interval are
//! two records.

use std::collections::{BTreeMap, HashSet};

use crate::{
    attribution::DomainJoules,
    delta::{Counters, IntervalDeltas, TaskDelta, comm_string},
};

/// Time, counters and energy, summed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub on_cpu_ns: u64,
    pub counters: Counters,
    /// Attributed energy per domain (all zero without an energy source).
    pub joules: DomainJoules,
}

/// Adds `usage` to `socket`'s entry of `sockets`.
/// Kept in socket order, so that records list sockets the same way whichever ran first.
fn add_on(sockets: &mut Vec<(u32, Usage)>, socket: u32, usage: &Usage) {
    match sockets.binary_search_by_key(&socket, |(s, _)| *s) {
        Ok(i) => sockets[i].1.add(usage),
        Err(i) => sockets.insert(i, (socket, usage.clone())),
    }
}

/// Adds every socket entry of `from` to `into`.
fn merge(into: &mut Vec<(u32, Usage)>, from: &[(u32, Usage)]) {
    for (socket, usage) in from {
        add_on(into, *socket, usage);
    }
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
    /// When the sensor first saw this thread (threads) or the process's leader (processes): with
    /// the ids, which incarnation this is.
    pub start_ns: u64,
    pub comm: String,
    pub cgroup_id: u64,
    /// Real uid of the thread, or of the process's leader (0 for cgroups).
    pub uid: u32,
    pub usage: Usage,
    /// `usage` per socket, on machines with more than one (else empty): what replay needs to
    /// share each socket's energy again.
    pub sockets: Vec<(u32, Usage)>,
    /// Threads (for processes) or processes (for cgroups) seen in the interval.
    pub members: u32,
    pub exited: bool,
}

/// One interval, aggregated every way a record or view needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Aggregate {
    pub busy: Usage,
    /// `busy` per socket, on machines with more than one (else empty).
    pub busy_by_socket: Vec<(u32, Usage)>,
    pub idle: Usage,
    pub threads: Vec<Group>,
    pub processes: Vec<Group>,
    pub cgroups: Vec<Group>,
}

/// Per thread: the kernel's record of its leader's first-seen time, and the thread's death (0
/// while it lives).
type Recorded = (u64, u64);

/// Which process incarnation each thread of one tgid belongs to (its leader's first-seen time).
/// `recorded`: per thread, the kernel's record of its leader and the thread's own death (0 while
/// alive).
///
/// Usually a tgid has one incarnation in an interval and every thread belongs to it. When the
/// pid was reused within the interval, several leaders ran: a thread belongs to the leader the
/// kernel recorded for it, else to the latest leader first seen before it. Two "leaders" whose
/// lifetimes overlap are one process (a pid is never held by two at once): a thread that took
/// the leader's pid by exec'ing, whether the sensor first saw it before the old leader or after
/// (the old leader may get its first slot only at its death, when the exec kills it).
fn process_incarnations(
    threads: &[&Group],
    recorded: &[Recorded],
    live_leader: Option<u64>,
) -> Vec<u64> {
    let mut leaders: Vec<(u64, u64)> = threads
        .iter()
        .zip(recorded)
        .filter(|(t, _)| t.tid == t.pid)
        .map(|(t, &(_, exit_ns))| (t.start_ns, exit_ns))
        .chain(live_leader.map(|start| (start, 0)))
        .collect();
    leaders.sort_unstable();
    leaders.dedup_by_key(|l| l.0);
    // (leader's first seen, the incarnation it belongs to)
    let mut canonical: Vec<(u64, u64)> = Vec::with_capacity(leaders.len());
    let mut current: Option<(u64, u64)> = None;
    for (start, exit_ns) in leaders {
        // `previous_exit`: when the incarnation so far ended, 0 while one of its leaders lives.
        current = Some(match current {
            Some((incarnation, previous_exit)) if previous_exit == 0 || start < previous_exit => {
                let ended = if exit_ns == 0 {
                    0
                } else {
                    previous_exit.max(exit_ns)
                };
                (incarnation, ended)
            }
            _ => (start, exit_ns),
        });
        if let Some((incarnation, _)) = current {
            canonical.push((start, incarnation));
        }
    }
    let canon = |first_seen: u64| {
        canonical
            .iter()
            .find(|(start, _)| *start == first_seen)
            .map(|(_, incarnation)| *incarnation)
    };
    let mut incarnations: Vec<u64> = canonical.iter().map(|(_, i)| *i).collect();
    incarnations.dedup();
    match incarnations.as_slice() {
        [] => {
            // No leader known (it neither ran nor lives): the threads' own record of it.
            let first = recorded.iter().map(|(g, _)| *g).min().unwrap_or(0);
            vec![first; threads.len()]
        }
        _ => threads
            .iter()
            .zip(recorded)
            .map(|(t, &(group, _))| {
                canon(group)
                    .or_else(|| {
                        incarnations
                            .iter()
                            .rev()
                            .find(|&&i| i <= t.start_ns)
                            .copied()
                    })
                    .or(incarnations.first().copied())
                    .unwrap_or(group)
            })
            .collect(),
    }
}

/// `task_joules` is parallel to `deltas.tasks` (from attribution), or empty without energy.
pub fn aggregate(deltas: &IntervalDeltas, task_joules: &[DomainJoules]) -> Aggregate {
    let mut out = Aggregate::default();
    let multi_socket = deltas.sockets.len() > 1;
    // (tgid, tid, first seen) → thread.
    let mut threads: BTreeMap<(u32, u32, u64), (Group, Recorded)> = BTreeMap::new();
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
        if multi_socket {
            add_on(&mut out.busy_by_socket, task.socket, &usage);
        }
        let (thread, _) = threads
            .entry((task.key.tgid, task.key.pid, task.first_seen_ns))
            .or_insert_with(|| (thread_group(task), (task.group_first_seen_ns, task.exit_ns)));
        thread.usage.add(&usage);
        if multi_socket {
            add_on(&mut thread.sockets, task.socket, &usage);
        }
        thread.exited |= task.exited;
    }

    // Threads of one tgid are adjacent in the map's order.
    let all: Vec<(Group, Recorded)> = threads.into_values().collect();
    let mut processes: BTreeMap<(u32, u64), Group> = BTreeMap::new();
    let mut start = 0;
    while start < all.len() {
        let tgid = all[start].0.pid;
        let end = start
            + all[start..]
                .iter()
                .take_while(|(t, _)| t.pid == tgid)
                .count();
        let members: Vec<&Group> = all[start..end].iter().map(|(t, _)| t).collect();
        let recorded: Vec<Recorded> = all[start..end].iter().map(|(_, r)| *r).collect();
        let live_leader = deltas.leaders.get(&tgid);
        let incarnations =
            process_incarnations(&members, &recorded, live_leader.map(|l| l.first_seen_ns));
        let newest = incarnations.iter().copied().max().unwrap_or(0);
        for (thread, &incarnation) in members.iter().zip(&incarnations) {
            let process = processes
                .entry((tgid, incarnation))
                .or_insert_with(|| Group {
                    pid: tgid,
                    start_ns: incarnation,
                    ..Default::default()
                });
            process.usage.add(&thread.usage);
            merge(&mut process.sockets, &thread.sockets);
            process.members += 1;
            process.exited |= thread.exited;
        }
        for ((_, incarnation), process) in processes.range_mut((tgid, 0)..=(tgid, u64::MAX)) {
            // A process has exited when no thread of it is left, whichever went first; an older
            // incarnation of a reused pid has necessarily exited.
            process.exited =
                *incarnation != newest || (process.exited && !deltas.live_tgids.contains(&tgid));
            // Named (and placed) by its leader: the leader's figures if it ran, else the live
            // leader's, else those of the thread that ran most.
            let mine = || {
                members
                    .iter()
                    .zip(&incarnations)
                    .filter(move |(_, i)| **i == *incarnation)
                    .map(|(t, _)| *t)
            };
            if let Some(leader) = mine().find(|t| t.tid == tgid && t.start_ns == *incarnation) {
                process.comm.clone_from(&leader.comm);
                process.cgroup_id = leader.cgroup_id;
                process.uid = leader.uid;
            } else if let Some(leader) = live_leader.filter(|l| l.first_seen_ns == *incarnation) {
                process.comm = comm_string(&leader.comm);
                process.cgroup_id = leader.cgroup_id;
                process.uid = leader.uid;
            } else if let Some(busiest) = mine().max_by_key(|t| t.usage.on_cpu_ns) {
                process.comm.clone_from(&busiest.comm);
                process.cgroup_id = busiest.cgroup_id;
                process.uid = busiest.uid;
            }
        }
        start = end;
    }

    // Cgroups from threads: each thread's time goes to the cgroup it was in, even when the
    // threads of one process sit in different cgroups (threaded cgroups, moves).
    // The processes already counted per cgroup: a set, not a list, because one cgroup (the
    // root, on hosts that do not place processes) can hold thousands of them, and a scan per
    // thread made this quadratic (20–40 ms per interval at 10,000 threads).
    let mut cgroups: BTreeMap<u64, (Group, HashSet<(u32, u64)>)> = BTreeMap::new();
    for (thread, (recorded, _)) in &all {
        let (cgroup, seen) = cgroups.entry(thread.cgroup_id).or_insert_with(|| {
            (
                Group {
                    cgroup_id: thread.cgroup_id,
                    ..Default::default()
                },
                HashSet::new(),
            )
        });
        cgroup.usage.add(&thread.usage);
        merge(&mut cgroup.sockets, &thread.sockets);
        if seen.insert((thread.pid, *recorded)) {
            cgroup.members += 1;
        }
    }

    out.threads = all.into_iter().map(|(t, _)| t).collect();
    out.processes = processes.into_values().collect();
    out.cgroups = cgroups.into_values().map(|(g, _)| g).collect();
    out
}

fn thread_group(task: &TaskDelta) -> Group {
    Group {
        pid: task.key.tgid,
        tid: task.key.pid,
        start_ns: task.first_seen_ns,
        comm: comm_string(&task.comm),
        cgroup_id: task.cgroup_id,
        uid: task.uid,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use powerapi_common::{NOT_IDLE, TaskKey};

    use super::*;
    use crate::delta::{Leader, TaskDelta};

    fn comm(name: &str) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        bytes
    }

    fn task(tgid: u32, pid: u32, socket: u32, ns: u64, cg: u64, name: &str) -> TaskDelta {
        TaskDelta {
            key: TaskKey {
                tgid,
                pid,
                idle_cpu: NOT_IDLE,
                _reserved: 0,
            },
            socket,
            first_seen_ns: 1000 + u64::from(pid),
            group_first_seen_ns: 1000 + u64::from(tgid),
            exit_ns: 0,
            comm: comm(name),
            cgroup_id: cg,
            uid: 1000 + pid,
            on_cpu_ns: ns,
            counters: [ns * 2, 0, 0, 0],
            exited: false,
        }
    }

    fn idle(cpu: u32, ns: u64) -> TaskDelta {
        TaskDelta {
            key: TaskKey {
                tgid: 0,
                pid: 0,
                idle_cpu: cpu,
                _reserved: 0,
            },
            ..task(0, 0, 0, ns, 0, "swapper")
        }
    }

    fn deltas(tasks: Vec<TaskDelta>, live: &[u32]) -> IntervalDeltas {
        IntervalDeltas {
            start_ns: 0,
            end_ns: 100,
            tasks,
            live_tgids: live.iter().copied().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn sockets_are_listed_in_order_whichever_ran_first() {
        let mut d = deltas(
            vec![
                task(10, 11, 2, 5, 1, "a"),
                task(10, 10, 0, 7, 1, "a"),
                task(20, 20, 1, 3, 1, "b"),
                task(10, 10, 2, 1, 1, "a"),
            ],
            &[10, 20],
        );
        d.sockets = vec![0, 1, 2];
        let a = aggregate(&d, &[]);
        let order =
            |s: &[(u32, Usage)]| s.iter().map(|(s, u)| (*s, u.on_cpu_ns)).collect::<Vec<_>>();
        assert_eq!(order(&a.busy_by_socket), [(0, 7), (1, 3), (2, 6)]);
        assert_eq!(order(&a.threads[0].sockets), [(0, 7), (2, 1)]);
        assert_eq!(order(&a.processes[0].sockets), [(0, 7), (2, 6)]);
        assert_eq!(order(&a.cgroups[0].sockets), [(0, 7), (1, 3), (2, 6)]);
    }

    #[test]
    fn groups_threads_processes_cgroups() {
        let d = deltas(
            vec![
                task(10, 10, 0, 20, 1, "web"),
                task(10, 10, 1, 5, 1, "web"),
                task(10, 11, 0, 7, 1, "worker"),
                task(20, 20, 0, 3, 2, "db"),
                idle(0, 40),
                idle(1, 25),
            ],
            &[10, 20],
        );
        let mut joules = vec![[0.0; 6]; d.tasks.len()];
        joules[0][0] = 1.5;
        joules[2][0] = 0.5;
        let a = aggregate(&d, &joules);
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
        assert!(!web.exited);
        assert_eq!(a.cgroups.len(), 2);
        assert_eq!(
            (
                a.cgroups[0].cgroup_id,
                a.cgroups[0].usage.on_cpu_ns,
                a.cgroups[0].members
            ),
            (1, 32, 1)
        );
    }

    #[test]
    fn a_process_whose_leader_exited_first_is_still_running() {
        let mut leader = task(10, 10, 0, 5, 1, "app");
        leader.exited = true;
        let a = aggregate(
            &deltas(vec![leader, task(10, 11, 0, 9, 1, "app-worker")], &[10]),
            &[],
        );
        assert_eq!(a.processes.len(), 1);
        let p = &a.processes[0];
        assert_eq!((p.comm.as_str(), p.exited, p.members), ("app", false, 2));
    }

    #[test]
    fn a_process_ends_when_its_last_thread_does() {
        // The leader went earlier; the last worker exits now and nothing of tgid 10 lives.
        let mut worker = task(10, 11, 0, 9, 4, "app-worker");
        worker.exited = true;
        let a = aggregate(&deltas(vec![worker.clone()], &[]), &[]);
        assert!(a.processes[0].exited);
        assert_eq!(a.processes[0].cgroup_id, 4);
        // Had a sibling still lived, it would not have ended.
        let a = aggregate(&deltas(vec![worker], &[10]), &[]);
        assert!(!a.processes[0].exited);
    }

    #[test]
    fn a_live_leader_that_did_not_run_names_its_process() {
        let mut d = deltas(vec![task(10, 11, 0, 9, 4, "renamed")], &[10]);
        d.leaders.insert(
            10,
            Leader {
                first_seen_ns: 1010,
                comm: comm("server"),
                cgroup_id: 7,
                uid: 42,
            },
        );
        let a = aggregate(&d, &[]);
        assert_eq!(
            (a.processes[0].comm.as_str(), a.processes[0].cgroup_id),
            ("server", 7)
        );
        assert_eq!(a.processes[0].uid, 42, "owned as its leader is");
        assert_eq!(a.threads[0].uid, 1011, "a thread keeps its own owner");
        assert_eq!(
            a.threads[0].comm, "renamed",
            "the thread keeps its own name"
        );
        assert_eq!(a.cgroups[0].cgroup_id, 4, "cgroups follow threads");
    }

    #[test]
    fn a_thread_that_execs_and_takes_the_leaders_pid_stays_in_its_process() {
        // Leader 60 (first seen 100) died at 500; thread 61, first seen at 200 before the leader
        // had a slot (so the kernel recorded itself as leader), exec'd and became pid 60.
        let mut old = task(60, 60, 0, 10, 1, "sh");
        (old.first_seen_ns, old.group_first_seen_ns, old.exit_ns) = (100, 100, 500);
        old.exited = true;
        let mut execd = task(60, 60, 0, 40, 1, "make");
        (execd.first_seen_ns, execd.group_first_seen_ns) = (200, 200);
        let a = aggregate(&deltas(vec![old, execd], &[60]), &[]);
        let got: Vec<_> = a
            .processes
            .iter()
            .map(|p| (p.start_ns, p.usage.on_cpu_ns, p.exited))
            .collect();
        assert_eq!(got, vec![(100, 50, false)], "one process, still running");
    }

    #[test]
    fn a_thread_seen_before_its_leader_that_execs_stays_in_its_process() {
        // Thread 81 first switched out at 200, blocked in exec waiting for its leader to die;
        // leader 80 had never switched out, so it got a slot only at its death (first seen 450,
        // dead 460). 81 then took pid 80. Their lifetimes overlap: one process.
        let mut old = task(80, 80, 0, 10, 1, "sh");
        (old.first_seen_ns, old.group_first_seen_ns, old.exit_ns) = (450, 450, 460);
        old.exited = true;
        let mut execd = task(80, 80, 0, 40, 1, "make");
        (execd.first_seen_ns, execd.group_first_seen_ns) = (200, 200);
        let a = aggregate(&deltas(vec![old, execd], &[80]), &[]);
        let got: Vec<_> = a
            .processes
            .iter()
            .map(|p| (p.start_ns, p.usage.on_cpu_ns, p.exited))
            .collect();
        assert_eq!(got, vec![(200, 50, false)], "one process, still running");
    }

    #[test]
    fn an_incarnation_lives_while_any_of_its_leaders_does() {
        // 90 exec'd from a thread (first seen 200, alive) before its old leader (100) died at
        // 500; a leader first seen at 700 overlaps the living one, so it is the same process.
        let mut old = task(90, 90, 0, 10, 1, "sh");
        (old.first_seen_ns, old.group_first_seen_ns, old.exit_ns) = (100, 100, 500);
        old.exited = true;
        let mut execd = task(90, 90, 0, 20, 1, "make");
        (execd.first_seen_ns, execd.group_first_seen_ns) = (200, 100);
        let mut late = task(90, 90, 0, 30, 1, "make");
        (late.first_seen_ns, late.group_first_seen_ns) = (700, 700);
        let a = aggregate(&deltas(vec![old, execd, late], &[90]), &[]);
        assert_eq!(a.processes.len(), 1, "{:?}", a.processes);
        assert_eq!(a.processes[0].usage.on_cpu_ns, 60);
    }

    #[test]
    fn energy_adds_up_from_threads_to_processes_and_cgroups() {
        let attributed = [
            [1.5, 0.0, 0.0, 0.0, 0.0, 0.0],
            [2.5, 0.0, 0.0, 0.0, 0.0, 0.0],
        ];
        let d = deltas(
            vec![task(10, 10, 0, 20, 1, "web"), task(10, 11, 0, 5, 1, "web")],
            &[10],
        );
        let a = aggregate(&d, &attributed);
        assert_eq!(a.processes[0].usage.joules[0], 4.0);
        assert_eq!(a.cgroups[0].usage.joules[0], 4.0);
        assert_eq!(a.busy.joules[0], 4.0);
    }

    #[test]
    fn a_leader_first_seen_when_the_last_one_died_is_a_new_process() {
        // Strictly before the leader's death is an exec'ing thread; at the same instant or
        // after, a new process that reused the pid.
        let mut old = task(60, 60, 0, 10, 1, "old");
        old.first_seen_ns = 100;
        old.group_first_seen_ns = 100;
        old.exit_ns = 300;
        old.exited = true;
        let mut new = task(60, 60, 0, 10, 1, "new");
        new.first_seen_ns = 300;
        new.group_first_seen_ns = 300;
        let a = aggregate(&deltas(vec![old, new], &[60]), &[]);
        assert_eq!(a.processes.len(), 2);
    }

    #[test]
    fn threads_without_a_known_leader_are_one_process() {
        // Neither the leader ran nor lives: the threads' records of it (which may differ, one
        // taken before a late update) make one process, the earliest.
        let mut a1 = task(70, 71, 0, 10, 1, "w");
        a1.first_seen_ns = 500;
        a1.group_first_seen_ns = 400;
        let mut a2 = task(70, 72, 0, 10, 1, "w");
        a2.first_seen_ns = 600;
        a2.group_first_seen_ns = 450;
        let a = aggregate(&deltas(vec![a1, a2], &[70]), &[]);
        assert_eq!(a.processes.len(), 1);
        assert_eq!((a.processes[0].start_ns, a.processes[0].members), (400, 2));
    }

    #[test]
    fn two_processes_that_reuse_a_pid_in_one_interval_are_two_records() {
        let mut old = task(50, 50, 0, 30, 1, "old");
        old.first_seen_ns = 100;
        old.group_first_seen_ns = 100;
        old.exit_ns = 300;
        old.exited = true;
        let mut old_worker = task(50, 51, 0, 4, 1, "old");
        old_worker.first_seen_ns = 120;
        old_worker.group_first_seen_ns = 100;
        old_worker.exited = true;
        let mut new = task(50, 50, 0, 70, 2, "new");
        new.first_seen_ns = 900;
        new.group_first_seen_ns = 900;
        // A thread of the new process created before its leader's first switch: the kernel
        // recorded no leader for it, so the time order places it.
        let mut new_worker = task(50, 52, 0, 6, 2, "new");
        new_worker.first_seen_ns = 950;
        new_worker.group_first_seen_ns = 950;
        let a = aggregate(&deltas(vec![old, old_worker, new, new_worker], &[50]), &[]);
        let got: Vec<_> = a
            .processes
            .iter()
            .map(|p| {
                (
                    p.pid,
                    p.start_ns,
                    p.comm.as_str(),
                    p.usage.on_cpu_ns,
                    p.members,
                    p.exited,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (50, 100, "old", 34, 2, true),
                (50, 900, "new", 76, 2, false)
            ]
        );
        assert_eq!(a.threads.len(), 4);
    }
}
