//! Energy sources: RAPL through the perf `power` PMU, powercap sysfs or MSRs, or a labelled
//! linear model when there is no RAPL. Sources report raw cumulative counters; [`EnergyMeter`]
//! turns them into joules per interval and handles wraparound — here, once, for every source.

pub mod model;
pub mod msr;
pub mod perf_pmu;
pub mod powercap;

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::topology::Cpu;

/// A RAPL domain. Domains overlap: package ⊇ core + uncore, psys ⊇ package + dram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Package,
    Core,
    Uncore,
    Dram,
    /// Integrated graphics (RAPL PP1 / perf `energy-gpu`).
    Gpu,
    Psys,
}

impl Domain {
    pub const ALL: [Domain; 6] = [
        Domain::Package,
        Domain::Core,
        Domain::Uncore,
        Domain::Dram,
        Domain::Gpu,
        Domain::Psys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Domain::Package => "package",
            Domain::Core => "core",
            Domain::Uncore => "uncore",
            Domain::Dram => "dram",
            Domain::Gpu => "gpu",
            Domain::Psys => "psys",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The domains whose sum is "the power" of a task in one number (the `W` of `top`): package plus
/// DRAM, which do not overlap; else psys; else whatever was measured.
pub fn headline_domains(measured: &[Domain]) -> Vec<Domain> {
    if measured.contains(&Domain::Package) {
        [Domain::Package, Domain::Dram]
            .into_iter()
            .filter(|d| measured.contains(d))
            .collect()
    } else if measured.contains(&Domain::Psys) {
        vec![Domain::Psys]
    } else {
        measured.to_vec()
    }
}

/// Where an energy figure comes from: a domain on a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DomainKey {
    pub domain: Domain,
    pub socket: u32,
}

/// One raw cumulative counter as a source read it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CounterValue {
    pub key: DomainKey,
    pub raw: u64,
    /// The counter wraps to 0 after this value (powercap `max_energy_range_uj`, 2³² for MSRs);
    /// `None` for 64-bit counters (perf), which are treated as modular 2⁶⁴.
    pub range: Option<u64>,
    pub joules_per_unit: f64,
}

/// Joules per domain and socket over one interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnergySample {
    /// `perf`, `powercap`, `powercap-dir`, `msr` or `model`.
    pub source: String,
    /// True for the model: every figure derived from it must be labelled estimated.
    pub estimated: bool,
    pub domains: Vec<(DomainKey, f64)>,
    /// The model's own idle power per key (watts), when the source knows it.
    pub known_idle_w: Vec<(DomainKey, f64)>,
}

#[derive(Debug, Error)]
pub enum EnergyError {
    #[error(
        "cannot read {path}: permission denied; energy_uj is root-only since Linux 5.10 (PLATYPUS): run as root, and in Docker unmask /sys/devices/virtual/powercap"
    )]
    PermissionDenied { path: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("{0}")]
    Unavailable(String),
    /// Options that contradict each other or the machine.
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot open perf event {event} on CPU {cpu}: {source}; run as root or with CAP_PERFMON"
    )]
    PerfOpen {
        event: String,
        cpu: u32,
        source: std::io::Error,
    },
}

pub(crate) fn read_text(path: &Path) -> Result<String, EnergyError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            EnergyError::PermissionDenied {
                path: path.display().to_string(),
            }
        } else {
            EnergyError::Read {
                path: path.display().to_string(),
                source,
            }
        }
    })
}

/// A hardware source of cumulative energy counters.
pub trait CounterSource: Send {
    fn name(&self) -> &str;
    fn read(&mut self) -> Result<Vec<CounterValue>, EnergyError>;
}

/// Units since the previous reading, with wraparound: a counter that went down wrapped once at
/// `range` (the reader must sample faster than the wrap period, minutes even at high power).
pub fn counter_delta(previous: u64, current: u64, range: Option<u64>) -> u64 {
    match range {
        Some(range) if current < previous => range.saturating_sub(previous).saturating_add(current),
        Some(_) => current - previous,
        None => current.wrapping_sub(previous),
    }
}

/// Turns a counter source's readings into per-interval joules.
pub struct EnergyMeter {
    source: Box<dyn CounterSource>,
    previous: HashMap<DomainKey, u64>,
}

impl EnergyMeter {
    pub fn new(mut source: Box<dyn CounterSource>) -> Result<Self, EnergyError> {
        let previous = source.read()?.into_iter().map(|c| (c.key, c.raw)).collect();
        Ok(Self { source, previous })
    }

    pub fn sample(&mut self) -> Result<EnergySample, EnergyError> {
        let mut domains = Vec::new();
        for value in self.source.read()? {
            if let Some(previous) = self.previous.insert(value.key, value.raw) {
                let units = counter_delta(previous, value.raw, value.range);
                domains.push((value.key, units as f64 * value.joules_per_unit));
            }
        }
        domains.sort_by_key(|(k, _)| *k);
        Ok(EnergySample {
            source: self.source.name().to_string(),
            estimated: false,
            domains,
            known_idle_w: Vec::new(),
        })
    }
}

/// `--energy-source`.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// perf PMU, else powercap, else MSR, else the model (with a warning).
    Auto,
    Perf,
    Powercap,
    /// A powercap-shaped directory that a host writes for its guest.
    PowercapDir(PathBuf),
    Msr,
    Model,
    /// CPU time and counters only.
    None,
}

impl FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Self::Auto,
            "perf" => Self::Perf,
            "powercap" => Self::Powercap,
            "msr" => Self::Msr,
            "model" => Self::Model,
            "none" => Self::None,
            _ => match s.strip_prefix("powercap-dir:") {
                Some(path) if !path.is_empty() => Self::PowercapDir(PathBuf::from(path)),
                _ => {
                    return Err(format!(
                        "unknown energy source {s:?}: use auto, perf, powercap, powercap-dir:PATH, msr, model or none"
                    ));
                }
            },
        })
    }
}

/// Model coefficients (`--idle-watts`, `--max-watts`) and the CPUs they cover.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub idle_watts: Option<f64>,
    pub max_watts: Option<f64>,
}

/// The energy input of a pipeline: a measured source or the model.
pub enum EnergySource {
    Measured(EnergyMeter),
    Model(model::LinearModel),
}

impl EnergySource {
    /// Opens the source `spec` asks for (`None` for [`SourceSpec::None`]). `Auto` falls back in
    /// order and, at the end, to the model; the returned note says so, for the user.
    pub fn open(
        spec: &SourceSpec,
        root: &Path,
        cpus: &[Cpu],
        model: &ModelConfig,
    ) -> Result<(Option<Self>, Option<String>), EnergyError> {
        if *spec == SourceSpec::None {
            return Ok((None, None));
        }
        let (source, note) = Self::open_some(spec, root, cpus, model)?;
        Ok((Some(source), note))
    }

    fn open_some(
        spec: &SourceSpec,
        root: &Path,
        cpus: &[Cpu],
        model: &ModelConfig,
    ) -> Result<(Self, Option<String>), EnergyError> {
        let measured = |spec: &SourceSpec| -> Result<Self, EnergyError> {
            let source: Box<dyn CounterSource> = match spec {
                SourceSpec::Perf => Box::new(perf_pmu::PerfPmu::open(root, cpus)?),
                SourceSpec::Powercap => Box::new(powercap::Powercap::open(
                    &root.join("sys/class/powercap"),
                    "powercap",
                )?),
                SourceSpec::PowercapDir(dir) => {
                    Box::new(powercap::Powercap::open(dir, "powercap-dir")?)
                }
                _ => Box::new(msr::Msr::open(cpus)?),
            };
            Ok(Self::Measured(EnergyMeter::new(source)?))
        };
        match spec {
            SourceSpec::Model | SourceSpec::None => Ok((
                Self::Model(model::LinearModel::new(
                    cpus,
                    model.idle_watts,
                    model.max_watts,
                )?),
                None,
            )),
            SourceSpec::Auto => {
                let mut reasons: Vec<String> = Vec::new();
                for (name, candidate) in [
                    ("perf", SourceSpec::Perf),
                    ("powercap", SourceSpec::Powercap),
                    ("msr", SourceSpec::Msr),
                ] {
                    match measured(&candidate) {
                        Ok(source) => return Ok((source, None)),
                        // Absent is the normal VM case; present but failing is worth saying.
                        Err(EnergyError::Unavailable(_)) => {}
                        Err(e) => reasons.push(format!("{name}: {e}")),
                    }
                }
                let why = if reasons.is_empty() {
                    "none here".to_string()
                } else {
                    reasons.join("; ")
                };
                let (model, _) = Self::open_some(&SourceSpec::Model, root, cpus, model)?;
                Ok((
                    model,
                    Some(format!(
                        "no usable RAPL energy source ({why}): energy is ESTIMATED from CPU utilisation (--energy-source model)"
                    )),
                ))
            }
            other => Ok((measured(other)?, None)),
        }
    }

    /// Energy over the interval that just ended; `busy_ns_by_socket` feeds the model.
    pub fn sample(
        &mut self,
        duration_ns: u64,
        busy_ns_by_socket: &[(u32, u64)],
    ) -> Result<EnergySample, EnergyError> {
        match self {
            Self::Measured(meter) => meter.sample(),
            Self::Model(model) => Ok(model.sample(duration_ns, busy_ns_by_socket)),
        }
    }

    pub fn estimated(&self) -> bool {
        matches!(self, Self::Model(_))
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Measured(meter) => meter.source.name(),
            Self::Model(_) => "model",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headline() {
        assert_eq!(
            headline_domains(&[Domain::Psys, Domain::Dram, Domain::Package, Domain::Core]),
            vec![Domain::Package, Domain::Dram]
        );
        assert_eq!(headline_domains(&[Domain::Psys]), vec![Domain::Psys]);
        assert_eq!(headline_domains(&[Domain::Core]), vec![Domain::Core]);
    }

    #[test]
    fn wraparound() {
        assert_eq!(counter_delta(100, 150, Some(1000)), 50);
        assert_eq!(counter_delta(900, 50, Some(1000)), 150);
        assert_eq!(counter_delta(u32::MAX as u64 - 9, 10, Some(1 << 32)), 20);
        assert_eq!(counter_delta(u64::MAX - 4, 5, None), 10);
    }

    #[test]
    fn source_specs() {
        assert_eq!("model".parse(), Ok(SourceSpec::Model));
        assert_eq!(
            "powercap-dir:/x/y".parse(),
            Ok(SourceSpec::PowercapDir("/x/y".into()))
        );
        assert!("powercap-dir:".parse::<SourceSpec>().is_err());
        assert!("rapl".parse::<SourceSpec>().is_err());
    }
}
