//! No RAPL (VMs): `P = P_idle + (P_max − P_idle) × busy`, per socket in proportion to its CPUs.
//! Every figure from here is an estimate and is labelled so downstream.

use super::{Domain, DomainKey, EnergyError, EnergySample};
use crate::topology::{Cpu, cpus_by_socket};

/// Defaults when `--idle-watts`/`--max-watts` are not given: 2 W idle and 10 W at full load per
/// CPU — roughly a 32-core, 320 W server (64 W idle). Coarse by nature; pass real figures.
pub const DEFAULT_IDLE_WATTS_PER_CPU: f64 = 2.0;
pub const DEFAULT_MAX_WATTS_PER_CPU: f64 = 10.0;

#[derive(Clone, Debug, PartialEq)]
pub struct LinearModel {
    pub idle_watts: f64,
    pub max_watts: f64,
    /// (socket, CPUs on it)
    pub sockets: Vec<(u32, u32)>,
    /// `--idle-watts` and `--max-watts` as given: kept so that when CPUs come or go only the
    /// per-CPU defaults are rescaled, never a figure the user chose.
    given: (Option<f64>, Option<f64>),
}

impl LinearModel {
    /// A maximum below the idle power is refused: it would make every task cost 0 W.
    pub fn new(
        cpus: &[Cpu],
        idle_watts: Option<f64>,
        max_watts: Option<f64>,
    ) -> Result<Self, EnergyError> {
        let sockets = cpus_by_socket(cpus);
        let n = cpus.len().max(1) as f64;
        let idle = idle_watts.unwrap_or(DEFAULT_IDLE_WATTS_PER_CPU * n);
        let max = max_watts.unwrap_or(DEFAULT_MAX_WATTS_PER_CPU * n);
        if max < idle {
            let idle_from = match idle_watts {
                Some(_) => "--idle-watts".to_string(),
                None => format!("{DEFAULT_IDLE_WATTS_PER_CPU} W per CPU × {n} CPUs"),
            };
            return Err(EnergyError::Config(format!(
                "--max-watts {max} W is below the model's idle power {idle} W ({idle_from}); raise --max-watts or set --idle-watts below it"
            )));
        }
        Ok(Self {
            idle_watts: idle,
            max_watts: max,
            sockets,
            given: (idle_watts, max_watts),
        })
    }

    /// The same model for the CPUs online now (after a hotplug): the defaults follow the CPU
    /// count and each socket's share its CPUs, so that two busy CPUs cost what two CPUs do
    /// (a model left sized for one CPU clamped two busy ones to one CPU's power).
    pub fn for_cpus(&self, cpus: &[Cpu]) -> Result<Self, EnergyError> {
        Self::new(cpus, self.given.0, self.given.1)
    }

    /// Package energy per socket over `duration_ns`, from each socket's busy time.
    pub fn sample(&self, duration_ns: u64, busy_ns_by_socket: &[(u32, u64)]) -> EnergySample {
        let total_cpus: u32 = self.sockets.iter().map(|(_, n)| n).sum::<u32>().max(1);
        let seconds = duration_ns as f64 / 1e9;
        let mut sample = EnergySample {
            source: "model".into(),
            estimated: true,
            ..Default::default()
        };
        for &(socket, cpus) in &self.sockets {
            let share = f64::from(cpus) / f64::from(total_cpus);
            let busy_ns = busy_ns_by_socket
                .iter()
                .filter(|(s, _)| *s == socket)
                .map(|(_, b)| *b)
                .sum::<u64>();
            let capacity = duration_ns as f64 * f64::from(cpus);
            let busy = if capacity > 0.0 {
                (busy_ns as f64 / capacity).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let idle_w = self.idle_watts * share;
            let watts = idle_w + (self.max_watts - self.idle_watts) * share * busy;
            let key = DomainKey {
                domain: Domain::Package,
                socket,
            };
            sample.domains.push((key, watts * seconds));
            sample.known_idle_w.push((key, idle_w));
        }
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_in_busy_and_split_by_socket() {
        let cpus = [
            Cpu { id: 0, socket: 0 },
            Cpu { id: 1, socket: 0 },
            Cpu { id: 2, socket: 1 },
            Cpu { id: 3, socket: 1 },
        ];
        let model = LinearModel::new(&cpus, Some(20.0), Some(100.0)).expect("valid");
        // Socket 0 fully busy for 1 s, socket 1 idle.
        let s = model.sample(1_000_000_000, &[(0, 2_000_000_000)]);
        assert!(s.estimated);
        assert_eq!(s.domains.len(), 2);
        assert!(
            (s.domains[0].1 - 50.0).abs() < 1e-9,
            "10 W idle + 40 W active"
        );
        assert!((s.domains[1].1 - 10.0).abs() < 1e-9);
        let defaults = LinearModel::new(&cpus, None, None).expect("valid");
        assert_eq!((defaults.idle_watts, defaults.max_watts), (8.0, 40.0));
        // Below the default idle (2 W × 4 CPUs): refused, saying where the idle figure came from.
        let err = LinearModel::new(&cpus, None, Some(5.0)).expect_err("below idle");
        assert_eq!(
            err.to_string(),
            "--max-watts 5 W is below the model's idle power 8 W (2 W per CPU × 4 CPUs); raise --max-watts or set --idle-watts below it"
        );
        assert!(LinearModel::new(&cpus, Some(4.0), Some(5.0)).is_ok());
    }

    /// Started with CPU 1 offline, then both CPUs busy for 1 s: the documented model gives
    /// 2 × 2 W + 2 × 8 W = 20 W (the model sized at start gave 10 W).
    #[test]
    fn a_cpu_coming_online_rescales_the_defaults_but_not_given_figures() {
        let one = [Cpu { id: 0, socket: 0 }];
        let two = [Cpu { id: 0, socket: 0 }, Cpu { id: 1, socket: 0 }];
        let defaults = LinearModel::new(&one, None, None).expect("valid");
        assert_eq!((defaults.idle_watts, defaults.max_watts), (2.0, 10.0));
        let grown = defaults.for_cpus(&two).expect("valid");
        assert_eq!((grown.idle_watts, grown.max_watts), (4.0, 20.0));
        assert_eq!(grown.sockets, vec![(0, 2)]);
        let both_busy = grown.sample(1_000_000_000, &[(0, 2_000_000_000)]);
        assert!(
            (both_busy.domains[0].1 - 20.0).abs() < 1e-9,
            "{both_busy:?}"
        );
        // And back to one CPU: the defaults shrink again.
        assert_eq!(grown.for_cpus(&one).expect("valid"), defaults);

        // Figures the user gave stay as given; only the default beside them follows the CPUs.
        let given = LinearModel::new(&one, Some(3.0), Some(30.0)).expect("valid");
        let grown = given.for_cpus(&two).expect("valid");
        assert_eq!((grown.idle_watts, grown.max_watts), (3.0, 30.0));
        let idle_given = LinearModel::new(&one, Some(3.0), None).expect("valid");
        let grown = idle_given.for_cpus(&two).expect("valid");
        assert_eq!((grown.idle_watts, grown.max_watts), (3.0, 20.0));
        // A given idle above the default maximum for fewer CPUs is refused, as at start.
        let idle_given = LinearModel::new(&two, Some(15.0), None).expect("valid");
        assert!(idle_given.for_cpus(&one).is_err());
    }
}
