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
        })
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
}
