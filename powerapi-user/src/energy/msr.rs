//! RAPL straight from model-specific registers (`/dev/cpu/N/msr`), for kernels without the perf
//! PMU or powercap. Energy fields are 32 bits wide and wrap in minutes; [`super::EnergyMeter`]
//! handles that with `range = 2³²`.

use std::{fs::File, os::unix::fs::FileExt, path::Path, process::Command};

use super::{CounterSource, CounterValue, Domain, DomainKey, EnergyError, Reading, read_text};
use crate::topology::Cpu;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
}

/// The unit register and the energy-status registers of a vendor.
pub struct Layout {
    pub unit: u64,
    pub registers: &'static [(Domain, u64)],
}

pub const INTEL: Layout = Layout {
    unit: 0x606,
    registers: &[
        (Domain::Package, 0x611),
        (Domain::Core, 0x639),
        (Domain::Gpu, 0x641),
        (Domain::Dram, 0x619),
        (Domain::Psys, 0x64D),
    ],
};

/// AMD Fam17h+: the per-core register 0xC001029A is left out (it would need one reader per core).
pub const AMD: Layout = Layout {
    unit: 0xC001_0299,
    registers: &[(Domain::Package, 0xC001_029B)],
};

/// `vendor_id : GenuineIntel` in `/proc/cpuinfo` text.
pub fn parse_vendor(cpuinfo: &str) -> Option<Vendor> {
    let vendor = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id")?.split(':').nth(1))?
        .trim();
    match vendor {
        "GenuineIntel" => Some(Vendor::Intel),
        "AuthenticAMD" | "HygonGenuine" => Some(Vendor::Amd),
        _ => None,
    }
}

/// Joules per count from the power-unit register: the energy status unit is bits 12:8, 1/2^ESU J.
pub fn joules_per_unit(unit_register: u64) -> f64 {
    let esu = (unit_register >> 8) & 0x1f;
    1.0 / (1u64 << esu) as f64
}

struct Reader {
    key: DomainKey,
    register: u64,
    file: File,
}

pub struct Msr {
    readers: Vec<Reader>,
    joules_per_unit: f64,
}

fn read_msr(file: &File, register: u64) -> std::io::Result<u64> {
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, register)?;
    Ok(u64::from_ne_bytes(buf))
}

impl Msr {
    pub fn open(cpus: &[Cpu]) -> Result<Self, EnergyError> {
        // The CPU vendor is the same inside a container; /proc may not be under `root`.
        let vendor = parse_vendor(&read_text(Path::new("/proc/cpuinfo"))?).ok_or_else(|| {
            EnergyError::Unavailable("RAPL MSRs are known only on Intel and AMD CPUs".into())
        })?;
        let layout = if vendor == Vendor::Intel {
            &INTEL
        } else {
            &AMD
        };
        // Device nodes are this system's own, whatever --sysfs-root says.
        let dev = Path::new("/dev/cpu");
        if !dev.join("0/msr").exists() {
            // Loading the module is harmless when allowed and answers the question definitively.
            // Its complaint is not ours to print: a missing device file is said below, with
            // what to do, when the MSR source was asked for.
            let _ = Command::new("modprobe")
                .arg("msr")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        let mut sockets: Vec<&Cpu> = Vec::new();
        for cpu in cpus {
            if !sockets.iter().any(|c| c.socket == cpu.socket) {
                sockets.push(cpu);
            }
        }
        let mut readers = Vec::new();
        let mut joules = None;
        for cpu in sockets {
            let path = dev.join(format!("{}/msr", cpu.id));
            let file = File::open(&path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => EnergyError::Unavailable(format!(
                    "{} is missing: `modprobe msr` as root (VMs usually have no RAPL MSRs)",
                    path.display()
                )),
                std::io::ErrorKind::PermissionDenied => EnergyError::PermissionDenied {
                    path: path.display().to_string(),
                },
                _ => EnergyError::Read {
                    path: path.display().to_string(),
                    source,
                },
            })?;
            let unit = read_msr(&file, layout.unit).map_err(|_| {
                EnergyError::Unavailable(format!(
                    "this CPU has no RAPL unit register (MSR {:#x})",
                    layout.unit
                ))
            })?;
            joules.get_or_insert(joules_per_unit(unit));
            for &(domain, register) in layout.registers {
                if domain == Domain::Psys && cpu.socket != 0 {
                    continue;
                }
                // A register the part lacks fails to read (EIO): that domain does not exist here.
                if read_msr(&file, register).is_ok() {
                    let file = file.try_clone().map_err(|source| EnergyError::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                    readers.push(Reader {
                        key: DomainKey {
                            domain,
                            socket: cpu.socket,
                        },
                        register,
                        file,
                    });
                }
            }
        }
        match joules {
            Some(joules_per_unit) if !readers.is_empty() => Ok(Self {
                readers,
                joules_per_unit,
            }),
            _ => Err(EnergyError::Unavailable(
                "no readable RAPL energy MSR".into(),
            )),
        }
    }
}

impl CounterSource for Msr {
    fn name(&self) -> &str {
        "msr"
    }

    fn read(&mut self) -> Vec<Reading> {
        self.readers
            .iter()
            .map(|r| {
                let raw = read_msr(&r.file, r.register).map_err(|source| {
                    (
                        r.key,
                        EnergyError::Read {
                            path: format!("MSR {:#x}", r.register),
                            source,
                        },
                    )
                })?;
                Ok(CounterValue {
                    key: r.key,
                    raw: raw & 0xffff_ffff,
                    range: Some(1 << 32),
                    joules_per_unit: self.joules_per_unit,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendors() {
        assert_eq!(
            parse_vendor("processor\t: 0\nvendor_id\t: GenuineIntel\n"),
            Some(Vendor::Intel)
        );
        assert_eq!(
            parse_vendor("vendor_id\t: AuthenticAMD\n"),
            Some(Vendor::Amd)
        );
        assert_eq!(parse_vendor("vendor_id\t: ARM\n"), None);
    }

    #[test]
    fn units() {
        // Intel default 0xA0E03: ESU = 14 → 61 µJ; AMD 0xA1003: ESU = 16 → 15.3 µJ.
        assert!((joules_per_unit(0xA0E03) - 6.103515625e-5).abs() < 1e-12);
        assert!((joules_per_unit(0xA1003) - 1.52587890625e-5).abs() < 1e-12);
    }

    #[test]
    fn layouts() {
        assert_eq!(INTEL.registers[0], (Domain::Package, 0x611));
        assert_eq!(AMD.registers, &[(Domain::Package, 0xC001_029B)]);
    }
}
