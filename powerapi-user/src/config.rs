//! `--config meter.json`: a whole pipeline in one file (sensor options, energy source, formula
//! and its parameters, sinks, outputs), for fleets that deploy a file rather than a command line.
//!
//! The file is the lowest layer: an option given on the command line or in the environment
//! (`POWERAPI_*`) wins over it. Every key is checked: one powerapi does not know, or a value it
//! cannot take, is refused with the key's JSON path and what is allowed, before anything runs.
//! Values are parsed by the same functions as the flags, so a file says what a flag can say.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, de::Error as _};
use thiserror::Error;

use crate::{
    attribution::{IdlePolicy, Metric},
    energy::SourceSpec,
    formula::FormulaKind,
    record::Granularity,
    sink::Existing,
    sinks::SinkSpec,
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}; check the path given to --config")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {detail}")]
    Invalid { path: String, detail: String },
}

/// The file, as written. Every field is optional: an absent one leaves the flag's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterConfig {
    /// Free text: what this file is for (JSON has no comments).
    #[serde(default)]
    pub description: Option<String>,
    /// `--interval`.
    #[serde(default, deserialize_with = "interval")]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub sensor: SensorSection,
    #[serde(default)]
    pub energy: EnergySection,
    #[serde(default)]
    pub formula: FormulaSection,
    /// `--pid`, `--comm`, `--cgroup` (record and top).
    #[serde(default)]
    pub filter: FilterSection,
    /// `--sink`, each written as on the command line (`jsonl:FILE`, `influxdb:URL`, …).
    #[serde(default, deserialize_with = "sinks")]
    pub sinks: Option<Vec<SinkSpec>>,
    #[serde(default)]
    pub outputs: OutputsSection,
    #[serde(default)]
    pub record: RecordSection,
    #[serde(default)]
    pub serve: ServeSection,
    #[serde(default)]
    pub top: TopSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorSection {
    /// `--counters`: names, or `["none"]` for time-only.
    pub counters: Option<Vec<String>>,
    /// `--max-tasks`.
    #[serde(default, deserialize_with = "max_tasks")]
    pub max_tasks: Option<u32>,
    /// `--sysfs-root`.
    pub sysfs_root: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnergySection {
    /// `--energy-source`.
    #[serde(default, deserialize_with = "source")]
    pub source: Option<SourceSpec>,
    /// `--energy-timeout`.
    #[serde(default, deserialize_with = "positive_duration")]
    pub timeout: Option<Duration>,
    /// `--idle-watts`.
    #[serde(default, deserialize_with = "watts")]
    pub idle_watts: Option<f64>,
    /// `--max-watts`.
    #[serde(default, deserialize_with = "watts")]
    pub max_watts: Option<f64>,
    /// `--load-model` (with `source` `model`).
    pub load_model: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormulaSection {
    /// `--formula`: `proportional` or `smartwatts`.
    pub name: Option<FormulaKind>,
    /// `--metric`.
    pub metric: Option<Metric>,
    /// `--idle-policy`.
    pub idle_policy: Option<IdlePolicy>,
    /// `--freq-step` (smartwatts), MHz.
    #[serde(default, deserialize_with = "freq_step")]
    pub freq_step: Option<u32>,
    /// `--max-error` (smartwatts), watts.
    #[serde(default, deserialize_with = "watts")]
    pub max_error: Option<f64>,
    /// `--model-history` (smartwatts), intervals.
    #[serde(default, deserialize_with = "history")]
    pub history: Option<u32>,
    /// `--save-model` (smartwatts).
    pub save_model: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    pub pids: Option<Vec<u32>>,
    pub comms: Option<Vec<String>>,
    pub cgroups: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSection {
    /// What to do with an output file that holds data: `refuse`, `append` or `overwrite`.
    pub existing: Option<Existing>,
    /// `--rotate-size`.
    #[serde(default, deserialize_with = "size")]
    pub rotate_size: Option<u64>,
    /// `--rotate-every`.
    #[serde(default, deserialize_with = "positive_duration")]
    pub rotate_every: Option<Duration>,
    /// `--compress`.
    pub compress: Option<bool>,
    /// `--keep`.
    #[serde(default, deserialize_with = "keep")]
    pub keep: Option<u32>,
    /// `--sink-buffer`.
    #[serde(default, deserialize_with = "size")]
    pub sink_buffer: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSection {
    /// `-o`.
    pub output: Option<PathBuf>,
    /// `--duration`.
    #[serde(default, deserialize_with = "positive_duration")]
    pub duration: Option<Duration>,
    pub granularity: Option<Granularity>,
    pub cmdline: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// `--listen`.
    #[serde(default, deserialize_with = "listen")]
    pub listen: Option<SocketAddr>,
    /// `--top`.
    #[serde(default, deserialize_with = "top")]
    pub top: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopSection {
    /// `top --record`.
    pub record: Option<PathBuf>,
}

/// The keys whose values are objects of options.
const SECTIONS: [&str; 8] = [
    "sensor", "energy", "formula", "filter", "outputs", "record", "serve", "top",
];

/// Reads and checks `path`.
pub fn load(path: &std::path::Path) -> Result<MeterConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|detail| ConfigError::Invalid {
        path: path.display().to_string(),
        detail,
    })
}

/// Parses a config, or says where it is wrong (`at $.sensor.interval: …`) and what is allowed.
pub fn parse(text: &str) -> Result<MeterConfig, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    // serde would take an array for a struct, field by field in order: refuse it by name.
    let Some(top) = value.as_object() else {
        return Err("the top level must be an object ({ \"interval\": \"1s\", … })".into());
    };
    for (key, section) in top {
        if SECTIONS.contains(&key.as_str()) && !section.is_object() {
            return Err(format!("at $.{key}: expected an object of options"));
        }
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            // serde_json appends the position; the path says more to a person.
            let message = inner.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message);
            format!("at $.{path}: {message}")
        }
    })
}

/// A string value run through one of the flags' parsers.
fn parsed<'de, D, T>(d: D, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    parse(&text).map(Some).map_err(|e| {
        let quoted = format!("{text:?}");
        D::Error::custom(if e.starts_with(&quoted) {
            e
        } else {
            format!("{quoted}: {e}")
        })
    })
}

/// A number checked against a range.
fn ranged<'de, D>(d: D, range: std::ops::RangeInclusive<u32>) -> Result<Option<u32>, D::Error>
where
    D: Deserializer<'de>,
{
    let n = u64::deserialize(d)?;
    u32::try_from(n)
        .ok()
        .filter(|n| range.contains(n))
        .map(Some)
        .ok_or_else(|| {
            D::Error::custom(format!(
                "{n} is out of range: write a whole number from {} to {}",
                range.start(),
                range.end()
            ))
        })
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, crate::cli::parse_interval)
}

fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    parsed(d, crate::cli::parse_positive_duration)
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    parsed(d, crate::cli::parse_size)
}

fn source<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SourceSpec>, D::Error> {
    parsed(d, |t| t.parse::<SourceSpec>())
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parsed(d, |t| {
        t.parse::<SocketAddr>()
            .map_err(|_| "write an address and port, e.g. 127.0.0.1:9185".to_string())
    })
}

fn sinks<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<SinkSpec>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse::<SinkSpec>()
                .map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn watts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let w = f64::deserialize(d)?;
    if w.is_finite() && w >= 0.0 {
        Ok(Some(w))
    } else {
        Err(D::Error::custom(format!(
            "{w} is not a power in watts (a number ≥ 0)"
        )))
    }
}

fn max_tasks<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, 64..=4_194_304)
}

fn keep<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, 1..=u32::MAX)
}

fn freq_step<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, 1..=10_000)
}

fn history<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, 10..=100_000)
}

fn top<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, 1..=10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_parses_through_the_flags_parsers() {
        let c = parse(
            r#"{
              "description": "a server",
              "interval": "500ms",
              "sensor": {"counters": ["cycles"], "max_tasks": 1024, "sysfs_root": "/host"},
              "energy": {"source": "powercap-dir:/run/rapl", "timeout": "1m", "idle_watts": 4.5, "max_watts": 40},
              "formula": {"name": "smartwatts", "metric": "cpu-time", "idle_policy": "equal", "freq_step": 50, "max_error": 1.5, "history": 30, "save_model": "/tmp/m.json"},
              "filter": {"pids": [1], "comms": ["nginx"], "cgroups": ["/system.slice"]},
              "sinks": ["csv:/tmp/p.csv", "tcp:127.0.0.1:5170"],
              "outputs": {"existing": "append", "rotate_size": "100M", "rotate_every": "1h", "compress": true, "keep": 24, "sink_buffer": "1M"},
              "record": {"output": "/tmp/t.jsonl", "duration": "1h", "granularity": "thread", "cmdline": true},
              "serve": {"listen": "0.0.0.0:9185", "top": 50},
              "top": {"record": "/tmp/top.jsonl"}
            }"#,
        )
        .expect("valid");
        assert_eq!(c.interval, Some(Duration::from_millis(500)));
        assert_eq!(c.sensor.max_tasks, Some(1024));
        assert_eq!(
            c.energy.source,
            Some(SourceSpec::PowercapDir("/run/rapl".into()))
        );
        assert_eq!(c.energy.timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.formula.idle_policy, Some(IdlePolicy::Equal));
        assert_eq!(
            (
                c.formula.name,
                c.formula.freq_step,
                c.formula.max_error,
                c.formula.history
            ),
            (Some(FormulaKind::Smartwatts), Some(50), Some(1.5), Some(30))
        );
        assert_eq!(c.formula.save_model, Some("/tmp/m.json".into()));
        assert_eq!(c.sinks.as_ref().map(Vec::len), Some(2));
        assert_eq!(c.outputs.rotate_size, Some(100 << 20));
        assert_eq!(c.outputs.existing, Some(Existing::Append));
        assert_eq!(c.record.granularity, Some(Granularity::Thread));
        assert_eq!(c.serve.top, Some(50));
        assert!(parse("{}").is_ok(), "an empty file is the defaults");
    }

    #[test]
    fn bad_keys_and_values_say_where_and_what_is_allowed() {
        let cases = [
            (
                r#"{"intervall": "1s"}"#,
                "at $.intervall: unknown field `intervall`, expected one of `description`, `interval`, `sensor`,",
            ),
            (
                r#"{"sensor": {"max-tasks": 10}}"#,
                "at $.sensor.max-tasks: unknown field `max-tasks`, expected one of `counters`, `max_tasks`, `sysfs_root`",
            ),
            (
                r#"{"interval": "5ms"}"#,
                "at $.interval: \"5ms\": must be between 10ms and 1h",
            ),
            (
                r#"{"interval": 1}"#,
                "at $.interval: invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"sensor": {"max_tasks": 10}}"#,
                "at $.sensor.max_tasks: 10 is out of range: write a whole number from 64 to 4194304",
            ),
            (
                r#"{"energy": {"idle_watts": -1}}"#,
                "at $.energy.idle_watts: -1 is not a power in watts",
            ),
            (
                r#"{"energy": {"source": "rapl"}}"#,
                "at $.energy.source: \"rapl\":",
            ),
            (
                r#"{"formula": {"name": "smartwatt"}}"#,
                "at $.formula.name: unknown variant `smartwatt`, expected `proportional` or `smartwatts`",
            ),
            (
                r#"{"formula": {"idle_policy": "half"}}"#,
                "at $.formula.idle_policy: unknown variant `half`, expected one of `none`, `cpu-time`, `equal`",
            ),
            (
                r#"{"sinks": ["csv:/a", "parquet:/b"]}"#,
                "at $.sinks: \"parquet:/b\": write KIND:TARGET",
            ),
            (
                r#"{"outputs": {"existing": "clobber"}}"#,
                "at $.outputs.existing: unknown variant `clobber`",
            ),
            (
                r#"{"outputs": {"rotate_size": "lots"}}"#,
                "at $.outputs.rotate_size: \"lots\": write a size such as 512K",
            ),
            (
                r#"{"serve": {"listen": "localhost"}}"#,
                "at $.serve.listen: \"localhost\": write an address and port",
            ),
            (
                r#"{"interval": "1s",}"#,
                "not valid JSON: trailing comma at line 1",
            ),
            (r#"["record"]"#, "the top level must be an object"),
            (
                r#"{"sensor": ["cycles"]}"#,
                "at $.sensor: expected an object of options",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text).expect_err(text);
            assert!(e.contains(expected), "{text}: {e}");
        }
    }
}
