//! Each socket's CPU frequency, for the frequency layers of model-based formulas: cpufreq's
//! `scaling_cur_freq` per CPU, averaged over the socket's online CPUs at the end of an interval.
//!
//! cpufreq gives the current frequency, not the interval's average: an interval that spent half
//! its time boosted reads as whichever it ended in. APERF/MPERF (the perf `msr` PMU) would give
//! the average; the VMs this was built on expose neither (their `msr` PMU has only `tsc`), so
//! that source is not written yet. Where no CPU has cpufreq, every interval is one layer.

use std::path::{Path, PathBuf};

use crate::topology::Cpu;

/// Where each online CPU's frequency is read.
#[derive(Clone, Debug)]
pub struct Frequencies {
    files: Vec<(u32, PathBuf)>,
}

impl Frequencies {
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
        let f = Frequencies::open(&root, &cpus).expect("cpufreq");
        assert_eq!(f.read(), [(0, 2500.0), (1, 1500.0)]);
        assert!(Frequencies::open(&root.join("none"), &cpus).is_none());
        let _ = std::fs::remove_dir_all(&root);
    }
}
