//! RAPL through the perf `power` PMU (`/sys/bus/event_source/devices/power`): the kernel keeps
//! 64-bit counts, so wraparound is not a practical concern, and CAP_PERFMON is enough.

use std::{fs::File, io::Read, path::Path};

use super::{CounterSource, CounterValue, Domain, DomainKey, EnergyError, Reading, read_text};
use crate::{
    sensor::counters::open_cpu_event,
    topology::{Cpu, parse_cpu_list},
};

/// One event the PMU lists.
#[derive(Clone, Debug, PartialEq)]
pub struct PowerEvent {
    pub domain: Domain,
    pub name: String,
    pub config: u64,
    /// Joules per count (`energy-pkg.scale`, 2⁻³² on Intel and AMD).
    pub scale: f64,
}

/// `energy-pkg` → Package, …; AMD exposes `energy-pkg` (and on some parts `energy-core`).
pub fn domain_of_event(name: &str) -> Option<Domain> {
    Some(match name {
        "energy-pkg" => Domain::Package,
        "energy-cores" | "energy-core" => Domain::Core,
        "energy-ram" => Domain::Dram,
        "energy-gpu" => Domain::Gpu,
        "energy-psys" => Domain::Psys,
        _ => return None,
    })
}

/// `event=0x02` (possibly with other terms) → 2.
pub fn parse_event_config(text: &str) -> Option<u64> {
    text.trim().split(',').find_map(|term| {
        let value = term.trim().strip_prefix("event=")?;
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        }
    })
}

/// Reads the PMU description under `root`: its type, one CPU per socket, and its events.
pub fn describe(root: &Path) -> Result<(u32, Vec<u32>, Vec<PowerEvent>), EnergyError> {
    let dir = root.join("sys/bus/event_source/devices/power");
    if !dir.exists() {
        return Err(EnergyError::Unavailable(format!(
            "{} does not exist (no RAPL perf PMU: kernel without CONFIG_PERF_EVENTS_INTEL_RAPL/AMD support, or a VM)",
            dir.display()
        )));
    }
    let parse_err = |path: &Path, detail: &str| EnergyError::Parse {
        path: path.display().to_string(),
        detail: detail.into(),
    };
    let type_path = dir.join("type");
    let pmu_type = read_text(&type_path)?
        .trim()
        .parse()
        .map_err(|_| parse_err(&type_path, "not a number"))?;
    let mask_path = dir.join("cpumask");
    let cpus = parse_cpu_list(&read_text(&mask_path)?)
        .ok_or_else(|| parse_err(&mask_path, "not a CPU list"))?;
    let mut events = Vec::new();
    for domain in Domain::ALL {
        for name in [
            "energy-pkg",
            "energy-cores",
            "energy-core",
            "energy-ram",
            "energy-gpu",
            "energy-psys",
        ] {
            if domain_of_event(name) != Some(domain) {
                continue;
            }
            let path = dir.join("events").join(name);
            let Ok(text) = read_text(&path) else { continue };
            let config =
                parse_event_config(&text).ok_or_else(|| parse_err(&path, "no event= term"))?;
            let scale_path = dir.join("events").join(format!("{name}.scale"));
            let scale = read_text(&scale_path)?
                .trim()
                .parse()
                .map_err(|_| parse_err(&scale_path, "not a number"))?;
            events.push(PowerEvent {
                domain,
                name: name.to_string(),
                config,
                scale,
            });
        }
    }
    if events.is_empty() {
        return Err(EnergyError::Unavailable(format!(
            "no energy-* events under {}",
            dir.display()
        )));
    }
    Ok((pmu_type, cpus, events))
}

struct OpenEvent {
    key: DomainKey,
    scale: f64,
    file: File,
}

pub struct PerfPmu {
    events: Vec<OpenEvent>,
}

impl PerfPmu {
    pub fn open(root: &Path, cpus: &[Cpu]) -> Result<Self, EnergyError> {
        let (pmu_type, mask, events) = describe(root)?;
        let mut open = Vec::new();
        for event in &events {
            // psys is platform-wide: one reader, on the first CPU of the mask.
            let readers = if event.domain == Domain::Psys {
                &mask[..mask.len().min(1)]
            } else {
                &mask[..]
            };
            for &cpu in readers {
                let socket = cpus.iter().find(|c| c.id == cpu).map_or(0, |c| c.socket);
                let fd = open_cpu_event(pmu_type, event.config, cpu, 0).map_err(|source| {
                    EnergyError::PerfOpen {
                        event: event.name.clone(),
                        cpu,
                        source,
                    }
                })?;
                let file = File::from(fd);
                open.push(OpenEvent {
                    key: DomainKey {
                        domain: event.domain,
                        socket: if event.domain == Domain::Psys {
                            0
                        } else {
                            socket
                        },
                    },
                    scale: event.scale,
                    file,
                });
            }
        }
        Ok(Self { events: open })
    }
}

impl CounterSource for PerfPmu {
    fn name(&self) -> &str {
        "perf"
    }

    fn read(&mut self) -> Vec<Reading> {
        self.events
            .iter_mut()
            .map(|event| {
                let mut buf = [0u8; 8];
                event.file.read_exact(&mut buf).map_err(|source| {
                    (
                        event.key,
                        EnergyError::Read {
                            path: format!("perf power event ({})", event.key.domain),
                            source,
                        },
                    )
                })?;
                Ok(CounterValue {
                    key: event.key,
                    raw: u64::from_ne_bytes(buf),
                    range: None,
                    joules_per_unit: event.scale,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_intel_two_socket() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/perf-power/intel-2s");
        let (pmu_type, cpus, events) = describe(&root).expect("fixture");
        assert_eq!(pmu_type, 23);
        assert_eq!(cpus, vec![0, 36]);
        let names: Vec<_> = events.iter().map(|e| (e.domain, e.config)).collect();
        assert_eq!(
            names,
            vec![
                (Domain::Package, 2),
                (Domain::Core, 1),
                (Domain::Dram, 3),
                (Domain::Psys, 5)
            ]
        );
        assert!((events[0].scale - 2.328_306_436_538_696_3e-10).abs() < 1e-20);
    }

    #[test]
    fn parses_amd() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/perf-power/amd");
        let (_, cpus, events) = describe(&root).expect("fixture");
        assert_eq!(cpus, vec![0]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].domain, Domain::Package);
    }

    #[test]
    fn event_terms() {
        assert_eq!(parse_event_config("event=0x02\n"), Some(2));
        assert_eq!(parse_event_config("event=0x1b,umask=0x1"), Some(0x1b));
        assert_eq!(parse_event_config("umask=1"), None);
    }
}
