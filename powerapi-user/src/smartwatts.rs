//! The SmartWatts formula (Fieni et al., CCGrid 2020), online: per domain, socket and CPU
//! frequency layer, a power model `P = b + w·x` fitted against the measured power, where `x` is
//! the socket's counter deltas per second (on-CPU time in time-only mode). A task's share is its
//! own `w·x_task`; the intercept `b` is the idle power. Pure: no I/O.
//!
//! Better than the original, by construction: the interval is attributed with the energy
//! measured over it (no multi-tick buffering), and the per-task features come from the same
//! eBPF sensor as everything else, so processes and containers need no perf groups per cgroup.
//!
//! Until a layer holds enough samples and a fit is accepted, its intervals use the proportional
//! formula and say so. A layer is re-fitted when its median prediction error over the last
//! [`ERROR_WINDOW`] intervals exceeds `max_error_w`, from the samples that drifted only: the old
//! regime's samples would pull the new fit back (a step change is then followed within
//! `min_samples` intervals).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{
    attribution::Metric,
    energy::DomainKey,
    formula::{Formula, FormulaNote, Proportional, Split},
};

/// Prediction errors over this many intervals decide a re-fit.
pub const ERROR_WINDOW: usize = 10;

/// The formula's parameters (`--freq-step`, `--max-error`, `--model-history`).
#[derive(Clone, Debug, PartialEq)]
pub struct SmartWattsConfig {
    /// Width of a frequency layer, in MHz.
    pub freq_step_mhz: u32,
    /// Median prediction error (watts) above which a layer is re-fitted.
    pub max_error_w: f64,
    /// Samples kept per layer.
    pub history: usize,
    /// Samples a layer needs before it is fitted.
    pub min_samples: usize,
    /// What the proportional fallback shares by, until a layer is fitted.
    pub fallback: Metric,
}

impl Default for SmartWattsConfig {
    fn default() -> Self {
        Self {
            freq_step_mhz: 100,
            max_error_w: 2.0,
            history: 60,
            min_samples: 10,
            fallback: Metric::Auto,
        }
    }
}

/// A fitted model of one layer: `P = intercept_w + Σ weights[i] × feature[i] per second`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerModel {
    /// Power with every feature at 0: the idle power of the domain at this frequency.
    pub intercept_w: f64,
    /// Watts per unit of each feature per second, by feature name.
    pub weights: BTreeMap<String, f64>,
    /// Samples the fit used.
    pub samples: usize,
    /// Median absolute residual of the fit over those samples, in watts.
    pub error_w: f64,
}

/// A fit, as the `model` record reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelFit {
    /// The domain and socket modelled.
    #[serde(flatten)]
    pub key: DomainKey,
    /// The frequency layer (its lower bound in MHz), when frequencies are known.
    pub layer_mhz: Option<u32>,
    /// What was fitted.
    pub model: LayerModel,
    /// `first` for a layer's first fit, `drift` for a re-fit after its error grew.
    pub reason: String,
}

/// A fitted model as `--save-model` writes it and `--load-model` reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedModel {
    /// Format version (1).
    pub powerapi_model: u32,
    /// The features the weights apply to (counter names, or `cpu-seconds` in time-only mode).
    pub features: Vec<String>,
    /// The machine it was fitted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Every fitted layer.
    pub layers: Vec<ModelFit>,
}

/// The format [`SavedModel`] is written in.
pub const SAVED_MODEL_VERSION: u32 = 1;

/// One interval of a layer: the socket's features per second, the measured power, and the
/// model's prediction error on it (when there was a model).
#[derive(Clone, Debug)]
struct Sample {
    x: Vec<f64>,
    watts: f64,
    error_w: Option<f64>,
}

#[derive(Debug, Default)]
struct Layer {
    samples: VecDeque<Sample>,
    model: Option<LayerModel>,
    /// Dropped for drift and not fitted again yet: the next fit is a re-fit.
    drifted: bool,
}

/// The SmartWatts formula: one model (and its history) per domain, socket and frequency layer.
pub struct SmartWatts {
    config: SmartWattsConfig,
    layers: HashMap<(DomainKey, Option<u32>), Layer>,
    /// What the current interval used, per domain: for the records and the idle power.
    current: HashMap<DomainKey, (Option<u32>, FormulaNote, Option<f64>)>,
    fallback: Proportional,
    fits: Vec<ModelFit>,
    /// The features of the last interval (what the fitted weights apply to).
    features: Vec<String>,
}

impl SmartWatts {
    /// A formula with no layer fitted yet.
    pub fn new(config: SmartWattsConfig) -> Self {
        Self {
            fallback: Proportional {
                metric: config.fallback,
            },
            config,
            layers: HashMap::new(),
            current: HashMap::new(),
            fits: Vec::new(),
            features: Vec::new(),
        }
    }

    /// The layer a frequency falls in (its lower bound), `None` when unknown.
    pub fn layer_of(&self, mhz: Option<f64>) -> Option<u32> {
        let step = self.config.freq_step_mhz.max(1);
        mhz.filter(|f| f.is_finite() && *f > 0.0)
            .map(|f| (f as u32 / step) * step)
    }
}

/// Feature names and each task's features (not per second): every counter in use, or on-CPU
/// seconds in time-only mode.
fn features(split: &Split<'_>) -> Vec<String> {
    if split.counters.is_empty() {
        vec!["cpu-seconds".into()]
    } else {
        split.counters.to_vec()
    }
}

fn task_features(split: &Split<'_>, i: usize, out: &mut [f64]) {
    let t = &split.tasks[i];
    if split.counters.is_empty() {
        out[0] = t.on_cpu_ns as f64 / 1e9;
    } else {
        for (o, c) in out.iter_mut().zip(t.counters.iter()) {
            *o = *c as f64;
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn predict(model: &LayerModel, names: &[String], x: &[f64]) -> f64 {
    model.intercept_w
        + names
            .iter()
            .zip(x)
            .map(|(n, v)| model.weights.get(n).copied().unwrap_or(0.0) * v)
            .sum::<f64>()
}

/// Fits `P = b + w·x` with b, w ≥ 0 over `samples`. `None` when the fit is refused: no
/// samples, a degenerate system, or an intercept above the highest power measured (an idle
/// power the machine never drew cannot be its idle power).
pub fn fit(samples: &[(Vec<f64>, f64)], names: &[String]) -> Option<LayerModel> {
    let n = names.len();
    if samples.is_empty() || samples.iter().any(|(x, _)| x.len() != n) {
        return None;
    }
    // Scale every feature to ~1 so the solver sees a well-conditioned system (cycles per
    // second are 1e9, seconds per second 1).
    let scale: Vec<f64> = (0..n)
        .map(|j| {
            samples
                .iter()
                .map(|(x, _)| x[j].abs())
                .fold(0.0, f64::max)
                .max(f64::MIN_POSITIVE)
        })
        .collect();
    let rows: Vec<Vec<f64>> = samples
        .iter()
        .map(|(x, _)| {
            std::iter::once(1.0)
                .chain(x.iter().zip(&scale).map(|(v, s)| v / s))
                .collect()
        })
        .collect();
    let y: Vec<f64> = samples.iter().map(|(_, w)| *w).collect();
    let solution = nnls(&rows, &y)?;
    let max_power = y.iter().copied().fold(0.0, f64::max);
    let intercept_w = solution[0];
    if !plausible_intercept(intercept_w, max_power) {
        return None;
    }
    let weights: BTreeMap<String, f64> = names
        .iter()
        .zip(&solution[1..])
        .zip(&scale)
        .map(|((name, w), s)| (name.clone(), w / s))
        .collect();
    let mut model = LayerModel {
        intercept_w,
        weights,
        samples: samples.len(),
        error_w: 0.0,
    };
    let mut residuals: Vec<f64> = samples
        .iter()
        .map(|(x, w)| (w - predict(&model, names, x)).abs())
        .collect();
    model.error_w = median(&mut residuals);
    Some(model)
}

/// An idle power is neither negative nor above the highest power the layer ever measured.
fn plausible_intercept(intercept_w: f64, max_power_w: f64) -> bool {
    intercept_w.is_finite() && (0.0..=max_power_w).contains(&intercept_w)
}

/// Non-negative least squares, `min ‖Ax − y‖` with `x ≥ 0` (Lawson and Hanson's active set).
/// Written here because the systems are tiny (a handful of features, ≤ a few hundred rows) and
/// the crates that have it bring a linear-algebra stack for one function.
pub fn nnls(a: &[Vec<f64>], y: &[f64]) -> Option<Vec<f64>> {
    let n = a.first()?.len();
    if n == 0 || a.len() != y.len() {
        return None;
    }
    let residual_gradient = |x: &[f64]| -> Vec<f64> {
        let r: Vec<f64> = a
            .iter()
            .zip(y)
            .map(|(row, yi)| yi - row.iter().zip(x).map(|(r, v)| r * v).sum::<f64>())
            .collect();
        (0..n)
            .map(|j| a.iter().zip(&r).map(|(row, ri)| row[j] * ri).sum())
            .collect()
    };
    let scale = y.iter().map(|v| v.abs()).fold(1.0, f64::max);
    let tol = 1e-10 * scale * a.len() as f64;
    let mut x = vec![0.0; n];
    let mut passive = vec![false; n];
    for _ in 0..3 * n + 3 {
        let w = residual_gradient(&x);
        let Some((t, _)) = (0..n)
            .filter(|&j| !passive[j] && w[j] > tol)
            .map(|j| (j, w[j]))
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return Some(x);
        };
        passive[t] = true;
        for _ in 0..3 * n + 3 {
            let s = least_squares(a, y, &passive)?;
            if (0..n).filter(|&j| passive[j]).all(|j| s[j] > 0.0) {
                x = s;
                break;
            }
            // Step back to the boundary: the first passive variable to reach 0 leaves.
            let alpha = (0..n)
                .filter(|&j| passive[j] && s[j] <= 0.0)
                .map(|j| x[j] / (x[j] - s[j]))
                .fold(f64::INFINITY, f64::min);
            for j in 0..n {
                x[j] += alpha * (s[j] - x[j]);
                if passive[j] && x[j] <= 1e-12 {
                    passive[j] = false;
                    x[j] = 0.0;
                }
            }
        }
    }
    Some(x)
}

/// Least squares over the `active` columns only (the others 0), by the normal equations and
/// Gaussian elimination with partial pivoting; a tiny ridge keeps collinear columns solvable.
fn least_squares(a: &[Vec<f64>], y: &[f64], active: &[bool]) -> Option<Vec<f64>> {
    let cols: Vec<usize> = (0..active.len()).filter(|&j| active[j]).collect();
    let k = cols.len();
    let mut m = vec![vec![0.0; k + 1]; k];
    for (r, &cr) in cols.iter().enumerate() {
        for (c, &cc) in cols.iter().enumerate() {
            m[r][c] = a.iter().map(|row| row[cr] * row[cc]).sum();
        }
        m[r][k] = a.iter().zip(y).map(|(row, yi)| row[cr] * yi).sum();
    }
    let trace: f64 = (0..k).map(|i| m[i][i]).sum();
    for (i, row) in m.iter_mut().enumerate() {
        row[i] += 1e-12 * trace.max(1e-300);
    }
    for col in 0..k {
        let pivot = (col..k).max_by(|&p, &q| m[p][col].abs().total_cmp(&m[q][col].abs()))?;
        if m[pivot][col].abs() < 1e-300 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for (row, values) in m.iter_mut().enumerate() {
            if row != col {
                let f = values[col] / pivot_row[col];
                for (v, p) in values.iter_mut().zip(&pivot_row).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    let mut out = vec![0.0; active.len()];
    for (i, &c) in cols.iter().enumerate() {
        out[c] = m[i][k] / m[i][i];
        if !out[c].is_finite() {
            return None;
        }
    }
    Some(out)
}

impl Formula for SmartWatts {
    fn name(&self) -> &str {
        "smartwatts"
    }

    fn weights(&mut self, split: &Split<'_>, out: &mut [f64]) -> String {
        let seconds = split.duration_ns as f64 / 1e9;
        let layer_key = self.layer_of(split.frequency_mhz);
        let names = features(split);
        if self.features != names {
            self.features.clone_from(&names);
        }
        let members: Vec<usize> = (0..split.tasks.len())
            .filter(|&i| split.is_member(i))
            .collect();
        // The socket's features per second.
        let mut x = vec![0.0; names.len()];
        let mut task_x = vec![0.0; names.len()];
        for &i in &members {
            task_features(split, i, &mut task_x);
            for (s, v) in x.iter_mut().zip(&task_x) {
                *s += v;
            }
        }
        if seconds > 0.0 {
            x.iter_mut().for_each(|v| *v /= seconds);
        }
        let watts = if seconds > 0.0 {
            split.measured_j / seconds
        } else {
            0.0
        };
        let config = self.config.clone();
        let layer = self.layers.entry((split.domain, layer_key)).or_default();
        let error_w = layer
            .model
            .as_ref()
            .map(|m| (watts - predict(m, &names, &x)).abs());
        if seconds > 0.0 {
            layer.samples.push_back(Sample {
                x: x.clone(),
                watts,
                error_w,
            });
            while layer.samples.len() > config.history.max(config.min_samples) {
                layer.samples.pop_front();
            }
        }
        // Drift: the median error of the last intervals is too large. Keep only the trailing
        // samples the model mispredicted (the new regime) and fit again once there are enough.
        let recent: Vec<f64> = layer
            .samples
            .iter()
            .rev()
            .take(ERROR_WINDOW)
            .filter_map(|s| s.error_w)
            .collect();
        if layer.model.is_some()
            && recent.len() >= ERROR_WINDOW
            && median(&mut recent.clone()) > config.max_error_w
        {
            let keep = layer
                .samples
                .iter()
                .rev()
                .take_while(|s| s.error_w.is_some_and(|e| e > config.max_error_w))
                .count();
            let drop = layer.samples.len() - keep;
            layer.samples.drain(..drop);
            layer.model = None;
            layer.drifted = true;
        }
        if layer.model.is_none() && layer.samples.len() >= config.min_samples {
            let samples: Vec<(Vec<f64>, f64)> = layer
                .samples
                .iter()
                .map(|s| (s.x.clone(), s.watts))
                .collect();
            if let Some(model) = fit(&samples, &names) {
                self.fits.push(ModelFit {
                    key: split.domain,
                    layer_mhz: layer_key,
                    model: model.clone(),
                    reason: if layer.drifted { "drift" } else { "first" }.into(),
                });
                layer.model = Some(model);
                layer.drifted = false;
            }
        }
        let samples = layer.samples.len();
        match layer.model.clone() {
            Some(model) => {
                for &i in &members {
                    task_features(split, i, &mut task_x);
                    out[i] = predict(&model, &names, &task_x) - model.intercept_w;
                }
                let note = FormulaNote {
                    name: "smartwatts".into(),
                    layer_mhz: layer_key,
                    fitted: true,
                    error_w: Some(error_w.unwrap_or(model.error_w)),
                    samples,
                };
                self.current
                    .insert(split.domain, (layer_key, note, Some(model.intercept_w)));
                "smartwatts".into()
            }
            None => {
                let metric = self.fallback.weights(split, out);
                let note = FormulaNote {
                    name: format!(
                        "proportional (smartwatts layer not fitted: {samples}/{} samples)",
                        config.min_samples
                    ),
                    layer_mhz: layer_key,
                    fitted: false,
                    error_w: None,
                    samples,
                };
                self.current.insert(split.domain, (layer_key, note, None));
                metric
            }
        }
    }

    fn idle_watts(&self, domain: DomainKey) -> Option<f64> {
        self.current.get(&domain)?.2
    }

    fn note(&self, domain: DomainKey) -> Option<FormulaNote> {
        Some(self.current.get(&domain)?.1.clone())
    }

    fn take_fits(&mut self) -> Vec<ModelFit> {
        std::mem::take(&mut self.fits)
    }

    fn saved_model(&self) -> Option<SavedModel> {
        let mut layers: Vec<ModelFit> = self
            .layers
            .iter()
            .filter_map(|((key, layer), l)| {
                Some(ModelFit {
                    key: *key,
                    layer_mhz: *layer,
                    model: l.model.clone()?,
                    reason: "saved".into(),
                })
            })
            .collect();
        layers.sort_by_key(|f| (f.key, f.layer_mhz));
        (!layers.is_empty()).then(|| SavedModel {
            powerapi_model: SAVED_MODEL_VERSION,
            features: self.features.clone(),
            hostname: None,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribution::{Attribution, AttributionConfig, IdlePolicy},
        delta::{IntervalDeltas, TaskDelta},
        energy::{Domain, EnergySample},
    };

    fn task(pid: u32, on_cpu_ns: u64, cycles: u64, instructions: u64) -> TaskDelta {
        TaskDelta::usage(pid, pid, 0, on_cpu_ns, [cycles, instructions, 0, 0])
    }

    const PKG: DomainKey = DomainKey {
        domain: Domain::Package,
        socket: 0,
    };

    /// A deterministic spread of values in [0, 1).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Ground truth of one layer: idle watts, watts per 1e9 cycles/s, per 1e9 instructions/s.
    #[derive(Clone, Copy)]
    struct Truth(f64, f64, f64);

    impl Truth {
        fn watts(&self, cycles_per_s: f64, instructions_per_s: f64) -> f64 {
            self.0 + self.1 * cycles_per_s / 1e9 + self.2 * instructions_per_s / 1e9
        }
    }

    /// One second: two tasks with random counters, the package measured from `truth` (plus
    /// `noise` watts of uniform noise), attributed through the real attribution path.
    fn interval(
        attribution: &mut Attribution,
        rng: &mut Lcg,
        truth: Truth,
        mhz: f64,
        noise: f64,
    ) -> (crate::attribution::PowerReport, IntervalDeltas) {
        interval_of(attribution, rng, truth, mhz, noise, 1.0)
    }

    /// [`interval`] lasting `seconds`: counts scale with it, the truth is per second.
    fn interval_of(
        attribution: &mut Attribution,
        rng: &mut Lcg,
        truth: Truth,
        mhz: f64,
        noise: f64,
        seconds: f64,
    ) -> (crate::attribution::PowerReport, IntervalDeltas) {
        let mut count = |max: f64| (rng.next() * max * seconds) as u64;
        let tasks = vec![
            task(1, (5e8 * seconds) as u64, count(4e9), count(2e9)),
            task(2, (3e8 * seconds) as u64, count(1e9), count(6e9)),
        ];
        let cycles: f64 = tasks.iter().map(|t| t.counters[0] as f64).sum();
        let instructions: f64 = tasks.iter().map(|t| t.counters[1] as f64).sum();
        let watts =
            truth.watts(cycles / seconds, instructions / seconds) + noise * (rng.next() - 0.5);
        let deltas = IntervalDeltas {
            start_ns: 0,
            end_ns: (seconds * 1e9) as u64,
            tasks,
            ..Default::default()
        };
        let sample = EnergySample {
            source: "test".into(),
            domains: vec![(PKG, watts * seconds)],
            ..Default::default()
        };
        attribution.set_frequencies(&[(0, mhz)]);
        let counters = ["cycles".to_string(), "instructions".to_string()];
        let report = attribution.attribute(&deltas, &counters, &[(0, 4)], &sample);
        (report, deltas)
    }

    fn smartwatts() -> Attribution {
        Attribution::with_formula(
            AttributionConfig {
                metric: Metric::Auto,
                idle_policy: IdlePolicy::None,
                idle_watts: None,
            },
            Box::new(SmartWatts::new(SmartWattsConfig::default())),
        )
    }

    fn within(got: f64, want: f64, share: f64) -> bool {
        (got - want).abs() <= share * want.abs()
    }

    fn assert_recovers(fit: &ModelFit, truth: Truth) {
        let m = &fit.model;
        let per_giga = |name: &str| m.weights[name] * 1e9;
        assert!(
            within(m.intercept_w, truth.0, 0.02)
                && within(per_giga("cycles"), truth.1, 0.02)
                && within(per_giga("instructions"), truth.2, 0.02),
            "{fit:?} vs {:?}",
            (truth.0, truth.1, truth.2)
        );
    }

    #[test]
    fn nnls_solves_exact_systems_and_keeps_coefficients_non_negative() {
        let a: Vec<Vec<f64>> = (0..6)
            .map(|i| vec![1.0, f64::from(i), f64::from(i * i % 5)])
            .collect();
        let y: Vec<f64> = a.iter().map(|r| 3.0 + 2.0 * r[1] + 0.5 * r[2]).collect();
        let x = nnls(&a, &y).expect("solvable");
        for (got, want) in x.iter().zip([3.0, 2.0, 0.5]) {
            assert!((got - want).abs() < 1e-9, "{x:?}");
        }
        // A truth with a negative slope: the best non-negative answer puts it at 0.
        let y: Vec<f64> = a.iter().map(|r| 10.0 - r[1]).collect();
        let x = nnls(&a, &y).expect("solvable");
        assert!(x.iter().all(|v| *v >= 0.0) && x[1] == 0.0, "{x:?}");
        assert!(nnls(&[], &[]).is_none());
    }

    #[test]
    fn each_frequency_layer_recovers_its_own_linear_truth() {
        let truths = [
            (2000.0, Truth(40.0, 9.0, 3.0)),
            (3000.0, Truth(55.0, 14.0, 5.0)),
        ];
        let (mut a, mut rng) = (smartwatts(), Lcg(7));
        let mut fits = Vec::new();
        for i in 0..40 {
            let (mhz, truth) = truths[i % 2];
            // ±0.25 W of noise: a meter's reading jitter.
            let (report, _) = interval(&mut a, &mut rng, truth, mhz + 30.0, 0.5);
            fits.extend(report.fits);
            let d = &report.domains[0];
            let note = d.formula.as_ref().expect("a note");
            assert_eq!(note.layer_mhz, Some(mhz as u32));
            // A layer is used from its 10th sample on (every other interval here).
            assert_eq!(note.fitted, i >= 18, "interval {i}: {note:?}");
        }
        assert_eq!(fits.len(), 2, "one first fit per layer: {fits:?}");
        for fit in &fits {
            let truth = truths
                .iter()
                .find(|(m, _)| *m as u32 == fit.layer_mhz.unwrap_or(0));
            assert_recovers(fit, truth.expect("a layer of the test").1);
            assert_eq!(fit.reason, "first");
        }
    }

    #[test]
    fn tasks_get_their_modelled_power_and_idle_is_the_intercept() {
        let truth = Truth(40.0, 9.0, 3.0);
        let (mut a, mut rng) = (smartwatts(), Lcg(3));
        for _ in 0..12 {
            interval(&mut a, &mut rng, truth, 2500.0, 0.0);
        }
        let (report, deltas) = interval(&mut a, &mut rng, truth, 2500.0, 0.0);
        let d = &report.domains[0];
        assert_eq!(
            (d.metric.as_str(), d.idle_source),
            ("smartwatts", crate::attribution::IdleSource::Formula)
        );
        assert!(within(d.idle_w, 40.0, 1e-6), "{d:?}");
        // Each task's energy is its own w·x: the truth without idle.
        for (joules, t) in report.task_joules.iter().zip(&deltas.tasks) {
            let want = truth.watts(t.counters[0] as f64, t.counters[1] as f64) - truth.0;
            assert!(within(joules[0], want, 1e-6), "{} vs {want}", joules[0]);
        }
    }

    #[test]
    fn a_step_in_the_truth_is_refitted_within_ten_intervals_and_the_books_always_balance() {
        let (before, after) = (Truth(40.0, 9.0, 3.0), Truth(48.0, 12.0, 2.0));
        let (mut a, mut rng) = (smartwatts(), Lcg(11));
        let mut drift_at = None;
        for i in 0..60 {
            let truth = if i < 30 { before } else { after };
            let (report, deltas) = interval(&mut a, &mut rng, truth, 2500.0, 0.5);
            for fit in &report.fits {
                if fit.reason == "drift" && drift_at.is_none() {
                    drift_at = Some(i);
                    assert_recovers(fit, after);
                }
            }
            // The invariant, for every formula and every interval.
            let d = &report.domains[0];
            let tasks: f64 = report.task_joules.iter().map(|j| j[0]).sum();
            assert!((tasks - d.attributed_j).abs() < 1e-9, "{d:?}");
            assert!((d.attributed_j + d.idle_j + d.unattributed_j - d.measured_j).abs() < 1e-9);
            assert!(d.attributed_j >= 0.0 && d.idle_j >= 0.0, "{d:?}");
            assert_eq!(deltas.tasks.len(), report.task_joules.len());
        }
        let at = drift_at.expect("a re-fit after the step");
        assert!(
            (30..40).contains(&at),
            "re-fitted at interval {at}, the step was at 30"
        );
        // Then the model predicts the new truth again.
        let (report, _) = interval(&mut a, &mut rng, after, 2500.0, 0.0);
        let note = report.domains[0].formula.clone().expect("a note");
        assert!(
            note.fitted && note.error_w.is_some_and(|e| e < 1.0),
            "{note:?}"
        );
    }

    #[test]
    fn time_only_mode_models_cpu_seconds() {
        let (mut a, mut rng) = (smartwatts(), Lcg(5));
        let mut fit = None;
        for _ in 0..12 {
            let busy = [(rng.next() * 1e9) as u64, (rng.next() * 1e9) as u64];
            let deltas = IntervalDeltas {
                start_ns: 0,
                end_ns: 1_000_000_000,
                tasks: vec![task(1, busy[0], 0, 0), task(2, busy[1], 0, 0)],
                ..Default::default()
            };
            // 7 W idle, 15.5 W per busy CPU.
            let watts = 7.0 + 15.5 * (busy[0] + busy[1]) as f64 / 1e9;
            let sample = EnergySample {
                source: "test".into(),
                domains: vec![(PKG, watts)],
                ..Default::default()
            };
            let report = a.attribute(&deltas, &[], &[(0, 2)], &sample);
            fit = fit.or(report.fits.into_iter().next());
        }
        let fit = fit.expect("fitted");
        assert!(within(fit.model.intercept_w, 7.0, 1e-6), "{fit:?}");
        assert!(
            within(fit.model.weights["cpu-seconds"], 15.5, 1e-6),
            "{fit:?}"
        );
    }

    #[test]
    fn implausible_intercepts_and_malformed_samples_are_refused() {
        // NNLS with non-negative features cannot put the intercept above every sample (lowering
        // it would shrink every residual), so the bound is checked on its own.
        assert!(plausible_intercept(20.0, 21.0) && plausible_intercept(0.0, 21.0));
        assert!(!plausible_intercept(21.5, 21.0) && !plausible_intercept(-0.1, 21.0));
        assert!(!plausible_intercept(f64::NAN, 21.0));
        let names = vec!["cycles".to_string()];
        assert!(fit(&[], &names).is_none());
        assert!(
            fit(&[(vec![1.0, 2.0], 3.0)], &names).is_none(),
            "feature count mismatch"
        );
        // A feature that never varies cannot be told from the intercept: still a usable fit.
        let samples: Vec<(Vec<f64>, f64)> = (0..10)
            .map(|i| (vec![1e9], 20.0 + f64::from(i % 2)))
            .collect();
        let model = fit(&samples, &names).expect("fits");
        assert!(
            model.intercept_w <= 21.0 && model.error_w <= 0.5 + 1e-9,
            "{model:?}"
        );
    }

    /// The best non-negative solution by brute force: least squares on every subset of
    /// columns, keeping the feasible one with the smallest residual.
    fn brute_force(a: &[Vec<f64>], y: &[f64]) -> f64 {
        let n = a[0].len();
        let residual = |x: &[f64]| -> f64 {
            a.iter()
                .zip(y)
                .map(|(row, yi)| {
                    let r = yi - row.iter().zip(x).map(|(r, v)| r * v).sum::<f64>();
                    r * r
                })
                .sum()
        };
        let mut best = residual(&vec![0.0; n]);
        for mask in 1..(1u32 << n) {
            let active: Vec<bool> = (0..n).map(|j| mask & (1 << j) != 0).collect();
            if let Some(x) = least_squares(a, y, &active)
                && x.iter().all(|v| *v >= -1e-12)
            {
                best = best.min(residual(&x));
            }
        }
        best
    }

    #[test]
    fn nnls_finds_the_best_non_negative_fit_whatever_the_problem() {
        let mut rng = Lcg(99);
        for case in 0..200 {
            let n = 2 + case % 3;
            let rows = 4 + case % 7;
            let a: Vec<Vec<f64>> = (0..rows)
                .map(|_| (0..n).map(|_| rng.next() * 2.0 - 0.5).collect())
                .collect();
            // Truths with negative parts, and noise: the active set has to move.
            let truth: Vec<f64> = (0..n).map(|_| rng.next() * 4.0 - 2.0).collect();
            let y: Vec<f64> = a
                .iter()
                .map(|r| r.iter().zip(&truth).map(|(v, t)| v * t).sum::<f64>() + rng.next() - 0.5)
                .collect();
            let x = nnls(&a, &y).expect("solvable");
            assert!(x.iter().all(|v| *v >= 0.0), "case {case}: {x:?}");
            let got: f64 = a
                .iter()
                .zip(&y)
                .map(|(row, yi)| {
                    let r = yi - row.iter().zip(&x).map(|(r, v)| r * v).sum::<f64>();
                    r * r
                })
                .sum();
            let best = brute_force(&a, &y);
            assert!(
                got <= best * (1.0 + 1e-9) + 1e-12,
                "case {case}: {got} vs best {best}"
            );
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn layers_bucket_frequencies_and_unknown_ones_share_one() {
        let sw = SmartWatts::new(SmartWattsConfig {
            freq_step_mhz: 250,
            ..Default::default()
        });
        assert_eq!(sw.layer_of(Some(2999.9)), Some(2750));
        assert_eq!(sw.layer_of(Some(3000.0)), Some(3000));
        for unknown in [
            None,
            Some(0.0),
            Some(-5.0),
            Some(f64::NAN),
            Some(f64::INFINITY),
        ] {
            assert_eq!(sw.layer_of(unknown), None, "{unknown:?}");
        }
        assert_eq!(sw.name(), "smartwatts");
    }

    #[test]
    fn half_second_intervals_model_power_per_second_and_empty_ones_are_skipped() {
        let truth = Truth(40.0, 9.0, 3.0);
        let (mut a, mut rng) = (smartwatts(), Lcg(21));
        let mut fits = Vec::new();
        for _ in 0..12 {
            let (report, _) = interval_of(&mut a, &mut rng, truth, 2500.0, 0.0, 0.5);
            fits.extend(report.fits);
            // An empty interval (a clock that did not move) adds no sample and no fit.
            let counters = ["cycles".to_string(), "instructions".to_string()];
            let sample = EnergySample {
                source: "test".into(),
                domains: vec![(PKG, 1.0)],
                ..Default::default()
            };
            let report = a.attribute(&IntervalDeltas::default(), &counters, &[(0, 4)], &sample);
            assert!(report.fits.is_empty());
        }
        assert_eq!(
            fits.len(),
            1,
            "12 samples, one fit: the empty intervals added none"
        );
        assert_recovers(&fits[0], truth);
        let saved = a.formula().saved_model().expect("a fitted layer");
        assert_eq!(saved.features, ["cycles", "instructions"]);
        assert_eq!(
            (saved.layers.len(), saved.powerapi_model),
            (1, SAVED_MODEL_VERSION)
        );
    }
}
