//! Each socket's CPU frequency, for the frequency layers of model-based formulas.
//!
//! Preferred: APERF/MPERF through the perf `msr` PMU, the interval's average frequency while the
//! CPUs ran (`TSC rate × ΔAPERF / ΔMPERF`, summed over the socket's CPUs). Else cpufreq's
//! `scaling_cur_freq`, averaged over the socket's CPUs at the end of the interval: the current
//! frequency, not the average (an interval that spent half its time boosted reads as whichever
//! it ended in). Where neither exists (this project's VMs: their `msr` PMU has only `tsc`, and
//! there is no cpufreq), every interval is one layer. The APERF/MPERF path could not be run
//! here: its arithmetic and its discovery are unit-tested, its perf events are not.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use crate::energy::perf_pmu::parse_event_config;

use crate::topology::Cpu;

/// Where each socket's frequency comes from.
#[derive(Debug)]
pub enum Frequencies {
    /// APERF/MPERF counting events on every CPU.
    Counters(AperfMperf),
    /// cpufreq files.
    Cpufreq(Cpufreq),
}

impl Frequencies {
    /// APERF/MPERF where the `msr` PMU has them and they open, else cpufreq, else `None`.
    pub fn open(root: &Path, cpus: &[Cpu]) -> Option<Self> {
        AperfMperf::open(root, cpus)
            .map(Self::Counters)
            .or_else(|| Cpufreq::open(root, cpus).map(Self::Cpufreq))
    }

    /// MHz per socket over (or at the end of) the interval since the last call.
    pub fn read(&mut self) -> Vec<(u32, f64)> {
        match self {
            Self::Counters(c) => c.read(),
            Self::Cpufreq(c) => c.read(),
        }
    }
}

/// The msr PMU's type and the configs of its `aperf`, `mperf` and `tsc` events, under `root`.
pub fn describe_msr(root: &Path) -> Option<(u32, [u64; 3])> {
    let dir = root.join("sys/bus/event_source/devices/msr");
    let pmu_type = std::fs::read_to_string(dir.join("type"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let config = |name: &str| {
        parse_event_config(&std::fs::read_to_string(dir.join("events").join(name)).ok()?)
    };
    Some((
        pmu_type,
        [config("aperf")?, config("mperf")?, config("tsc")?],
    ))
}

/// Average MHz per socket from per-CPU count deltas `(socket, ΔAPERF, ΔMPERF, ΔTSC)` over
/// `seconds`: the TSC rate times the socket's APERF/MPERF ratio. A socket whose CPUs never ran
/// (ΔMPERF 0) is absent.
pub fn average_mhz(deltas: &[(u32, u64, u64, u64)], seconds: f64) -> Vec<(u32, f64)> {
    let mut sums: Vec<(u32, f64, f64, f64, u32)> = Vec::new();
    for &(socket, aperf, mperf, tsc) in deltas {
        match sums.iter_mut().find(|s| s.0 == socket) {
            Some(s) => {
                s.1 += aperf as f64;
                s.2 += mperf as f64;
                s.3 += tsc as f64;
                s.4 += 1;
            }
            None => sums.push((socket, aperf as f64, mperf as f64, tsc as f64, 1)),
        }
    }
    sums.into_iter()
        .filter(|s| s.2 > 0.0 && seconds > 0.0)
        .map(|(socket, aperf, mperf, tsc, cpus)| {
            let tsc_hz = tsc / f64::from(cpus) / seconds;
            (socket, tsc_hz * aperf / mperf / 1e6)
        })
        .collect()
}

/// APERF, MPERF and TSC counting on every CPU.
#[derive(Debug)]
pub struct AperfMperf {
    cpus: Vec<(u32, [File; 3], Option<[u64; 3]>)>,
    last: std::time::Instant,
    /// A socket that did not run keeps its last frequency.
    previous: Vec<(u32, f64)>,
}

impl AperfMperf {
    fn open(root: &Path, cpus: &[Cpu]) -> Option<Self> {
        let (pmu_type, configs) = describe_msr(root)?;
        let mut open = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            let event = |config: u64| {
                crate::sensor::counters::open_cpu_event(pmu_type, config, cpu.id, 0)
                    .ok()
                    .map(File::from)
            };
            open.push((
                cpu.socket,
                [event(configs[0])?, event(configs[1])?, event(configs[2])?],
                None,
            ));
        }
        Some(Self {
            cpus: open,
            last: std::time::Instant::now(),
            previous: Vec::new(),
        })
    }

    fn read(&mut self) -> Vec<(u32, f64)> {
        let seconds = self.last.elapsed().as_secs_f64();
        self.last = std::time::Instant::now();
        let mut deltas = Vec::with_capacity(self.cpus.len());
        for (socket, files, previous) in &mut self.cpus {
            let mut now = [0u64; 3];
            let mut ok = true;
            for (value, file) in now.iter_mut().zip(files.iter_mut()) {
                let mut bytes = [0u8; 8];
                ok &= file.read_exact(&mut bytes).is_ok();
                *value = u64::from_ne_bytes(bytes);
            }
            if !ok {
                *previous = None;
                continue;
            }
            if let Some(before) = previous {
                deltas.push((
                    *socket,
                    now[0].wrapping_sub(before[0]),
                    now[1].wrapping_sub(before[1]),
                    now[2].wrapping_sub(before[2]),
                ));
            }
            *previous = Some(now);
        }
        for (socket, mhz) in average_mhz(&deltas, seconds) {
            match self.previous.iter_mut().find(|(s, _)| *s == socket) {
                Some(p) => p.1 = mhz,
                None => self.previous.push((socket, mhz)),
            }
        }
        self.previous.clone()
    }
}

/// Where each online CPU's cpufreq frequency is read.
#[derive(Clone, Debug)]
pub struct Cpufreq {
    files: Vec<(u32, PathBuf)>,
}

impl Cpufreq {
    /// `None` when no CPU of `cpus` has a cpufreq frequency under `root`.
    pub fn open(root: &Path, cpus: &[Cpu]) -> Option<Self> {
        let files: Vec<(u32, PathBuf)> = cpus
            .iter()
            .map(|c| {
                let dir = root.join(format!("sys/devices/system/cpu/cpu{}/cpufreq", c.id));
                (c.socket, dir.join("scaling_cur_freq"))
            })
            .filter(|(_, f)| f.exists())
            .collect();
        (!files.is_empty()).then_some(Self { files })
    }

    /// Average MHz per socket over the CPUs whose file reads as a frequency; a CPU whose file
    /// is gone (offline) or holds garbage is left out, a socket with none is absent.
    pub fn read(&self) -> Vec<(u32, f64)> {
        let mut sums: Vec<(u32, f64, u32)> = Vec::new();
        for (socket, file) in &self.files {
            let Some(khz) = std::fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse::<f64>().ok())
                .filter(|k| k.is_finite() && *k > 0.0)
            else {
                continue;
            };
            match sums.iter_mut().find(|(s, _, _)| s == socket) {
                Some((_, sum, n)) => {
                    *sum += khz / 1000.0;
                    *n += 1;
                }
                None => sums.push((*socket, khz / 1000.0, 1)),
            }
        }
        sums.into_iter()
            .map(|(s, sum, n)| (s, sum / f64::from(n)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aperf_mperf_give_the_average_frequency_while_running() {
        // 1 s, TSC at 2.5 GHz. Socket 0: one CPU at 1.2 × nominal while running, another at
        // 0.8 × for as long: 2.5 GHz overall. Socket 1 never ran.
        let deltas = [
            (0, 1_200_000_000, 1_000_000_000, 2_500_000_000),
            (0, 800_000_000, 1_000_000_000, 2_500_000_000),
            (1, 0, 0, 2_500_000_000),
        ];
        let mhz = average_mhz(&deltas, 1.0);
        assert_eq!(mhz.len(), 1);
        assert!((mhz[0].1 - 2500.0).abs() < 1e-9 && mhz[0].0 == 0, "{mhz:?}");
        let boosted = average_mhz(&[(0, 3_000_000_000, 2_000_000_000, 5_000_000_000)], 2.0);
        assert!((boosted[0].1 - 3750.0).abs() < 1e-9, "{boosted:?}");
        assert!(average_mhz(&deltas, 0.0).is_empty());
    }

    #[test]
    fn the_msr_pmu_is_used_only_with_all_three_events() {
        let root = std::env::temp_dir().join(format!("powerapi-msr-{}", std::process::id()));
        let dir = root.join("sys/bus/event_source/devices/msr");
        std::fs::create_dir_all(dir.join("events")).expect("mkdir");
        std::fs::write(dir.join("type"), "9\n").expect("type");
        std::fs::write(dir.join("events/tsc"), "event=0x00\n").expect("tsc");
        // This project's VMs: tsc only.
        assert_eq!(describe_msr(&root), None);
        std::fs::write(dir.join("events/aperf"), "event=0x02\n").expect("aperf");
        std::fs::write(dir.join("events/mperf"), "event=0x01\n").expect("mperf");
        assert_eq!(describe_msr(&root), Some((9, [2, 1, 0])));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn sockets_average_their_cpus_and_garbage_is_left_out() {
        let root = std::env::temp_dir().join(format!("powerapi-freq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (cpu, khz) in [
            (0, "2000000"),
            (1, "3000000"),
            (2, "garbage"),
            (3, "1500000"),
        ] {
            let dir = root.join(format!("sys/devices/system/cpu/cpu{cpu}/cpufreq"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("scaling_cur_freq"), format!("{khz}\n")).expect("write");
        }
        let cpus = [
            Cpu { id: 0, socket: 0 },
            Cpu { id: 1, socket: 0 },
            Cpu { id: 2, socket: 1 },
            Cpu { id: 3, socket: 1 },
            Cpu { id: 4, socket: 2 },
        ];
        let mut f = Frequencies::open(&root, &cpus).expect("cpufreq");
        assert!(
            matches!(f, Frequencies::Cpufreq(_)),
            "no msr PMU under the fake root"
        );
        assert_eq!(f.read(), [(0, 2500.0), (1, 1500.0)]);
        assert!(Frequencies::open(&root.join("none"), &cpus).is_none());
        let _ = std::fs::remove_dir_all(&root);
    }
}
