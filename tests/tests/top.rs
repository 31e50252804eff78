//! `powerapi top` under a real pseudo-terminal: the burner shows up on top, keys work, `q` quits
//! with status 0 and the terminal is restored.

mod common;

use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{injected::*, *};

struct Pty {
    master: File,
    slave: OwnedFd,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Pty {
    fn open(rows: u16, cols: u16) -> Self {
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: valid out pointers; no name buffer or termios requested.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: openpty returned two new descriptors we now own.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let screen = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let (mut reader, mut answer, parser) = (
            master.try_clone().expect("dup"),
            master.try_clone().expect("dup"),
            screen.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                // Answer a cursor-position query, as a terminal would, should one come.
                if buf[..n].windows(4).any(|w| w == b"\x1b[6n") {
                    let _ = answer.write_all(b"\x1b[1;1R");
                }
                parser
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .process(&buf[..n]);
            }
        });
        Self {
            master,
            slave,
            screen,
        }
    }

    fn contents(&self) -> String {
        self.screen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .screen()
            .contents()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.contents();
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("write keys");
        std::thread::sleep(Duration::from_millis(250));
    }

    fn termios(&self) -> libc::termios {
        // SAFETY: zeroed termios is a valid out buffer; the slave fd is open.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::tcgetattr(self.slave.as_raw_fd(), &mut t) },
            0
        );
        t
    }
}

/// The first table row: the line after the one starting with the PID/TID header.
fn first_row(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("PID") || l.starts_with("TID"))
        .unwrap_or(0);
    lines
        .get(header + 1)
        .map(|l| l.to_string())
        .unwrap_or_default()
}

/// Starts `powerapi top ARGS` with the pty as its controlling terminal.
fn spawn_top(pty: &Pty, args: &[&str]) -> std::process::Child {
    spawn_top_env(pty, args, &[])
}

/// As [`spawn_top`], with these environment variables set for powerapi.
fn spawn_top_env(pty: &Pty, args: &[&str], env: &[(&str, &Path)]) -> std::process::Child {
    let fd = |pty: &Pty| Stdio::from(pty.slave.try_clone().expect("dup slave"));
    let mut top = Command::new(powerapi());
    top.arg("top")
        .args(args)
        .envs(env.iter().copied())
        .env("TERM", "xterm-256color")
        .stdin(fd(pty))
        .stdout(fd(pty))
        .stderr(fd(pty));
    // SAFETY: setsid and ioctl are async-signal-safe; the child makes the pty its terminal.
    unsafe {
        top.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    top.spawn().expect("powerapi top starts")
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "top did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_restored(pty: &Pty, before: &libc::termios) {
    std::thread::sleep(Duration::from_millis(200));
    let parser = pty.screen.lock().unwrap_or_else(|e| e.into_inner());
    assert!(!parser.screen().alternate_screen(), "alternate screen left");
    assert!(!parser.screen().hide_cursor(), "cursor shown again");
    drop(parser);
    let after = pty.termios();
    assert_eq!(
        after.c_lflag & (libc::ICANON | libc::ECHO),
        before.c_lflag & (libc::ICANON | libc::ECHO),
        "raw mode undone"
    );
}

#[test]
fn top_under_a_pty() {
    let Some(_lock) = bpf_test("top_under_a_pty") else {
        return;
    };
    let mut burner = Command::new(LOAD)
        .args(["burn", "20", "1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("burner");
    let mut pty = Pty::open(24, 80);
    let before = pty.termios();
    let mut child = spawn_top(&pty, &["--interval", "500ms", "--energy-source", "model"]);

    let text = pty.wait_for("the burner on top", |t| {
        first_row(t).contains("powerapi-load")
    });
    assert!(
        text.contains(" ESTIMATED "),
        "model figures are badged:\n{text}"
    );
    assert!(
        pty.screen
            .lock()
            .map(|p| p.screen().alternate_screen())
            .unwrap_or(false),
        "runs on the alternate screen"
    );

    pty.keys(">");
    pty.wait_for("sort by J", |t| t.contains("J▼"));
    pty.keys("/powerapi-l\r");
    let text = pty.wait_for("filter", |t| t.contains("filter: powerapi-l"));
    assert!(
        !text.contains("kworker"),
        "filter hides other rows:\n{text}"
    );
    pty.keys("\x1b"); // Esc clears the filter
    pty.wait_for("filter cleared", |t| !t.contains("filter: powerapi-l"));
    pty.keys("g");
    let text = pty.wait_for("group by thread", |t| t.contains("by thread"));
    assert!(text.lines().any(|l| l.starts_with("TID")), "{text}");
    pty.keys("?");
    pty.wait_for("help", |t| t.contains("invert the sort order"));
    // Esc closes the help, not top.
    pty.keys("\x1b");
    let text = pty.wait_for("help closed", |t| !t.contains("invert the sort order"));
    // At 80×24 the key hints fit, `h help` first.
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.starts_with("h help  q quit")),
        "{text}"
    );
    // The tree view is per process: the burner sits under this test, its parent.
    pty.keys("t");
    pty.wait_for("process tree", |t| {
        t.lines().any(|l| l.contains("└ powerapi-load"))
    });
    // Filtered down to the burner, its W is a real figure: the model gives it 8 W per busy CPU
    // here (10 W − 2 W idle per CPU), so more than 1 W.
    pty.keys("/powerapi-load\r");
    let text = pty.wait_for("the burner alone", |t| {
        t.contains("filter: powerapi-load") && first_row(t).contains("powerapi-load")
    });
    let w: f64 = first_row(&text)
        .split_whitespace()
        .nth(3)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0.0);
    assert!(w > 1.0, "the burner's W: {w}\n{text}");
    // c: the full command line of the selected row; k: asks before signalling, n declines.
    pty.keys("c");
    pty.wait_for("command line", |t| t.contains("powerapi-load burn 20 1"));
    pty.keys("k");
    pty.wait_for("signal prompt", |t| t.contains("send SIGTERM to"));
    pty.keys("n");
    pty.wait_for("prompt gone", |t| !t.contains("send SIGTERM to"));
    assert!(
        burner.try_wait().expect("burner").is_none(),
        "declined: still running"
    );
    pty.keys("q");

    let status = wait_exit(&mut child);
    let _ = burner.kill();
    let _ = burner.wait();
    assert!(status.success(), "top exited with {status}");
    assert_restored(&pty, &before);
}

#[test]
fn top_restores_the_terminal_on_sigterm_and_keeps_its_record() {
    let Some(_lock) = bpf_test("top_restores_the_terminal_on_sigterm") else {
        return;
    };
    let pty = Pty::open(30, 120);
    let before = pty.termios();
    let trace = temp_path("top.jsonl");
    let mut child = spawn_top(
        &pty,
        &[
            "--interval",
            "300ms",
            "--energy-source",
            "model",
            "--record",
            trace.to_str().expect("utf-8"),
        ],
    );
    pty.wait_for("a first interval", |t| t.contains("by process"));
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child);
    assert!(status.success(), "top exited with {status} on SIGTERM");
    assert_restored(&pty, &before);
    let records = read_records(&trace);
    let _ = std::fs::remove_file(&trace);
    let machines: Vec<_> = of_type(&records, "machine").collect();
    assert!(
        machines.len() >= 2,
        "--record wrote {} intervals",
        machines.len()
    );
    assert_eq!(
        machines.last().map(|m| m["interval"]["partial"].clone()),
        Some(serde_json::json!(true))
    );
    assert!(of_type(&records, "process").all(|r| r["energy"]["estimated"] == true));
}

#[test]
fn top_without_a_terminal_says_so() {
    let out = Command::new(powerapi())
        .args(["top"])
        .stdin(Stdio::null())
        .output()
        .expect("powerapi top runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs a terminal"), "{stderr}");
}

/// `top` splits energy with the same attribution as `record`: on issue 19's reference workload
/// (see `record_charges_the_reference_workload_…` in energy.rs), with default flags, each part is
/// charged its true energy and idle is the machine's power at zero busy, learned in this run.
#[test]
fn top_charges_the_reference_workload_its_energy_with_idle_at_zero_busy() {
    let Some(_lock) =
        bpf_test("top_charges_the_reference_workload_its_energy_with_idle_at_zero_busy")
    else {
        return;
    };
    let injector = Injector::start_model("top-reference", REFERENCE_MODEL.0, REFERENCE_MODEL.1);
    let state = temp_path("top-reference-state");
    let _ = std::fs::remove_dir_all(&state);
    let trace = temp_path("top-reference.jsonl");
    let source = format!("powercap-dir:{}", injector.dir.display());
    let mut pty = Pty::open(30, 120);
    let mut child = spawn_top_env(
        &pty,
        &[
            "--energy-source",
            &source,
            "--record",
            trace.to_str().expect("utf-8"),
        ],
        &[("POWERAPI_STATE_DIR", &state)],
    );
    pty.wait_for("a first interval", |t| t.contains("by process"));
    // A few quiet intervals first, as a machine has before a workload.
    std::thread::sleep(Duration::from_secs(2));
    let parts = reference_workload("top");
    std::thread::sleep(Duration::from_millis(1500));
    let text = pty.contents();
    pty.keys("q");
    let status = wait_exit(&mut child);
    assert!(status.success(), "top exited with {status}");
    let records = read_records(&trace);
    let _ = std::fs::remove_file(&trace);
    let _ = std::fs::remove_dir_all(&state);
    // The header names where idle came from: this run's fit, not a fallback.
    assert!(
        text.contains("(online)") || text.contains("(weak)"),
        "idle source on screen:\n{text}"
    );
    assert_reference_workload_charged(
        "top",
        &records,
        &parts,
        REFERENCE_MODEL,
        REFERENCE_TOLERANCE,
        REFERENCE_IDLE_TOLERANCE_W,
    );
}
