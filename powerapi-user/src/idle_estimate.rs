//! The online idle power of a domain: what it would draw with no CPU busy, from its recent
//! intervals' (power, busy share) pairs. Pure: no I/O.
//!
//! Why not the power of the quietest intervals: a running machine is never fully idle (the
//! meter itself, daemons: 1–6 % busy on the test VM), so even its quietest intervals hold the
//! background's active power. Counted as idle, that power was charged twice — once as idle,
//! once to the background's own processes — and every workload lost its share of it (issue 19:
//! a 10th percentile of 7.9–8.2 W for a true 7 W; workloads charged 91–93 % of their energy).
//! The intercept `b` of `P = b + w·busy`, fitted over recent intervals, is the power at zero
//! busy, which is what idle means. The percentile stays as a fallback while the intervals seen
//! are too alike in busy share for a line to be fitted through them.
//!
//! ```
//! use powerapi::idle_estimate::{estimate_idle, IdleMethod, IdleSample};
//! // 7 W + 31 W × busy; the quietest interval is 2 % busy, yet idle is 7 W, not 7.6 W.
//! let history: Vec<IdleSample> = [0.02, 0.05, 0.6, 0.3]
//!     .iter()
//!     .map(|&busy| IdleSample { power_w: 7.0 + 31.0 * busy, busy, seconds: 1.0 })
//!     .collect();
//! let idle = estimate_idle(&history).expect("an estimate");
//! assert!((idle.watts - 7.0).abs() < 1e-9 && idle.method == IdleMethod::Intercept);
//! ```

use serde::{Deserialize, Serialize};

/// Intervals fitted first: the most recent ones, so that a frequency or power-limit change,
/// which moves the whole line, leaves the fit within this many intervals.
pub const FIT_WINDOW: usize = 60;
/// Fewer intervals than this are no fit (two points always make a line, noise included).
pub const MIN_FIT_SAMPLES: usize = 3;
/// Busy shares of the fitted intervals must span at least this much: the intercept of a line
/// through intervals of nearly one busy level is mostly noise.
pub const MIN_BUSY_SPREAD: f64 = 0.1;
/// An interval at most this busy is a quiet one: the percentile fallback uses only those, and a
/// fit with none of them extrapolates too far to be trusted ([`IdleMethod::Extrapolated`]).
pub const LOW_ACTIVITY: f64 = 0.2;
/// The percentile of quiet intervals' power used by the fallback.
const FALLBACK_PERCENTILE: f64 = 0.1;

/// One interval of one domain, as the idle estimate sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdleSample {
    /// Measured energy over the interval's duration.
    pub power_w: f64,
    /// Share of the domain's CPUs busy over the interval (0–1).
    pub busy: f64,
    /// The interval's duration: how much its power can be trusted.
    pub seconds: f64,
}

/// Intervals shorter than this share of the longest one are left out: an energy reading is off
/// by about as many joules whatever the interval's length (counter update period, a
/// reading a few ms stale), so the power of a short one — the partial last interval of a run —
/// is mostly that error. One at 5.6 W for a true 8.7 W pulled the lowest power, and so the
/// intercept, 1.6 W down in a test run, and that was the figure saved at exit.
const SHORT_INTERVAL: f64 = 0.5;

/// How an online idle figure was made (the machine record's `idle_method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleMethod {
    /// Intercept of power against busy share over recent intervals, some of them quiet.
    Intercept,
    /// Intercept extrapolated from intervals that were all more than 20 % busy (a machine never
    /// seen quiet): weak, and never saved for later commands.
    Extrapolated,
    /// 10th percentile of the power of intervals at most 20 % busy: too few distinct busy levels
    /// seen yet for a fit. Reads high by the background's active power.
    Percentile,
}

/// An idle power and how it was made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdleEstimate {
    /// Watts at zero busy.
    pub watts: f64,
    /// How `watts` was made.
    pub method: IdleMethod,
}

impl IdleEstimate {
    /// Whether the figure rests on an extrapolation far from any quiet interval.
    pub fn is_weak(&self) -> bool {
        self.method == IdleMethod::Extrapolated
    }
}

/// The idle power of one domain from its intervals, oldest first; `None` when nothing can be said
/// (no quiet interval and no usable fit).
///
/// In order of preference: a fit over the last [`FIT_WINDOW`] intervals, else over all of
/// `history`, that includes a quiet interval; the percentile of quiet intervals; a fit without a
/// quiet interval (weak).
pub fn estimate_idle(history: &[IdleSample]) -> Option<IdleEstimate> {
    // A zero-length interval falls to the short-interval rule below.
    let usable =
        |s: &&IdleSample| s.power_w.is_finite() && s.busy.is_finite() && s.seconds.is_finite();
    let longest = history
        .iter()
        .filter(usable)
        .map(|s| s.seconds)
        .fold(0.0, f64::max);
    let history: Vec<(f64, f64)> = history
        .iter()
        .filter(usable)
        .filter(|s| s.seconds >= SHORT_INTERVAL * longest)
        .map(|s| (s.power_w, s.busy))
        .collect();
    let recent = &history[history.len().saturating_sub(FIT_WINDOW)..];
    let recent_fit = fit_intercept(recent);
    let whole_fit = fit_intercept(&history);
    let strong = |fit: &Option<IdleEstimate>| fit.filter(|f| !f.is_weak());
    strong(&recent_fit)
        .or(strong(&whole_fit))
        .or_else(|| quiet_percentile(&history))
        .or(recent_fit)
        .or(whole_fit)
}

/// Least squares `P = b + w·busy` over `samples`, `b` clamped to [0, lowest power seen]: the
/// machine cannot idle above what it drew at some busy share, nor below nothing. `None` with
/// too few samples, too little spread in busy share, or power not rising with busy (no line to
/// read idle from, e.g. two power regimes mixed). Two parameters have a closed form, so the
/// NNLS of `smartwatts` is not needed here.
fn fit_intercept(samples: &[(f64, f64)]) -> Option<IdleEstimate> {
    if samples.len() < MIN_FIT_SAMPLES {
        return None;
    }
    let (min_busy, max_busy) = samples
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, b)| {
            (lo.min(*b), hi.max(*b))
        });
    if max_busy - min_busy < MIN_BUSY_SPREAD {
        return None;
    }
    let n = samples.len() as f64;
    let mean_busy = samples.iter().map(|(_, b)| b).sum::<f64>() / n;
    let mean_power = samples.iter().map(|(w, _)| w).sum::<f64>() / n;
    let (covariance, variance) = samples.iter().fold((0.0, 0.0), |(c, v), (w, b)| {
        let db = b - mean_busy;
        (c + db * (w - mean_power), v + db * db)
    });
    let slope = covariance / variance;
    if !slope.is_finite() || slope <= 0.0 {
        return None;
    }
    let min_power = samples
        .iter()
        .map(|(w, _)| *w)
        .fold(f64::INFINITY, f64::min);
    let watts = (mean_power - slope * mean_busy).clamp(0.0, min_power.max(0.0));
    let method = if min_busy <= LOW_ACTIVITY {
        IdleMethod::Intercept
    } else {
        IdleMethod::Extrapolated
    };
    Some(IdleEstimate { watts, method })
}

/// The 10th percentile of the power of intervals at most [`LOW_ACTIVITY`] busy.
fn quiet_percentile(history: &[(f64, f64)]) -> Option<IdleEstimate> {
    let mut quiet: Vec<f64> = history
        .iter()
        .filter(|(_, b)| *b <= LOW_ACTIVITY)
        .map(|(w, _)| *w)
        .collect();
    if quiet.is_empty() {
        return None;
    }
    quiet.sort_by(|a, b| a.total_cmp(b));
    let index = ((quiet.len() - 1) as f64 * FALLBACK_PERCENTILE).round() as usize;
    quiet.get(index).map(|&watts| IdleEstimate {
        watts,
        method: IdleMethod::Percentile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample((power_w, busy): (f64, f64)) -> IdleSample {
        IdleSample {
            power_w,
            busy,
            seconds: 1.0,
        }
    }

    /// 1 s intervals of (power, busy).
    fn samples(pairs: &[(f64, f64)]) -> Vec<IdleSample> {
        pairs.iter().copied().map(sample).collect()
    }

    /// 1 s intervals at `b + w × busy` for each busy share.
    fn line(b: f64, w: f64, busy: &[f64]) -> Vec<IdleSample> {
        busy.iter().map(|&x| sample((b + w * x, x))).collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn the_intercept_is_idle_even_when_no_interval_is_idle() {
        // The reference machine: 7 W + 31 W × busy, its quiet intervals 1–6 % busy (whose p10
        // read ~7.5 W), then a workload.
        let busy = [0.03, 0.01, 0.06, 0.02, 0.04, 0.55, 0.62, 0.48, 0.05, 0.03];
        let est = estimate_idle(&line(7.0, 31.0, &busy)).expect("estimate");
        assert!(close(est.watts, 7.0, 1e-9), "{est:?}");
        assert_eq!(est.method, IdleMethod::Intercept);
        assert!(!est.is_weak());
    }

    #[test]
    fn noise_moves_the_intercept_little() {
        // ±0.3 W of alternating noise over 40 intervals from 1 % to 79 % busy.
        let history: Vec<IdleSample> = (0..40)
            .map(|i| {
                let b = 0.01 + 0.02 * f64::from(i);
                let noise = if i % 2 == 0 { 0.3 } else { -0.3 };
                sample((7.0 + 31.0 * b + noise, b))
            })
            .collect();
        let est = estimate_idle(&history).expect("estimate");
        assert!(close(est.watts, 7.0, 0.1), "{est:?}");
    }

    #[test]
    fn too_few_busy_levels_fall_back_to_the_percentile_of_quiet_intervals() {
        // 1–6 % busy only (a spread of 0.05): p10 of 10…19 W in the order given is 11 W.
        let mut history: Vec<IdleSample> = (0..10)
            .map(|i| sample((10.0 + f64::from(i), 0.01 + 0.005 * f64::from(i))))
            .collect();
        history.swap(0, 7);
        let est = estimate_idle(&history).expect("estimate");
        assert_eq!(
            est,
            IdleEstimate {
                watts: 11.0,
                method: IdleMethod::Percentile
            }
        );
        // A spread just under the minimum is still no fit; at the minimum it is one.
        let under = line(7.0, 31.0, &[0.0, 0.05, MIN_BUSY_SPREAD - 1e-6]);
        assert_eq!(
            estimate_idle(&under).map(|e| e.method),
            Some(IdleMethod::Percentile)
        );
        let at = line(7.0, 31.0, &[0.0, 0.05, MIN_BUSY_SPREAD]);
        let est = estimate_idle(&at).expect("estimate");
        assert_eq!(est.method, IdleMethod::Intercept);
        assert!(close(est.watts, 7.0, 1e-9));
        // Two points are no fit, however far apart: the percentile of the quiet one.
        let two = line(7.0, 31.0, &[0.05, 0.9]);
        assert_eq!(
            estimate_idle(&two),
            Some(IdleEstimate {
                watts: 7.0 + 31.0 * 0.05,
                method: IdleMethod::Percentile
            })
        );
    }

    #[test]
    fn the_percentile_counts_only_intervals_at_most_20_percent_busy() {
        // Flat power (no line): 21 quiet intervals at 10…30 W (the lowest exactly 20 % busy),
        // and one 21 % busy at 2 W that must not count. p10 of 21 is the 3rd smallest: 12 W
        // (13 W if the one at 20 % did not count).
        let mut history: Vec<IdleSample> = (10..=30)
            .map(|w| sample((f64::from(w), if w == 10 { 0.2 } else { 0.15 })))
            .collect();
        history.swap(0, 17);
        history.push(sample((2.0, 0.21)));
        let est = estimate_idle(&history).expect("estimate");
        assert_eq!((est.watts, est.method), (12.0, IdleMethod::Percentile));
        // Of 5 values, p10 is the smallest (rank 0.4 → 0).
        let five = [3.0, 1.0, 5.0, 2.0, 4.0].map(|w| sample((w, 0.1)));
        assert_eq!(estimate_idle(&five).map(|e| e.watts), Some(1.0));
        assert_eq!(estimate_idle(&[]), None);
    }

    #[test]
    fn a_machine_never_quiet_gets_a_weak_extrapolation() {
        // Always 50–90 % busy: the intercept is 7 W, but read 50 points of busy share away.
        let history = line(7.0, 31.0, &[0.5, 0.7, 0.9, 0.6, 0.8]);
        let est = estimate_idle(&history).expect("estimate");
        assert!(close(est.watts, 7.0, 1e-9), "{est:?}");
        assert_eq!(est.method, IdleMethod::Extrapolated);
        assert!(est.is_weak());
        // Just above the quiet bound is still weak; at it, not.
        let edge = line(7.0, 31.0, &[LOW_ACTIVITY + 1e-6, 0.5, 0.9]);
        assert!(estimate_idle(&edge).is_some_and(|e| e.is_weak()));
        let edge = line(7.0, 31.0, &[LOW_ACTIVITY, 0.5, 0.9]);
        assert!(estimate_idle(&edge).is_some_and(|e| !e.is_weak()));
        // Busy levels that varied only long ago: the whole history's extrapolation, still weak.
        let mut history = line(7.0, 31.0, &[0.5, 0.9]);
        history.extend(line(7.0, 31.0, &[0.6; FIT_WINDOW]));
        let est = estimate_idle(&history).expect("estimate");
        assert_eq!(est.method, IdleMethod::Extrapolated);
        assert!(close(est.watts, 7.0, 1e-9), "{est:?}");
        // Never quiet and always equally busy: nothing to say.
        assert_eq!(estimate_idle(&line(7.0, 31.0, &[0.6, 0.62, 0.61])), None);
    }

    #[test]
    fn a_quiet_interval_anywhere_in_the_history_beats_a_weak_recent_fit() {
        // Quiet intervals long ago, then FIT_WINDOW busy ones: the whole history's fit.
        let mut busy: Vec<f64> = vec![0.02, 0.04, 0.03];
        busy.extend((0..FIT_WINDOW).map(|i| 0.5 + 0.4 * (i % 5) as f64 / 4.0));
        let est = estimate_idle(&line(6.0, 20.0, &busy)).expect("estimate");
        assert_eq!(est.method, IdleMethod::Intercept);
        assert!(close(est.watts, 6.0, 1e-9), "{est:?}");
        // Then FIT_WINDOW busy intervals all alike: the recent window has no spread to fit,
        // the whole history has, and a quiet interval.
        let mut flat = samples(&[(8.0, 0.03), (8.5, 0.05)]);
        flat.extend(std::iter::repeat_n(sample((25.0, 0.6)), FIT_WINDOW));
        let est = estimate_idle(&flat).expect("estimate");
        assert_eq!(est.method, IdleMethod::Intercept);
    }

    #[test]
    fn a_change_of_power_regime_leaves_the_fit_within_the_window() {
        // 7 W + 31 W × busy, then a lower frequency: 5 W + 20 W × busy.
        let levels = [0.03, 0.05, 0.6, 0.3, 0.02, 0.8];
        let busy: Vec<f64> = levels.iter().cycle().take(120).copied().collect();
        let mut history = line(7.0, 31.0, &busy);
        let est = estimate_idle(&history).expect("estimate");
        assert!(close(est.watts, 7.0, 1e-9));
        for (i, s) in line(5.0, 20.0, &busy[..FIT_WINDOW]).into_iter().enumerate() {
            history.push(s);
            let est = estimate_idle(&history).expect("estimate");
            // Meanwhile never below nothing nor above the lowest power in the window.
            let window = &history[history.len() - FIT_WINDOW..];
            let min_power = window
                .iter()
                .map(|s| s.power_w)
                .fold(f64::INFINITY, f64::min);
            assert!(
                est.watts >= 0.0 && est.watts <= min_power,
                "after {i}: {est:?}"
            );
        }
        let est = estimate_idle(&history).expect("estimate");
        assert!(close(est.watts, 5.0, 1e-9), "{est:?}");
        // The window is the last FIT_WINDOW intervals: one old-regime interval left in it
        // still pulls the fit off 5 W.
        history.remove(history.len() - 1);
        let est = estimate_idle(&history).expect("estimate");
        assert!(!close(est.watts, 5.0, 1e-6), "{est:?}");
    }

    #[test]
    fn power_falling_with_busy_is_no_line_and_a_high_intercept_is_clamped() {
        // Quiet at 20 W then busy at 10 W (a power cap applied meanwhile): the slope is
        // negative, so no fit; the percentile of the quiet intervals.
        let history = samples(&[(20.0, 0.02), (20.0, 0.04), (10.0, 0.6), (10.0, 0.7)]);
        assert_eq!(
            estimate_idle(&history),
            Some(IdleEstimate {
                watts: 20.0,
                method: IdleMethod::Percentile
            })
        );
        // Flat power is no line either.
        let flat = samples(&[(9.0, 0.02), (9.0, 0.5), (9.0, 0.9)]);
        assert_eq!(
            estimate_idle(&flat).map(|e| e.method),
            Some(IdleMethod::Percentile)
        );
        // A concave cloud whose line meets zero busy above the lowest power: clamped to it.
        let concave = samples(&[(5.0, 0.0), (30.0, 0.3), (31.0, 0.6), (32.0, 0.9)]);
        let est = estimate_idle(&concave).expect("estimate");
        assert_eq!((est.watts, est.method), (5.0, IdleMethod::Intercept));
        // A convex one whose line meets zero busy below 0 W: clamped to 0.
        let convex = samples(&[(1.0, 0.0), (1.0, 0.1), (1.0, 0.2), (60.0, 0.9)]);
        let est = estimate_idle(&convex).expect("estimate");
        assert_eq!((est.watts, est.method), (0.0, IdleMethod::Intercept));
    }

    #[test]
    fn non_finite_intervals_are_ignored() {
        let mut history = line(7.0, 31.0, &[0.02, 0.5, 0.9]);
        history.push(sample((f64::NAN, 0.1)));
        history.push(sample((8.0, f64::INFINITY)));
        history.push(IdleSample {
            seconds: f64::INFINITY,
            ..sample((8.0, 0.1))
        });
        history.push(IdleSample {
            seconds: 0.0,
            ..sample((1.0, 0.1))
        });
        let est = estimate_idle(&history).expect("estimate");
        assert!(close(est.watts, 7.0, 1e-9), "{est:?}");
    }

    #[test]
    fn intervals_much_shorter_than_the_longest_are_left_out() {
        // 2 s intervals, and a run's partial last one, 0.9 s long, whose reading was stale:
        // 5.6 W at 5 % busy on a 7 W + 31 W × busy line. Kept, it would clamp idle to 5.6 W.
        let mut history: Vec<IdleSample> = line(7.0, 31.0, &[0.03, 0.02, 0.6, 0.5, 0.04])
            .into_iter()
            .map(|s| IdleSample { seconds: 2.0, ..s })
            .collect();
        let short = IdleSample {
            power_w: 5.6,
            busy: 0.05,
            seconds: 0.9,
        };
        history.push(short);
        let est = estimate_idle(&history).expect("estimate");
        assert!(close(est.watts, 7.0, 1e-9), "{est:?}");
        // Half as long as the longest still counts (its power then clamps the intercept).
        history.push(IdleSample {
            seconds: SHORT_INTERVAL * 2.0,
            ..short
        });
        let est = estimate_idle(&history).expect("estimate");
        assert_eq!(est.watts, 5.6);
        // The percentile fallback leaves it out too.
        let quiet = vec![
            sample((8.0, 0.03)),
            IdleSample {
                seconds: 0.4,
                ..sample((1.0, 0.03))
            },
        ];
        assert_eq!(estimate_idle(&quiet).map(|e| e.watts), Some(8.0));
    }
}
