//! powercap sysfs (`intel-rapl:*`, `intel-rapl-mmio:*`), also as a directory a host writes for a VM.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use super::{CounterSource, CounterValue, Domain, DomainKey, EnergyError, Reading, read_text};

#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    pub path: PathBuf,
    pub key: DomainKey,
    pub range_uj: u64,
    /// The largest `constraint_*_max_power_uw` the zone declares, if any.
    pub max_power_uw: Option<u64>,
}

/// A reading above this many times the zone's declared maximum power is not believed: bursts
/// above the long-term limit are real (PL2, PL4), five times the largest limit is not.
const BOUND_OVER_MAX_POWER: f64 = 5.0;

/// The largest positive `constraint_N_max_power_uw` of a zone (garbage and zeros ignored).
fn max_power_uw(dir: &Path) -> Option<u64> {
    (0..8)
        .filter_map(|n| fs::read_to_string(dir.join(format!("constraint_{n}_max_power_uw"))).ok())
        .filter_map(|t| t.trim().parse::<u64>().ok())
        .filter(|&uw| uw > 0)
        .max()
}

/// `package-1` → (Package, 1); `core`/`uncore`/`dram` take the socket of their parent package.
pub fn parse_zone_name(name: &str, parent_socket: Option<u32>) -> Option<DomainKey> {
    let name = name.trim();
    if let Some(n) = name.strip_prefix("package-") {
        return Some(DomainKey {
            domain: Domain::Package,
            socket: n.parse().ok()?,
        });
    }
    let domain = match name {
        "psys" => {
            return Some(DomainKey {
                domain: Domain::Psys,
                socket: 0,
            });
        }
        "core" => Domain::Core,
        "uncore" => Domain::Uncore,
        "dram" => Domain::Dram,
        _ => return None,
    };
    Some(DomainKey {
        domain,
        socket: parent_socket.unwrap_or(0),
    })
}

/// Finds the zones under `dir` (a `/sys/class/powercap`-shaped directory). Subzones are found
/// both as top-level entries (`intel-rapl:0:1`, as sysfs lists them) and nested in their parent
/// (as a hand-written directory may have them). `intel-rapl-mmio` zones are used only for what
/// the MSR-backed zones do not already provide, so nothing is counted twice.
pub fn discover(dir: &Path) -> Result<Vec<Zone>, EnergyError> {
    let entries = fs::read_dir(dir).map_err(|source| EnergyError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut zones: BTreeMap<DomainKey, Zone> = BTreeMap::new();
    // intel-rapl first, so that an mmio zone only fills a gap.
    for prefix in ["intel-rapl:", "intel-rapl-mmio:"] {
        let tops = names.iter().filter(|n| {
            n.strip_prefix(prefix)
                .is_some_and(|rest| !rest.contains(':'))
        });
        for name in tops {
            let zone_dir = dir.join(name);
            let Some(key) = read_zone(&zone_dir, None)? else {
                continue;
            };
            let sub_prefix = format!("{name}:");
            let mut subs: Vec<PathBuf> = names
                .iter()
                .filter(|n| n.starts_with(&sub_prefix))
                .map(|n| dir.join(n))
                .collect();
            if subs.is_empty() {
                subs = fs::read_dir(&zone_dir)
                    .map(|d| {
                        d.flatten()
                            .filter(|e| e.file_name().to_string_lossy().starts_with(&sub_prefix))
                            .map(|e| e.path())
                            .collect()
                    })
                    .unwrap_or_default();
            }
            let mut found = vec![(key, zone_dir)];
            for sub in subs {
                if let Some(sub_key) = read_zone(&sub, Some(key.socket))? {
                    found.push((sub_key, sub));
                }
            }
            for (key, path) in found {
                let range_uj = read_text(&path.join("max_energy_range_uj"))
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(u64::MAX);
                zones.entry(key).or_insert(Zone {
                    max_power_uw: max_power_uw(&path),
                    path,
                    key,
                    range_uj,
                });
            }
        }
    }
    Ok(zones.into_values().collect())
}

fn read_zone(dir: &Path, parent_socket: Option<u32>) -> Result<Option<DomainKey>, EnergyError> {
    let name = match read_text(&dir.join("name")) {
        Ok(name) => name,
        Err(EnergyError::Read { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let enabled = fs::read_to_string(dir.join("enabled"))
        .map(|t| t.trim() != "0")
        .unwrap_or(true);
    Ok(parse_zone_name(&name, parent_socket).filter(|_| enabled))
}

pub struct Powercap {
    name: &'static str,
    zones: Vec<Zone>,
}

impl Powercap {
    pub fn open(dir: &Path, name: &'static str) -> Result<Self, EnergyError> {
        if !dir.exists() {
            return Err(EnergyError::Unavailable(format!(
                "{} does not exist (no powercap RAPL here; VMs and Docker's default mask hide it)",
                dir.display()
            )));
        }
        let zones = discover(dir)?;
        if zones.is_empty() {
            return Err(EnergyError::Unavailable(format!(
                "no intel-rapl zones under {}",
                dir.display()
            )));
        }
        let mut source = Self { name, zones };
        // Fail now on permissions, not mid-run; other read errors may pass (see EnergyMeter).
        for reading in source.read() {
            if let Err((_, e @ EnergyError::PermissionDenied { .. })) = reading {
                return Err(e);
            }
        }
        Ok(source)
    }

    #[cfg(test)]
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }
}

impl CounterSource for Powercap {
    fn name(&self) -> &str {
        self.name
    }

    fn read(&mut self) -> Vec<Reading> {
        self.zones
            .iter()
            .map(|zone| {
                let path = zone.path.join("energy_uj");
                let fail = |e| (zone.key, e);
                let text = read_text(&path).map_err(fail)?;
                let raw = text.trim().parse().map_err(|_| {
                    fail(EnergyError::Parse {
                        path: path.display().to_string(),
                        detail: format!("{:?} is not a number", text.trim()),
                    })
                })?;
                Ok(CounterValue {
                    key: zone.key,
                    raw,
                    range: Some(zone.range_uj),
                    joules_per_unit: 1e-6,
                })
            })
            .collect()
    }

    fn bound_watts(&self, key: DomainKey) -> Option<f64> {
        self.zones
            .iter()
            .find(|z| z.key == key)
            .and_then(|z| z.max_power_uw)
            .map(|uw| uw as f64 * 1e-6 * BOUND_OVER_MAX_POWER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/powercap")
            .join(name)
    }

    #[test]
    fn zone_names() {
        assert_eq!(
            parse_zone_name("package-1\n", None),
            Some(DomainKey {
                domain: Domain::Package,
                socket: 1
            })
        );
        assert_eq!(
            parse_zone_name("dram", Some(1)),
            Some(DomainKey {
                domain: Domain::Dram,
                socket: 1
            })
        );
        assert_eq!(
            parse_zone_name("psys", None),
            Some(DomainKey {
                domain: Domain::Psys,
                socket: 0
            })
        );
        assert_eq!(parse_zone_name("package-x", None), None);
        assert_eq!(parse_zone_name("gt", None), None);
    }

    #[test]
    fn the_declared_maximum_power_sets_the_bound() {
        // Package 0 declares 100 W (long term) and 0 and garbage elsewhere; package 1 nothing.
        let dir = std::env::temp_dir().join(format!("powerapi-bound-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for (zone, name) in [("intel-rapl:0", "package-0"), ("intel-rapl:1", "package-1")] {
            fs::create_dir_all(dir.join(zone)).expect("mkdir");
            fs::write(dir.join(zone).join("name"), format!("{name}\n")).expect("name");
            fs::write(dir.join(zone).join("energy_uj"), "1000\n").expect("energy");
        }
        let z0 = dir.join("intel-rapl:0");
        fs::write(z0.join("constraint_0_max_power_uw"), "100000000\n").expect("c0");
        fs::write(z0.join("constraint_1_max_power_uw"), "0\n").expect("c1");
        fs::write(z0.join("constraint_2_max_power_uw"), "lots\n").expect("c2");
        fs::write(z0.join("constraint_3_max_power_uw"), "60000000\n").expect("c3");
        let source = Powercap::open(&dir, "powercap-dir").expect("open");
        let pkg = |socket| DomainKey {
            domain: Domain::Package,
            socket,
        };
        assert_eq!(source.zones()[0].max_power_uw, Some(100_000_000));
        assert_eq!(source.bound_watts(pkg(0)), Some(500.0), "5 × 100 W");
        assert_eq!(source.bound_watts(pkg(1)), None, "the default applies");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_socket_server() {
        let zones = discover(&fixture("two-socket")).expect("fixture");
        let keys: Vec<_> = zones.iter().map(|z| (z.key.domain, z.key.socket)).collect();
        assert_eq!(
            keys,
            vec![
                (Domain::Package, 0),
                (Domain::Package, 1),
                (Domain::Dram, 0),
                (Domain::Dram, 1)
            ]
        );
        assert_eq!(zones[0].range_uj, 262143328850);
        let mut source = Powercap::open(&fixture("two-socket"), "powercap").expect("open");
        let values = super::super::first_error(source.read()).expect("read");
        assert_eq!(values[1].raw, 2000);
    }

    #[test]
    fn client_with_psys_and_mmio_duplicate() {
        let zones = discover(&fixture("client")).expect("fixture");
        let keys: Vec<_> = zones.iter().map(|z| (z.key.domain, z.key.socket)).collect();
        assert_eq!(
            keys,
            vec![
                (Domain::Package, 0),
                (Domain::Core, 0),
                (Domain::Uncore, 0),
                (Domain::Psys, 0)
            ]
        );
        // The package comes from intel-rapl, not the duplicate intel-rapl-mmio zone.
        assert!(zones[0].path.ends_with("intel-rapl:0"));
    }
}
