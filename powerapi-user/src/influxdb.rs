//! The InfluxDB 1.x sink: records as line protocol, POSTed to `/write?db=…&precision=ns`.
//!
//! Writes go through a relay: a thread of their own, a bounded queue, retries with backoff.

use std::{fmt::Write as _, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Uri, body::Bytes};
use hyper_util::rt::TokioIo;
use thiserror::Error;

use crate::{
    relay::{Failure, Relay, Transport},
    report::{CgroupRecord, MachineRecord, Mode, ModelRecord, Record, TaskEnergy, TaskRecord},
    sink::{Sink, SinkError},
};

#[derive(Debug, Error)]
/// A bad InfluxDB address.
pub enum InfluxError {
    #[error(
        "bad InfluxDB address {0:?}: write influxdb:http://HOST:PORT/DATABASE (https is not supported; put a TLS proxy on localhost)"
    )]
    /// The address as written.
    BadUrl(String),
}

/// Where to write: `http://HOST:PORT/DATABASE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InfluxTarget {
    /// Host name or address.
    pub host: String,
    /// HTTP port (8086 when not written).
    pub port: u16,
    /// Database to write to (it must exist).
    pub database: String,
}

impl InfluxTarget {
    /// Parses `http://HOST[:PORT]/DATABASE`.
    pub fn parse(url: &str) -> Result<Self, InfluxError> {
        let bad = || InfluxError::BadUrl(url.to_string());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") {
            return Err(bad());
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let database = uri.path().trim_matches('/');
        if database.is_empty() || database.contains('/') || uri.query().is_some() {
            return Err(bad());
        }
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port_u16().unwrap_or(8086),
            database: database.to_string(),
        })
    }

    fn write_path(&self) -> String {
        let mut db = String::new();
        for b in self.database.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                db.push(char::from(b));
            } else {
                let _ = write!(db, "%{b:02X}");
            }
        }
        format!("/write?db={db}&precision=ns")
    }
}

/// Line protocol for one interval's records: `process`, `thread` and `cgroup` points per task,
/// a `machine` point, and an `energy` point per measured domain and socket. Timestamps are the
/// interval's end (`time_unix_ns`).
pub fn encode(records: &[Record], host: &str, out: &mut String) {
    for record in records {
        match record {
            Record::Machine(m) => encode_machine(m, host, out),
            Record::Process(t) => encode_task("process", t, host, out),
            Record::Thread(t) => encode_task("thread", t, host, out),
            Record::Cgroup(c) => encode_cgroup(c, host, out),
            Record::Model(m) => encode_model(m, host, out),
        }
    }
}

/// Builds one point: tags (empty values left out, as line protocol requires), then fields.
struct Point<'a> {
    out: &'a mut String,
    fields: usize,
}

impl<'a> Point<'a> {
    fn new(out: &'a mut String, measurement: &str, host: &str) -> Self {
        escape(measurement, &[',', ' '], out);
        let mut point = Self { out, fields: 0 };
        point.tag("host", host);
        point
    }

    fn tag(&mut self, key: &str, value: &str) -> &mut Self {
        if !value.is_empty() {
            self.out.push(',');
            escape(key, &[',', '=', ' '], self.out);
            self.out.push('=');
            escape(value, &[',', '=', ' '], self.out);
        }
        self
    }

    fn key(&mut self, key: &str) {
        self.out.push(if self.fields == 0 { ' ' } else { ',' });
        self.fields += 1;
        escape(key, &[',', '=', ' '], self.out);
        self.out.push('=');
    }

    fn int(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{value}i");
        self
    }

    fn float(&mut self, key: &str, value: f64) -> &mut Self {
        // Line protocol has no NaN or infinity: such a figure is left out, not sent wrong.
        if value.is_finite() {
            self.key(key);
            let _ = write!(self.out, "{value:?}");
        }
        self
    }

    fn boolean(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    fn text(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.out.push('"');
        escape(value, &['"', '\\'], self.out);
        self.out.push('"');
        self
    }

    fn end(&mut self, time_unix_ns: u64) {
        let _ = writeln!(self.out, " {time_unix_ns}");
    }
}

/// Backslash-escapes `special`; control characters (a newline would end the point) become `?`.
fn escape(value: &str, special: &[char], out: &mut String) {
    for c in value.chars() {
        if c.is_control() {
            out.push('?');
            continue;
        }
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

fn counters(point: &mut Point<'_>, counters: &Option<std::collections::BTreeMap<String, u64>>) {
    for (name, value) in counters.iter().flatten() {
        point.int(name, *value);
    }
}

fn energy(point: &mut Point<'_>, energy: &Option<TaskEnergy>) {
    if let Some(e) = energy {
        for (domain, joules) in &e.joules {
            point.float(&format!("{domain}_joules"), *joules);
        }
        for (domain, watts) in &e.watts {
            point.float(&format!("{domain}_watts"), *watts);
        }
        point.boolean("estimated", e.estimated);
    }
}

fn encode_task(measurement: &str, t: &TaskRecord, host: &str, out: &mut String) {
    let pid = t.pid.to_string();
    let tid = t.tid.map(|tid| tid.to_string()).unwrap_or_default();
    let mut point = Point::new(out, measurement, host);
    point
        .tag("pid", &pid)
        .tag("tid", &tid)
        .tag("comm", &t.comm)
        .tag("user", &t.user)
        .tag("cgroup", t.cgroup.path.as_deref().unwrap_or(""))
        .tag(
            "container",
            t.cgroup.container.as_ref().map_or("", |c| c.id.as_str()),
        );
    point
        .int("on_cpu_ns", t.on_cpu_ns)
        .float("cpu_percent", t.cpu_percent)
        .boolean("exited", t.exited);
    counters(&mut point, &t.counters);
    energy(&mut point, &t.energy);
    point.end(t.interval.time_unix_ns);
}

fn encode_cgroup(c: &CgroupRecord, host: &str, out: &mut String) {
    let id = c.cgroup.id.to_string();
    let mut point = Point::new(out, "cgroup", host);
    point
        .tag("cgroup", c.cgroup.path.as_deref().unwrap_or(&id))
        .tag(
            "container",
            c.cgroup.container.as_ref().map_or("", |c| c.id.as_str()),
        )
        .tag("unit", c.cgroup.unit.as_deref().unwrap_or(""));
    point
        .int("on_cpu_ns", c.on_cpu_ns)
        .float("cpu_percent", c.cpu_percent)
        .int("processes", u64::from(c.processes));
    counters(&mut point, &c.counters);
    energy(&mut point, &c.energy);
    point.end(c.interval.time_unix_ns);
}

fn encode_model(m: &ModelRecord, host: &str, out: &mut String) {
    let fit = &m.fit;
    let socket = fit.key.socket.to_string();
    let layer = fit.layer_mhz.map(|l| l.to_string()).unwrap_or_default();
    let mut point = Point::new(out, "model", host);
    point
        .tag("domain", fit.key.domain.name())
        .tag("socket", &socket)
        .tag("layer_mhz", &layer);
    point.float("intercept_watts", fit.model.intercept_w);
    for (feature, w) in &fit.model.weights {
        point.float(&format!("{feature}_weight"), *w);
    }
    point
        .int("samples", fit.model.samples as u64)
        .float("error_watts", fit.model.error_w)
        .text("reason", &fit.reason);
    point.end(m.interval.time_unix_ns);
}

fn encode_machine(m: &MachineRecord, host: &str, out: &mut String) {
    let time = m.interval.time_unix_ns;
    let mut point = Point::new(out, "machine", host);
    point
        .int("duration_ns", m.interval.duration_ns)
        .int("cpus", u64::from(m.cpus))
        .int("busy_ns", m.busy_ns)
        .int("idle_ns", m.idle_ns)
        .int("capacity_ns", m.capacity_ns)
        .int("processes", m.processes)
        .int("lost_ns", m.losses.lost_ns)
        .int("meter_cpu_ns", m.meter.cpu_ns)
        .int("dropped_records", m.meter.dropped_records)
        .boolean("partial", m.interval.partial)
        .text(
            "mode",
            match m.mode {
                Mode::TimeOnly => "time-only",
                Mode::Counters => "counters",
            },
        );
    point.end(time);
    let Some(energy) = &m.energy else {
        return;
    };
    for d in &energy.domains {
        let socket = d.key.socket.to_string();
        let mut point = Point::new(out, "energy", host);
        point
            .tag("domain", d.key.domain.name())
            .tag("socket", &socket)
            .tag("source", &energy.source);
        point
            .float("measured_joules", d.measured_j)
            .float("idle_joules", d.idle_j)
            .float("attributed_joules", d.attributed_j)
            .float("unattributed_joules", d.unattributed_j)
            .float("power_watts", d.power_w)
            .float("idle_watts", d.idle_w)
            .boolean("estimated", energy.estimated);
        point.end(time);
    }
}

/// Sends each interval to InfluxDB from a thread of its own.
pub struct InfluxSink {
    host: String,
    relay: Relay,
    buf: String,
}

impl InfluxSink {
    /// Starts the sending thread; nothing is sent until the first interval.
    pub fn start(target: InfluxTarget, host: &str, max_bytes: u64) -> Self {
        let name = format!(
            "influxdb:http://{}:{}/{}",
            target.host, target.port, target.database
        );
        let relay = Relay::start(name, max_bytes, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            Ok(Http { runtime, target })
        });
        Self {
            host: host.to_string(),
            relay,
            buf: String::new(),
        }
    }
}

impl Sink for InfluxSink {
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError> {
        self.buf.clear();
        encode(records, &self.host, &mut self.buf);
        self.relay
            .push(std::mem::take(&mut self.buf), records.len() as u64)
    }

    fn dropped_records(&self) -> u64 {
        self.relay.dropped_records()
    }
}

/// HTTP/1.1 POSTs on a current-thread runtime of the sending thread's own.
struct Http {
    runtime: tokio::runtime::Runtime,
    target: InfluxTarget,
}

impl Transport for Http {
    fn send(&mut self, batch: &str, timeout: Duration) -> Result<(), Failure> {
        let batch = batch.to_string();
        self.runtime.block_on(async {
            tokio::time::timeout(timeout, post(&self.target, batch))
                .await
                .unwrap_or_else(|_| Err(Failure::Retry("no answer in time".into())))
        })
    }
}

async fn post(target: &InfluxTarget, batch: String) -> Result<(), Failure> {
    let address = format!("{}:{}", target.host, target.port);
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| Failure::Retry(format!("cannot connect to {address} ({e})")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failure::Retry(format!("HTTP handshake with {address} failed ({e})")))?;
    tokio::spawn(connection);
    let request = Request::post(target.write_path())
        .header(hyper::header::HOST, address.as_str())
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(batch)))
        .map_err(|e| Failure::Refused(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Failure::Retry(format!("the write to {address} failed ({e})")))?;
    let status = response.status();
    if status == StatusCode::NO_CONTENT || status.is_success() {
        return Ok(());
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    let why = format!(
        "HTTP {status}: {}",
        body.chars().take(200).collect::<String>()
    );
    if status == StatusCode::NOT_FOUND && body.contains("database not found") {
        // Most likely the database is yet to be created: say how, and keep trying.
        return Err(Failure::Retry(format!(
            "{why}; create it with: influx -execute 'CREATE DATABASE \"{}\"'",
            target.database
        )));
    }
    if status.is_client_error() {
        Err(Failure::Refused(why))
    } else {
        Err(Failure::Retry(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_the_form() {
        assert_eq!(
            InfluxTarget::parse("http://127.0.0.1:8086/powerapi").ok(),
            Some(InfluxTarget {
                host: "127.0.0.1".into(),
                port: 8086,
                database: "powerapi".into()
            })
        );
        let t = InfluxTarget::parse("http://influx.example/my db").ok();
        assert!(t.is_none(), "a space is not a URL");
        let t = InfluxTarget::parse("http://[::1]/energy").expect("IPv6, default port");
        assert_eq!((t.host.as_str(), t.port), ("::1", 8086));
        for bad in [
            "https://h/db",
            "http://h/",
            "http://h:8086",
            "http://h/a/b",
            "http://h/db?x=1",
            "h/db",
        ] {
            let e = InfluxTarget::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("influxdb:http://HOST:PORT/DATABASE"), "{e}");
        }
        let t = InfluxTarget::parse("http://h/pow%2Dapi").expect("escaped");
        assert_eq!(t.write_path(), "/write?db=pow%252Dapi&precision=ns");
    }

    #[test]
    fn records_become_points_with_their_figures() {
        let lines = [
            r#"{"type":"machine","schema":3,"interval":{"seq":2,"start_ns":1,"end_ns":1000000001,"duration_ns":1000000000,"time":"2026-11-24T21:22:04Z","time_unix_ns":1795555324000000000,"partial":false},"mode":"counters","counters":["cycles"],"cpus":2,"busy_ns":800,"idle_ns":1200,"capacity_ns":2000,"processes":3,"threads":4,"losses":{"lost_slices":0,"lost_ns":5,"exit_overflow":0,"stale_slices":0,"counter_read_errors":0},"meter":{"cpu_ns":7,"drain_us":1,"peak_rss_kib":1},"energy":{"source":"powercap","estimated":false,"idle_policy":"none","domains":[{"domain":"package","socket":1,"measured_j":11.5,"attributed_j":7.0,"idle_j":4.0,"unattributed_j":0.5,"power_w":11.5,"idle_w":4.0,"idle_source":"flag","metric":"cycles"}]}}"#,
            r#"{"type":"thread","schema":3,"interval":{"seq":2,"start_ns":1,"end_ns":1000000001,"duration_ns":1000000000,"time":"2026-11-24T21:22:04Z","time_unix_ns":1795555324000000000,"partial":false},"mode":"counters","pid":10,"tid":11,"comm":"web worker","uid":0,"user":"root","on_cpu_ns":600,"cpu_percent":0.5,"counters":{"cycles":1200},"cgroup":{"id":1,"path":"/system.slice/web.service","container":{"runtime":"docker","id":"abc"}},"exited":true,"energy":{"estimated":false,"joules":{"package":2.5},"watts":{"package":2.5}}}"#,
            r#"{"type":"cgroup","schema":3,"interval":{"seq":2,"start_ns":1,"end_ns":1000000001,"duration_ns":1000000000,"time":"2026-11-24T21:22:04Z","time_unix_ns":1795555324000000000,"partial":true},"mode":"time-only","cgroup":{"id":77,"unit":"web.service"},"on_cpu_ns":900,"cpu_percent":0.9,"processes":2}"#,
        ];
        let records: Vec<Record> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect();
        let mut out = String::new();
        encode(&records, "vm", &mut out);
        let t = "1795555324000000000";
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                format!(
                    "machine,host=vm duration_ns=1000000000i,cpus=2i,busy_ns=800i,idle_ns=1200i,capacity_ns=2000i,processes=3i,lost_ns=5i,meter_cpu_ns=7i,dropped_records=0i,partial=false,mode=\"counters\" {t}"
                ),
                format!(
                    "energy,host=vm,domain=package,socket=1,source=powercap measured_joules=11.5,idle_joules=4.0,attributed_joules=7.0,unattributed_joules=0.5,power_watts=11.5,idle_watts=4.0,estimated=false {t}"
                ),
                format!(
                    "thread,host=vm,pid=10,tid=11,comm=web\\ worker,user=root,cgroup=/system.slice/web.service,container=abc on_cpu_ns=600i,cpu_percent=0.5,exited=true,cycles=1200i,package_joules=2.5,package_watts=2.5,estimated=false {t}"
                ),
                format!(
                    "cgroup,host=vm,cgroup=77,unit=web.service on_cpu_ns=900i,cpu_percent=0.9,processes=2i {t}"
                ),
            ]
        );
    }

    #[test]
    fn line_protocol_escapes_tags_fields_and_control_characters() {
        let mut out = String::new();
        let mut p = Point::new(&mut out, "my process", "vm,1");
        p.tag("comm", "a b=c,d\\e").tag("empty", "");
        p.int("on_cpu_ns", 42)
            .float("w", 1.5)
            .float("nan", f64::NAN)
            .boolean("exited", true)
            .text("mode", "say \"hi\"\\\n");
        p.end(7);
        assert_eq!(
            out,
            "my\\ process,host=vm\\,1,comm=a\\ b\\=c\\,d\\e on_cpu_ns=42i,w=1.5,exited=true,mode=\"say \\\"hi\\\"\\\\?\" 7\n"
        );
    }
}
