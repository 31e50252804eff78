//! The task sensor: loads the kernel programs, opens the counters, and reads cumulative
//! per-thread totals (`SensorReading`). Delta math lives in [`crate::delta`], not here.

pub mod bpf_sys;
pub mod counters;

use std::{
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{ProgramError, RawTracePoint},
};
use powerapi_common::{
    COUNTER_MAPS, CPU_SLICE_MAP, CpuSlice, EXITS_MAP, ExitEvent, FLAG_DEAD, FLUSH_PROGRAM,
    MAX_COUNTERS, NOOP_PROGRAM, NUM_COUNTERS_GLOBAL, SCHED_EXEC_PROGRAM, SCHED_SWITCH_PROGRAM,
    SENSOR_STATS_MAP, SensorStats, TASK_TOTALS_MAP, TaskKey, TaskTotals,
};
use thiserror::Error;

use crate::{
    privilege,
    topology::{self, Cpu, TopologyError},
};
pub use counters::{CounterError, CounterSpec, default_counters};

/// The kernel-internal ENOTSUPP that BPF returns for unsupported map operations.
const ENOTSUPP: i32 = 524;

/// The compiled kernel programs (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/powerapi"));

#[derive(Debug, Error)]
pub enum SensorError {
    #[error("{}", privilege::PRIVILEGE_HINT)]
    NotPrivileged,
    #[error(
        "this powerapi was built without its eBPF programs (AYA_BUILD_SKIP); build it with `cargo xtask run`"
    )]
    NotBuilt,
    #[error(
        "the kernel refused powerapi's BPF programs: {0}; `powerapi doctor` lists what this kernel lacks"
    )]
    Load(String),
    #[error(
        "cannot attach {program} to the {tracepoint} raw tracepoint: {source}; a kernel ≥ 5.10 with CONFIG_BPF_EVENTS is needed"
    )]
    Attach {
        program: &'static str,
        tracepoint: &'static str,
        source: ProgramError,
    },
    #[error("BPF map {name}: {detail}")]
    Map { name: &'static str, detail: String },
    #[error(
        "cannot run the slice flush on CPU {cpu}: {source}; BPF_PROG_TEST_RUN on a CPU needs Linux ≥ 5.10"
    )]
    Flush { cpu: u32, source: std::io::Error },
    #[error("reading the task map failed: {0}")]
    Drain(std::io::Error),
    #[error(transparent)]
    Counter(#[from] CounterError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("at most {MAX_COUNTERS} counters can be followed at once, {0} were asked for")]
    TooManyCounters(usize),
}

/// What the sensor is asked to follow.
#[derive(Clone, Debug)]
pub struct SensorConfig {
    pub counters: Vec<CounterSpec>,
    /// When false (the defaults), counters this machine lacks are dropped and the sensor runs in
    /// time-only mode, saying so; when true (the user named them), a missing counter is an error.
    pub counters_required: bool,
    pub max_tasks: u32,
    /// Where `/sys` and `/proc` are found (`/` unless a test or container says otherwise).
    pub root: std::path::PathBuf,
}

impl Default for SensorConfig {
    fn default() -> Self {
        Self {
            counters: default_counters(),
            counters_required: false,
            max_tasks: 65536,
            root: "/".into(),
        }
    }
}

/// Cumulative totals read at one instant.
#[derive(Clone, Debug, Default)]
pub struct SensorReading {
    /// CLOCK_MONOTONIC (same clock as `bpf_ktime_get_ns`) right after every CPU's slice was closed.
    pub taken_at_ns: u64,
    /// Live entries, as two parallel arrays (the layout batch lookups write).
    pub live_keys: Vec<TaskKey>,
    pub live_totals: Vec<TaskTotals>,
    /// Final totals of threads that died since the previous reading.
    pub exited: Vec<(TaskKey, TaskTotals)>,
    /// Loss counters summed over CPUs, cumulative since load.
    pub stats: SensorStats,
}

/// A loaded, attached sensor. Dropping it detaches everything.
pub struct Sensor {
    ebpf: Ebpf,
    cpus: Vec<Cpu>,
    counters: Vec<CounterSpec>,
    time_only_reason: Option<String>,
    _counter_fds: Vec<OwnedFd>,
    exits: RingBuf<MapData>,
    use_batch: bool,
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn load_object(num_counters: u32, max_tasks: u32) -> Result<Ebpf, SensorError> {
    if OBJECT.is_empty() {
        return Err(SensorError::NotBuilt);
    }
    raise_memlock();
    EbpfLoader::new()
        .override_global(NUM_COUNTERS_GLOBAL, &num_counters, true)
        .map_max_entries(TASK_TOTALS_MAP, max_tasks)
        .load(OBJECT)
        .map_err(|e| SensorError::Load(one_line(&e.to_string())))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit with a valid struct; failure only matters on old kernels and then
    // shows up as a map creation error.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// Verifier logs are long; users get the first meaningful line (the full log is in the error chain).
fn one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("unknown error").to_string();
    match lines.next_back() {
        Some(last) if first.len() < 200 => format!("{first} … {last}"),
        _ => first,
    }
}

fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &'static str,
) -> Result<(), SensorError> {
    let err = |source| SensorError::Attach {
        program,
        tracepoint,
        source,
    };
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| SensorError::Load(format!("program {program} missing from the object")))?
        .try_into()
        .map_err(err)?;
    prog.load()
        .map_err(|e| SensorError::Load(one_line(&e.to_string())))?;
    prog.attach(tracepoint).map_err(err)?;
    Ok(())
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData, SensorError> {
    match ebpf.map(name) {
        Some(Map::HashMap(data) | Map::PerfEventArray(data) | Map::PerCpuArray(data)) => Ok(data),
        _ => Err(SensorError::Map {
            name,
            detail: "missing from the object".into(),
        }),
    }
}

/// Borrows a map of the object as its typed aya wrapper.
fn typed_map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, SensorError>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(SensorError::Map {
        name,
        detail: "missing from the object".into(),
    })?;
    T::try_from(map).map_err(|e| SensorError::Map {
        name,
        detail: e.to_string(),
    })
}

impl Sensor {
    /// Loads and attaches the sensor. Fails with a one-line, actionable error.
    pub fn start(config: &SensorConfig) -> Result<Self, SensorError> {
        if !privilege::can_trace(&config.root) {
            return Err(SensorError::NotPrivileged);
        }
        if config.counters.len() > MAX_COUNTERS {
            return Err(SensorError::TooManyCounters(config.counters.len()));
        }
        let cpus = topology::read_cpus(&config.root)?;

        // Open counters first: whether we have any decides what the kernel program reads.
        let mut counter_fds = Vec::new();
        let mut counters = config.counters.clone();
        let mut time_only_reason = None;
        'open: for spec in &config.counters {
            for cpu in &cpus {
                match counters::open_on_cpu(spec, cpu.id) {
                    Ok(fd) => counter_fds.push(fd),
                    Err(e) if config.counters_required => return Err(e.into()),
                    Err(e) => {
                        time_only_reason = Some(match &e {
                            CounterError::Unsupported { name, source, .. } => {
                                format!(
                                    "no {name} counter on this CPU ({source}); VMs often have no PMU"
                                )
                            }
                            CounterError::Denied { .. } => e.to_string(),
                        });
                        counter_fds.clear();
                        counters.clear();
                        break 'open;
                    }
                }
            }
        }
        if counters.is_empty() && time_only_reason.is_none() {
            time_only_reason = Some("no counters requested".into());
        }

        let mut ebpf = load_object(counters.len() as u32, config.max_tasks)?;
        for (slot, spec_fds) in counter_fds.chunks(cpus.len().max(1)).enumerate() {
            let map = map_data(&ebpf, COUNTER_MAPS[slot])?;
            for (cpu, fd) in cpus.iter().zip(spec_fds) {
                bpf_sys::set_perf_event(map.fd().as_fd(), cpu.id, fd.as_fd()).map_err(|e| {
                    SensorError::Map {
                        name: COUNTER_MAPS[slot],
                        detail: format!(
                            "storing counter {} for CPU {}: {e}",
                            counters[slot], cpu.id
                        ),
                    }
                })?;
            }
        }
        init_cpu_slices(&mut ebpf, &cpus)?;

        let exits = ebpf
            .take_map(EXITS_MAP)
            .ok_or(SensorError::Map {
                name: EXITS_MAP,
                detail: "missing from the object".into(),
            })
            .and_then(|m| {
                RingBuf::try_from(m).map_err(|e| SensorError::Map {
                    name: EXITS_MAP,
                    detail: e.to_string(),
                })
            })?;

        {
            let flush: &mut RawTracePoint = ebpf
                .program_mut(FLUSH_PROGRAM)
                .ok_or_else(|| {
                    SensorError::Load(format!("program {FLUSH_PROGRAM} missing from the object"))
                })?
                .try_into()
                .map_err(|e: ProgramError| SensorError::Load(e.to_string()))?;
            flush
                .load()
                .map_err(|e| SensorError::Load(one_line(&e.to_string())))?;
        }
        attach(&mut ebpf, SCHED_SWITCH_PROGRAM, "sched_switch")?;
        attach(&mut ebpf, SCHED_EXEC_PROGRAM, "sched_process_exec")?;

        let mut sensor = Self {
            ebpf,
            cpus,
            counters,
            time_only_reason,
            _counter_fds: counter_fds,
            exits,
            use_batch: true,
        };
        // Open a slice on every CPU now, so the first interval starts at a known instant.
        sensor.flush()?;
        Ok(sensor)
    }

    pub fn cpus(&self) -> &[Cpu] {
        &self.cpus
    }

    /// Names of the counters in use, in slot order; empty in time-only mode.
    pub fn counter_names(&self) -> Vec<String> {
        self.counters.iter().map(|c| c.name.clone()).collect()
    }

    /// Whether the last read used `BPF_MAP_LOOKUP_BATCH` (false on kernels without it).
    pub fn uses_batch(&self) -> bool {
        self.use_batch
    }

    /// Why the sensor runs without counters, if it does.
    pub fn time_only_reason(&self) -> Option<&str> {
        self.time_only_reason.as_deref()
    }

    fn flush(&mut self) -> Result<(), SensorError> {
        let prog = self
            .ebpf
            .program(FLUSH_PROGRAM)
            .ok_or_else(|| SensorError::Load(format!("program {FLUSH_PROGRAM} missing")))?;
        let fd = prog.fd().map_err(|e| SensorError::Load(e.to_string()))?;
        for cpu in &self.cpus {
            bpf_sys::run_on_cpu(fd.as_fd(), cpu.id).map_err(|source| SensorError::Flush {
                cpu: cpu.id,
                source,
            })?;
        }
        Ok(())
    }

    /// Closes every CPU's open slice and reads all totals.
    pub fn read(&mut self) -> Result<SensorReading, SensorError> {
        let mut reading = SensorReading::default();
        self.read_into(&mut reading)?;
        Ok(reading)
    }

    /// Like [`Sensor::read`], reusing `reading`'s buffers (the drain path of every interval).
    pub fn read_into(&mut self, reading: &mut SensorReading) -> Result<(), SensorError> {
        self.flush()?;
        reading.taken_at_ns = monotonic_ns();
        reading.exited.clear();

        // Exits first: a task that dies after this point is still in the map (or in the next read).
        while let Some(item) = self.exits.next() {
            if item.len() >= size_of::<ExitEvent>() {
                // SAFETY: the kernel wrote a whole ExitEvent; read_unaligned copes with alignment.
                let event: ExitEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                reading.exited.push((event.key, event.totals));
            }
        }

        let (keys, totals) = (&mut reading.live_keys, &mut reading.live_totals);
        if self.use_batch {
            let map = map_data(&self.ebpf, TASK_TOTALS_MAP)?;
            match bpf_sys::lookup_batch(map.fd().as_fd(), keys, totals) {
                Ok(()) => {}
                // Kernels before 5.6 have no batch ops: fall back to one lookup per key.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
                    ) =>
                {
                    self.use_batch = false;
                }
                Err(e) => return Err(SensorError::Drain(e)),
            }
        }
        let mut tasks: HashMap<&mut MapData, TaskKey, TaskTotals> =
            typed_map(&mut self.ebpf, TASK_TOTALS_MAP)?;
        if !self.use_batch {
            keys.clear();
            totals.clear();
            for entry in tasks.iter() {
                let (key, value) = entry.map_err(|e| SensorError::Map {
                    name: TASK_TOTALS_MAP,
                    detail: e.to_string(),
                })?;
                keys.push(key);
                totals.push(value);
            }
        }
        // Entries whose exit did not fit on the ring buffer: collect them here, exactly once.
        let mut i = 0;
        while i < keys.len() {
            if totals[i].flags & FLAG_DEAD != 0 {
                let (key, value) = (keys.swap_remove(i), totals.swap_remove(i));
                let _ = tasks.remove(&key);
                reading.exited.push((key, value));
            } else {
                i += 1;
            }
        }

        let stats: PerCpuArray<&mut MapData, SensorStats> =
            typed_map(&mut self.ebpf, SENSOR_STATS_MAP)?;
        let per_cpu = stats.get(&0, 0).map_err(|e| SensorError::Map {
            name: SENSOR_STATS_MAP,
            detail: e.to_string(),
        })?;
        reading.stats = SensorStats::default();
        for s in per_cpu.iter() {
            reading.stats.lost_slices += s.lost_slices;
            reading.stats.lost_ns += s.lost_ns;
            reading.stats.exit_overflow += s.exit_overflow;
            reading.stats.overwritten_dead += s.overwritten_dead;
            reading.stats.counter_read_errors += s.counter_read_errors;
        }
        Ok(())
    }
}

fn init_cpu_slices(ebpf: &mut Ebpf, cpus: &[Cpu]) -> Result<(), SensorError> {
    let err = |detail: String| SensorError::Map {
        name: CPU_SLICE_MAP,
        detail,
    };
    let possible = aya::util::nr_cpus().map_err(|(path, e)| err(format!("{path}: {e}")))?;
    let mut slices = vec![CpuSlice::default(); possible];
    for cpu in cpus {
        if let Some(slice) = slices.get_mut(cpu.id as usize) {
            slice.socket = cpu.socket;
            slice.cpu = cpu.id;
        }
    }
    let mut map: PerCpuArray<&mut MapData, CpuSlice> = typed_map(ebpf, CPU_SLICE_MAP)?;
    let values = PerCpuValues::try_from(slices).map_err(|e| err(e.to_string()))?;
    map.set(0, values, 0).map_err(|e| err(e.to_string()))
}

/// Loads only the empty `sched_switch` program and attaches it: the floor of the overhead
/// benchmark. Keep the returned object alive as long as it should stay attached.
pub fn attach_noop(root: &Path) -> Result<Ebpf, SensorError> {
    if !privilege::can_trace(root) {
        return Err(SensorError::NotPrivileged);
    }
    let mut ebpf = load_object(0, 1024)?;
    attach(&mut ebpf, NOOP_PROGRAM, "sched_switch")?;
    Ok(ebpf)
}
