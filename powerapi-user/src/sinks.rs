//! Several outputs at once (`--sink KIND:TARGET`, repeatable): each sink gets every interval,
//! and one that fails does not stop the others or the sensor. It is said once, retried at each
//! interval, and its recovery said once.

use std::{path::PathBuf, str::FromStr};

use thiserror::Error;

use crate::{
    influxdb::{InfluxError, InfluxTarget},
    report::Record,
    sink::{Existing, Format, OutputSpec, Sink, SinkError},
};

#[derive(Debug, Error)]
pub enum SinkSpecError {
    #[error(
        "write KIND:TARGET with KIND jsonl, csv (TARGET a file or -) or influxdb (TARGET http://HOST:PORT/DATABASE)"
    )]
    Form,
    #[error(transparent)]
    Influx(#[from] InfluxError),
}

/// One `--sink` as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    File { path: PathBuf, format: Format },
    InfluxDb(InfluxTarget),
}

impl FromStr for SinkSpec {
    type Err = SinkSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let form = || SinkSpecError::Form;
        let (kind, target) = spec.split_once(':').ok_or_else(form)?;
        if target.is_empty() {
            return Err(form());
        }
        match kind {
            "jsonl" | "json" => Ok(Self::File {
                path: target.into(),
                format: Format::JsonLines,
            }),
            "csv" => Ok(Self::File {
                path: target.into(),
                format: Format::Csv,
            }),
            "influxdb" | "influx" => Ok(Self::InfluxDb(InfluxTarget::parse(target)?)),
            _ => Err(form()),
        }
    }
}

impl SinkSpec {
    /// The file output this names, if it is one (checked before measuring starts).
    pub fn output(&self, existing: Existing) -> Option<OutputSpec> {
        match self {
            Self::File { path, format } => Some(OutputSpec {
                path: path.clone(),
                existing,
                flag: "--sink",
                format: *format,
            }),
            Self::InfluxDb(_) => None,
        }
    }
}

struct Named {
    sink: Box<dyn Sink>,
    name: String,
    failing: bool,
}

/// Every interval to every sink. With a single sink a failure ends the run as it always has
/// (the one output is the point of the run); with several, it is isolated.
pub struct Fanout {
    sinks: Vec<Named>,
}

impl Fanout {
    pub fn new(sinks: Vec<(String, Box<dyn Sink>)>) -> Self {
        Self {
            sinks: sinks
                .into_iter()
                .map(|(name, sink)| Named {
                    sink,
                    name,
                    failing: false,
                })
                .collect(),
        }
    }
}

impl Sink for Fanout {
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError> {
        let alone = self.sinks.len() == 1;
        let mut closed = 0;
        for named in &mut self.sinks {
            match named.sink.write_interval(records) {
                Ok(()) => {
                    if std::mem::take(&mut named.failing) {
                        eprintln!("powerapi: {}: writing again", named.name);
                    }
                }
                Err(e) if alone => return Err(e),
                Err(SinkError::Closed { .. }) => closed += 1,
                Err(e) => {
                    if !std::mem::replace(&mut named.failing, true) {
                        eprintln!(
                            "powerapi: {e} (retried at each interval; recording and the other outputs go on)"
                        );
                    }
                }
            }
        }
        // Every reader gone (`record --sink jsonl:- --sink csv:- | head`): a quiet end.
        if closed == self.sinks.len() {
            return Err(SinkError::Closed {
                path: "every output".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_the_form() {
        assert_eq!(
            "csv:/tmp/p.csv".parse::<SinkSpec>().ok(),
            Some(SinkSpec::File {
                path: "/tmp/p.csv".into(),
                format: Format::Csv
            })
        );
        assert_eq!(
            "jsonl:-".parse::<SinkSpec>().ok(),
            Some(SinkSpec::File {
                path: "-".into(),
                format: Format::JsonLines
            })
        );
        assert!(matches!(
            "influxdb:http://127.0.0.1:8086/powerapi".parse::<SinkSpec>(),
            Ok(SinkSpec::InfluxDb(InfluxTarget { port: 8086, .. }))
        ));
        for bad in ["csv", "csv:", "parquet:/x", "/tmp/x.jsonl"] {
            let e = bad.parse::<SinkSpec>().expect_err(bad).to_string();
            assert!(e.contains("KIND:TARGET"), "{e}");
        }
        let e = "influxdb:https://h/db"
            .parse::<SinkSpec>()
            .expect_err("https");
        assert!(e.to_string().contains("https is not supported"), "{e}");
    }

    /// Fails while `fail` says so; counts what it received.
    struct Flaky {
        fail: Rc<RefCell<bool>>,
        got: Rc<RefCell<u32>>,
    }

    impl Sink for Flaky {
        fn write_interval(&mut self, _: &[Record]) -> Result<(), SinkError> {
            if *self.fail.borrow() {
                return Err(SinkError::Write {
                    path: "flaky".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
            *self.got.borrow_mut() += 1;
            Ok(())
        }
    }

    type Switch = Rc<RefCell<bool>>;
    type Count = Rc<RefCell<u32>>;

    fn flaky(fail: bool) -> (Switch, Count, Box<dyn Sink>) {
        let fail = Rc::new(RefCell::new(fail));
        let got = Rc::new(RefCell::new(0));
        let sink = Flaky {
            fail: Rc::clone(&fail),
            got: Rc::clone(&got),
        };
        (fail, got, Box::new(sink))
    }

    #[test]
    fn a_failing_sink_does_not_stop_the_others_and_is_retried() {
        let (_, good_got, good) = flaky(false);
        let (bad_fail, bad_got, bad) = flaky(true);
        let mut fanout = Fanout::new(vec![("good".into(), good), ("bad".into(), bad)]);
        for _ in 0..3 {
            assert!(fanout.write_interval(&[]).is_ok());
        }
        *bad_fail.borrow_mut() = false;
        assert!(fanout.write_interval(&[]).is_ok());
        assert_eq!((*good_got.borrow(), *bad_got.borrow()), (4, 1));
    }

    #[test]
    fn a_single_sink_fails_the_run_as_before() {
        let (_, _, bad) = flaky(true);
        let mut fanout = Fanout::new(vec![("bad".into(), bad)]);
        assert!(matches!(
            fanout.write_interval(&[]),
            Err(SinkError::Write { .. })
        ));
    }
}
