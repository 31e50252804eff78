//! Records as flat rows (CSV): one row per machine, process, thread or cgroup record, with a
//! fixed set of columns so every row of a file lines up under one header. Figures that have no
//! meaning for a row type (a machine's pid) are left empty, never 0.

use csv::WriterBuilder;

use crate::{
    energy::Domain,
    report::{Record, TaskEnergy},
};

const FIXED: [&str; 16] = [
    "type",
    "time",
    "time_unix_ns",
    "seq",
    "duration_ns",
    "partial",
    "pid",
    "tid",
    "comm",
    "user",
    "cgroup",
    "container",
    "on_cpu_ns",
    "cpu_percent",
    "exited",
    "estimated",
];

/// The header: the fixed columns, joules per domain, then watts (the sum over domains, like
/// `top`'s W column is package + DRAM plus whatever else was measured).
pub fn header() -> Vec<String> {
    let mut columns: Vec<String> = FIXED.iter().map(|c| c.to_string()).collect();
    columns.extend(Domain::ALL.iter().map(|d| format!("{d}_joules")));
    columns.push("idle_joules".into());
    columns.push("watts".into());
    columns
}

/// Appends CSV rows for `records` (and the header first when `header` is set) to `out`.
pub fn csv_rows(records: &[Record], header_row: bool, out: &mut Vec<u8>) -> csv::Result<()> {
    let mut writer = WriterBuilder::new().from_writer(out);
    if header_row {
        writer.write_record(header())?;
    }
    // Model records have coefficients, not the table's figures: JSON lines and InfluxDB keep
    // them.
    for record in records.iter().filter(|r| !matches!(r, Record::Model(_))) {
        writer.write_record(row(record))?;
    }
    writer.flush()?;
    Ok(())
}

fn row(record: &Record) -> Vec<String> {
    let text = |v: &str| v.to_string();
    let (kind, interval) = match record {
        Record::Machine(m) => ("machine", &m.interval),
        Record::Process(t) => ("process", &t.interval),
        Record::Thread(t) => ("thread", &t.interval),
        Record::Cgroup(c) => ("cgroup", &c.interval),
        Record::Model(m) => ("model", &m.interval),
    };
    let mut cells = vec![
        text(kind),
        interval.time.clone(),
        interval.time_unix_ns.to_string(),
        interval.seq.to_string(),
        interval.duration_ns.to_string(),
        interval.partial.to_string(),
    ];
    let mut joules = [None; Domain::ALL.len()];
    let mut idle = None;
    let mut watts = None;
    let mut estimated = None;
    let mut put_energy = |e: &TaskEnergy| {
        for (domain, j) in &e.joules {
            joules[domain.index()] = Some(*j);
        }
        watts = Some(e.watts.values().sum::<f64>());
        estimated = Some(e.estimated);
    };
    match record {
        Record::Machine(m) => {
            cells.extend(["", "", "", "", "", ""].map(text));
            cells.push(m.busy_ns.to_string());
            cells.push(String::new());
            cells.push(String::new());
            if let Some(e) = &m.energy {
                for d in &e.domains {
                    *joules[d.key.domain.index()].get_or_insert(0.0) += d.measured_j;
                    *idle.get_or_insert(0.0) += d.idle_j;
                    *watts.get_or_insert(0.0) += d.power_w;
                }
                estimated = Some(e.estimated);
            }
        }
        Record::Process(t) | Record::Thread(t) => {
            cells.push(t.pid.to_string());
            cells.push(t.tid.map(|t| t.to_string()).unwrap_or_default());
            cells.push(t.comm.clone());
            cells.push(t.user.clone());
            cells.push(t.cgroup.path.clone().unwrap_or_default());
            cells.push(
                t.cgroup
                    .container
                    .as_ref()
                    .map(|c| c.id.clone())
                    .unwrap_or_default(),
            );
            cells.push(t.on_cpu_ns.to_string());
            cells.push(t.cpu_percent.to_string());
            cells.push(t.exited.to_string());
            if let Some(e) = &t.energy {
                put_energy(e);
            }
        }
        Record::Cgroup(c) => {
            cells.extend(["", "", "", ""].map(text));
            cells.push(
                c.cgroup
                    .path
                    .clone()
                    .unwrap_or_else(|| c.cgroup.id.to_string()),
            );
            cells.push(
                c.cgroup
                    .container
                    .as_ref()
                    .map(|c| c.id.clone())
                    .unwrap_or_default(),
            );
            cells.push(c.on_cpu_ns.to_string());
            cells.push(c.cpu_percent.to_string());
            cells.push(String::new());
            if let Some(e) = &c.energy {
                put_energy(e);
            }
        }
        // Left out by `csv_rows`; a row of empty cells if called directly.
        Record::Model(_) => cells.extend(std::iter::repeat_n(String::new(), 9)),
    }
    cells.push(estimated.map(|e| e.to_string()).unwrap_or_default());
    let figure = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    cells.extend(joules.iter().map(|j| figure(*j)));
    cells.push(figure(idle));
    cells.push(figure(watts));
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        let lines = [
            r#"{"type":"machine","schema":3,"interval":{"seq":2,"start_ns":1,"end_ns":1000000001,"duration_ns":1000000000,"time":"2026-11-24T21:22:04.753940243Z","time_unix_ns":1795555324753940243,"partial":false},"mode":"time-only","counters":[],"cpus":2,"busy_ns":884250798,"idle_ns":1115776700,"capacity_ns":2000027498,"processes":14,"threads":14,"losses":{"lost_slices":0,"lost_ns":0,"exit_overflow":0,"stale_slices":0,"counter_read_errors":0},"meter":{"cpu_ns":1230000,"drain_us":375,"peak_rss_kib":46224},"energy":{"source":"powercap","estimated":false,"idle_policy":"none","domains":[{"domain":"package","socket":0,"measured_j":11.0,"attributed_j":7.0,"idle_j":4.0,"unattributed_j":0.0,"power_w":11.0,"idle_w":4.0,"idle_source":"flag","metric":"cpu-time"},{"domain":"package","socket":1,"measured_j":9.0,"attributed_j":5.0,"idle_j":4.0,"unattributed_j":0.0,"power_w":9.0,"idle_w":4.0,"idle_source":"flag","metric":"cpu-time"},{"domain":"dram","socket":0,"measured_j":2.0,"attributed_j":1.0,"idle_j":1.0,"unattributed_j":0.0,"power_w":2.0,"idle_w":1.0,"idle_source":"flag","metric":"cpu-time"}]}}"#,
            r#"{"type":"process","schema":3,"interval":{"seq":2,"start_ns":1,"end_ns":1000000001,"duration_ns":1000000000,"time":"2026-11-24T21:22:04.753940243Z","time_unix_ns":1795555324753940243,"partial":false},"mode":"time-only","pid":21268,"comm":"a, \"quoted\" name","uid":0,"user":"root","on_cpu_ns":878673255,"cpu_percent":87.5,"threads":1,"cgroup":{"id":1,"path":"/"},"exited":true,"energy":{"estimated":false,"joules":{"package":7.0,"dram":0.5},"watts":{"package":7.0,"dram":0.5}}}"#,
        ];
        lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect()
    }

    #[test]
    fn rows_line_up_under_the_header_and_quote_what_needs_it() {
        let mut out = Vec::new();
        csv_rows(&records(), true, &mut out).expect("csv");
        let text = String::from_utf8(out).expect("utf-8");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(String::from)
            .collect();
        assert_eq!(header, self::header());
        let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
        assert_eq!(rows.len(), 2);
        let col = |row: &csv::StringRecord, name: &str| -> String {
            let i = header.iter().position(|h| h == name).expect(name);
            row[i].to_string()
        };
        let (machine, process) = (&rows[0], &rows[1]);
        // The machine: both sockets' package summed, DRAM, idle, and power over domains.
        assert_eq!(col(machine, "package_joules"), "20");
        assert_eq!(col(machine, "dram_joules"), "2");
        assert_eq!(col(machine, "idle_joules"), "9");
        assert_eq!(col(machine, "watts"), "22");
        assert_eq!(col(machine, "on_cpu_ns"), "884250798");
        assert_eq!(col(machine, "pid"), "", "no pid for a machine row");
        assert_eq!(
            col(machine, "core_joules"),
            "",
            "not measured is empty, not 0"
        );
        // The process, its awkward name intact after quoting.
        assert_eq!(col(process, "comm"), "a, \"quoted\" name");
        assert_eq!(col(process, "pid"), "21268");
        assert_eq!(col(process, "watts"), "7.5");
        assert_eq!(col(process, "exited"), "true");
        assert_eq!(col(process, "estimated"), "false");
        assert_eq!(col(process, "time_unix_ns"), "1795555324753940243");
    }

    #[test]
    fn no_header_when_appending() {
        let mut out = Vec::new();
        csv_rows(&records()[1..], false, &mut out).expect("csv");
        assert!(String::from_utf8_lossy(&out).starts_with("process,"));
    }
}
