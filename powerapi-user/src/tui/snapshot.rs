//! What the collector hands the UI each interval: an immutable, self-contained picture, so the
//! UI thread never touches the sensor and rendering needs nothing else.

use std::collections::HashMap;

use crate::{
    attribution::DomainReport,
    cgroup::CgroupResolver,
    collect::Snapshot,
    delta::Counters,
    energy::{Domain, headline_domains},
    identity::{Identities, rss_kib},
    record::{Filter, cgroup_info},
    report::{Losses, machine_energy},
};

/// One thread's interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskRow {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The process's name (its main thread's), for grouping by command.
    pub process_comm: String,
    pub user: String,
    /// Container (`docker:3f1c8b7a9d2e`), systemd unit, or cgroup path.
    pub cgroup: String,
    pub on_cpu_ns: u64,
    pub counters: Counters,
    /// Energy of the headline domains this interval.
    pub joules: f64,
    /// Of the process: resident memory (KiB), parent, command line (when `/proc` still knew).
    pub rss_kib: u64,
    pub ppid: Option<u32>,
    pub cmdline: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnergyHeader {
    pub source: String,
    pub estimated: bool,
    pub domains: Vec<DomainReport>,
    /// Power of the headline domains, all sockets.
    pub total_w: f64,
    pub idle_w: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopSnapshot {
    pub seq: u64,
    pub duration_s: f64,
    pub cpus: u32,
    pub busy_ns: u64,
    pub counters: Vec<String>,
    pub energy: Option<EnergyHeader>,
    /// powerapi's own CPU use, % of one CPU.
    pub meter_cpu_percent: f64,
    pub losses: Losses,
    pub rows: Vec<TaskRow>,
}

/// Short label for a cgroup: the container, else the systemd unit, else the path.
fn cgroup_label(resolver: Option<&CgroupResolver>, id: u64) -> String {
    let info = cgroup_info(resolver, id);
    if let Some(c) = info.container {
        return format!("{}:{}", c.runtime, &c.id[..c.id.len().min(12)]);
    }
    info.unit.or(info.path).unwrap_or_else(|| format!("#{id}"))
}

/// `filter` is `record`'s `--pid/--comm/--cgroup`; the machine header is never filtered.
pub fn build(
    seq: u64,
    snapshot: &Snapshot,
    counters: &[String],
    cpus: u32,
    resolver: Option<&CgroupResolver>,
    ids: &mut Identities,
    filter: &Filter,
) -> TopSnapshot {
    let duration_s = snapshot.deltas.duration_ns() as f64 / 1e9;
    let energy = snapshot.power.as_ref().map(|p| {
        let machine = machine_energy(p);
        let measured: Vec<Domain> = machine.domains.iter().map(|d| d.key.domain).collect();
        let headline = headline_domains(&measured);
        let in_headline = |d: &&DomainReport| headline.contains(&d.key.domain);
        EnergyHeader {
            total_w: machine
                .domains
                .iter()
                .filter(in_headline)
                .map(|d| d.power_w)
                .sum(),
            idle_w: machine
                .domains
                .iter()
                .filter(in_headline)
                .map(|d| d.idle_w)
                .sum(),
            source: machine.source,
            estimated: machine.estimated,
            domains: machine.domains,
        }
    });
    let headline: Vec<Domain> = energy
        .as_ref()
        .map(|e| headline_domains(&e.domains.iter().map(|d| d.key.domain).collect::<Vec<_>>()))
        .unwrap_or_default();
    let process_names: HashMap<u32, &str> = snapshot
        .aggregate
        .processes
        .iter()
        .map(|p| (p.pid, p.comm.as_str()))
        .collect();
    let mut rows = Vec::with_capacity(snapshot.aggregate.threads.len());
    let starts: HashMap<u32, u64> = snapshot
        .aggregate
        .processes
        .iter()
        .map(|p| (p.pid, p.start_ns))
        .collect();
    let mut rss: HashMap<u32, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    // Threads are already merged across sockets by `aggregate`, energy included.
    for thread in &snapshot.aggregate.threads {
        let process_comm = process_names
            .get(&thread.pid)
            .map_or_else(|| thread.comm.clone(), |c| c.to_string());
        if !filter.matches(
            thread.pid,
            &process_comm,
            &cgroup_info(resolver, thread.cgroup_id),
        ) {
            continue;
        }
        let start = starts.get(&thread.pid).copied().unwrap_or(thread.start_ns);
        seen.insert((thread.pid, start));
        let details = ids.procs.details(thread.pid, start).clone();
        let rss_kib = *rss.entry(thread.pid).or_insert_with(|| rss_kib(thread.pid));
        rows.push(TaskRow {
            pid: thread.pid,
            tid: thread.tid,
            comm: thread.comm.clone(),
            process_comm,
            // The uid the kernel read when the thread ran: short-lived tasks keep an owner.
            user: ids.users.name(thread.uid),
            rss_kib,
            ppid: details.ppid,
            cmdline: details.cmdline,
            cgroup: cgroup_label(resolver, thread.cgroup_id),
            on_cpu_ns: thread.usage.on_cpu_ns,
            counters: thread.usage.counters,
            joules: headline
                .iter()
                .map(|d| thread.usage.joules[d.index()])
                .sum(),
        });
    }
    ids.procs.retain(&seen);
    TopSnapshot {
        seq,
        duration_s,
        cpus,
        busy_ns: snapshot.aggregate.busy.on_cpu_ns,
        counters: counters.to_vec(),
        energy,
        meter_cpu_percent: if duration_s > 0.0 {
            snapshot.meter.cpu_ns as f64 / 1e9 / duration_s * 100.0
        } else {
            0.0
        },
        losses: Losses::from(&snapshot.deltas.losses),
        rows,
    }
}
