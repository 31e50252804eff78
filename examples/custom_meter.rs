//! A meter from powerapi's parts, with a formula (equal shares for the tasks that ran) and a sink
//! (the hungriest process per interval) of its own. As root: `cargo run --example custom_meter`.

use std::time::Duration;

use powerapi::formula::{Formula, Split};
use powerapi::{energy::Domain, pipeline::Pipeline, report::Record, sink::Sink, sink::SinkError};

/// Every task that ran gets the same share, however long it ran.
struct EqualShare;

impl Formula for EqualShare {
    fn name(&self) -> &str {
        "equal-share"
    }

    fn weights(&mut self, split: &Split<'_>, out: &mut [f64]) -> String {
        for (w, task) in out.iter_mut().zip(split.tasks) {
            *w = if task.on_cpu_ns > 0 { 1.0 } else { 0.0 };
        }
        "tasks-that-ran".into()
    }
}

/// Prints the process that drew the most package energy in each interval.
struct Hungriest;

impl Sink for Hungriest {
    fn write_interval(&mut self, records: &[Record]) -> Result<(), SinkError> {
        let top = records.iter().filter_map(|r| match r {
            Record::Process(p) => Some((*p.energy.as_ref()?.joules.get(&Domain::Package)?, p)),
            _ => None,
        });
        if let Some((joules, p)) = top.max_by(|a, b| a.0.total_cmp(&b.0)) {
            let estimated = p.energy.as_ref().is_some_and(|e| e.estimated);
            let (seq, comm, pid) = (p.interval.seq, &p.comm, p.pid);
            println!("interval {seq}: {comm} (pid {pid}) {joules:.3} J, estimated: {estimated}");
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let intervals: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let (_keep_running, stop) = std::sync::mpsc::channel();
    let mut meter = Pipeline::builder()
        .interval(Duration::from_millis(500))
        .duration(Duration::from_millis(500) * intervals)
        .formula(EqualShare)
        .sink("stdout", Hungriest)
        .start()?;
    println!("{} intervals", meter.run(&stop)?);
    Ok(())
}
