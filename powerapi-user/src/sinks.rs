//! Several outputs at once (`--sink KIND:TARGET`, repeatable): each sink gets every interval,
//! and one that fails does not stop the others or the sensor. It is said once, retried at each
//! interval, and its recovery said once.

use std::{path::PathBuf, str::FromStr, sync::mpsc::Receiver};

use thiserror::Error;

use crate::{
    identity::hostname,
    influxdb::{InfluxError, InfluxSink, InfluxTarget},
    relay::DEFAULT_MAX_QUEUED_BYTES,
    report::Record,
    rotate::{RotatingSink, Rotation},
    sink::{Existing, Format, OutputSpec, Sink, SinkError},
    tcp::{TcpSink, TcpTarget, TcpTargetError},
};

#[derive(Debug, Error)]
/// A `--sink` that cannot be parsed.
pub enum SinkSpecError {
    #[error(
        "write KIND:TARGET with KIND jsonl, csv (TARGET a file or -), influxdb (TARGET http://HOST:PORT/DATABASE), tcp (TARGET HOST:PORT) or prometheus (TARGET ADDRESS:PORT, serve only)"
    )]
    /// Not `KIND:TARGET`, or an unknown kind.
    Form,
    #[error(transparent)]
    /// A bad InfluxDB address.
    Influx(#[from] InfluxError),
    #[error(transparent)]
    /// A bad TCP address.
    Tcp(#[from] TcpTargetError),
}

/// One `--sink` as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// JSON lines or CSV to a file (or stdout).
    File {
        /// The file, or `-`.
        path: PathBuf,
        /// JSON lines or CSV.
        format: Format,
    },
    /// InfluxDB 1.x over HTTP.
    InfluxDb(InfluxTarget),
    /// JSON lines streamed to a collector.
    Tcp(TcpTarget),
    /// The Prometheus endpoint of `serve` (where it listens).
    Prometheus(std::net::SocketAddr),
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
            "tcp" => Ok(Self::Tcp(target.parse()?)),
            "prometheus" => target
                .parse()
                .map(Self::Prometheus)
                .map_err(|_| SinkSpecError::Form),
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
            Self::InfluxDb(_) | Self::Tcp(_) | Self::Prometheus(_) => None,
        }
    }
}

/// Every output of a run: checked before measuring starts, opened once the sensor runs.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// The file outputs (`-o` first).
    pub files: Vec<OutputSpec>,
    /// The network sinks (InfluxDB, TCP), in the order given.
    pub servers: Vec<SinkSpec>,
    /// When file outputs rotate.
    pub rotation: Rotation,
    /// Most bytes each network sink holds while its server is away (`--sink-buffer`).
    pub max_queued_bytes: u64,
}

impl Outputs {
    /// `first` (a JSON lines file or `-`) ahead of the `sinks`, in the order given.
    pub fn new(
        first: Option<PathBuf>,
        sinks: &[SinkSpec],
        existing: Existing,
        rotation: Rotation,
    ) -> Self {
        let mut files: Vec<OutputSpec> = first
            .map(|path| OutputSpec {
                path,
                existing,
                flag: "-o",
                format: Format::JsonLines,
            })
            .into_iter()
            .collect();
        files.extend(sinks.iter().filter_map(|s| s.output(existing)));
        let servers = sinks
            .iter()
            .filter(|s| matches!(s, SinkSpec::InfluxDb(_) | SinkSpec::Tcp(_)))
            .cloned()
            .collect();
        Self {
            files,
            servers,
            rotation,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
        }
    }

    /// True when there is nothing to write to.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.servers.is_empty()
    }

    /// What can be refused before measuring: bad paths, existing traces, rotating stdout.
    pub fn check(&self) -> Result<(), SinkError> {
        for file in &self.files {
            file.check()?;
            if self.rotation.is_on() && file.is_stdout() {
                return Err(SinkError::NotRotatable {
                    path: "stdout".into(),
                });
            }
        }
        Ok(())
    }

    /// Opens the files (waiting for a FIFO's reader until `stop`) and starts the senders.
    pub fn open(&self, stop: &Receiver<()>) -> Result<Fanout, SinkError> {
        let mut sinks: Vec<(String, Box<dyn Sink>)> = Vec::new();
        for file in &self.files {
            let name = file.path.display().to_string();
            if self.rotation.is_on() {
                let sink = RotatingSink::open(file.clone(), self.rotation.clone(), stop)?;
                sinks.push((name, Box::new(sink)));
            } else {
                sinks.push((name, Box::new(file.open(stop)?)));
            }
        }
        let host = hostname().unwrap_or_default();
        for server in &self.servers {
            let sink: Box<dyn Sink> = match server {
                SinkSpec::InfluxDb(target) => Box::new(InfluxSink::start(
                    target.clone(),
                    &host,
                    self.max_queued_bytes,
                )),
                SinkSpec::Tcp(target) => {
                    Box::new(TcpSink::start(target.clone(), self.max_queued_bytes))
                }
                SinkSpec::File { .. } | SinkSpec::Prometheus(_) => continue,
            };
            let name = match server {
                SinkSpec::Tcp(target) => target.to_string(),
                _ => "influxdb".into(),
            };
            sinks.push((name, sink));
        }
        Ok(Fanout::new(sinks))
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
    /// Every interval to every one of `sinks` (name, sink).
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

    fn dropped_records(&self) -> u64 {
        self.sinks.iter().map(|n| n.sink.dropped_records()).sum()
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
        assert!(matches!(
            "tcp:127.0.0.1:5170".parse::<SinkSpec>(),
            Ok(SinkSpec::Tcp(TcpTarget { port: 5170, .. }))
        ));
        let e = "tcp:nowhere".parse::<SinkSpec>().expect_err("no port");
        assert!(e.to_string().contains("tcp:HOST:PORT"), "{e}");
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
    fn file_sinks_are_outputs_checked_like_o() {
        let spec: SinkSpec = "csv:/tmp/p.csv".parse().expect("csv");
        let out = spec.output(Existing::Append).expect("a file output");
        assert_eq!(
            (out.path, out.existing, out.flag, out.format),
            ("/tmp/p.csv".into(), Existing::Append, "--sink", Format::Csv)
        );
        let influx: SinkSpec = "influxdb:http://h/db".parse().expect("influx");
        assert!(influx.output(Existing::Refuse).is_none());
        let tcp: SinkSpec = "tcp:h:5170".parse().expect("tcp");
        assert!(tcp.output(Existing::Refuse).is_none());
        let outputs = Outputs::new(
            Some("-".into()),
            &[spec, influx, tcp],
            Existing::Refuse,
            Rotation::default(),
        );
        assert_eq!((outputs.files.len(), outputs.servers.len()), (2, 2));
        assert_eq!(outputs.files[0].flag, "-o");
        assert!(!outputs.is_empty() && Outputs::default().is_empty());
    }

    /// Closes like a reader that went away.
    struct Gone;

    impl Sink for Gone {
        fn write_interval(&mut self, _: &[Record]) -> Result<(), SinkError> {
            Err(SinkError::Closed { path: "-".into() })
        }
    }

    #[test]
    fn the_run_ends_quietly_only_when_every_reader_is_gone() {
        let (_, got, good) = flaky(false);
        let mut some = Fanout::new(vec![("gone".into(), Box::new(Gone)), ("good".into(), good)]);
        assert!(some.write_interval(&[]).is_ok());
        assert_eq!(*got.borrow(), 1);
        let mut all = Fanout::new(vec![
            ("a".into(), Box::new(Gone)),
            ("b".into(), Box::new(Gone)),
        ]);
        assert!(matches!(
            all.write_interval(&[]),
            Err(SinkError::Closed { .. })
        ));
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
