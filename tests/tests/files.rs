//! Never lose a file: an existing trace survives a failed start, a full disk leaves complete
//! lines, a second writer is refused, a FIFO without a reader says so, a closed pipe is a quiet end.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

const YESTERDAY: &str = "{\"type\":\"machine\",\"yesterday\":true}\n";

/// Without --append or --force an existing trace is refused before anything runs (no privilege
/// needed to see it); with --force a start that fails leaves it as it was.
#[test]
fn an_existing_trace_survives_a_refused_or_failed_start() {
    let path = temp_path("yesterday.jsonl");
    fs::write(&path, YESTERDAY).expect("write");
    let p = path.to_str().expect("utf-8 path");
    let (code, stderr) = powerapi_stderr(&["record", "--duration", "1s", "-o", p]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "powerapi: error: {p} already holds data; pass --append to add to it or --force to overwrite it, or choose another file\n"
        )
    );
    assert_eq!(fs::read_to_string(&path).expect("read"), YESTERDAY);
    // A start that fails (here: an energy tree that does not exist; without root, privileges).
    for existing in ["--force", "--append"] {
        let (code, stderr) = powerapi_stderr(&[
            "record",
            existing,
            "--energy-source",
            "powercap-dir:/nonexistent-powercap",
            "--duration",
            "1s",
            "-o",
            p,
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert_eq!(
            fs::read_to_string(&path).expect("read"),
            YESTERDAY,
            "{existing}: a failed start must not touch the file"
        );
    }
    let _ = fs::remove_file(&path);
}

#[test]
fn append_adds_whole_intervals_after_the_existing_lines() {
    let Some(_lock) = bpf_test("append_adds_whole_intervals_after_the_existing_lines") else {
        return;
    };
    let path = temp_path("append.jsonl");
    // A line cut by a crash is dropped, not continued.
    fs::write(&path, format!("{YESTERDAY}{{\"cut\":")).expect("write");
    let p = path.to_str().expect("utf-8 path");
    let (code, stderr) = powerapi_stderr(&[
        "record",
        "--append",
        "--counters",
        "none",
        "--interval",
        "100ms",
        "--duration",
        "0.3s",
        "-o",
        p,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let text = fs::read_to_string(&path).expect("read");
    assert!(text.starts_with(YESTERDAY), "{text}");
    let records = read_records(&path);
    assert_eq!(records[0]["yesterday"], true);
    assert!(of_type(&records, "machine").count() >= 3, "{text}");
    let _ = fs::remove_file(&path);
}

/// Root only: mounts a 40 KiB tmpfs and records into it until it is full.
#[test]
fn a_full_disk_leaves_complete_lines_and_says_why() {
    let Some(_lock) = bpf_test("a_full_disk_leaves_complete_lines_and_says_why") else {
        return;
    };
    let dir = temp_path("tiny-fs");
    let _ = fs::create_dir_all(&dir);
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40k", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        skip(
            "a_full_disk_leaves_complete_lines_and_says_why",
            "cannot mount a tmpfs",
        );
        return;
    }
    let path = dir.join("trace.jsonl");
    let started = Instant::now();
    let out = Command::new(powerapi())
        .args(["record", "--granularity", "thread", "--counters", "none"])
        .args(["--interval", "20ms", "--duration", "60s", "-o"])
        .arg(&path)
        .output()
        .expect("powerapi runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = fs::read_to_string(&path).unwrap_or_default();
    let _ = Command::new("umount").arg(&dir).status();
    let _ = fs::remove_dir(&dir);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "stopped at the full disk, not at --duration"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("No space left on device") && last.contains("last complete interval"),
        "{stderr}"
    );
    assert!(
        text.len() > 1000 && text.ends_with('\n'),
        "{} bytes",
        text.len()
    );
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is whole JSON");
    }
}

#[test]
fn a_second_recording_onto_the_same_file_is_refused() {
    let Some(_lock) = bpf_test("a_second_recording_onto_the_same_file_is_refused") else {
        return;
    };
    let first = Recording::start("locked", &["--interval", "100ms", "--counters", "none"]);
    let p = first.output.to_str().expect("utf-8 path").to_string();
    for existing in ["--append", "--force"] {
        let (code, stderr) = powerapi_stderr(&[
            "record",
            existing,
            "--counters",
            "none",
            "--duration",
            "1s",
            "-o",
            &p,
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.ends_with(&format!(
                "powerapi: error: {p} is being written by another powerapi; give each recording its own file\n"
            )),
            "{stderr}"
        );
    }
    let records = first.stop();
    assert!(of_type(&records, "machine").count() >= 2);
}

/// Reads stderr lines until one contains `needle` (or the stream ends); returns what was read.
fn read_until(stderr: &mut impl BufRead, needle: &str) -> String {
    let mut said = String::new();
    while !said.contains(needle) {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("stderr") == 0 {
            break;
        }
        said.push_str(&line);
    }
    said
}

#[test]
fn a_fifo_without_a_reader_says_what_it_waits_for() {
    let Some(_lock) = bpf_test("a_fifo_without_a_reader_says_what_it_waits_for") else {
        return;
    };
    let fifo = temp_path("trace.fifo");
    let _ = fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut child = Command::new(powerapi())
        .args(["record", "--counters", "none", "--interval", "100ms", "-o"])
        .arg(&fifo)
        .stderr(Stdio::piped())
        .spawn()
        .expect("powerapi runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let said = read_until(&mut stderr, "waiting for a reader");
    assert!(
        said.contains(&format!(
            "waiting for a reader on the FIFO {}",
            fifo.display()
        )),
        "{said}"
    );
    // A reader arrives: records flow.
    let mut reader = BufReader::new(fs::File::open(&fifo).expect("open the FIFO"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("a record");
    assert!(line.contains("\"machine\""), "{line}");
    // The reader goes away: a quiet end, exit 0.
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "record did not end when its reader left"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(!rest.contains("error"), "{rest}");

    // No reader ever: Ctrl-C ends the wait with one line.
    let mut child = Command::new(powerapi())
        .args(["record", "--counters", "none", "-o"])
        .arg(&fifo)
        .stderr(Stdio::piped())
        .spawn()
        .expect("powerapi runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    assert!(read_until(&mut stderr, "waiting for a reader").contains("waiting for a reader"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        rest.contains("interrupted while waiting for a reader on the FIFO"),
        "{rest}"
    );
    let _ = fs::remove_file(&fifo);
}

/// `record | head -1`: the reader closes stdout and record ends quietly with 0.
#[test]
fn a_closed_stdout_is_a_quiet_end() {
    let Some(_lock) = bpf_test("a_closed_stdout_is_a_quiet_end") else {
        return;
    };
    let mut child = Command::new(powerapi())
        .args(["record", "--counters", "none", "--interval", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("powerapi runs");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("a record");
    assert!(line.contains("\"machine\""), "{line}");
    drop(stdout);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "record did not end when stdout closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

/// Rotation by size with gzip and a retention count: every kept file (rotated or live) is whole
/// intervals starting with a machine record, the newest rotated files are the ones kept, and
/// nothing between the oldest kept interval and the last one is missing.
#[test]
fn rotated_traces_are_whole_intervals_gzip_d_and_pruned() {
    let Some(_lock) = bpf_test("rotated_traces_are_whole_intervals_gzip_d_and_pruned") else {
        return;
    };
    let dir = temp_path("rotation");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    let trace = dir.join("trace.jsonl");
    let out = Command::new(powerapi())
        .args([
            "record",
            "--interval",
            "200ms",
            "--duration",
            "3s",
            "--counters",
            "none",
            "--energy-source",
            "none",
            "--rotate-size",
            "4K",
            "--compress",
            "--keep",
            "3",
            "-o",
        ])
        .arg(&trace)
        .output()
        .expect("powerapi record");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: Vec<_> = fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != &trace)
        .collect();
    assert_eq!(rotated.len(), 3, "three kept: {rotated:?}");
    let mut files: Vec<Vec<u64>> = Vec::new();
    for path in rotated.iter().chain([&trace]) {
        let text = if path.extension().is_some_and(|e| e == "gz") {
            let mut text = String::new();
            flate2::read::GzDecoder::new(fs::File::open(path).expect("gz"))
                .read_to_string(&mut text)
                .expect("a whole gzip file");
            text
        } else {
            assert_eq!(path, &trace, "rotated files are compressed: {path:?}");
            fs::read_to_string(path).expect("read")
        };
        if text.is_empty() && path == &trace {
            continue; // rotated right after the last interval: the live file is new and empty
        }
        assert!(text.ends_with('\n'), "{path:?} ends with a complete line");
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        assert_eq!(records[0]["type"], "machine", "{path:?} starts an interval");
        files.push(
            of_type(&records, "machine")
                .map(|m| u64_of(&m["interval"]["seq"]))
                .collect(),
        );
    }
    // In the order of their contents: kept files must be the newest, so together with the live
    // file they hold one unbroken run of intervals up to the last.
    files.sort();
    let seqs: Vec<u64> = files.concat();
    let last = *seqs.last().expect("intervals");
    let first = seqs[0];
    assert!(first > 1, "the oldest rotated files were removed");
    assert_eq!(seqs, (first..=last).collect::<Vec<_>>(), "no interval lost");
    assert_eq!(last, 15, "3 s of 200 ms intervals");
    let _ = fs::remove_dir_all(&dir);
}
