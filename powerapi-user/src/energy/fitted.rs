//! `--energy-source model --load-model FILE`: energy ESTIMATED by a SmartWatts model fitted on a
//! machine that has RAPL (`--save-model`), for a VM or a machine without RAPL. Per domain and
//! socket, `P = b + w·x` from this run's own features (the same counters, or CPU seconds in
//! time-only mode) at the layer nearest the socket's frequency. Better than the linear default,
//! still an estimate: labelled `estimated`, with the model's training error.

use std::path::Path;

use super::{DomainKey, EnergyError, EnergySample, SocketUsage, Source};
use crate::smartwatts::{ModelFit, SAVED_MODEL_VERSION, SavedModel};

/// A loaded model, and what this interval's usage was.
#[derive(Debug)]
pub struct FittedModel {
    model: SavedModel,
    /// Index of each model feature in this run's counters (`None`: CPU seconds).
    columns: Vec<Option<usize>>,
    usage: Vec<SocketUsage>,
    frequencies: Vec<(u32, f64)>,
}

impl FittedModel {
    /// Reads `path` and checks it applies to a run reading `counters`.
    pub fn load(path: &Path, counters: &[String]) -> Result<Self, EnergyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| EnergyError::Read {
            path: name.clone(),
            source,
        })?;
        let model: SavedModel = serde_json::from_str(&text).map_err(|e| EnergyError::Parse {
            path: name.clone(),
            detail: format!("not a model written by --save-model ({e})"),
        })?;
        Self::new(model, counters)
            .map_err(|detail| EnergyError::Config(format!("{name}: {detail}")))
    }

    /// Checks `model` against this run's `counters`.
    pub fn new(model: SavedModel, counters: &[String]) -> Result<Self, String> {
        if model.powerapi_model != SAVED_MODEL_VERSION {
            return Err(format!(
                "model format {} is not the {SAVED_MODEL_VERSION} this powerapi reads",
                model.powerapi_model
            ));
        }
        if model.layers.is_empty() {
            return Err("the model has no fitted layer".into());
        }
        let columns = model
            .features
            .iter()
            .map(|f| match f.as_str() {
                "cpu-seconds" => Ok(None),
                name => counters.iter().position(|c| c == name).map(Some).ok_or_else(|| {
                    format!(
                        "the model was fitted on {}; this run does not read {name}: add it to --counters",
                        model.features.join(",")
                    )
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            model,
            columns,
            usage: Vec::new(),
            frequencies: Vec::new(),
        })
    }

    /// The layer for `key` nearest `mhz` (a socket the model never saw uses another socket's).
    fn layer(&self, key: DomainKey, mhz: Option<f64>) -> Option<&ModelFit> {
        let distance = |f: &&ModelFit| match (f.layer_mhz, mhz) {
            (Some(layer), Some(mhz)) => (f64::from(layer) - mhz).abs(),
            (None, None) => 0.0,
            _ => f64::MAX / 2.0,
        };
        let nearest = |socket_only: bool| {
            self.model
                .layers
                .iter()
                .filter(|f| {
                    f.key.domain == key.domain && (!socket_only || f.key.socket == key.socket)
                })
                .min_by(|a, b| distance(a).total_cmp(&distance(b)))
        };
        nearest(true).or_else(|| nearest(false))
    }
}

impl Source for FittedModel {
    fn name(&self) -> &str {
        "smartwatts-model"
    }

    fn estimated(&self) -> bool {
        true
    }

    fn observe(&mut self, _counters: &[String], usage: &[SocketUsage], frequencies: &[(u32, f64)]) {
        self.usage = usage.to_vec();
        self.frequencies = frequencies.to_vec();
    }

    fn sample(
        &mut self,
        duration_ns: u64,
        busy_ns_by_socket: &[(u32, u64)],
    ) -> Result<EnergySample, EnergyError> {
        let seconds = duration_ns as f64 / 1e9;
        let mut sample = EnergySample {
            source: self.name().into(),
            estimated: true,
            ..Default::default()
        };
        let domains: std::collections::BTreeSet<_> =
            self.model.layers.iter().map(|f| f.key.domain).collect();
        let mut error_w: f64 = 0.0;
        for &(socket, busy_ns) in busy_ns_by_socket {
            let usage = self.usage.iter().find(|u| u.socket == socket);
            let mhz = self
                .frequencies
                .iter()
                .find(|(s, _)| *s == socket)
                .map(|(_, f)| *f);
            for &domain in &domains {
                let key = DomainKey { domain, socket };
                let Some(fit) = self.layer(key, mhz) else {
                    continue;
                };
                let mut watts = fit.model.intercept_w;
                for (feature, column) in self.model.features.iter().zip(&self.columns) {
                    let total = match column {
                        None => busy_ns as f64 / 1e9,
                        Some(c) => {
                            usage.and_then(|u| u.counters.get(*c)).copied().unwrap_or(0) as f64
                        }
                    };
                    let per_second = if seconds > 0.0 { total / seconds } else { 0.0 };
                    watts += fit.model.weights.get(feature).copied().unwrap_or(0.0) * per_second;
                }
                sample.domains.push((key, watts.max(0.0) * seconds));
                sample.known_idle_w.push((key, fit.model.intercept_w));
                error_w = error_w.max(fit.model.error_w);
            }
        }
        sample.estimate_error_w = Some(error_w);
        Ok(sample)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{energy::Domain, smartwatts::LayerModel};

    fn fit(layer: Option<u32>, intercept_w: f64, per_cpu: f64) -> ModelFit {
        ModelFit {
            key: DomainKey {
                domain: Domain::Package,
                socket: 0,
            },
            layer_mhz: layer,
            model: LayerModel {
                intercept_w,
                weights: BTreeMap::from([("cpu-seconds".to_string(), per_cpu)]),
                samples: 10,
                error_w: 0.25,
            },
            reason: "saved".into(),
        }
    }

    fn model(layers: Vec<ModelFit>, features: &[&str]) -> SavedModel {
        SavedModel {
            powerapi_model: SAVED_MODEL_VERSION,
            features: features.iter().map(|f| f.to_string()).collect(),
            hostname: None,
            layers,
        }
    }

    #[test]
    fn power_is_the_nearest_layers_line_through_this_runs_usage() {
        let saved = model(
            vec![fit(Some(2000), 10.0, 10.0), fit(Some(3000), 14.0, 16.0)],
            &["cpu-seconds"],
        );
        let mut m = FittedModel::new(saved, &[]).expect("time-only fits any run");
        m.observe(&[], &[], &[(0, 2900.0)]);
        // 1.5 CPU-seconds in 0.5 s on socket 0 (3 busy CPUs): 14 + 16 × 3 = 62 W, 31 J.
        let s = m
            .sample(500_000_000, &[(0, 1_500_000_000)])
            .expect("sample");
        assert_eq!((s.source.as_str(), s.estimated), ("smartwatts-model", true));
        assert_eq!(s.domains.len(), 1);
        assert!((s.domains[0].1 - 31.0).abs() < 1e-9, "{:?}", s.domains);
        assert_eq!(s.known_idle_w[0].1, 14.0);
        assert_eq!(s.estimate_error_w, Some(0.25));
        // A second socket the model never saw uses socket 0's layers; no frequency: nearest
        // is undefined, any layer of the domain (here the first).
        m.observe(&[], &[], &[]);
        let s = m
            .sample(1_000_000_000, &[(0, 0), (1, 1_000_000_000)])
            .expect("sample");
        assert_eq!(s.domains.len(), 2);
    }

    #[test]
    fn a_model_that_cannot_apply_is_refused() {
        let saved = model(vec![fit(None, 1.0, 1.0)], &["cycles"]);
        let e = FittedModel::new(saved.clone(), &[]).expect_err("no cycles read");
        assert!(e.contains("add it to --counters"), "{e}");
        assert!(FittedModel::new(saved, &["cycles".into()]).is_ok());
        let e = FittedModel::new(model(vec![], &["cpu-seconds"]), &[]).expect_err("empty");
        assert!(e.contains("no fitted layer"), "{e}");
        let mut old = model(vec![fit(None, 1.0, 1.0)], &["cpu-seconds"]);
        old.powerapi_model = 9;
        assert!(FittedModel::new(old, &[]).is_err());
    }
}
