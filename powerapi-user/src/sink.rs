//! Where records go. A sink receives whole intervals, so a file never ends mid-interval or
//! mid-line: not when the run is interrupted, and not when the disk fills (the partial write is
//! cut back to the last complete line).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::Duration,
};

use clap::ValueEnum;
use thiserror::Error;

use crate::report::Record;

#[derive(Debug, Error)]
/// Why a sink could not write.
pub enum SinkError {
    #[error(
        "{path} already holds data; pass --append to add to it or --force to overwrite it, or choose another file"
    )]
    /// The output holds data and neither `--append` nor `--force` was given.
    Exists {
        /// The output.
        path: String,
    },
    #[error("cannot write {path}: {source}; choose a writable path with {flag}")]
    /// The output could not be opened.
    Open {
        /// The output.
        path: String,
        /// The flag that named it.
        flag: &'static str,
        /// The cause.
        source: io::Error,
    },
    #[error("{path} is being written by another powerapi; give each recording its own file")]
    /// Another powerapi writes the output.
    Locked {
        /// The output.
        path: String,
    },
    #[error(
        "writing {path} failed: {source}; it ends with the last complete interval, free space or choose another file"
    )]
    /// A write failed (the file ends with the last complete interval).
    Write {
        /// The output.
        path: String,
        /// The cause.
        source: io::Error,
    },
    #[error("cannot encode a record: {0}")]
    /// A record could not be encoded as JSON.
    Encode(#[from] serde_json::Error),
    #[error("cannot encode a CSV row: {0}")]
    /// A record could not be encoded as CSV.
    Csv(#[from] csv::Error),
    #[error("interrupted while waiting for a reader on the FIFO {path}")]
    /// Stopped while waiting for a FIFO's reader.
    Interrupted {
        /// The FIFO.
        path: String,
    },
    /// The reader of stdout or of a FIFO went away (`record | head`): a quiet end, not a failure.
    #[error("the reader of {path} went away")]
    Closed {
        /// The output.
        path: String,
    },
    #[error(
        "{path} is not a regular file, so it cannot be rotated; drop --rotate-size/--rotate-every or write to a file"
    )]
    /// Rotation was asked for an output that is not a regular file.
    NotRotatable {
        /// The output.
        path: String,
    },
    #[error(
        "rotating {path} failed: {source}; it keeps growing, check the directory's permissions and space"
    )]
    /// A rotation failed (the file keeps growing).
    Rotate {
        /// The output.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

/// Receives every interval's records: the destination end of a pipeline. Implement it to send
/// records somewhere powerapi does not know of (see `examples/custom_meter.rs`).
pub trait Sink {
    /// Takes one whole interval (the machine record first). An error ends the run when this is
    /// the only sink; among several it is said once and the interval retried at the next.
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError>;

    /// Records given up since the start (a server away longer than the buffer holds): reported
    /// in the machine record's `meter.dropped_records`, so a gap in a collector's data is
    /// explained in the data that did arrive.
    fn dropped_records(&self) -> u64 {
        0
    }
}

/// What to do with an output file that already holds data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Existing {
    /// Refuse it: yesterday's trace is never lost to a typo.
    #[default]
    Refuse,
    /// Add after its last complete line.
    Append,
    /// Start it over (only once measurement has started).
    Overwrite,
}

/// An output named on the command line: a path or `-`, what to do if it holds data, and the
/// flag that named it (errors tell the user which flag to change).
#[derive(Clone, Debug)]
pub struct OutputSpec {
    /// The file, or `-` for stdout.
    pub path: PathBuf,
    /// What to do when it holds data.
    pub existing: Existing,
    /// The flag that named it, for errors.
    pub flag: &'static str,
    /// JSON lines or CSV.
    pub format: Format,
}

/// How a file sink writes records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line, every field (README: output formats).
    #[default]
    JsonLines,
    /// One row per record with a header row: the figures spreadsheets and pandas want.
    Csv,
}

impl OutputSpec {
    /// True for `-`.
    pub fn is_stdout(&self) -> bool {
        self.path == Path::new("-")
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn open_error(&self, source: io::Error) -> SinkError {
        SinkError::Open {
            path: self.name(),
            flag: self.flag,
            source,
        }
    }

    /// Everything that can be known before measuring, changing nothing on disk: a bad path, a
    /// directory, an existing trace that would be overwritten.
    pub fn check(&self) -> Result<(), SinkError> {
        if self.is_stdout() {
            return Ok(());
        }
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.is_dir() => {
                Err(self.open_error(io::Error::from_raw_os_error(libc::EISDIR)))
            }
            Ok(meta)
                if meta.file_type().is_file()
                    && meta.len() > 0
                    && self.existing == Existing::Refuse =>
            {
                Err(SinkError::Exists { path: self.name() })
            }
            Ok(_) => writable(&self.path).map_err(|e| self.open_error(e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = match self.path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                if !parent.is_dir() {
                    return Err(self.open_error(e));
                }
                writable(parent).map_err(|e| self.open_error(e))
            }
            Err(e) => Err(self.open_error(e)),
        }
    }

    /// Opens the output for writing: locks a regular file against a second powerapi, applies
    /// `existing`, and waits (saying so, and giving up on `stop`) for a FIFO's reader.
    pub fn open(&self, stop: &Receiver<()>) -> Result<FileSink, SinkError> {
        if self.is_stdout() {
            return Ok(FileSink {
                name: "stdout".into(),
                out: Output::Stdout(io::stdout()),
                line_buf: Vec::new(),
                format: self.format,
                header_due: true,
            });
        }
        let is_fifo = std::fs::metadata(&self.path)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        let out = if is_fifo {
            Output::Pipe(self.open_fifo(stop)?)
        } else {
            self.open_file()?
        };
        // A CSV appended to keeps the header it has.
        let header_due = !matches!(out, Output::File { len, .. } if len > 0);
        Ok(FileSink {
            name: self.name(),
            out,
            line_buf: Vec::new(),
            format: self.format,
            header_due,
        })
    }

    fn open_file(&self) -> Result<Output, SinkError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            // Truncated (or not) below, once the lock is held and `existing` applied.
            .truncate(false)
            .open(&self.path)
            .map_err(|e| self.open_error(e))?;
        let meta = file.metadata().map_err(|e| self.open_error(e))?;
        if !meta.is_file() {
            // A device (/dev/null, a terminal): nothing to lock, truncate or cut back.
            return Ok(Output::Pipe(file));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SinkError::Locked { path: self.name() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(self.open_error(e)),
        }
        let len = meta.len();
        let start = match self.existing {
            // Checked again under the lock: the file may have been written since `check`.
            Existing::Refuse if len > 0 => return Err(SinkError::Exists { path: self.name() }),
            Existing::Refuse | Existing::Overwrite => 0,
            Existing::Append => {
                last_complete_line_end(&mut file, len).map_err(|e| self.open_error(e))?
            }
        };
        file.set_len(start).map_err(|e| self.open_error(e))?;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| self.open_error(e))?;
        Ok(Output::File { file, len: start })
    }

    /// Opening a FIFO for writing blocks until a reader opens it; a silent hang is the worst
    /// answer, so poll without blocking, say once what we wait for, and honour `stop`.
    fn open_fifo(&self, stop: &Receiver<()>) -> Result<File, SinkError> {
        let mut said = false;
        loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path)
            {
                Ok(file) => {
                    set_blocking(&file).map_err(|e| self.open_error(e))?;
                    return Ok(file);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    if !said {
                        eprintln!(
                            "powerapi: waiting for a reader on the FIFO {} (for example `cat {}`)",
                            self.name(),
                            self.name()
                        );
                        said = true;
                    }
                    match stop.recv_timeout(Duration::from_millis(100)) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return Err(SinkError::Interrupted { path: self.name() }),
                    }
                }
                Err(e) => return Err(self.open_error(e)),
            }
        }
    }
}

fn writable(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_blocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where appending starts: after the last `\n` (a line cut by a crash is dropped, not continued).
fn last_complete_line_end(file: &mut File, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

enum Output {
    Stdout(io::Stdout),
    Pipe(File),
    /// `len`: the end of the last complete interval written.
    File {
        file: File,
        len: u64,
    },
}

/// JSON Lines or CSV to a file, a FIFO or stdout, each interval written whole.
pub struct FileSink {
    name: String,
    out: Output,
    line_buf: Vec<u8>,
    format: Format,
    /// CSV: the header row is still to be written.
    header_due: bool,
}

impl FileSink {
    /// The file written to.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.name)
    }

    /// Bytes of complete intervals in a regular file; `None` for stdout, a FIFO or a device.
    pub fn file_len(&self) -> Option<u64> {
        match &self.out {
            Output::File { len, .. } => Some(*len),
            Output::Stdout(_) | Output::Pipe(_) => None,
        }
    }
}

impl Sink for FileSink {
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError> {
        self.line_buf.clear();
        match self.format {
            Format::JsonLines => {
                for record in records {
                    serde_json::to_writer(&mut self.line_buf, record)?;
                    self.line_buf.push(b'\n');
                }
            }
            Format::Csv => {
                crate::table::csv_rows(records, self.header_due, &mut self.line_buf)?;
            }
        }
        let result = match &mut self.out {
            Output::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(&self.line_buf).and_then(|()| out.flush())
            }
            Output::Pipe(file) => file.write_all(&self.line_buf),
            Output::File { file, len } => match file.write_all(&self.line_buf) {
                Ok(()) => {
                    *len += self.line_buf.len() as u64;
                    Ok(())
                }
                Err(e) => {
                    // Cut the partial interval off so the file ends with a complete line.
                    let _ = file.set_len(*len);
                    let _ = file.seek(SeekFrom::Start(*len));
                    Err(e)
                }
            },
        };
        if result.is_ok() && !self.line_buf.is_empty() {
            self.header_due = false;
        }
        result.map_err(|source| match source.kind() {
            io::ErrorKind::BrokenPipe if !matches!(self.out, Output::File { .. }) => {
                SinkError::Closed {
                    path: self.name.clone(),
                }
            }
            _ => SinkError::Write {
                path: self.name.clone(),
                source,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &Path, existing: Existing) -> OutputSpec {
        OutputSpec {
            path: path.to_path_buf(),
            existing,
            flag: "-o",
            format: Format::JsonLines,
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("powerapi-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn an_existing_trace_is_refused_unless_asked() {
        let d = dir("existing");
        let path = d.join("trace.jsonl");
        std::fs::write(&path, "old\n").expect("write");
        let err = spec(&path, Existing::Refuse).check().expect_err("refused");
        assert!(matches!(err, SinkError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "old\n");
        spec(&path, Existing::Append)
            .check()
            .expect("append is fine");
        // An empty file is no data to lose.
        std::fs::write(&path, "").expect("write");
        spec(&path, Existing::Refuse)
            .check()
            .expect("empty is fine");
        let err = spec(&d, Existing::Overwrite)
            .check()
            .expect_err("a directory");
        assert!(
            err.to_string().contains("choose a writable path with -o"),
            "{err}"
        );
        let err = spec(&d.join("no/such"), Existing::Refuse)
            .check()
            .expect_err("no parent");
        assert!(matches!(err, SinkError::Open { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn append_starts_after_the_last_complete_line_and_overwrite_starts_over() {
        let d = dir("append");
        let path = d.join("trace.jsonl");
        let (_tx, stop) = std::sync::mpsc::channel();
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").expect("write");
        let mut sink = spec(&path, Existing::Append).open(&stop).expect("open");
        sink.write_interval(&[]).expect("empty interval");
        let Output::File { len, .. } = sink.out else {
            panic!("a file")
        };
        assert_eq!(len, 8);
        drop(sink);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{\"a\":1}\n");
        let sink = spec(&path, Existing::Overwrite).open(&stop).expect("open");
        drop(sink);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_writer_is_refused_before_it_touches_the_file() {
        let d = dir("lock");
        let path = d.join("trace.jsonl");
        let (_tx, stop) = std::sync::mpsc::channel();
        let first = spec(&path, Existing::Refuse).open(&stop).expect("first");
        std::fs::write(&path, "kept\n").expect("write");
        let err = spec(&path, Existing::Overwrite)
            .open(&stop)
            .err()
            .expect("second refused");
        assert!(matches!(err, SinkError::Locked { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "kept\n");
        drop(first);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_device_is_written_as_is() {
        let (_tx, stop) = std::sync::mpsc::channel();
        let null = spec(Path::new("/dev/null"), Existing::Refuse);
        null.check().expect("/dev/null is fine");
        let mut sink = null.open(&stop).expect("open /dev/null");
        sink.write_interval(&[]).expect("write");
        assert!(matches!(sink.out, Output::Pipe(_)));
    }

    #[test]
    fn last_line_end_across_chunks() {
        let d = dir("chunks");
        let path = d.join("big");
        let mut text = "x".repeat(70_000);
        text.insert(10, '\n');
        std::fs::write(&path, &text).expect("write");
        let mut file = File::open(&path).expect("open");
        assert_eq!(last_complete_line_end(&mut file, 70_001).expect("scan"), 11);
        let _ = std::fs::remove_dir_all(&d);
    }
}
