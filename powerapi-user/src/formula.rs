//! How an interval's active energy is split among tasks: the part of a pipeline users swap.
//!
//! A formula only gives weights. [`crate::attribution::Attribution`] takes idle out first (by
//! `--idle-policy`) and scales the weights to the active energy, so whatever a formula returns,
//! the shares of a domain add up with idle and unattributed energy to what was measured. A
//! formula cannot unbalance the books, and a user's formula needs no accounting of its own.

use crate::{
    attribution::Metric,
    delta::TaskDelta,
    energy::{Domain, DomainKey},
};

/// What a formula is asked to split: one domain on one socket, over one interval.
pub struct Split<'a> {
    /// Which domain on which socket.
    pub domain: DomainKey,
    /// Every task of the interval (idle tasks and other sockets' included; they get no share).
    pub tasks: &'a [TaskDelta],
    /// Names of the counter slots of [`TaskDelta::counters`].
    pub counters: &'a [String],
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
