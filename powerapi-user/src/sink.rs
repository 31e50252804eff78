//! Where records go. A sink receives whole intervals, so a file never ends mid-interval or
//! mid-line, even when the run is interrupted.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::report::Record;

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("cannot write {path}: {source}; choose a writable path with -o")]
    Open { path: String, source: io::Error },
    #[error("writing {path} failed: {source}")]
    Write { path: String, source: io::Error },
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Receives every interval's records.
pub trait Sink {
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError>;
}

/// JSON Lines to a file or stdout: one object per line, flushed at each interval.
pub struct JsonLinesSink {
    name: String,
    out: Box<dyn Write + Send>,
    line_buf: Vec<u8>,
}

impl JsonLinesSink {
    /// `-` is stdout. The file is created (truncated) now, so a bad path fails before measuring.
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        if path == Path::new("-") {
            return Ok(Self::new("stdout", Box::new(io::stdout())));
        }
        let file = File::create(path).map_err(|source| SinkError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::new(
            &path.display().to_string(),
            Box::new(BufWriter::new(file)),
        ))
    }

    pub fn new(name: &str, out: Box<dyn Write + Send>) -> Self {
        Self {
            name: name.to_string(),
            out,
            line_buf: Vec::new(),
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.name)
    }
}

impl Sink for JsonLinesSink {
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError> {
        self.line_buf.clear();
        for record in records {
            serde_json::to_writer(&mut self.line_buf, record)?;
            self.line_buf.push(b'\n');
        }
        let err = |source| SinkError::Write {
            path: self.name.clone(),
            source,
        };
        self.out.write_all(&self.line_buf).map_err(err)?;
        self.out.flush().map_err(err)
    }
}
