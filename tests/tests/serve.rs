//! `powerapi serve` against a real Prometheus (Debian's `prometheus`, installed the way
//! `cargo xtask setup` installs what it needs), and against clients that misbehave.

mod common;

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

/// An instant query through Prometheus's HTTP API: the first sample's value.
fn query(port: u16, promql: &str) -> Option<f64> {
    let (status, body) = get(port, &format!("/api/v1/query?query={}", url_encode(promql)))?;
    if status != 200 {
        return None;
    }
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    let json: Value = serde_json::from_str(&body[start..=end]).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The prometheus binary, installed with apt-get when missing and we are root.
fn prometheus() -> Option<&'static str> {
    debian_binary("prometheus", "/usr/bin/prometheus")
}

fn start_serve(port: u16, extra: &[&str]) -> Killed {
    let child = Command::new(powerapi())
        .args(["serve", "--counters", "none", "--energy-source", "model"])
        .args([
            "--interval",
            "500ms",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .expect("powerapi serve");
    wait_until("serve's first interval", Duration::from_secs(30), || {
        get(port, "/healthz").filter(|(s, _)| *s == 200)
    });
    Killed(child)
}

#[test]
fn a_real_prometheus_scrapes_serve() {
    let Some(_lock) = bpf_test("a_real_prometheus_scrapes_serve") else {
        return;
    };
    let Some(prometheus) = prometheus() else {
        skip(
            "a_real_prometheus_scrapes_serve",
            "no prometheus binary and cannot install it (apt-get install prometheus)",
        );
        return;
    };
    let serve_port = free_port();
    let _serve = start_serve(serve_port, &["--top", "5"]);
    let _burner = Killed(
        Command::new(LOAD)
            .args(["burn", "60"])
            .stdout(Stdio::null())
            .spawn()
            .expect("burner"),
    );
    let dir = temp_path("prometheus");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("data")).expect("mkdir");
    fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: powerapi\n    static_configs:\n      - targets: ['127.0.0.1:{serve_port}']\n"
        ),
    )
    .expect("config");
    let prom_port = free_port();
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    );
    // The burner's energy counter, under its comm, increasing.
    let burner = r#"powerapi_process_energy_joules_total{comm="powerapi-load",zone="package"}"#;
    let first = wait_until("the burner in Prometheus", Duration::from_secs(60), || {
        query(prom_port, burner)
    });
    std::thread::sleep(Duration::from_secs(3));
    let second = wait_until("a later sample", Duration::from_secs(10), || {
        query(prom_port, burner).filter(|v| *v > first)
    });
    assert!(second > first);
    // rate() of the node counter against the node power gauge: the model with a steady burner
    // gives a steady power (measured here: 1.4 % apart; the issue asks for 5 %).
    std::thread::sleep(Duration::from_secs(6));
    let rate = wait_until("rate", Duration::from_secs(10), || {
        query(
            prom_port,
            "sum(rate(powerapi_node_energy_joules_total[5s]))",
        )
    });
    let gauge = wait_until("gauge", Duration::from_secs(10), || {
        query(
            prom_port,
            "sum(avg_over_time(powerapi_node_power_watts[5s]))",
        )
    });
    eprintln!("rate {rate:.3} W, gauge {gauge:.3} W");
    assert!(
        (rate - gauge).abs() <= gauge * 0.05,
        "rate {rate} W vs gauge {gauge} W"
    );
    // The node's energy is its idle, attributed and unattributed parts, in one scrape.
    let parts = wait_until("the parts", Duration::from_secs(10), || {
        query(
            prom_port,
            "sum(powerapi_node_energy_joules_total) - (sum(powerapi_node_idle_energy_joules_total) + sum(powerapi_node_attributed_energy_joules_total) + sum(powerapi_node_unattributed_energy_joules_total))",
        )
    });
    let total = query(prom_port, "sum(powerapi_node_energy_joules_total)").expect("total");
    assert!(
        parts.abs() <= 1e-6 * total,
        "measured − parts = {parts} J of {total} J"
    );
    let _ = fs::remove_dir_all(&dir);
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_clients_cannot_stall_serve() {
    let Some(_lock) = bpf_test("hostile_clients_cannot_stall_serve") else {
        return;
    };
    let port = free_port();
    let serve = start_serve(port, &[]);
    let pid = serve.0.id();
    let rss_before = rss_kib(pid);
    // 1,000 connections that never send a header, and 20 that send one slowly.
    let mut idle: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    for stream in idle.iter_mut().take(20) {
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
    }
    // Scrapes still answer, and the collector keeps measuring.
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = wait_until("a scrape under load", Duration::from_secs(10), || {
        get(port, "/metrics")
    });
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("powerapi_node_energy_joules_total"));
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    // A huge request is refused, not buffered.
    let mut big = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    big.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let header = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let _ = big.write_all(header.as_bytes());
    let mut reply = String::new();
    let _ = big.read_to_string(&mut reply);
    assert!(
        !reply.starts_with("HTTP/1.1 200"),
        "{}",
        &reply[..reply.len().min(80)]
    );
    // The silent ones are closed after the header deadline (5 s).
    std::thread::sleep(Duration::from_secs(6));
    let mut closed = 0;
    for stream in idle.iter_mut() {
        stream
            .set_read_timeout(Some(Duration::from_millis(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        // Closed: end of stream, a reset, or a 408 before the close; open: the read times out.
        match stream.read(&mut buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            _ => closed += 1,
        }
    }
    assert!(closed >= 900, "only {closed} of {} closed", idle.len());
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    let grown = rss_kib(pid).saturating_sub(rss_before);
    // Measured here: a few MiB for 1,000 connections; 64 MiB would mean per-connection buffers
    // that grow with what clients send.
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
}

/// `serve --sink` writes the records `record` would, beside the metrics, and its last partial
/// interval on SIGINT.
#[test]
fn serve_also_writes_records_to_its_sinks() {
    let Some(_lock) = bpf_test("serve_also_writes_records_to_its_sinks") else {
        return;
    };
    let trace = temp_path("serve-sink.csv");
    let _ = fs::remove_file(&trace);
    let port = free_port();
    let sink = format!("csv:{}", trace.display());
    let mut serve = start_serve(port, &["--sink", &sink]);
    std::thread::sleep(Duration::from_millis(1200));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(serve.0.id() as i32, libc::SIGINT) };
    let status = serve.0.wait().expect("serve exits");
    assert!(status.success(), "{status}");
    let machines: Vec<_> = read_csv(&trace)
        .into_iter()
        .filter(|r| r["type"] == "machine")
        .collect();
    assert!(machines.len() >= 3, "{} intervals", machines.len());
    let last = machines.last().expect("a machine row");
    assert_eq!(last["partial"], "true", "the interval cut by SIGINT");
    assert!(
        machines[..machines.len() - 1]
            .iter()
            .all(|m| m["partial"] == "false")
    );
    let _ = fs::remove_file(&trace);
}

/// A pipeline written as one list of sinks: `--sink prometheus:ADDR` is where serve listens.
#[test]
fn the_prometheus_endpoint_can_be_written_as_a_sink() {
    let Some(_lock) = bpf_test("the_prometheus_endpoint_can_be_written_as_a_sink") else {
        return;
    };
    let port = free_port();
    let child = Command::new(powerapi())
        .args(["serve", "--counters", "none", "--energy-source", "model"])
        .args(["--interval", "500ms", "--sink"])
        .arg(format!("prometheus:127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()
        .expect("powerapi serve");
    let _serve = Killed(child);
    let (status, body) = wait_until(
        "serve on the sink's address",
        Duration::from_secs(30),
        || get(port, "/metrics").filter(|(s, b)| *s == 200 && b.contains("powerapi_node_")),
    );
    assert_eq!(status, 200, "{body}");
}
