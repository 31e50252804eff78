//! The deployment files are real: the systemd unit verifies, the Kubernetes YAML parses and asks
//! for capabilities rather than `privileged`, and every metric the Grafana dashboard queries is
//! in a real scrape of `powerapi serve`.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;
use yaml_rust2::YamlLoader;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

#[test]
fn the_systemd_unit_verifies() {
    if !Path::new("/usr/bin/systemd-analyze").exists() {
        skip(
            "the_systemd_unit_verifies",
            "no systemd-analyze on this machine",
        );
        return;
    }
    let unit = fs::read_to_string(deploy("systemd/powerapi.service")).expect("unit");
    assert!(unit.contains("AmbientCapabilities=CAP_BPF CAP_PERFMON"));
    assert!(unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict"));
    assert!(!unit.contains("User=root"));
    // Verified with this build's binary in place of /usr/local/bin/powerapi.
    let dir = temp_path("systemd-unit");
    fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("powerapi.service");
    fs::write(
        &path,
        unit.replace("/usr/local/bin/powerapi", &powerapi().display().to_string()),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let _ = fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("powerapi.service"),
        "{text}"
    );
}

#[test]
fn the_kubernetes_manifests_parse_and_need_no_privileged_container() {
    let text = fs::read_to_string(deploy("kubernetes/powerapi.yaml")).expect("yaml");
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["Namespace", "DaemonSet", "Service", "ServiceMonitor"]
    );
    let ds = &docs[1]["spec"]["template"]["spec"];
    assert_eq!(ds["hostPID"].as_bool(), Some(true));
    let container = &ds["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    let added: Vec<&str> = security["capabilities"]["add"]
        .as_vec()
        .expect("capabilities")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(
        added.contains(&"BPF") && added.contains(&"PERFMON"),
        "{added:?}"
    );
    let mounts: Vec<(&str, bool)> = container["volumeMounts"]
        .as_vec()
        .expect("mounts")
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap_or(""),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert!(mounts.contains(&("/host/sys", true)), "{mounts:?}");
    let args: Vec<&str> = container["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&"--sysfs-root=/host"), "{args:?}");
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let Some(_lock) = bpf_test("every_metric_the_dashboard_queries_is_exported") else {
        return;
    };
    let dashboard: Value = serde_json::from_str(
        &fs::read_to_string(deploy("grafana/powerapi-dashboard.json")).expect("json"),
    )
    .expect("valid JSON");
    let mut wanted: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(i) = rest.find("powerapi_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                wanted.push(name);
            }
        }
    }
    assert!(wanted.len() >= 8, "{wanted:?}");
    let port = free_port();
    let mut serve = Command::new(powerapi())
        .args([
            "serve",
            "--counters",
            "none",
            "--energy-source",
            "model",
            "--interval",
            "300ms",
        ])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Some((200, t)) = get(port, "/metrics") {
            break t;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            panic!("no scrape from serve");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = serve.kill();
    let _ = serve.wait();
    // A family is exported when its TYPE line is there (a family with no series yet, such as
    // containers on a machine without any, still declares itself).
    for name in &wanted {
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which serve does not export"
        );
    }
}
