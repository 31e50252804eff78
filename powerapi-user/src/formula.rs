//! How an interval's active energy is split among tasks: the part of a pipeline users swap.
//!
//! A formula only gives weights. [`crate::attribution::Attribution`] takes idle out first (by
//! `--idle-policy`) and scales the weights to the active energy, so whatever a formula returns,
//! the shares of a domain add up with idle and unattributed energy to what was measured. A
//! formula cannot unbalance the books, and a user's formula needs no accounting of its own.

use serde::{Deserialize, Serialize};

use crate::{
    attribution::Metric,
    delta::TaskDelta,
    energy::{Domain, DomainKey},
    smartwatts::{ModelFit, SavedModel},
};

/// What a formula is asked to split: one domain on one socket, over one interval.
pub struct Split<'a> {
    /// Which domain on which socket.
    pub domain: DomainKey,
    /// Every task of the interval (idle tasks and other sockets' included; they get no share).
    pub tasks: &'a [TaskDelta],
    /// Names of the counter slots of [`TaskDelta::counters`].
    pub counters: &'a [String],
    /// The energy the domain measured over the interval, in joules.
    pub measured_j: f64,
    /// The interval's length.
    pub duration_ns: u64,
    /// The socket's average CPU frequency over the interval, when known.
    pub frequency_mhz: Option<f64>,
}

impl Split<'_> {
    /// Whether task `i` may get a share: not an idle task, and on the domain's socket (every
    /// socket for platform-wide domains).
    pub fn is_member(&self, i: usize) -> bool {
        let t = &self.tasks[i];
        !t.key.is_idle() && (self.domain.domain == Domain::Psys || t.socket == self.domain.socket)
    }
}

/// What a model-based formula says of one domain in one interval (in the machine record's
/// domain, under `formula`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FormulaNote {
    /// The formula that produced the weights (a model's fallback says so here).
    pub name: String,
    /// The frequency layer used (lower bound, MHz), when frequencies are known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_mhz: Option<u32>,
    /// True when the layer's model produced the weights.
    pub fitted: bool,
    /// The model's error on this interval (|measured − predicted| watts), or its fit error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_w: Option<f64>,
    /// Samples the layer holds.
    pub samples: usize,
}

/// Splits one domain's active energy in one interval among tasks, by weight.
pub trait Formula: Send {
    /// Recorded with the figures (`proportional`, …).
    fn name(&self) -> &str;

    /// Writes one weight per task (`out[i]` for `split.tasks[i]`; `out` starts zeroed) and
    /// returns what the weights measure, recorded as the domain's `metric`. Only tasks that ran
    /// on the domain's socket and are not idle get a share; a negative or non-finite weight
    /// counts as 0.
    fn weights(&mut self, split: &Split<'_>, out: &mut [f64]) -> String;

    /// The idle power of `domain` this interval, when the formula models it (a fitted
    /// intercept). Used unless `--idle-watts` or a baseline says otherwise.
    fn idle_watts(&self, _domain: DomainKey) -> Option<f64> {
        None
    }

    /// What to record about the weights of `domain` this interval.
    fn note(&self, _domain: DomainKey) -> Option<FormulaNote> {
        None
    }

    /// Models fitted since the last call (each becomes a `model` record).
    fn take_fits(&mut self) -> Vec<ModelFit> {
        Vec::new()
    }

    /// Every fitted model, for `--save-model` (`None`: nothing fitted, or not a model).
    fn saved_model(&self) -> Option<SavedModel> {
        None
    }
}

/// The formulas the command line and config files can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormulaKind {
    /// Active energy by a usage metric (cycles when counted, else on-CPU time).
    #[default]
    Proportional,
    /// A power model per CPU frequency layer, fitted online against the measured energy.
    Smartwatts,
}

/// Today's default: shares in proportion to a usage metric: cycles (or instructions) when
/// counted, else on-CPU time; DRAM by LLC misses when counted; psys and GPU by on-CPU time.
#[derive(Clone, Debug, Default)]
pub struct Proportional {
    /// What active energy is shared by.
    pub metric: Metric,
}

impl Proportional {
    /// Which counter slot (if any) a domain is shared by, and its name.
    fn metric_for(&self, domain: Domain, counters: &[String]) -> (Option<usize>, &'static str) {
        let slot = |name: &str| counters.iter().position(|c| c == name);
        let cpu_time = (None, "cpu-time");
        match domain {
            Domain::Psys | Domain::Gpu => cpu_time,
            Domain::Dram if slot("llc-misses").is_some() => (slot("llc-misses"), "llc-misses"),
            _ => {
                let wanted = match self.metric {
                    Metric::Auto | Metric::Cycles => "cycles",
                    Metric::Instructions => "instructions",
                    Metric::CpuTime => return cpu_time,
                };
                match slot(wanted) {
                    Some(s) => (Some(s), wanted),
                    None => cpu_time,
                }
            }
        }
    }
}

impl Formula for Proportional {
    fn name(&self) -> &str {
        "proportional"
    }

    fn weights(&mut self, split: &Split<'_>, out: &mut [f64]) -> String {
        let (slot, name) = self.metric_for(split.domain.domain, split.counters);
        for (w, t) in out.iter_mut().zip(split.tasks) {
            *w = slot.map_or(t.on_cpu_ns as f64, |s| t.counters[s] as f64);
        }
        name.to_string()
    }
}
