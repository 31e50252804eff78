//! Rotation of file outputs for long-running tracing: by size and/or age, at interval
//! boundaries only (a rotated file ends with a complete interval and the new one starts with a
//! machine record), optionally gzip'd, with a retention count.
//!
//! Rotated files are named `FILE.YYYYMMDDTHHMMSSZ` (`.gz` when compressed): names sort in time
//! order, so retention is a sort, and no rename chain (`.1` → `.2` …) can be interrupted
//! half-way. Compression runs on a thread of its own so a large file never stalls the sensor;
//! it writes `NAME.gz.tmp` and renames, so a crash leaves either the plain file or a whole
//! `.gz`, never half of one.

use std::{
    fs::{self, File},
    io::{self, BufReader, BufWriter},
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use flate2::{Compression, write::GzEncoder};

use crate::{
    report::Record,
    sink::{Existing, FileSink, OutputSpec, Sink, SinkError},
};

/// When and how to rotate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file holds at least this many bytes.
    pub max_bytes: Option<u64>,
    /// Rotate once the file has been written this long.
    pub every: Option<Duration>,
    /// Gzip rotated files.
    pub compress: bool,
    /// Rotated files kept (the oldest go first); all when `None`.
    pub keep: Option<usize>,
}

impl Rotation {
    pub fn is_on(&self) -> bool {
        self.max_bytes.is_some() || self.every.is_some()
    }

    fn due(&self, len: u64, age: Duration) -> bool {
        self.max_bytes.is_some_and(|max| len >= max) || self.every.is_some_and(|e| age >= e)
    }
}

/// A file output that rotates.
pub struct RotatingSink {
    spec: OutputSpec,
    rotation: Rotation,
    inner: FileSink,
    opened: Instant,
    compressing: Vec<JoinHandle<()>>,
}

impl RotatingSink {
    pub fn open(
        spec: OutputSpec,
        rotation: Rotation,
        stop: &mpsc::Receiver<()>,
    ) -> Result<Self, SinkError> {
        let inner = spec.open(stop)?;
        if inner.file_len().is_none() {
            return Err(SinkError::NotRotatable {
                path: spec.path.display().to_string(),
            });
        }
        Ok(Self {
            spec,
            rotation,
            inner,
            opened: Instant::now(),
            compressing: Vec::new(),
        })
    }

    fn rotate(&mut self) -> Result<(), SinkError> {
        let path = self.spec.path.clone();
        let error = |source: io::Error| SinkError::Rotate {
            path: path.display().to_string(),
            source,
        };
        let rotated = free_name(&path, SystemTime::now());
        fs::rename(&path, &rotated).map_err(error)?;
        let fresh = OutputSpec {
            existing: Existing::Overwrite,
            ..self.spec.clone()
        };
        // A regular file never waits for a reader, so nothing will be sent on this channel.
        let (_never, stop) = mpsc::channel();
        self.inner = fresh.open(&stop)?;
        self.opened = Instant::now();
        let keep = self.rotation.keep;
        self.compressing.retain(|h| !h.is_finished());
        if self.rotation.compress {
            let spawned = std::thread::Builder::new()
                .name("compress".into())
                .spawn(move || {
                    if let Err(e) = gzip(&rotated) {
                        eprintln!(
                            "powerapi: compressing {} failed ({e}); it stays uncompressed",
                            rotated.display()
                        );
                    }
                    prune(&path, keep);
                });
            if let Ok(handle) = spawned {
                self.compressing.push(handle);
            }
        } else {
            prune(&path, keep);
        }
        Ok(())
    }
}

impl Sink for RotatingSink {
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError> {
        self.inner.write_interval(records)?;
        let len = self.inner.file_len().unwrap_or(0);
        if self.rotation.due(len, self.opened.elapsed()) {
            self.rotate()?;
        }
        Ok(())
    }
}

impl Drop for RotatingSink {
    /// Waits for compressions under way: a run that ends leaves whole `.gz` files.
    fn drop(&mut self) {
        for handle in self.compressing.drain(..) {
            let _ = handle.join();
        }
    }
}

/// `FILE.YYYYMMDDTHHMMSSZ`, with `.N` added if two rotations fall in one second.
fn free_name(path: &Path, now: SystemTime) -> PathBuf {
    let base = rotated_name(path, now);
    let taken = |p: &Path| p.exists() || gz_of(p).exists();
    if !taken(&base) {
        return base;
    }
    (1..)
        .map(|n| PathBuf::from(format!("{}.{n}", base.display())))
        .find(|p| !taken(p))
        .unwrap_or(base)
}

fn rotated_name(path: &Path, now: SystemTime) -> PathBuf {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    PathBuf::from(format!("{}.{stamp}", path.display()))
}

fn gz_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.gz", path.display()))
}

fn gzip(path: &Path) -> io::Result<()> {
    let gz = gz_of(path);
    let tmp = PathBuf::from(format!("{}.tmp", gz.display()));
    let mut input = BufReader::new(File::open(path)?);
    let mut encoder = GzEncoder::new(BufWriter::new(File::create(&tmp)?), Compression::default());
    io::copy(&mut input, &mut encoder)?;
    encoder
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    fs::rename(&tmp, &gz)?;
    fs::remove_file(path)
}

/// Rotated files with their order; a rotation caught between its `.gz` appearing and its plain
/// file going has both, under one order.
fn rotations(path: &Path) -> Vec<((String, u64), PathBuf)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut found: Vec<((String, u64), PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().into_string().ok()?;
            let order = rotation_order(file.strip_prefix(&prefix)?)?;
            Some((order, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// For `YYYYMMDDTHHMMSSZ`, then optionally `.N` and `.gz` (not `.gz.tmp`: a compression under
/// way): the time stamp and N (0 without), which order rotations. By N as a number: in one
/// second, `.2` came before `.10`, and the one without N before both.
fn rotation_order(rest: &str) -> Option<(String, u64)> {
    let rest = rest.strip_suffix(".gz").unwrap_or(rest);
    let (stamp, n) = rest.split_once('.').unwrap_or((rest, "0"));
    let b = stamp.as_bytes();
    let is_stamp = b.len() == 16
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z';
    let n = n
        .parse()
        .ok()
        .filter(|_| n.bytes().all(|c| c.is_ascii_digit()))?;
    is_stamp.then(|| (stamp.to_string(), n))
}

/// Removes the oldest rotated files beyond `keep`.
fn prune(path: &Path, keep: Option<usize>) {
    let Some(keep) = keep else {
        return;
    };
    let files = rotations(path);
    let mut orders: Vec<&(String, u64)> = files.iter().map(|(o, _)| o).collect();
    orders.dedup();
    let excess = orders.len().saturating_sub(keep);
    let Some(&newest_removed) = excess.checked_sub(1).and_then(|i| orders.get(i)) else {
        return;
    };
    let newest_removed = newest_removed.clone();
    for (_, old) in files.iter().filter(|(o, _)| *o <= newest_removed) {
        if let Err(e) = fs::remove_file(old) {
            eprintln!(
                "powerapi: cannot remove the old trace {} ({e}); remove it by hand",
                old.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory of this test's own.
    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("powerapi-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    /// Rotated files of `path` (plain or `.gz`), oldest first.
    fn rotated_files(path: &Path) -> Vec<PathBuf> {
        rotations(path).into_iter().map(|(_, p)| p).collect()
    }

    #[test]
    fn rotation_is_due_by_size_or_age() {
        let r = Rotation {
            max_bytes: Some(100),
            every: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        assert!(!r.due(99, Duration::from_secs(59)));
        assert!(r.due(100, Duration::ZERO));
        assert!(r.due(0, Duration::from_secs(60)));
        assert!(!Rotation::default().due(u64::MAX, Duration::MAX));
        assert!(!Rotation::default().is_on() && r.is_on());
        let by_size = Rotation {
            max_bytes: Some(1),
            ..Default::default()
        };
        let by_age = Rotation {
            every: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        assert!(by_size.is_on() && by_age.is_on(), "either alone rotates");
    }

    #[test]
    fn names_sort_in_time_and_only_rotated_files_are_pruned() {
        let dir = fresh_dir("rotate");
        let path = dir.join("trace.jsonl");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(
            rotated_name(&path, t0).file_name().and_then(|n| n.to_str()),
            Some("trace.jsonl.20261118T110640Z")
        );
        for (i, suffix) in ["", ".gz", ".1", ".1.gz"].iter().enumerate() {
            let name = format!(
                "{}{suffix}",
                rotated_name(&path, t0 + Duration::from_secs(i as u64)).display()
            );
            fs::write(&name, "x\n").expect("write");
        }
        // Not ours: the live file, a compression under way, a look-alike.
        for other in [
            "trace.jsonl",
            "trace.jsonl.20261118T110650Z.gz.tmp",
            "trace.jsonl.bak",
            "trace.jsonl.2026",
        ] {
            fs::write(dir.join(other), "y\n").expect("write");
        }
        assert_eq!(rotated_files(&path).len(), 4);
        prune(&path, Some(2));
        let left: Vec<String> = rotated_files(&path)
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .collect();
        assert_eq!(
            left,
            [
                "trace.jsonl.20261118T110642Z.1",
                "trace.jsonl.20261118T110643Z.1.gz"
            ]
        );
        assert!(dir.join("trace.jsonl.bak").exists() && path.exists());
        // Two rotations in one second get distinct names.
        let taken = rotated_name(&path, t0 + Duration::from_secs(2));
        assert!(!taken.exists());
        fs::write(&taken, "z\n").expect("write");
        assert_eq!(
            free_name(&path, t0 + Duration::from_secs(2)),
            PathBuf::from(format!("{}.2", taken.display())),
            ".1 is taken too"
        );
        prune(&path, None);
        assert_eq!(rotated_files(&path).len(), 3, "no --keep: everything stays");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotations_in_one_second_keep_their_order() {
        let mut names = [
            "20261118T110640Z.10.gz",
            "20261118T110640Z.2",
            "20261118T110641Z",
            "20261118T110640Z.gz",
            "20261118T110640Z.1.gz",
        ];
        names.sort_by_key(|n| rotation_order(n));
        assert_eq!(
            names,
            [
                "20261118T110640Z.gz",
                "20261118T110640Z.1.gz",
                "20261118T110640Z.2",
                "20261118T110640Z.10.gz",
                "20261118T110641Z",
            ]
        );
        for bad in [
            "20261118T110640Z.gz.tmp",
            "2026",
            "20261118T110640Z.",
            "x0261118T110640Z",
        ] {
            assert_eq!(rotation_order(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_rotation_caught_mid_compression_counts_once() {
        let dir = fresh_dir("midgz");
        let path = dir.join("t.jsonl");
        for name in [
            "t.jsonl.20261118T110640Z",
            "t.jsonl.20261118T110641Z",
            "t.jsonl.20261118T110641Z.gz",
            "t.jsonl.20261118T110642Z.gz",
        ] {
            fs::write(dir.join(name), "x\n").expect("write");
        }
        prune(&path, Some(2));
        let mut left: Vec<String> = fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "t.jsonl.20261118T110641Z",
                "t.jsonl.20261118T110641Z.gz",
                "t.jsonl.20261118T110642Z.gz"
            ]
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn gzip_replaces_the_file_with_a_whole_archive() {
        use std::io::Read;
        let dir = fresh_dir("gzip");
        let path = dir.join("t.jsonl.20261118T110640Z");
        let text = "{\"type\":\"machine\"}\n".repeat(1000);
        fs::write(&path, &text).expect("write");
        gzip(&path).expect("gzip");
        assert!(!path.exists());
        let mut back = String::new();
        flate2::read::GzDecoder::new(File::open(gz_of(&path)).expect("gz"))
            .read_to_string(&mut back)
            .expect("decompress");
        assert_eq!(back, text);
        let _ = fs::remove_dir_all(&dir);
    }
}
