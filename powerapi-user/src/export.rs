//! Prometheus metrics from the same snapshots `record` writes: cumulative joules that never go
//! backwards, power gauges, and the meter's own cost, rendered once per interval in the
//! OpenMetrics text format by `prometheus-client` (a scrape only copies the last rendering, so
//! it never waits on the sensor). Pure: no sockets, no clock.
//!
//! Cardinality is bounded: `top` processes by energy get their own series (and keep them while
//! they live), the rest is summed into one `pid="other"` series per zone. An exited process's
//! final values stay for one more scrape, then its series goes; a new incarnation of its pid is
//! a new series.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::AtomicU64,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    aggregate::Group,
    cgroup::{CgroupResolver, Container},
    collect::Snapshot,
    energy::{Domain, headline_domains},
    record::cgroup_info,
};

type Labels = Vec<(String, String)>;
type CounterF = Counter<f64, AtomicU64>;
type GaugeF = Gauge<f64, AtomicU64>;

/// Joules per zone (domain name), cumulative.
type Zones = BTreeMap<Domain, f64>;

/// Label values come from task names and cgroup paths: anything a process may call itself.
/// Control characters go; the length is capped so one name cannot blow up a scrape.
pub fn sanitise(value: &str) -> String {
    const MAX: usize = 128;
    let clean: String = value
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.len() <= MAX {
        return clean;
    }
    let mut cut = MAX;
    while !clean.is_char_boundary(cut) {
        cut -= 1;
    }
    clean[..cut].to_string()
}

#[derive(Clone, Debug, Default)]
struct Process {
    pid: u32,
    comm: String,
    joules: Zones,
    watts: Zones,
    cpu_s: f64,
    /// Cycles and instructions, when counted.
    counts: BTreeMap<&'static str, f64>,
    /// Has a series of its own (was once among the `top`).
    shown: bool,
    /// Scrapes counted when it exited: dropped once a later scrape has seen its final values.
    exited_at_scrape: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct NodeZone {
    measured: f64,
    idle: f64,
    attributed: f64,
    unattributed: f64,
    power_w: f64,
    idle_w: f64,
}

/// Pod namespace and name by pod UID, from the kubelet's `/var/log/pods/<ns>_<name>_<uid>`.
pub fn pod_names(dir: &std::path::Path) -> HashMap<String, (String, String)> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '_');
        if let (Some(ns), Some(pod), Some(uid)) = (parts.next(), parts.next(), parts.next()) {
            // cgroup paths spell the UID with `_` where the API has `-`.
            out.insert(uid.replace('-', "_"), (ns.to_string(), pod.to_string()));
        }
    }
    out
}

/// A Docker container's name from its state file (`<dir>/<id>/config.v2.json`, `"Name":"/web"`),
/// when readable. Untrusted input: anything unexpected gives `None`.
pub fn docker_name(dir: &std::path::Path, id: &str) -> Option<String> {
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None; // never let a label value walk the filesystem
    }
    let text = std::fs::read_to_string(dir.join(id).join("config.v2.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let name = value.get("Name")?.as_str()?.trim_start_matches('/');
    (!name.is_empty()).then(|| name.to_string())
}

/// Where container and pod names come from, and what was found there.
#[derive(Debug, Default)]
pub struct ContainerNames {
    pub pods_dir: std::path::PathBuf,
    pub docker_dir: std::path::PathBuf,
    pods: HashMap<String, (String, String)>,
    docker: HashMap<String, Option<String>>,
}

impl ContainerNames {
    pub fn new(pods_dir: std::path::PathBuf, docker_dir: std::path::PathBuf) -> Self {
        Self {
            pods_dir,
            docker_dir,
            ..Default::default()
        }
    }

    /// Pods come and go: their directory is re-read every interval (it is small).
    pub fn refresh(&mut self) {
        self.pods = pod_names(&self.pods_dir);
    }

    fn labels(&mut self, c: &Container) -> Labels {
        let mut labels = vec![
            ("container_id".to_string(), sanitise(&c.id)),
            ("runtime".to_string(), sanitise(&c.runtime)),
        ];
        if c.runtime == "docker" {
            let dir = &self.docker_dir;
            let name = self
                .docker
                .entry(c.id.clone())
                .or_insert_with(|| docker_name(dir, &c.id));
            if let Some(name) = name {
                labels.push(("container_name".into(), sanitise(name)));
            }
        }
        if let Some(uid) = &c.pod {
            labels.push(("pod_uid".into(), sanitise(uid)));
            if let Some((ns, name)) = self.pods.get(&uid.replace('-', "_")) {
                labels.push(("pod_namespace".into(), sanitise(ns)));
                labels.push(("pod_name".into(), sanitise(name)));
            }
        }
        labels
    }
}

/// Everything `serve` exports, accumulated across intervals.
#[derive(Debug, Default)]
pub struct Exporter {
    top: usize,
    estimated: bool,
    node: BTreeMap<(Domain, u32), NodeZone>,
    busy_s: f64,
    idle_s: f64,
    processes: HashMap<(u32, u64), Process>,
    other: Zones,
    other_watts: Zones,
    other_cpu_s: f64,
    other_counts: BTreeMap<&'static str, f64>,
    /// Counter slots exported per process (cycles, instructions), when the sensor reads them.
    counters: Vec<(usize, &'static str)>,
    containers: HashMap<Labels, Zones>,
    container_watts: HashMap<Labels, Zones>,
    cgroups: HashMap<String, Zones>,
    commands: HashMap<String, Zones>,
    meter_cpu_s: f64,
    meter_drain_s: f64,
    meter_rss_bytes: f64,
    losses: BTreeMap<&'static str, f64>,
    implausible: f64,
    unreadable: f64,
}

impl Exporter {
    /// `counter_names`: what the sensor reads, slot by slot; cycles and instructions are
    /// exported per process (the others would multiply the series for little use).
    pub fn new(top: usize, counter_names: &[String]) -> Self {
        let counters = ["cycles", "instructions"]
            .into_iter()
            .filter_map(|name| {
                counter_names
                    .iter()
                    .position(|n| n == name)
                    .map(|slot| (slot, name))
            })
            .collect();
        Self {
            top,
            counters,
            ..Default::default()
        }
    }

    fn counts_of(&self, g: &Group) -> Vec<(&'static str, f64)> {
        self.counters
            .iter()
            .map(|&(slot, name)| (name, g.usage.counters[slot] as f64))
            .collect()
    }

    /// Adds one interval. `scrapes`: how many scrapes have been served so far.
    pub fn update(
        &mut self,
        snapshot: &Snapshot,
        resolver: Option<&CgroupResolver>,
        names: &mut ContainerNames,
        scrapes: u64,
    ) {
        self.processes
            .retain(|_, p| p.exited_at_scrape.is_none_or(|at| scrapes <= at));
        let agg = &snapshot.aggregate;
        let seconds = snapshot.deltas.duration_ns() as f64 / 1e9;
        self.busy_s += agg.busy.on_cpu_ns as f64 / 1e9;
        self.idle_s += agg.idle.on_cpu_ns as f64 / 1e9;
        self.meter_cpu_s += snapshot.meter.cpu_ns as f64 / 1e9;
        self.meter_drain_s += snapshot.meter.drain_us as f64 / 1e6;
        self.meter_rss_bytes = snapshot.meter.peak_rss_kib as f64 * 1024.0;
        let l = &snapshot.deltas.losses;
        for (name, value) in [
            ("lost_slices", l.lost_slices as f64),
            ("lost_seconds", l.lost_ns as f64 / 1e9),
            ("exit_overflow", l.exit_overflow as f64),
            ("stale_slices", l.stale_slices as f64),
            ("counter_read_errors", l.counter_read_errors as f64),
        ] {
            *self.losses.entry(name).or_default() += value;
        }
        let Some(power) = &snapshot.power else {
            self.update_cpu_only(agg, seconds);
            return;
        };
        self.estimated = power.estimated;
        self.implausible = power.implausible_readings as f64;
        self.unreadable = power.unreadable_readings as f64;
        for zone in self.node.values_mut() {
            zone.power_w = 0.0; // an unmeasured interval shows no power, not the last one
        }
        for d in &power.domains {
            let z = self.node.entry((d.key.domain, d.key.socket)).or_default();
            // Counters only grow: a part that float sums left at −1e-15 J adds nothing.
            z.measured += d.measured_j.max(0.0);
            z.idle += d.idle_j.max(0.0);
            z.attributed += d.attributed_j.max(0.0);
            z.unattributed += d.unattributed_j.max(0.0);
            z.power_w = d.power_w;
            z.idle_w = d.idle_w;
        }
        let domains: Vec<Domain> = {
            let mut v: Vec<Domain> = power.domains.iter().map(|d| d.key.domain).collect();
            v.sort();
            v.dedup();
            v
        };
        let headline = headline_domains(&domains);
        let energy_of =
            |g: &Group| -> f64 { headline.iter().map(|d| g.usage.joules[d.index()]).sum() };
        // Joules over no time are no power, never an infinite sample.
        let watts = |joules: f64| if seconds > 0.0 { joules / seconds } else { 0.0 };

        // This interval's top processes by energy become (and stay) series of their own.
        let mut ranked: Vec<&Group> = agg.processes.iter().collect();
        ranked.sort_by(|a, b| energy_of(b).total_cmp(&energy_of(a)));
        for g in ranked.iter().take(self.top) {
            let p = self.processes.entry((g.pid, g.start_ns)).or_default();
            p.shown = true;
        }
        self.other_watts.clear();
        self.container_watts.clear();
        // Processes that did not run this interval show 0 W, not their last figure.
        for p in self.processes.values_mut() {
            p.watts.clear();
        }
        for g in &agg.processes {
            let cpu_s = g.usage.on_cpu_ns as f64 / 1e9;
            let counts = self.counts_of(g);
            let key = (g.pid, g.start_ns);
            match self.processes.get_mut(&key).filter(|p| p.shown) {
                Some(p) => {
                    p.pid = g.pid;
                    p.comm = sanitise(&g.comm);
                    p.cpu_s += cpu_s;
                    add_counts(&mut p.counts, &counts);
                    for &d in &domains {
                        let j = g.usage.joules[d.index()];
                        *p.joules.entry(d).or_default() += j;
                        p.watts.insert(d, watts(j));
                    }
                    if g.exited {
                        p.exited_at_scrape = Some(scrapes);
                    }
                }
                None => {
                    self.other_cpu_s += cpu_s;
                    add_counts(&mut self.other_counts, &counts);
                    for &d in &domains {
                        let j = g.usage.joules[d.index()];
                        *self.other.entry(d).or_default() += j;
                        *self.other_watts.entry(d).or_default() += watts(j);
                    }
                }
            }
            let info = cgroup_info(resolver, g.cgroup_id);
            let path = info
                .path
                .clone()
                .unwrap_or_else(|| format!("#{}", g.cgroup_id));
            let add = |zones: &mut Zones| {
                for &d in &domains {
                    *zones.entry(d).or_default() += g.usage.joules[d.index()];
                }
            };
            add(self.cgroups.entry(sanitise(&path)).or_default());
            add(self.commands.entry(sanitise(&g.comm)).or_default());
            if let Some(c) = &info.container {
                let labels = names.labels(c);
                add(self.containers.entry(labels.clone()).or_default());
                let zone_watts = self.container_watts.entry(labels).or_default();
                for &d in &domains {
                    *zone_watts.entry(d).or_default() += watts(g.usage.joules[d.index()]);
                }
            }
        }
    }

    /// Without an energy source: CPU time per process still has its series.
    fn update_cpu_only(&mut self, agg: &crate::aggregate::Aggregate, _seconds: f64) {
        let mut ranked: Vec<&Group> = agg.processes.iter().collect();
        ranked.sort_by_key(|g| std::cmp::Reverse(g.usage.on_cpu_ns));
        for g in ranked.iter().take(self.top) {
            self.processes.entry((g.pid, g.start_ns)).or_default().shown = true;
        }
        for g in &agg.processes {
            let cpu_s = g.usage.on_cpu_ns as f64 / 1e9;
            let counts = self.counts_of(g);
            match self
                .processes
                .get_mut(&(g.pid, g.start_ns))
                .filter(|p| p.shown)
            {
                Some(p) => {
                    p.pid = g.pid;
                    p.comm = sanitise(&g.comm);
                    p.cpu_s += cpu_s;
                    add_counts(&mut p.counts, &counts);
                }
                None => {
                    self.other_cpu_s += cpu_s;
                    add_counts(&mut self.other_counts, &counts);
                }
            }
        }
    }

    /// The processes with a series of their own, highest power first: (pid, comm, watts).
    pub fn top_processes(&self) -> Vec<(u32, String, f64)> {
        let mut out: Vec<(u32, String, f64)> = self
            .processes
            .values()
            .filter(|p| p.shown)
            .map(|p| (p.pid, p.comm.clone(), p.watts.values().sum()))
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        out
    }

    /// The OpenMetrics text of everything accumulated so far.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.render_node(&mut registry);
        self.render_processes(&mut registry);
        self.render_groups(&mut registry);
        self.render_meter(&mut registry);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }

    fn zone_labels(&self, d: Domain) -> Labels {
        let estimated = if self.estimated { "true" } else { "false" };
        vec![
            ("zone".to_string(), d.name().to_string()),
            ("estimated".to_string(), estimated.to_string()),
        ]
    }

    fn render_node(&self, registry: &mut Registry) {
        let node = [
            (
                "powerapi_node_energy_joules",
                "Energy measured per zone and socket (RAPL, or the model when estimated=\"true\")",
            ),
            (
                "powerapi_node_idle_energy_joules",
                "Part of the node energy that is idle power",
            ),
            (
                "powerapi_node_attributed_energy_joules",
                "Part of the node energy given to tasks",
            ),
            (
                "powerapi_node_unattributed_energy_joules",
                "Active energy no task could take",
            ),
        ];
        let families: Vec<Family<Labels, CounterF>> =
            node.iter().map(|(n, h)| counter(registry, n, h)).collect();
        let power = gauge(
            registry,
            "powerapi_node_power_watts",
            "Node power per zone and socket over the last interval",
        );
        let idle_power = gauge(
            registry,
            "powerapi_node_idle_power_watts",
            "Idle power per zone and socket in use",
        );
        for ((d, socket), z) in &self.node {
            let mut labels = self.zone_labels(*d);
            labels.push(("socket".into(), socket.to_string()));
            for (family, value) in
                families
                    .iter()
                    .zip([z.measured, z.idle, z.attributed, z.unattributed])
            {
                family.get_or_create(&labels).inc_by(value);
            }
            power.get_or_create(&labels).set(z.power_w);
            idle_power.get_or_create(&labels).set(z.idle_w);
        }
        let cpu = counter(
            registry,
            "powerapi_node_cpu_seconds",
            "CPU time of all tasks (busy) and of the idle tasks (idle)",
        );
        cpu.get_or_create(&vec![("mode".into(), "busy".into())])
            .inc_by(self.busy_s);
        cpu.get_or_create(&vec![("mode".into(), "idle".into())])
            .inc_by(self.idle_s);
    }

    /// The top processes and `other`.
    fn render_processes(&self, registry: &mut Registry) {
        let p_energy = counter(
            registry,
            "powerapi_process_energy_joules",
            "Energy per process (the top ones; pid=\"other\" for the rest) and zone",
        );
        let p_power = gauge(
            registry,
            "powerapi_process_power_watts",
            "Power per process and zone over the last interval",
        );
        let p_cpu = counter(
            registry,
            "powerapi_process_cpu_seconds",
            "On-CPU time per process",
        );
        let count_families: Vec<(&'static str, Family<Labels, CounterF>)> = self
            .counters
            .iter()
            .map(|&(_, name)| {
                let family = counter(
                    registry,
                    &format!("powerapi_process_{name}"),
                    &format!("Hardware {name} counted per process (when the CPU has a PMU)"),
                );
                (name, family)
            })
            .collect();
        let add_counts_to = |labels: &Labels, counts: &BTreeMap<&'static str, f64>| {
            for (name, family) in &count_families {
                family
                    .get_or_create(labels)
                    .inc_by(counts.get(name).copied().unwrap_or(0.0));
            }
        };
        let mut shown: Vec<&Process> = self.processes.values().filter(|p| p.shown).collect();
        shown.sort_by_key(|p| p.pid);
        for p in shown {
            let base = vec![
                ("pid".to_string(), p.pid.to_string()),
                ("comm".to_string(), p.comm.clone()),
            ];
            p_cpu.get_or_create(&base).inc_by(p.cpu_s);
            add_counts_to(&base, &p.counts);
            for (d, j) in &p.joules {
                let mut labels = base.clone();
                labels.extend(self.zone_labels(*d));
                p_energy.get_or_create(&labels).inc_by(*j);
                p_power
                    .get_or_create(&labels)
                    .set(p.watts.get(d).copied().unwrap_or(0.0));
            }
        }
        let other = vec![
            ("pid".to_string(), "other".to_string()),
            ("comm".to_string(), "other".to_string()),
        ];
        p_cpu.get_or_create(&other).inc_by(self.other_cpu_s);
        add_counts_to(&other, &self.other_counts);
        for (d, j) in &self.other {
            let mut labels = other.clone();
            labels.extend(self.zone_labels(*d));
            p_energy.get_or_create(&labels).inc_by(*j);
            p_power
                .get_or_create(&labels)
                .set(self.other_watts.get(d).copied().unwrap_or(0.0));
        }
    }

    /// Containers, cgroups, commands.
    fn render_groups(&self, registry: &mut Registry) {
        let c_energy = counter(
            registry,
            "powerapi_container_energy_joules",
            "Energy per container (Docker, containerd, CRI-O, Podman, Kubernetes pods) and zone",
        );
        let c_power = gauge(
            registry,
            "powerapi_container_power_watts",
            "Power per container and zone over the last interval",
        );
        for (labels, zones) in &self.containers {
            for (d, j) in zones {
                let mut l = labels.clone();
                l.extend(self.zone_labels(*d));
                c_energy.get_or_create(&l).inc_by(*j);
                let w = self
                    .container_watts
                    .get(labels)
                    .and_then(|z| z.get(d))
                    .copied();
                c_power.get_or_create(&l).set(w.unwrap_or(0.0));
            }
        }
        for (name, help, label, map) in [
            (
                "powerapi_cgroup_energy_joules",
                "Energy per cgroup v2 path and zone",
                "cgroup",
                &self.cgroups,
            ),
            (
                "powerapi_command_energy_joules",
                "Energy per command name and zone",
                "comm",
                &self.commands,
            ),
        ] {
            let f = counter(registry, name, help);
            for (key, zones) in map {
                for (d, j) in zones {
                    let mut l = vec![(label.to_string(), key.clone())];
                    l.extend(self.zone_labels(*d));
                    f.get_or_create(&l).inc_by(*j);
                }
            }
        }
    }

    /// The meter itself: its cost and what it could not count.
    fn render_meter(&self, registry: &mut Registry) {
        let one = |registry: &mut Registry, name: &str, help: &str, value: f64| {
            let c: CounterF = Counter::default();
            c.inc_by(value);
            registry.register(name, help, c);
        };
        one(
            registry,
            "powerapi_meter_cpu_seconds",
            "CPU time powerapi itself used",
            self.meter_cpu_s,
        );
        one(
            registry,
            "powerapi_meter_drain_seconds",
            "Time spent draining the kernel maps",
            self.meter_drain_s,
        );
        let rss: GaugeF = Gauge::default();
        rss.set(self.meter_rss_bytes);
        registry.register(
            "powerapi_meter_peak_rss_bytes",
            "Peak resident memory of powerapi",
            rss,
        );
        let losses = counter(
            registry,
            "powerapi_sensor_losses",
            "What the sensor could not count, by kind (lost_slices, lost_seconds, exit_overflow, stale_slices, counter_read_errors)",
        );
        for (kind, value) in &self.losses {
            losses
                .get_or_create(&vec![("kind".into(), kind.to_string())])
                .inc_by(*value);
        }
        let rejected = counter(
            registry,
            "powerapi_energy_rejected_readings",
            "Energy readings not used, by reason (implausible, unreadable)",
        );
        rejected
            .get_or_create(&vec![("reason".into(), "implausible".into())])
            .inc_by(self.implausible);
        rejected
            .get_or_create(&vec![("reason".into(), "unreadable".into())])
            .inc_by(self.unreadable);
    }
}

fn add_counts(into: &mut BTreeMap<&'static str, f64>, counts: &[(&'static str, f64)]) {
    for &(name, value) in counts {
        *into.entry(name).or_default() += value;
    }
}

/// A labelled counter family, registered.
fn counter(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, CounterF> {
    let f = Family::<Labels, CounterF>::default();
    registry.register(name, help, f.clone());
    f
}

/// A labelled gauge family, registered.
fn gauge(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, GaugeF> {
    let f = Family::<Labels, GaugeF>::default();
    registry.register(name, help, f.clone());
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::{Aggregate, Usage},
        attribution::{DomainReport, IdleSource, PowerReport},
        cgroup::CgroupResolver,
        delta::IntervalDeltas,
        energy::DomainKey,
        report::MeterCost,
    };

    fn process(pid: u32, start_ns: u64, comm: &str, joules: f64, exited: bool) -> Group {
        let mut usage = Usage {
            on_cpu_ns: (joules * 1e8) as u64,
            ..Default::default()
        };
        usage.joules[Domain::Package.index()] = joules;
        Group {
            pid,
            tid: pid,
            start_ns,
            comm: comm.into(),
            usage,
            members: 1,
            exited,
            ..Default::default()
        }
    }

    fn snapshot(processes: Vec<Group>, measured: f64) -> Snapshot {
        let attributed: f64 = processes.iter().map(|p| p.usage.joules[0]).sum();
        Snapshot {
            frequencies: Vec::new(),
            cpus_by_socket: vec![(0, 2)],
            deltas: IntervalDeltas {
                start_ns: 0,
                end_ns: 1_000_000_000,
                ..Default::default()
            },
            aggregate: Aggregate {
                processes,
                ..Default::default()
            },
            power: Some(PowerReport {
                fits: Vec::new(),
                estimate_error_w: None,
                source: "powercap".into(),
                estimated: false,
                idle_policy: Default::default(),
                domains: vec![DomainReport {
                    key: DomainKey {
                        domain: Domain::Package,
                        socket: 0,
                    },
                    measured_j: measured,
                    attributed_j: attributed,
                    idle_j: measured - attributed,
                    unattributed_j: 0.0,
                    power_w: measured,
                    idle_w: measured - attributed,
                    idle_source: IdleSource::Flag,
                    idle_method: None,
                    metric: "cpu-time".into(),
                    formula: None,
                }],
                task_joules: vec![],
                unmeasured: vec![],
                implausible_readings: 0,
                unreadable_readings: 0,
            }),
            wall_end: std::time::UNIX_EPOCH,
            meter: MeterCost {
                cpu_ns: 5_000_000,
                drain_us: 300,
                peak_rss_kib: 1024,
                dropped_records: 0,
            },
        }
    }

    /// The value of the sample whose name and labels contain every part of `wanted`.
    fn value(text: &str, name: &str, wanted: &[&str]) -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .find(|l| wanted.iter().all(|w| l.contains(w)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn unattributed_energy_accumulates() {
        let mut e = Exporter::new(2, &[]);
        let mut none = ContainerNames::default();
        for _ in 0..2 {
            let mut s = snapshot(vec![process(10, 1, "burn", 6.0, false)], 10.0);
            if let Some(d) = s.power.as_mut().and_then(|p| p.domains.first_mut()) {
                d.unattributed_j = 0.25;
                d.idle_j = 3.75;
            }
            e.update(&s, None, &mut none, 0);
        }
        let text = e.render();
        assert_eq!(
            value(
                &text,
                "powerapi_node_unattributed_energy_joules_total",
                &["zone=\"package\""]
            ),
            Some(0.5)
        );
    }

    #[test]
    fn a_zero_length_interval_shows_no_power() {
        // Joules over no time: 0 W in every gauge, never an infinite or NaN sample.
        let mut e = Exporter::new(1, &[]);
        let mut none = ContainerNames::default();
        let mut s = snapshot(
            vec![
                process(10, 1, "burn", 6.0, false),
                process(20, 2, "web", 3.0, false),
            ],
            10.0,
        );
        s.deltas.end_ns = s.deltas.start_ns;
        e.update(&s, None, &mut none, 0);
        let text = e.render();
        let pkg = "zone=\"package\"";
        assert_eq!(
            value(&text, "powerapi_process_power_watts", &["pid=\"10\"", pkg]),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                "powerapi_process_power_watts",
                &["pid=\"other\"", pkg]
            ),
            Some(0.0)
        );
        assert!(!text.contains("inf") && !text.contains("NaN"), "{text}");
    }

    #[test]
    fn top_processes_have_series_and_the_rest_is_other() {
        let mut e = Exporter::new(2, &[]);
        let mut none = ContainerNames::default();
        e.update(
            &snapshot(
                vec![
                    process(10, 1, "burn", 6.0, false),
                    process(20, 2, "web", 3.0, false),
                    process(30, 3, "tiny", 1.0, false),
                ],
                14.0,
            ),
            None,
            &mut none,
            0,
        );
        let text = e.render();
        let pkg = "zone=\"package\"";
        assert_eq!(
            value(
                &text,
                "powerapi_process_energy_joules_total",
                &["pid=\"10\"", "comm=\"burn\"", pkg]
            ),
            Some(6.0)
        );
        assert_eq!(
            value(
                &text,
                "powerapi_process_energy_joules_total",
                &["pid=\"other\"", pkg]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "powerapi_process_power_watts", &["pid=\"20\"", pkg]),
            Some(3.0)
        );
        assert!(!text.contains("pid=\"30\""), "{text}");
        assert_eq!(
            value(
                &text,
                "powerapi_node_energy_joules_total",
                &[pkg, "socket=\"0\"", "estimated=\"false\""]
            ),
            Some(14.0)
        );
        assert_eq!(
            value(&text, "powerapi_node_idle_energy_joules_total", &[pkg]),
            Some(4.0)
        );
        assert_eq!(
            value(
                &text,
                "powerapi_node_attributed_energy_joules_total",
                &[pkg]
            ),
            Some(10.0)
        );
        assert_eq!(
            value(
                &text,
                "powerapi_command_energy_joules_total",
                &["comm=\"tiny\"", pkg]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "powerapi_meter_drain_seconds_total", &[]),
            Some(0.0003)
        );
        assert!(text.ends_with("# EOF\n"));

        // Next interval: web keeps its series (counters never go back) although tiny is bigger
        // now; tiny, newly in the top, gets one and starts from its own first shown interval.
        e.update(
            &snapshot(
                vec![
                    process(10, 1, "burn", 6.0, false),
                    process(20, 2, "web", 0.5, false),
                    process(30, 3, "tiny", 2.0, false),
                ],
                12.5,
            ),
            None,
            &mut none,
            1,
        );
        let text = e.render();
        assert_eq!(
            value(
                &text,
                "powerapi_process_energy_joules_total",
                &["pid=\"20\"", pkg]
            ),
            Some(3.5)
        );
        assert_eq!(
            value(
                &text,
                "powerapi_process_energy_joules_total",
                &["pid=\"30\"", pkg]
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                "powerapi_process_energy_joules_total",
                &["pid=\"other\"", pkg]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "powerapi_node_energy_joules_total", &[pkg]),
            Some(26.5)
        );
        // Σ process series = Σ attributed, across both intervals.
        let sum: f64 = ["10", "20", "30", "other"]
            .iter()
            .filter_map(|pid| {
                value(
                    &text,
                    "powerapi_process_energy_joules_total",
                    &[&format!("pid=\"{pid}\""), pkg],
                )
            })
            .sum();
        assert_eq!(sum, 18.5);
        assert_eq!(e.top_processes()[0], (10, "burn".to_string(), 6.0));
    }

    #[test]
    fn every_figure_accumulates_over_half_second_intervals() {
        use std::os::unix::fs::MetadataExt;
        // A cgroup tree with one Docker container, whose directory inode is its cgroup id.
        let root = std::env::temp_dir().join(format!("powerapi-export-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let id = "ab".repeat(32);
        let scope = root.join("system.slice").join(format!("docker-{id}.scope"));
        std::fs::create_dir_all(&scope).expect("mkdir");
        let cgroup_id = std::fs::metadata(&scope).expect("meta").ino();
        let resolver = CgroupResolver::new(root.clone());

        let mut burn = process(10, 1, "burn", 4.0, false);
        burn.usage.on_cpu_ns = 200_000_000;
        burn.cgroup_id = cgroup_id;
        burn.usage.counters[1] = 1000; // slot 1 is cycles here, slot 0 cpu-clock
        let mut tiny = process(20, 2, "tiny", 1.0, false);
        tiny.usage.on_cpu_ns = 100_000_000;
        tiny.usage.counters[1] = 500;
        let mut s = snapshot(vec![burn, tiny], 10.0);
        s.deltas.end_ns = 500_000_000;
        s.aggregate.busy.on_cpu_ns = 300_000_000;
        s.aggregate.idle.on_cpu_ns = 700_000_000;
        s.deltas.losses.lost_slices = 2;
        s.deltas.losses.lost_ns = 1_000_000;
        s.deltas.losses.exit_overflow = 1;
        s.deltas.losses.stale_slices = 3;
        s.deltas.losses.counter_read_errors = 4;
        if let Some(p) = s.power.as_mut() {
            p.domains[0].power_w = 20.0;
            p.implausible_readings = 5;
            p.unreadable_readings = 6;
        }
        let mut e = Exporter::new(1, &["cpu-clock".into(), "cycles".into()]);
        let mut names = ContainerNames::default();
        e.update(&s, Some(&resolver), &mut names, 0);
        e.update(&s, Some(&resolver), &mut names, 0);
        let text = e.render();
        let _ = std::fs::remove_dir_all(&root);
        let pkg = "zone=\"package\"";
        let check = |name: &str, labels: &[&str], want: f64| {
            let got = value(&text, name, labels).unwrap_or(f64::NAN);
            assert!(
                (got - want).abs() < 1e-9,
                "{name}{labels:?}: {got} ≠ {want}\n{text}"
            );
        };
        check("powerapi_node_cpu_seconds_total", &["mode=\"busy\""], 0.6);
        check("powerapi_node_cpu_seconds_total", &["mode=\"idle\""], 1.4);
        check("powerapi_node_power_watts", &[pkg], 20.0);
        check("powerapi_meter_cpu_seconds_total", &[], 0.01);
        check("powerapi_meter_drain_seconds_total", &[], 0.0006);
        check("powerapi_meter_peak_rss_bytes", &[], 1_048_576.0);
        for (kind, want) in [
            ("lost_slices", 4.0),
            ("lost_seconds", 0.002),
            ("exit_overflow", 2.0),
            ("stale_slices", 6.0),
            ("counter_read_errors", 8.0),
        ] {
            check(
                "powerapi_sensor_losses_total",
                &[&format!("kind=\"{kind}\"")],
                want,
            );
        }
        check(
            "powerapi_energy_rejected_readings_total",
            &["implausible"],
            5.0,
        );
        check(
            "powerapi_energy_rejected_readings_total",
            &["unreadable"],
            6.0,
        );
        // 4 J per half second: 8 J over two intervals, 8 W.
        check(
            "powerapi_process_energy_joules_total",
            &["pid=\"10\"", pkg],
            8.0,
        );
        check("powerapi_process_power_watts", &["pid=\"10\"", pkg], 8.0);
        check("powerapi_process_cpu_seconds_total", &["pid=\"10\""], 0.4);
        check(
            "powerapi_process_energy_joules_total",
            &["pid=\"other\"", pkg],
            2.0,
        );
        check("powerapi_process_power_watts", &["pid=\"other\"", pkg], 2.0);
        check(
            "powerapi_process_cpu_seconds_total",
            &["pid=\"other\""],
            0.2,
        );
        check("powerapi_process_cycles_total", &["pid=\"10\""], 2000.0);
        check("powerapi_process_cycles_total", &["pid=\"other\""], 1000.0);
        assert!(
            !text.contains("powerapi_process_instructions"),
            "not read: not exported"
        );
        let container = format!("container_id=\"{id}\"");
        check(
            "powerapi_container_energy_joules_total",
            &[&container, "runtime=\"docker\"", pkg],
            8.0,
        );
        check("powerapi_container_power_watts", &[&container, pkg], 8.0);
        check(
            "powerapi_cgroup_energy_joules_total",
            &[&format!("cgroup=\"/system.slice/docker-{id}.scope\""), pkg],
            8.0,
        );

        // Without an energy source: CPU time per process still, the top one its own series.
        let mut cpu_only = snapshot(
            vec![
                process(30, 3, "a", 3.0, false),
                process(40, 4, "b", 1.0, false),
            ],
            0.0,
        );
        cpu_only.power = None;
        let mut e = Exporter::new(1, &[]);
        e.update(&cpu_only, None, &mut names, 0);
        e.update(&cpu_only, None, &mut names, 0);
        let text = e.render();
        assert_eq!(
            value(&text, "powerapi_process_cpu_seconds_total", &["pid=\"30\""]),
            Some(0.6)
        );
        assert_eq!(
            value(
                &text,
                "powerapi_process_cpu_seconds_total",
                &["pid=\"other\""]
            ),
            Some(0.2)
        );
        assert!(!text.contains("pid=\"40\""));
    }

    #[test]
    fn an_exited_process_stays_for_one_scrape_and_a_reused_pid_is_a_new_series() {
        let mut e = Exporter::new(5, &[]);
        let mut none = ContainerNames::default();
        e.update(
            &snapshot(vec![process(10, 1, "job", 2.0, true)], 2.0),
            None,
            &mut none,
            7,
        );
        assert!(e.render().contains("pid=\"10\""));
        // No scrape in between: still there.
        e.update(&snapshot(vec![], 1.0), None, &mut none, 7);
        assert!(e.render().contains("pid=\"10\""));
        // Scraped since: gone; the pid, reused, starts a new series from 0.
        e.update(
            &snapshot(vec![process(10, 99, "job", 0.5, false)], 1.0),
            None,
            &mut none,
            8,
        );
        let text = e.render();
        assert_eq!(
            value(
                &text,
                "powerapi_process_energy_joules_total",
                &["pid=\"10\"", "zone=\"package\""]
            ),
            Some(0.5)
        );
    }

    #[test]
    fn labels_are_sanitised_and_pods_resolved() {
        assert_eq!(sanitise("a\nb\u{1b}c"), "a?b?c");
        assert_eq!(sanitise(&"é".repeat(100)).len(), 128);
        // 3-byte characters: cut at the last whole one before 128 bytes.
        assert_eq!(sanitise(&"€".repeat(60)), "€".repeat(42));
        let dir = std::env::temp_dir().join(format!("powerapi-pods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("shop_cart-7d9f_0b6e2a1c-1111-2222-3333-444455556666"))
            .expect("mkdir");
        std::fs::create_dir_all(dir.join("not-a-pod")).expect("mkdir");
        let pods = pod_names(&dir);
        assert_eq!(
            pods.get("0b6e2a1c_1111_2222_3333_444455556666"),
            Some(&("shop".to_string(), "cart-7d9f".to_string()))
        );
        assert_eq!(pods.len(), 1);
        // A Docker state tree: one container with a name, one with a garbage state file.
        let docker = dir.join("docker");
        let id = "ab".repeat(32);
        std::fs::create_dir_all(docker.join(&id)).expect("mkdir");
        std::fs::write(
            docker.join(&id).join("config.v2.json"),
            r#"{"Name":"/web-1","Id":"x"}"#,
        )
        .expect("write");
        let bad = "cd".repeat(32);
        std::fs::create_dir_all(docker.join(&bad)).expect("mkdir");
        std::fs::write(docker.join(&bad).join("config.v2.json"), "{not json").expect("write");
        assert_eq!(docker_name(&docker, &id).as_deref(), Some("web-1"));
        assert_eq!(docker_name(&docker, &bad), None);
        assert_eq!(docker_name(&docker, "../../etc"), None);
        let mut names = ContainerNames::new(dir.clone(), docker.clone());
        names.refresh();
        let labels = names.labels(&Container {
            runtime: "containerd".into(),
            id: "abc".into(),
            pod: Some("0b6e2a1c-1111-2222-3333-444455556666".into()),
        });
        assert!(labels.contains(&("pod_name".into(), "cart-7d9f".into())));
        assert!(labels.contains(&("pod_namespace".into(), "shop".into())));
        let labels = names.labels(&Container {
            runtime: "docker".into(),
            id: id.clone(),
            pod: None,
        });
        assert!(
            labels.contains(&("container_name".into(), "web-1".into())),
            "{labels:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
