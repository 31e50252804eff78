//! (task deltas, energy sample) → power per task, per domain and socket. Pure: no I/O.
//!
//! Per interval, domain and socket, the measured energy E splits into an idle part (idle power ×
//! duration, capped at E) and an active part shared across the tasks that ran on that socket in
//! proportion to a usage metric. What cannot be shared (no task ran) is `unattributed`. Always:
//! Σ attributed + idle + unattributed = measured.

use std::collections::{HashMap, VecDeque};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::{
    delta::IntervalDeltas,
    energy::{Domain, DomainKey, EnergySample, Unmeasured},
    formula::{Formula, FormulaNote, Proportional, Split},
    idle_estimate::{IdleMethod, IdleSample, estimate_idle},
    smartwatts::ModelFit,
};

/// Joules per domain (indexed by [`Domain::index`]).
pub type DomainJoules = [f64; Domain::ALL.len()];

/// What the active energy of the package-like domains is shared by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// cycles when counted, else on-CPU time.
    #[default]
    Auto,
    /// The `cycles` counter (refused when it is not read).
    Cycles,
    /// The `instructions` counter (refused when it is not read).
    Instructions,
    /// On-CPU time, counters or not.
    CpuTime,
}

/// Whether and how idle energy is handed to tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdlePolicy {
    /// Report idle energy as its own row.
    #[default]
    None,
    /// Share it in proportion to on-CPU time.
    CpuTime,
    /// Share it equally among the tasks that ran.
    Equal,
}

/// Where an idle-power figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleSource {
    /// `--idle-watts`.
    Flag,
    /// The energy model's own coefficient.
    Model,
    /// Measured right before the command ran (`powerapi run --baseline`).
    Baseline,
    /// Estimated from this run's intervals: power at zero busy ([`crate::idle_estimate`]; how,
    /// in `idle_method`).
    Online,
    /// Saved by an earlier powerapi command on this machine (no intercept fitted yet here).
    Persisted,
    /// The formula's own model (SmartWatts' fitted intercept).
    Formula,
    /// No low-activity interval seen yet, and nothing saved: idle counted as 0 until one is.
    None,
}

#[derive(Clone, Debug, Default)]
/// How energy is split: the proportional formula's metric, and what happens to idle energy.
pub struct AttributionConfig {
    /// What the proportional formula shares active energy by.
    pub metric: Metric,
    /// Whether idle energy stays a separate figure or is handed to tasks.
    pub idle_policy: IdlePolicy,
    /// Total idle power of the package domain(s), split evenly across sockets.
    pub idle_watts: Option<f64>,
}

/// One domain on one socket in one interval: `attributed_j + idle_j + unattributed_j = measured_j`.
/// Serialised as is into the machine record (`domain` and `socket` flattened).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainReport {
    #[serde(flatten)]
    /// Which domain on which socket.
    pub key: DomainKey,
    /// What the energy source gave for the interval, in joules.
    pub measured_j: f64,
    /// Joules handed to tasks (active energy, and idle energy when the policy shares it).
    pub attributed_j: f64,
    /// Idle energy not handed to tasks (all of it with `--idle-policy none`).
    pub idle_j: f64,
    /// Active energy no task could take (nothing ran on the socket).
    pub unattributed_j: f64,
    /// `measured_j` over the interval's duration, in watts.
    pub power_w: f64,
    /// The idle power used, and where it came from.
    pub idle_w: f64,
    /// Where `idle_w` came from.
    pub idle_source: IdleSource,
    /// How an online estimate was made (`idle_source` `online` only); `extrapolated` says it is
    /// weak. Absent from records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_method: Option<IdleMethod>,
    /// The usage metric this domain was shared by (`cycles`, `cpu-time`, `llc-misses`, …).
    pub metric: String,
    /// What a model-based formula says of this domain (absent for the proportional formula).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formula: Option<FormulaNote>,
}

#[derive(Clone, Debug, PartialEq)]
/// One interval's energy, split: per domain, and per task.
pub struct PowerReport {
    /// The energy source's name.
    pub source: String,
    /// True when the figures come from a model, not a measurement.
    pub estimated: bool,
    /// The idle policy the split followed.
    pub idle_policy: IdlePolicy,
    /// One entry per domain and socket that had a trustworthy reading.
    pub domains: Vec<DomainReport>,
    /// Parallel to `IntervalDeltas::tasks`.
    pub task_joules: Vec<DomainJoules>,
    /// Domains with no trustworthy figure this interval (not in `domains`).
    pub unmeasured: Vec<Unmeasured>,
    /// Readings rejected since the start because they implied an impossible power.
    pub implausible_readings: u64,
    /// Readings that failed (after retries) since the start.
    pub unreadable_readings: u64,
    /// Models the formula fitted this interval.
    pub fits: Vec<ModelFit>,
    /// The estimating model's training error (watts), for a loaded fitted model.
    pub estimate_error_w: Option<f64>,
}

/// Intervals kept per domain for the idle estimate (its fit looks at the last
/// [`crate::idle_estimate::FIT_WINDOW`] first, its fallbacks at all of them).
const HISTORY: usize = 300;

/// Holds the configuration and the recent intervals the online idle estimate needs.
pub struct Attribution {
    config: AttributionConfig,
    formula: Box<dyn Formula>,
    /// Reused per domain: one weight per task.
    weights: Vec<f64>,
    /// Average frequency per socket over the interval being attributed (MHz), when known.
    frequencies: Vec<(u32, f64)>,
    history: HashMap<DomainKey, VecDeque<IdleSample>>,
    /// Idle watts known before this run's own intervals: a baseline (which wins over the online
    /// estimate) or a persisted estimate (which stands in until this run fits an intercept).
    prior: HashMap<DomainKey, (f64, IdleSource)>,
}

impl Attribution {
    /// With the proportional formula by `config.metric`.
    pub fn new(config: AttributionConfig) -> Self {
        let formula = Box::new(Proportional {
            metric: config.metric,
        });
        Self::with_formula(config, formula)
    }

    /// With a formula of the caller's ([`Formula`]); `config.metric` is then unused.
    pub fn with_formula(config: AttributionConfig, formula: Box<dyn Formula>) -> Self {
        Self {
            config,
            formula,
            weights: Vec::new(),
            frequencies: Vec::new(),
            history: HashMap::new(),
            prior: HashMap::new(),
        }
    }

    /// Sets idle watts per domain from a baseline measurement ([`IdleSource::Baseline`]) or a
    /// saved estimate ([`IdleSource::Persisted`]).
    pub fn set_idle_prior(&mut self, domains: &[(DomainKey, f64)], source: IdleSource) {
        for &(key, watts) in domains {
            self.prior.insert(key, (watts, source));
        }
    }

    /// What is worth saving for the next command, per domain: this run's intercept; else the
    /// figure it started from (a run whose load never varied does not replace a fitted figure by
    /// its percentile); else its percentile. Never an extrapolation from a machine not seen
    /// quiet, which the next command would take for a measurement.
    pub fn online_idle_estimates(&self) -> Vec<(DomainKey, f64)> {
        let mut out: Vec<(DomainKey, f64)> = self
            .history
            .iter()
            .filter_map(|(key, history)| {
                let history: Vec<IdleSample> = history.iter().copied().collect();
                let estimate = estimate_idle(&history).filter(|e| !e.is_weak());
                let watts = match (estimate, self.prior.get(key)) {
                    (Some(e), _) if e.method == IdleMethod::Intercept => Some(e.watts),
                    (_, Some(&(w, _))) => Some(w),
                    (e, None) => e.map(|e| e.watts),
                };
                watts.map(|w| (*key, w))
            })
            .collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// The average frequency of each socket over the next interval to attribute (MHz): the
    /// layer a model-based formula uses.
    pub fn set_frequencies(&mut self, frequencies: &[(u32, f64)]) {
        self.frequencies.clear();
        self.frequencies.extend_from_slice(frequencies);
    }

    /// The formula splitting the energy.
    pub fn formula(&self) -> &dyn Formula {
        self.formula.as_ref()
    }

    /// The configuration this attribution was built with.
    pub fn config(&self) -> &AttributionConfig {
        &self.config
    }

    /// `cpus_by_socket`: (socket, online CPUs on it).
    pub fn attribute(
        &mut self,
        deltas: &IntervalDeltas,
        counters: &[String],
        cpus_by_socket: &[(u32, u32)],
        sample: &EnergySample,
    ) -> PowerReport {
        let seconds = deltas.duration_ns() as f64 / 1e9;
        let mut task_joules = vec![[0.0; Domain::ALL.len()]; deltas.tasks.len()];
        let mut domains = Vec::with_capacity(sample.domains.len());
        let package_sockets = sample
            .domains
            .iter()
            .filter(|(k, _)| k.domain == Domain::Package)
            .count()
            .max(1);

        for &(key, measured_j) in &sample.domains {
            let measured_j = measured_j.max(0.0);
            let platform_wide = key.domain == Domain::Psys;
            let on_socket = |socket: u32| platform_wide || socket == key.socket;
            self.weights.clear();
            self.weights.resize(deltas.tasks.len(), 0.0);
            let split = Split {
                domain: key,
                tasks: &deltas.tasks,
                counters,
                measured_j,
                duration_ns: deltas.duration_ns(),
                frequency_mhz: self
                    .frequencies
                    .iter()
                    .find(|(s, _)| platform_wide || *s == key.socket)
                    .map(|(_, f)| *f),
            };
            let metric_name = self.formula.weights(&split, &mut self.weights);
            let weights = &self.weights;
            let weight = |i: usize| {
                let w = weights[i];
                if w.is_finite() && w > 0.0 { w } else { 0.0 }
            };
            let members: Vec<usize> = (0..deltas.tasks.len())
                .filter(|&i| !deltas.tasks[i].key.is_idle() && on_socket(deltas.tasks[i].socket))
                .collect();

            let cpus: u32 = cpus_by_socket
                .iter()
                .filter(|(s, _)| on_socket(*s))
                .map(|(_, n)| n)
                .sum();
            let busy_ns: u64 = members.iter().map(|&i| deltas.tasks[i].on_cpu_ns).sum();
            let power_w = if seconds > 0.0 {
                measured_j / seconds
            } else {
                0.0
            };

            // The interval being attributed is in the history before the estimate is made: the
            // first busy interval after quiet ones is then already one a line can be fitted
            // through, instead of being split with the percentile's high idle power.
            if seconds > 0.0 {
                let history = self.history.entry(key).or_default();
                // Busy share of the socket's CPUs: the x of the idle fit.
                let capacity = deltas.duration_ns() as f64 * f64::from(cpus.max(1));
                let busy = (busy_ns as f64 / capacity).clamp(0.0, 1.0);
                history.push_back(IdleSample {
                    power_w,
                    busy,
                    seconds,
                });
                if history.len() > HISTORY {
                    history.pop_front();
                }
            }
            let (idle_w, idle_source, idle_method) =
                if let Some(&(_, w)) = sample.known_idle_w.iter().find(|(k, _)| *k == key) {
                    (w, IdleSource::Model, None)
                } else if let (Some(w), Domain::Package) = (self.config.idle_watts, key.domain) {
                    (w / package_sockets as f64, IdleSource::Flag, None)
                } else if let Some(&(w, IdleSource::Baseline)) = self.prior.get(&key) {
                    (w, IdleSource::Baseline, None)
                } else if let Some(w) = self.formula.idle_watts(key) {
                    (w, IdleSource::Formula, None)
                } else {
                    let history: Vec<IdleSample> = self
                        .history
                        .get(&key)
                        .map(|h| h.iter().copied().collect())
                        .unwrap_or_default();
                    // Only this run's own intercept beats a saved figure (most likely an
                    // intercept of an earlier run): the percentile reads high by the background,
                    // an extrapolation may be far off.
                    match (estimate_idle(&history), self.prior.get(&key)) {
                        (Some(e), Some(&(w, source))) if e.method != IdleMethod::Intercept => {
                            (w, source, None)
                        }
                        (Some(e), _) => (e.watts, IdleSource::Online, Some(e.method)),
                        (None, Some(&(w, source))) => (w, source, None),
                        (None, None) => (0.0, IdleSource::None, None),
                    }
                };

            let mut idle_j = (idle_w * seconds).clamp(0.0, measured_j);
            let active_j = measured_j - idle_j;
            let total_weight: f64 = members.iter().map(|&i| weight(i)).sum();
            let mut attributed_j = 0.0;
            if total_weight > 0.0 {
                for &i in &members {
                    let share = active_j * weight(i) / total_weight;
                    task_joules[i][key.domain.index()] += share;
                    attributed_j += share;
                }
            }

            let ran: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&i| deltas.tasks[i].on_cpu_ns > 0)
                .collect();
            // `IdlePolicy::None`, and the other policies when nobody ran: idle stays idle.
            let shared = match self.config.idle_policy {
                IdlePolicy::CpuTime if busy_ns > 0 => {
                    for &i in &ran {
                        let share = idle_j * deltas.tasks[i].on_cpu_ns as f64 / busy_ns as f64;
                        task_joules[i][key.domain.index()] += share;
                        attributed_j += share;
                    }
                    true
                }
                IdlePolicy::Equal if !ran.is_empty() => {
                    let share = idle_j / ran.len() as f64;
                    for &i in &ran {
                        task_joules[i][key.domain.index()] += share;
                        attributed_j += share;
                    }
                    true
                }
                _ => false,
            };
            if shared {
                idle_j = 0.0;
            }
            // What no task took: all of the active energy when nothing ran, else the ulps the
            // float sums of shares drift by (tests hold it within 1e-9 J of 0).
            let unattributed_j = measured_j - (attributed_j + idle_j);

            domains.push(DomainReport {
                key,
                measured_j,
                attributed_j,
                idle_j,
                unattributed_j,
                power_w,
                idle_w,
                idle_source,
                idle_method,
                metric: metric_name,
                formula: self.formula.note(key),
            });
        }
        PowerReport {
            fits: self.formula.take_fits(),
            estimate_error_w: sample.estimate_error_w,
            source: sample.source.clone(),
            estimated: sample.estimated,
            idle_policy: self.config.idle_policy,
            domains,
            task_joules,
            unmeasured: sample.unmeasured.clone(),
            implausible_readings: sample.implausible_readings,
            unreadable_readings: sample.unreadable_readings,
        }
    }
}

#[cfg(test)]
mod tests {
    use powerapi_common::TaskKey;

    use super::*;
    use crate::delta::TaskDelta;

    fn task(pid: u32, socket: u32, on_cpu_ns: u64, cycles: u64) -> TaskDelta {
        TaskDelta::usage(pid, pid, socket, on_cpu_ns, [cycles, 0, 0, 0])
    }

    fn idle(cpu: u32, ns: u64) -> TaskDelta {
        TaskDelta {
            key: TaskKey {
                tgid: 0,
                pid: 0,
                idle_cpu: cpu,
                _reserved: 0,
            },
            ..task(0, 0, ns, 0)
        }
    }

    fn deltas(tasks: Vec<TaskDelta>) -> IntervalDeltas {
        IntervalDeltas {
            start_ns: 0,
            end_ns: 1_000_000_000,
            tasks,
            ..Default::default()
        }
    }

    fn pkg(socket: u32) -> DomainKey {
        DomainKey {
            domain: Domain::Package,
            socket,
        }
    }

    fn sample(domains: Vec<(DomainKey, f64)>) -> EnergySample {
        EnergySample {
            source: "test".into(),
            estimated: false,
            domains,
            ..Default::default()
        }
    }

    fn config(
        metric: Metric,
        idle_policy: IdlePolicy,
        idle_watts: Option<f64>,
    ) -> AttributionConfig {
        AttributionConfig {
            metric,
            idle_policy,
            idle_watts,
        }
    }

    /// Independent of how `attribute` books its parts: the tasks' joules must add up to
    /// `attributed_j`, nothing may be negative, idle may not exceed what was measured, and
    /// `unattributed_j` is ≈ 0 whenever a task ran on the domain's socket (`ran`).
    fn assert_conserved(report: &PowerReport, deltas: &IntervalDeltas, ran: &[bool]) {
        for (d, &ran) in report.domains.iter().zip(ran) {
            let tasks: f64 = report
                .task_joules
                .iter()
                .zip(&deltas.tasks)
                .filter(|(_, t)| d.key.domain == Domain::Psys || t.socket == d.key.socket)
                .map(|(j, _)| j[d.key.domain.index()])
                .sum();
            let tol = 1e-9 * d.measured_j.max(1.0);
            assert!(
                (tasks - d.attributed_j).abs() <= tol,
                "Σ tasks {tasks} ≠ {d:?}"
            );
            assert!(
                d.attributed_j >= 0.0 && d.idle_j >= 0.0 && d.unattributed_j >= -tol,
                "{d:?}"
            );
            assert!(d.idle_j <= d.measured_j + tol, "idle above measured: {d:?}");
            if ran {
                assert!(d.unattributed_j.abs() <= tol, "a task ran, yet {d:?}");
            }
            let sum = tasks + d.idle_j + d.unattributed_j;
            assert!((sum - d.measured_j).abs() <= tol, "{d:?}");
        }
    }

    #[test]
    fn splits_active_energy_by_cycles_after_idle() {
        let mut a = Attribution::new(config(Metric::Auto, IdlePolicy::None, Some(10.0)));
        let d = deltas(vec![
            task(1, 0, 500_000_000, 3_000),
            task(2, 0, 500_000_000, 1_000),
            idle(0, 1_000_000_000),
        ]);
        let r = a.attribute(
            &d,
            &["cycles".into()],
            &[(0, 2)],
            &sample(vec![(pkg(0), 30.0)]),
        );
        assert_conserved(&r, &d, &[true, true]);
        assert_eq!(r.domains[0].metric, "cycles");
        assert!((r.domains[0].idle_j - 10.0).abs() < 1e-9);
        assert!((r.domains[0].attributed_j - 20.0).abs() < 1e-9);
        assert!((r.task_joules[0][0] - 15.0).abs() < 1e-9);
        assert!((r.task_joules[1][0] - 5.0).abs() < 1e-9);
        assert_eq!(r.task_joules[2][0], 0.0, "idle tasks get nothing");
    }

    /// A user's formula that returns garbage for some tasks.
    struct Garbage;

    impl Formula for Garbage {
        fn name(&self) -> &str {
            "garbage"
        }

        fn weights(&mut self, _: &Split<'_>, out: &mut [f64]) -> String {
            out.copy_from_slice(&[3.0, f64::NAN, -5.0, f64::INFINITY, 1.0]);
            "made-up".into()
        }
    }

    #[test]
    fn any_formula_keeps_the_books_and_its_bad_weights_count_as_zero() {
        let mut a = Attribution::with_formula(
            config(Metric::Auto, IdlePolicy::None, Some(10.0)),
            Box::new(Garbage),
        );
        let d = deltas(vec![
            task(1, 0, 100, 0),
            task(2, 0, 100, 0),
            task(3, 0, 100, 0),
            task(4, 0, 100, 0),
            task(5, 0, 100, 0),
        ]);
        let r = a.attribute(&d, &[], &[(0, 2)], &sample(vec![(pkg(0), 30.0)]));
        assert_conserved(&r, &d, &[true]);
        assert_eq!(r.domains[0].metric, "made-up");
        // 20 J active, by weights 3 : 0 : 0 : 0 : 1.
        let got: Vec<f64> = r.task_joules.iter().map(|j| j[0]).collect();
        assert_eq!(got, [15.0, 0.0, 0.0, 0.0, 5.0]);
    }

    #[test]
    fn cpu_time_without_counters_and_sockets_kept_apart() {
        let mut a = Attribution::new(config(Metric::Cycles, IdlePolicy::None, Some(0.0)));
        let d = deltas(vec![task(1, 0, 100, 0), task(2, 1, 300, 0)]);
        let r = a.attribute(
            &d,
            &[],
            &[(0, 1), (1, 1)],
            &sample(vec![(pkg(0), 8.0), (pkg(1), 4.0)]),
        );
        assert_conserved(&r, &d, &[true, true]);
        assert_eq!(r.domains[0].metric, "cpu-time");
        assert_eq!(
            r.task_joules[0][0], 8.0,
            "task on socket 0 takes only socket 0's energy"
        );
        assert_eq!(r.task_joules[1][0], 4.0);
    }

    #[test]
    fn nothing_ran_means_unattributed() {
        let mut a = Attribution::new(config(Metric::Auto, IdlePolicy::CpuTime, Some(2.0)));
        let d = deltas(vec![idle(0, 1_000_000_000)]);
        let r = a.attribute(&d, &[], &[(0, 1)], &sample(vec![(pkg(0), 5.0)]));
        assert_conserved(&r, &d, &[false]);
        assert!((r.domains[0].idle_j - 2.0).abs() < 1e-9);
        assert!((r.domains[0].unattributed_j - 3.0).abs() < 1e-9);
    }

    #[test]
    fn idle_policies_share_idle() {
        let d = deltas(vec![task(1, 0, 750_000_000, 0), task(2, 0, 250_000_000, 0)]);
        let s = sample(vec![(pkg(0), 14.0)]);
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::CpuTime, Some(4.0)));
        let r = a.attribute(&d, &[], &[(0, 1)], &s);
        assert_conserved(&r, &d, &[true, true]);
        assert_eq!(r.domains[0].idle_j, 0.0);
        assert!(
            (r.task_joules[0][0] - 10.5).abs() < 1e-9 && (r.task_joules[1][0] - 3.5).abs() < 1e-9
        );
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::Equal, Some(4.0)));
        let r = a.attribute(&d, &[], &[(0, 1)], &s);
        assert_conserved(&r, &d, &[true, true]);
        assert!(
            (r.task_joules[0][0] - 9.5).abs() < 1e-9 && (r.task_joules[1][0] - 4.5).abs() < 1e-9
        );
        // "Equal" shares among the tasks that ran: one that ran 0 ns (an exit with nothing
        // left) gets none; with none that ran, idle stays idle.
        let with_exit = deltas(vec![task(1, 0, 500_000_000, 0), task(2, 0, 0, 0)]);
        let r = a.attribute(&with_exit, &[], &[(0, 1)], &s);
        assert_eq!(r.task_joules[0][0], 14.0);
        assert_eq!(r.task_joules[1][0], 0.0);
        let nobody = deltas(vec![]);
        let r = a.attribute(&nobody, &[], &[(0, 1)], &s);
        let d = &r.domains[0];
        assert_eq!(
            (d.idle_j, d.attributed_j, d.unattributed_j),
            (4.0, 0.0, 10.0)
        );
    }

    #[test]
    fn dram_by_llc_misses_and_psys_by_time() {
        let mut a = Attribution::new(config(Metric::Auto, IdlePolicy::None, None));
        // The CPU fully busy: no idle estimate yet, so all of the energy is shared.
        let mut t1 = task(1, 0, 250_000_000, 10);
        t1.counters[1] = 90;
        let mut t2 = task(2, 0, 750_000_000, 30);
        t2.counters[1] = 10;
        let names = ["cycles".to_string(), "llc-misses".to_string()];
        let dram = DomainKey {
            domain: Domain::Dram,
            socket: 0,
        };
        let psys = DomainKey {
            domain: Domain::Psys,
            socket: 0,
        };
        let d = deltas(vec![t1, t2]);
        let r = a.attribute(
            &d,
            &names,
            &[(0, 1)],
            &sample(vec![(dram, 10.0), (psys, 40.0)]),
        );
        assert_conserved(&r, &d, &[true, true]);
        assert_eq!(r.domains[0].metric, "llc-misses");
        assert!((r.task_joules[0][Domain::Dram.index()] - 9.0).abs() < 1e-9);
        assert_eq!(r.domains[1].metric, "cpu-time");
        assert!((r.task_joules[1][Domain::Psys.index()] - 30.0).abs() < 1e-9);
        // Without llc-misses, DRAM follows the package metric: cycles 10 : 30.
        let mut a = Attribution::new(config(Metric::Auto, IdlePolicy::None, None));
        let r = a.attribute(&d, &names[..1], &[(0, 1)], &sample(vec![(dram, 10.0)]));
        assert_eq!(r.domains[0].metric, "cycles");
        assert!((r.task_joules[0][Domain::Dram.index()] - 2.5).abs() < 1e-9);
    }

    #[test]
    fn baseline_wins_and_a_persisted_estimate_stands_in_until_an_intercept_is_fitted() {
        let busy = deltas(vec![task(1, 0, 900_000_000, 0)]);
        let quiet = deltas(vec![task(1, 0, 10_000_000, 0)]);
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        a.set_idle_prior(&[(pkg(0), 5.0)], IdleSource::Persisted);
        let r = a.attribute(&busy, &[], &[(0, 1)], &sample(vec![(pkg(0), 30.0)]));
        assert_eq!(r.domains[0].idle_source, IdleSource::Persisted);
        assert_eq!(
            (r.domains[0].idle_j, r.domains[0].attributed_j),
            (5.0, 25.0)
        );
        assert_eq!(r.task_joules[0][0], 25.0);
        // A quiet interval (6 W) alone gives only a percentile, which reads high by the
        // background: the persisted figure stays, and is what would be saved again.
        let r = a.attribute(&quiet, &[], &[(0, 1)], &sample(vec![(pkg(0), 6.0)]));
        assert_eq!(
            (r.domains[0].idle_source, r.domains[0].idle_w),
            (IdleSource::Persisted, 5.0)
        );
        assert_eq!(r.domains[0].idle_method, None);
        assert_eq!(a.online_idle_estimates(), vec![(pkg(0), 5.0)]);
        // With a second busy one, the intercept of the line through them replaces it.
        let r = a.attribute(&busy, &[], &[(0, 1)], &sample(vec![(pkg(0), 30.0)]));
        let intercept = 6.0 - 24.0 / 0.89 * 0.01;
        assert_eq!(r.domains[0].idle_source, IdleSource::Online);
        assert_eq!(r.domains[0].idle_method, Some(IdleMethod::Intercept));
        assert!((r.domains[0].idle_w - intercept).abs() < 1e-9, "{r:?}");
        let saved = a.online_idle_estimates();
        assert_eq!(saved.len(), 1);
        assert!((saved[0].1 - intercept).abs() < 1e-9);
        // A baseline wins over both.
        a.set_idle_prior(&[(pkg(0), 7.0)], IdleSource::Baseline);
        let r = a.attribute(&busy, &[], &[(0, 1)], &sample(vec![(pkg(0), 30.0)]));
        assert_eq!(
            (r.domains[0].idle_source, r.domains[0].idle_w),
            (IdleSource::Baseline, 7.0)
        );
        assert_eq!(r.domains[0].idle_method, None);
        assert_eq!(r.task_joules[0][0], 23.0);
    }

    #[test]
    fn while_busy_levels_are_alike_idle_is_the_10th_percentile_of_quiet_intervals() {
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        // A socket of 2 CPUs. 21 quiet intervals (15 % busy, and one at exactly 20 %) at
        // 10…30 W, out of order, and a busy one (21 % busy) at 2 W that must not count.
        let mut powers: Vec<f64> = (10..=30).map(f64::from).collect();
        powers.swap(0, 17);
        powers.swap(3, 11);
        for (i, w) in powers.iter().enumerate() {
            let busy_ns = if i == 5 { 400_000_000 } else { 300_000_000 };
            a.attribute(
                &deltas(vec![task(1, 0, busy_ns, 0)]),
                &[],
                &[(0, 2)],
                &sample(vec![(pkg(0), *w)]),
            );
        }
        a.attribute(
            &deltas(vec![task(1, 0, 420_000_000, 0)]),
            &[],
            &[(0, 2)],
            &sample(vec![(pkg(0), 2.0)]),
        );
        // p10 of 21 sorted values is the 3rd (index round(20 × 0.1) = 2): 12 W.
        assert_eq!(a.online_idle_estimates(), vec![(pkg(0), 12.0)]);
        // One more at 18 % busy and 40 W: still no spread to fit; p10 of 22 is still 12 W.
        let r = a.attribute(
            &deltas(vec![task(1, 0, 360_000_000, 0)]),
            &[],
            &[(0, 2)],
            &sample(vec![(pkg(0), 40.0)]),
        );
        assert_eq!((r.domains[0].idle_w, r.domains[0].idle_j), (12.0, 12.0));
        assert_eq!(r.domains[0].attributed_j, 28.0);
        assert_eq!(r.domains[0].idle_method, Some(IdleMethod::Percentile));
    }

    #[test]
    fn interval_length_zero_length_and_tasks_with_nothing_to_share() {
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, Some(4.0)));
        // Half a second: 10 J is 20 W, and 4 W of idle is 2 J.
        let mut half = deltas(vec![task(1, 0, 250_000_000, 0)]);
        half.end_ns = 500_000_000;
        let r = a.attribute(&half, &[], &[(0, 1)], &sample(vec![(pkg(0), 10.0)]));
        let d = &r.domains[0];
        assert_eq!((d.power_w, d.idle_j, d.attributed_j), (20.0, 2.0, 8.0));
        // A zero-length interval: no power, nothing shared, no NaN anywhere.
        let mut empty = deltas(vec![task(1, 0, 0, 0)]);
        empty.end_ns = 0;
        let r = a.attribute(&empty, &[], &[(0, 1)], &sample(vec![(pkg(0), 0.0)]));
        let d = &r.domains[0];
        assert_eq!(
            (d.power_w, d.idle_j, d.attributed_j, d.unattributed_j),
            (0.0, 0.0, 0.0, 0.0)
        );
        // A task in the interval that ran 0 ns (an exit with nothing left): the active energy has
        // no taker, so it is unattributed, not NaN.
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, Some(0.0)));
        let r = a.attribute(
            &deltas(vec![task(1, 0, 0, 0)]),
            &[],
            &[(0, 1)],
            &sample(vec![(pkg(0), 5.0)]),
        );
        assert_eq!(
            (r.domains[0].attributed_j, r.domains[0].unattributed_j),
            (0.0, 5.0)
        );
        assert_eq!(r.task_joules[0][Domain::Package.index()], 0.0);
    }

    #[test]
    fn a_zero_length_interval_is_not_a_quiet_one() {
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        let mut empty = deltas(vec![]);
        empty.end_ns = 0;
        a.attribute(&empty, &[], &[(0, 1)], &sample(vec![(pkg(0), 0.0)]));
        assert!(a.online_idle_estimates().is_empty());
    }

    #[test]
    fn the_idle_history_keeps_the_last_300_intervals() {
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        let quiet = deltas(vec![task(1, 0, 10_000_000, 0)]);
        // 31 intervals at 1 W, then 269 at 10 W: the 31st smallest of 300 is p10 (index 30).
        for w in std::iter::repeat_n(1.0, 31).chain(std::iter::repeat_n(10.0, 269)) {
            a.attribute(&quiet, &[], &[(0, 1)], &sample(vec![(pkg(0), w)]));
        }
        assert_eq!(a.online_idle_estimates(), vec![(pkg(0), 1.0)]);
        // A zero-length interval takes no place in the window.
        let mut empty = deltas(vec![]);
        empty.end_ns = 0;
        a.attribute(&empty, &[], &[(0, 1)], &sample(vec![(pkg(0), 0.0)]));
        assert_eq!(a.online_idle_estimates(), vec![(pkg(0), 1.0)]);
        // And the rank on a short history: of 5 values, p10 is the smallest (index 0.4 → 0).
        let mut short = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        for w in [3.0, 1.0, 5.0, 2.0, 4.0] {
            short.attribute(&quiet, &[], &[(0, 1)], &sample(vec![(pkg(0), w)]));
        }
        assert_eq!(short.online_idle_estimates(), vec![(pkg(0), 1.0)]);
        // One more: the oldest 1 W interval leaves the window, and p10 is now 10 W.
        a.attribute(&quiet, &[], &[(0, 1)], &sample(vec![(pkg(0), 10.0)]));
        assert_eq!(a.online_idle_estimates(), vec![(pkg(0), 10.0)]);
    }

    #[test]
    fn the_models_own_idle_power_per_socket() {
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        let mut s = sample(vec![(pkg(0), 10.0), (pkg(1), 10.0)]);
        s.known_idle_w = vec![(pkg(0), 3.0), (pkg(1), 5.0)];
        let d = deltas(vec![task(1, 0, 100, 0), task(2, 1, 100, 0)]);
        let r = a.attribute(&d, &[], &[(0, 1), (1, 1)], &s);
        let idle: Vec<(f64, IdleSource)> = r
            .domains
            .iter()
            .map(|d| (d.idle_w, d.idle_source))
            .collect();
        assert_eq!(idle, [(3.0, IdleSource::Model), (5.0, IdleSource::Model)]);
    }

    #[test]
    fn idle_watts_are_shared_by_the_package_sockets_only() {
        // --idle-watts 10 on two sockets: 5 W of idle each; DRAM is no package socket.
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, Some(10.0)));
        let dram = DomainKey {
            domain: Domain::Dram,
            socket: 0,
        };
        let d = deltas(vec![task(1, 0, 500_000_000, 0), task(2, 1, 500_000_000, 0)]);
        let r = a.attribute(
            &d,
            &[],
            &[(0, 1), (1, 1)],
            &sample(vec![(pkg(0), 20.0), (pkg(1), 20.0), (dram, 4.0)]),
        );
        let idle: Vec<(Domain, u32, f64)> = r
            .domains
            .iter()
            .map(|d| (d.key.domain, d.key.socket, d.idle_w))
            .collect();
        assert_eq!(
            idle,
            [
                (Domain::Package, 0, 5.0),
                (Domain::Package, 1, 5.0),
                (Domain::Dram, 0, 0.0)
            ]
        );
        assert_eq!(r.task_joules[0][Domain::Package.index()], 15.0);
        assert_eq!(r.task_joules[1][Domain::Package.index()], 15.0);
    }

    /// Intervals of a 2-CPU socket drawing 7 W + 31 W × busy (the reference machine of issue
    /// 19), `busy` its share, and the task that ran.
    fn on_the_line(a: &mut Attribution, busy: f64) -> PowerReport {
        let d = deltas(vec![task(1, 0, (busy * 2e9) as u64, 0)]);
        a.attribute(
            &d,
            &[],
            &[(0, 2)],
            &sample(vec![(pkg(0), 7.0 + 31.0 * busy)]),
        )
    }

    #[test]
    fn idle_is_power_at_zero_busy_not_that_of_the_quietest_intervals() {
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        // The background: 1–6 % busy, never 0 (p10 of these reads 7.3 W).
        for busy in [0.03, 0.01, 0.06, 0.02, 0.04] {
            on_the_line(&mut a, busy);
        }
        // The first busy interval is already split with the fitted 7 W: all of the 31 W × busy
        // above it goes to the task, none of the background's power stays in idle.
        let r = on_the_line(&mut a, 0.6);
        let d = &r.domains[0];
        assert_eq!(
            (d.idle_source, d.idle_method),
            (IdleSource::Online, Some(IdleMethod::Intercept))
        );
        assert!((d.idle_w - 7.0).abs() < 1e-9, "{d:?}");
        assert!((r.task_joules[0][0] - 31.0 * 0.6).abs() < 1e-9, "{r:?}");
        assert_conserved(&r, &deltas(vec![task(1, 0, 1, 0)]), &[true]);
        let saved = a.online_idle_estimates();
        assert!(
            saved.len() == 1 && (saved[0].1 - 7.0).abs() < 1e-9,
            "{saved:?}"
        );
    }

    #[test]
    fn a_machine_never_quiet_says_its_estimate_is_weak_and_does_not_save_it() {
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        // The first interval, busy, with nothing saved: no idle known yet.
        let r = on_the_line(&mut a, 0.5);
        assert_eq!(
            (r.domains[0].idle_source, r.domains[0].idle_w),
            (IdleSource::None, 0.0)
        );
        on_the_line(&mut a, 0.9);
        let r = on_the_line(&mut a, 0.7);
        let d = &r.domains[0];
        assert_eq!(
            (d.idle_source, d.idle_method),
            (IdleSource::Online, Some(IdleMethod::Extrapolated))
        );
        assert!((d.idle_w - 7.0).abs() < 1e-9, "{d:?}");
        assert!(a.online_idle_estimates().is_empty());
        // In the record: `"idle_method":"extrapolated"`, absent when there is no method.
        let json = serde_json::to_string(d).expect("json");
        assert!(json.contains(r#""idle_method":"extrapolated""#), "{json}");
        let mut flag = d.clone();
        flag.idle_method = None;
        let json = serde_json::to_string(&flag).expect("json");
        assert!(!json.contains("idle_method"), "{json}");
        let back: DomainReport = serde_json::from_str(&json).expect("read back");
        assert_eq!(back, flag);
        // A saved estimate wins over a weak one.
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        a.set_idle_prior(&[(pkg(0), 6.5)], IdleSource::Persisted);
        for busy in [0.5, 0.9, 0.7] {
            let r = on_the_line(&mut a, busy);
            assert_eq!(
                (r.domains[0].idle_source, r.domains[0].idle_w),
                (IdleSource::Persisted, 6.5)
            );
        }
        assert_eq!(a.online_idle_estimates(), vec![(pkg(0), 6.5)]);
        // Until a quiet interval comes: then this run's own fit.
        let r = on_the_line(&mut a, 0.05);
        assert_eq!(r.domains[0].idle_method, Some(IdleMethod::Intercept));
        assert!((r.domains[0].idle_w - 7.0).abs() < 1e-9);
    }

    #[test]
    fn online_idle_estimate_from_quiet_intervals() {
        let mut a = Attribution::new(config(Metric::CpuTime, IdlePolicy::None, None));
        let quiet = deltas(vec![task(1, 0, 10_000_000, 0)]);
        // The interval being attributed counts: a first quiet one is its own estimate.
        let r = a.attribute(&quiet, &[], &[(0, 1)], &sample(vec![(pkg(0), 6.0)]));
        assert_eq!(r.domains[0].idle_source, IdleSource::Online);
        assert_eq!(r.domains[0].idle_w, 6.0);
        let busy = deltas(vec![task(1, 0, 900_000_000, 0)]);
        let r = a.attribute(&busy, &[], &[(0, 1)], &sample(vec![(pkg(0), 30.0)]));
        assert_eq!(r.domains[0].idle_source, IdleSource::Online);
        assert!((r.domains[0].idle_w - 6.0).abs() < 1e-9);
        assert!((r.domains[0].attributed_j - 24.0).abs() < 1e-9);
        assert_conserved(&r, &busy, &[true]);
    }
}
