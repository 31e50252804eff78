//! The task sensor: loads the kernel programs, opens the counters, and reads cumulative
//! per-thread totals (`SensorReading`). Delta math lives in [`crate::delta`], not here.

pub(crate) mod bpf_sys;
pub(crate) mod counters;
pub(crate) mod kernel_layout;

use kernel_layout::RqClockPath;

use std::{
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{BtfTracePoint, ProgramError, RawTracePoint},
};
use powerapi_common::{
    CGROUP_ATTACH_PROGRAM, CLOCK_PROGRAM, COUNTER_MAPS, CPU_HOTPLUG_MAP, CPU_HOTPLUG_PROGRAM,
    CPU_LANES_MAP, CPU_SLICE_MAP, CPU_UP_NS_MAP, CpuConfig, CpuSlice, EXITS_MAP, ExitEvent,
    FLAG_DEAD, FLUSH_PROGRAM, FREE_SLOTS_MAP, GLOBALS_MAP, Globals, LAYOUT_GLOBALS, MAX_COUNTERS,
    MAX_SOCKETS, NOOP_PROGRAM, NUM_COUNTERS_GLOBAL, SCHED_EXEC_PROGRAM, SCHED_SWITCH_BTF_PROGRAM,
    SCHED_SWITCH_BTF_TIME_ONLY_PROGRAM, SCHED_SWITCH_PROGRAM, SCHED_SWITCH_TIME_ONLY_PROGRAM,
    SCHED_SWITCH_TIME_ONLY_UNCACHED_PROGRAM, SCHED_SWITCH_UNCACHED_PROGRAM, SENSOR_STATS_MAP,
    SLOT_HWM_MAP, STORES_ORDERED_GLOBAL, SensorStats, TASK_RENAME_PROGRAM, TASK_SLOTS_MAP,
    TASK_TOTALS_MAP, TaskKey, TaskSlot, TaskTotals, USE_TASK_STORAGE_GLOBAL,
};
use thiserror::Error;

use crate::{
    privilege,
    topology::{self, Cpu, TopologyError},
};
pub use counters::{CounterError, CounterSpec, default_counters};

/// The compiled kernel programs (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/powerapi"));

#[derive(Debug, Error)]
/// Why the kernel sensor could not start or be read.
pub enum SensorError {
    #[error("{}", privilege::PRIVILEGE_HINT)]
    /// Neither root nor the capabilities BPF needs.
    NotPrivileged,
    #[error(
        "this powerapi was built without its eBPF programs (AYA_BUILD_SKIP); build it with `cargo xtask run`"
    )]
    /// Built without its kernel programs.
    NotBuilt,
    #[error(
        "the kernel refused powerapi's BPF programs: {0}; `powerapi doctor` lists what this kernel lacks"
    )]
    /// The kernel's verifier refused the programs.
    Load(String),
    #[error(
        "cannot attach {program} to the {tracepoint} raw tracepoint: {source}; a kernel ≥ 5.10 with CONFIG_BPF_EVENTS is needed"
    )]
    /// A program could not be attached.
    Attach {
        /// The program.
        program: &'static str,
        /// The raw tracepoint.
        tracepoint: &'static str,
        /// The cause.
        source: ProgramError,
    },
    #[error("BPF map {name}: {detail}; `powerapi doctor` checks what this kernel lacks")]
    /// A BPF map could not be created, read or written.
    Map {
        /// The map.
        name: &'static str,
        /// What failed.
        detail: String,
    },
    #[error(
        "cannot run the slice flush on CPU {cpu}: {source}; `powerapi doctor` checks what this kernel lacks"
    )]
    /// The per-CPU flush could not run.
    Flush {
        /// The CPU.
        cpu: u32,
        /// The cause.
        source: std::io::Error,
    },
    #[error(
        "Linux {found} is too old: powerapi needs Linux ≥ {MIN_KERNEL_MAJOR}.{MIN_KERNEL_MINOR} (sched_switch's prev_state argument); upgrade the kernel"
    )]
    /// The kernel predates what the programs need.
    KernelTooOld {
        /// The running kernel's release.
        found: String,
    },
    #[error(
        "--switch-clock rq needs the recent-thread cache (the run queue's clock programs always use it): drop --recent-cache false, or use --switch-clock ktime to measure without the cache"
    )]
    /// The run queue's clock was asked for without the cache its programs are built around:
    /// refused rather than quietly timed by the clock helper instead.
    RqClockWithoutCache,
    #[error(transparent)]
    /// A counter could not be opened.
    Counter(#[from] CounterError),
    #[error(transparent)]
    /// The CPU topology could not be read.
    Topology(#[from] TopologyError),
    #[error("at most {MAX_COUNTERS} counters can be followed at once, {0} were asked for")]
    /// More counters than the sensor has slots for.
    TooManyCounters(usize),
}

/// What the sensor is asked to follow.
#[derive(Clone, Debug)]
pub struct SensorConfig {
    /// Counters read at every switch (empty: time-only).
    pub counters: Vec<CounterSpec>,
    /// When false (the defaults), counters this machine lacks are dropped and the sensor runs in
    /// time-only mode, saying so; when true (the user named them), a missing counter is an error.
    pub counters_required: bool,
    /// Most threads tracked at once; beyond it slices are counted lost.
    pub max_tasks: u32,
    /// Size of the ring buffer that carries exits (a power of two, ≥ one page). Beyond it, exits
    /// wait in their slots for the next drain (counted as `exit_overflow`).
    pub exit_buffer_bytes: u32,
    /// Where `/sys` is found (`/` unless a test or a container with the host's `/sys` mounted
    /// elsewhere says otherwise): topology and energy are read under it.
    pub root: std::path::PathBuf,
    /// How the switch path finds a thread's slot.
    pub slot_lookup: SlotLookup,
    /// Whether `sched_switch` first looks in its CPU's cache of recently switched-out threads
    /// (true by default; false only to measure what the cache saves).
    pub recent_cache: bool,
    /// Where the switch path takes each slice's time from.
    pub switch_clock: SwitchClock,
}

/// Which switch program a started sensor attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchPath {
    /// `tp_btf`: the run queue's clock, calibrated per CPU; no helper call for cached threads.
    RqClock,
    /// Raw tracepoint: the clock helper on every switch.
    Ktime,
}

/// Where the switch path takes the time of each switch from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SwitchClock {
    /// The run queue's clock where the kernel's BTF shows the way to it, else the clock helper.
    #[default]
    Auto,
    /// `bpf_ktime_get_ns` on every switch (a raw tracepoint; kernels without BTF).
    Ktime,
    /// The run queue's clock through a `tp_btf` program, calibrated to CLOCK_MONOTONIC per CPU
    /// after every flush; an error where the kernel has no way to it.
    Rq,
}

/// How the kernel's switch path finds a thread's slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SlotLookup {
    /// Task storage where the kernel has BTF (`/sys/kernel/btf/vmlinux`), else hash.
    #[default]
    Auto,
    /// Hash the thread's key on every switch (kernels without BTF).
    Hash,
    /// The slot index kept in the thread's task-local storage.
    TaskStorage,
}

impl SlotLookup {
    /// What `Auto` means on this kernel. Task storage and the helpers it needs predate our
    /// minimum kernel; only BTF (`CONFIG_DEBUG_INFO_BTF`) may be missing.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto if Path::new("/sys/kernel/btf/vmlinux").exists() => Self::TaskStorage,
            Self::Auto => Self::Hash,
            chosen => chosen,
        }
    }
}

impl Default for SensorConfig {
    /// The command line's defaults: cycles and instructions where the CPU has them (else
    /// time-only, said), 65,536 threads, a 4 MiB exit ring, `/sys` at `/`.
    fn default() -> Self {
        Self {
            counters: default_counters(),
            counters_required: false,
            max_tasks: 65536,
            exit_buffer_bytes: 4 << 20,
            root: "/".into(),
            slot_lookup: SlotLookup::Auto,
            recent_cache: true,
            switch_clock: SwitchClock::Auto,
        }
    }
}

/// The oldest kernel the programs attach to: `prev_state` became a `sched_switch` argument in
/// 5.18, and task death is detected from it.
pub const MIN_KERNEL_MAJOR: u32 = 5;
/// See [`MIN_KERNEL_MAJOR`].
pub const MIN_KERNEL_MINOR: u32 = 18;

/// One thread's totals, and the slot they were read from: `(slot, totals.first_seen_ns)` is the
/// identity of a task incarnation, whatever its pid (a reused pid, or a thread whose pid changed
/// at exec, is told apart or followed by it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskEntry {
    /// Its slot in the kernel's table.
    pub slot: u32,
    /// The thread and its process.
    pub key: TaskKey,
    /// Cumulative on-CPU time and counters.
    pub totals: TaskTotals,
}

/// Cumulative totals read at one instant.
#[derive(Clone, Debug, Default)]
pub struct SensorReading {
    /// CLOCK_MONOTONIC (same clock as `bpf_ktime_get_ns`) right after every CPU's slice was closed.
    pub taken_at_ns: u64,
    /// Every live thread's totals.
    pub live: Vec<TaskEntry>,
    /// Final totals of threads that died since the previous reading.
    pub exited: Vec<TaskEntry>,
    /// Loss counters summed over CPUs, cumulative since load.
    pub stats: SensorStats,
    /// Socket of each lane (`TaskTotals::lane_ns` index).
    pub lane_sockets: Vec<u32>,
    /// CPUs online (and flushed) at this reading.
    pub cpus: Vec<Cpu>,
    /// The set of online CPUs changed since the previous reading.
    pub cpus_changed: bool,
    /// Where each CPU's booking stands (every CPU that has ever switched, online or not).
    pub cpu_marks: Vec<CpuMark>,
}

/// What one CPU had booked, cumulatively, by the end of the drain epoch a reading closes: two
/// marks give the CPU's capacity in the interval between them, exactly the time its slices
/// booked into slots (or lost), whatever the drain took and however often the CPU went away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuMark {
    /// The CPU.
    pub cpu: u32,
    /// Time booked on this CPU since load (into slots, or lost).
    pub booked_ns: u64,
    /// The lost part of it: slices no slot could take.
    pub lost_ns: u64,
}

/// A loaded, attached sensor. Dropping it detaches everything.
pub struct Sensor {
    ebpf: Ebpf,
    root: std::path::PathBuf,
    cpus: Vec<Cpu>,
    lanes: Lanes,
    counters: Vec<CounterSpec>,
    time_only_reason: Option<String>,
    switch_path: SwitchPath,
    /// Counter fds by counter slot, then CPU id (`None` for CPUs not online when opened).
    counter_fds: Vec<Vec<Option<OwnedFd>>>,
    /// Hotplug steps per CPU, counted by the kernel, and their values at the last reading.
    hotplug: bpf_sys::MappedArray<u64>,
    hotplug_seen: Vec<u64>,
    /// Last `CpuConfig::counters_epoch` handed out.
    counters_epoch: u32,
    said_rearm_failure: bool,
    exits: RingBuf<MapData>,
    slots: bpf_sys::MappedArray<TaskSlot>,
    globals: bpf_sys::MappedArray<Globals>,
    /// The drain epoch opened by the last flush round (`Globals::epoch`); a reading reports the
    /// one before it.
    epoch: u64,
    /// Exits of tasks that were booked in an epoch not yet read: reported at the next reading
    /// (and their part in the epoch being read reported live now).
    pending_exits: Vec<TaskEntry>,
    cpus_changed: bool,
}

/// Socket → lane numbering: lanes are handed out in the order sockets are first seen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lanes {
    sockets: Vec<u32>,
    /// More sockets than lanes: the extra ones share the last lane (their time is then reported
    /// on the last lane's socket).
    pub overflowed: bool,
}

impl Lanes {
    /// The lane of `socket`, assigning the next free one the first time.
    pub fn lane_of(&mut self, socket: u32) -> u32 {
        if let Some(lane) = self.sockets.iter().position(|&s| s == socket) {
            return lane as u32;
        }
        if self.sockets.len() < MAX_SOCKETS {
            self.sockets.push(socket);
            return (self.sockets.len() - 1) as u32;
        }
        self.overflowed = true;
        (MAX_SOCKETS - 1) as u32
    }

    /// The socket of each lane.
    pub fn sockets(&self) -> &[u32] {
        &self.sockets
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (the clock `bpf_ktime_get_ns` reads).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// `6.18.44-fc` → (6, 18).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// This kernel's release, from uname(2).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain bytes; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Fails with a one-line error on kernels older than the sensor supports (an unparsable release
/// is given the benefit of the doubt: the attach then says what is wrong).
pub fn check_kernel(release: &str) -> Result<(), SensorError> {
    match parse_kernel_version(release) {
        Some(version) if version < (MIN_KERNEL_MAJOR, MIN_KERNEL_MINOR) => {
            Err(SensorError::KernelTooOld {
                found: release.trim().to_string(),
            })
        }
        _ => Ok(()),
    }
}

fn load_object(
    num_counters: u32,
    max_tasks: u32,
    exit_buffer_bytes: u32,
    slot_lookup: SlotLookup,
    layout: Option<RqClockPath>,
) -> Result<Ebpf, SensorError> {
    let offsets = layout.map_or([0; 4], |l| {
        [l.task_pid, l.se_cfs_rq, l.cfs_rq_rq, l.rq_clock]
    });
    let use_task_storage = u32::from(slot_lookup.resolve() == SlotLookup::TaskStorage);
    // x86 keeps stores in program order (TSO), so the slots' sequence counters need no locked
    // instruction there; elsewhere (arm64) they stay fully ordered atomics.
    let stores_ordered = u32::from(cfg!(any(target_arch = "x86_64", target_arch = "x86")));
    if OBJECT.is_empty() {
        return Err(SensorError::NotBuilt);
    }
    raise_memlock();
    let possible = aya::util::nr_cpus()
        .map_err(|(path, e)| SensorError::Map {
            name: CPU_LANES_MAP,
            detail: format!("{path}: {e}"),
        })?
        .max(1) as u32;
    EbpfLoader::new()
        .override_global(NUM_COUNTERS_GLOBAL, &num_counters, true)
        .override_global(USE_TASK_STORAGE_GLOBAL, &use_task_storage, true)
        .override_global(STORES_ORDERED_GLOBAL, &stores_ordered, true)
        .override_global(LAYOUT_GLOBALS[0], &offsets[0], true)
        .override_global(LAYOUT_GLOBALS[1], &offsets[1], true)
        .override_global(LAYOUT_GLOBALS[2], &offsets[2], true)
        .override_global(LAYOUT_GLOBALS[3], &offsets[3], true)
        // aya 0.14 creates a task-storage map but has no wrapper type for it; only the kernel
        // program uses it, so the missing wrapper does not matter.
        .allow_unsupported_maps()
        .map_max_entries(CPU_LANES_MAP, possible)
        .map_max_entries(CPU_HOTPLUG_MAP, possible)
        .map_max_entries(CPU_UP_NS_MAP, possible)
        .map_max_entries(TASK_SLOTS_MAP, max_tasks)
        .map_max_entries(TASK_TOTALS_MAP, max_tasks)
        .map_max_entries(FREE_SLOTS_MAP, max_tasks)
        .map_max_entries(EXITS_MAP, exit_buffer_bytes)
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

/// The named program, as type `P`; attach errors name it and its tracepoint.
fn program_as<'a, P>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
    tracepoint: &'static str,
) -> Result<&'a mut P, SensorError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(program)
        .ok_or_else(|| SensorError::Load(format!("program {program} missing from the object")))?
        .try_into()
        .map_err(attach_error(program, tracepoint))
}

fn attach_error(
    program: &'static str,
    tracepoint: &'static str,
) -> impl Fn(ProgramError) -> SensorError {
    move |source| SensorError::Attach {
        program,
        tracepoint,
        source,
    }
}

fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &'static str,
) -> Result<(), SensorError> {
    let prog: &mut RawTracePoint = program_as(ebpf, program, tracepoint)?;
    prog.load()
        .map_err(|e| SensorError::Load(one_line(&e.to_string())))?;
    prog.attach(tracepoint)
        .map(drop)
        .map_err(attach_error(program, tracepoint))
}

/// Loads a `tp_btf` program against the running kernel's BTF and attaches it.
fn attach_btf(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &'static str,
) -> Result<(), SensorError> {
    let btf = aya::Btf::from_sys_fs()
        .map_err(|e| SensorError::Load(format!("kernel BTF unreadable: {e}")))?;
    let prog: &mut BtfTracePoint = program_as(ebpf, program, tracepoint)?;
    prog.load(tracepoint, &btf)
        .map_err(|e| SensorError::Load(one_line(&e.to_string())))?;
    prog.attach()
        .map(drop)
        .map_err(attach_error(program, tracepoint))
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData, SensorError> {
    match ebpf.map(name) {
        Some(
            Map::PerfEventArray(data)
            | Map::PerCpuArray(data)
            | Map::Array(data)
            | Map::Stack(data)
            | Map::HashMap(data),
        ) => Ok(data),
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
        // Privileges are this process's own, wherever the host's /sys is mounted.
        if !privilege::can_trace(Path::new("/")) {
            return Err(SensorError::NotPrivileged);
        }
        check_kernel(&kernel_release())?;
        if config.counters.len() > MAX_COUNTERS {
            return Err(SensorError::TooManyCounters(config.counters.len()));
        }
        let cpus = topology::read_cpus(&config.root)?;
        let possible = aya::util::nr_cpus()
            .map_err(|(path, e)| SensorError::Map {
                name: CPU_LANES_MAP,
                detail: format!("{path}: {e}"),
            })?
            .max(1);

        // Open counters first: whether we have any decides what the kernel program reads.
        let mut counter_fds: Vec<Vec<Option<OwnedFd>>> = Vec::new();
        let mut counters = config.counters.clone();
        let mut time_only_reason = None;
        'open: for spec in &config.counters {
            let mut fds: Vec<Option<OwnedFd>> = (0..possible).map(|_| None).collect();
            for cpu in &cpus {
                match counters::open_on_cpu(spec, cpu.id) {
                    Ok(fd) => {
                        if let Some(entry) = fds.get_mut(cpu.id as usize) {
                            *entry = Some(fd);
                        }
                    }
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
            counter_fds.push(fds);
        }
        if counters.is_empty() && time_only_reason.is_none() {
            time_only_reason = Some("no counters requested".into());
        }

        // The run queue's clock needs the cache's build (the `tp_btf` programs have it).
        let layout = match config.switch_clock {
            SwitchClock::Ktime => None,
            SwitchClock::Rq if !config.recent_cache => {
                return Err(SensorError::RqClockWithoutCache);
            }
            _ if !config.recent_cache => None,
            SwitchClock::Auto => kernel_layout::running_kernel().ok(),
            SwitchClock::Rq => Some(
                kernel_layout::running_kernel()
                    .map_err(|e| SensorError::Load(format!("--switch-clock rq: {e}")))?,
            ),
        };
        let mut ebpf = load_object(
            counters.len() as u32,
            config.max_tasks,
            config.exit_buffer_bytes,
            config.slot_lookup,
            layout,
        )?;
        for (slot, fds) in counter_fds.iter().enumerate() {
            let map = map_data(&ebpf, COUNTER_MAPS[slot])?;
            for (cpu, fd) in fds.iter().enumerate() {
                let Some(fd) = fd else { continue };
                bpf_sys::set_perf_event(map.fd().as_fd(), cpu as u32, fd.as_fd()).map_err(|e| {
                    SensorError::Map {
                        name: COUNTER_MAPS[slot],
                        detail: format!("storing counter {} for CPU {cpu}: {e}", counters[slot]),
                    }
                })?;
            }
        }
        let mut lanes = Lanes::default();
        for cpu in &cpus {
            let lane = lanes.lane_of(cpu.socket);
            set_cpu_config(
                &mut ebpf,
                cpu.id,
                CpuConfig {
                    lane,
                    counters_epoch: 0,
                },
            )?;
        }
        init_cpu_slices(&mut ebpf, possible)?;
        let slots = init_slots(&ebpf, config.max_tasks)?;
        let globals = map_data(&ebpf, GLOBALS_MAP)?;
        let globals =
            bpf_sys::MappedArray::map(globals.fd().as_fd(), 1).map_err(|e| SensorError::Map {
                name: GLOBALS_MAP,
                detail: format!("mmap failed ({e})"),
            })?;

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
        // Identity trackers first, so that no rename or cgroup move after the switch program
        // starts goes unseen.
        attach(&mut ebpf, TASK_RENAME_PROGRAM, "task_rename")?;
        attach(&mut ebpf, CGROUP_ATTACH_PROGRAM, "cgroup_attach_task")?;
        let program = |path| switch_program(path, !counters.is_empty(), config.recent_cache);
        let switch_path = match layout {
            Some(_) => match attach_btf(&mut ebpf, program(SwitchPath::RqClock), "sched_switch") {
                Ok(()) => SwitchPath::RqClock,
                Err(e) if config.switch_clock == SwitchClock::Rq => return Err(e),
                Err(_) => SwitchPath::Ktime,
            },
            None => SwitchPath::Ktime,
        };
        if switch_path == SwitchPath::Ktime {
            attach(&mut ebpf, program(SwitchPath::Ktime), "sched_switch")?;
        }
        attach(&mut ebpf, SCHED_EXEC_PROGRAM, "sched_process_exec")?;
        let hotplug = map_data(&ebpf, CPU_HOTPLUG_MAP)?;
        let hotplug = bpf_sys::MappedArray::map(hotplug.fd().as_fd(), possible).map_err(|e| {
            SensorError::Map {
                name: CPU_HOTPLUG_MAP,
                detail: format!("mmap failed ({e})"),
            }
        })?;
        attach(&mut ebpf, CPU_HOTPLUG_PROGRAM, "cpuhp_enter")?;
        let hotplug_seen = vec![0; possible];

        let mut sensor = Self {
            ebpf,
            root: config.root.clone(),
            cpus,
            lanes,
            counters,
            time_only_reason,
            switch_path,
            counter_fds,
            hotplug,
            hotplug_seen,
            counters_epoch: 0,
            said_rearm_failure: false,
            exits,
            slots,
            globals,
            epoch: 0,
            pending_exits: Vec::new(),
            cpus_changed: false,
        };
        // Open a slice on every CPU now, so the first interval starts at a known instant.
        sensor.flush()?;
        // Loading parsed the kernel's BTF (several MiB of short-lived allocations, freed by
        // now); give those pages back rather than carry them as resident for the whole run.
        // SAFETY: malloc_trim only releases free heap memory.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
        Ok(sensor)
    }

    /// The drain epoch the next reading reports: the one before the epoch the last flush
    /// round opened.
    fn closed_epoch(&self) -> u64 {
        self.epoch.saturating_sub(1)
    }

    /// Which switch program is attached.
    pub fn switch_path(&self) -> SwitchPath {
        self.switch_path
    }

    /// CPUs online at the last reading.
    pub fn cpus(&self) -> &[Cpu] {
        &self.cpus
    }

    /// Socket of each lane, and whether some sockets had to share the last lane.
    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    /// Names of the counters in use, in slot order; empty in time-only mode.
    pub fn counter_names(&self) -> Vec<String> {
        self.counters.iter().map(|c| c.name.clone()).collect()
    }

    /// Why the sensor runs without counters, if it does.
    pub fn time_only_reason(&self) -> Option<&str> {
        self.time_only_reason.as_deref()
    }

    /// Follows CPU hotplug: re-reads the online CPUs and re-arms any CPU that is new or went
    /// through hotplug since the last reading (even if it is back online by now).
    fn refresh_cpus(&mut self) -> Result<(), SensorError> {
        let mut replugged = Vec::new();
        for (cpu, seen) in self.hotplug_seen.iter_mut().enumerate() {
            let Some(steps) = self.hotplug.element(cpu) else {
                break;
            };
            // SAFETY: an aligned u64 inside the live mapping; the kernel only adds to it.
            let steps = unsafe { std::ptr::read_volatile(steps) };
            if steps != *seen {
                *seen = steps;
                replugged.push(cpu as u32);
            }
        }
        // The online mask every interval; sockets only when something changed.
        let ids = topology::read_online(&self.root)?;
        if replugged.is_empty() && ids.iter().copied().eq(self.cpus.iter().map(|c| c.id)) {
            return Ok(());
        }
        let online = topology::read_cpus(&self.root)?;
        self.cpus_changed = true;
        for cpu in &online {
            if !self.cpus.iter().any(|c| c.id == cpu.id) || replugged.contains(&cpu.id) {
                self.rearm_cpu(cpu)?;
            }
        }
        self.cpus = online;
        Ok(())
    }

    /// Gives a CPU that came (back) online its socket lane and new counter events: the kernel
    /// switches an offlined CPU's events off for good, and reading them then succeeds with a
    /// frozen value, so without this the CPU's counts would silently stop.
    fn rearm_cpu(&mut self, cpu: &Cpu) -> Result<(), SensorError> {
        let lane = self.lanes.lane_of(cpu.socket);
        if !self.counters.is_empty() {
            for (slot, spec) in self.counters.iter().enumerate() {
                let map = map_data(&self.ebpf, COUNTER_MAPS[slot])?;
                let stored = counters::open_on_cpu(spec, cpu.id)
                    .map_err(|e| e.to_string())
                    .and_then(|fd| {
                        bpf_sys::set_perf_event(map.fd().as_fd(), cpu.id, fd.as_fd())
                            .map(|()| fd)
                            .map_err(|e| e.to_string())
                    });
                let fd = match stored {
                    Ok(fd) => Some(fd),
                    Err(reason) => {
                        // Reads there now fail and are counted in counter_read_errors.
                        let _ = bpf_sys::clear_perf_event(map.fd().as_fd(), cpu.id);
                        if !std::mem::replace(&mut self.said_rearm_failure, true) {
                            eprintln!(
                                "powerapi: counter {} could not be reopened on CPU {} after it came online ({reason}); its slices there are counted in losses.counter_read_errors, recording goes on",
                                spec.name, cpu.id
                            );
                        }
                        None
                    }
                };
                if let Some(entry) = self
                    .counter_fds
                    .get_mut(slot)
                    .and_then(|fds| fds.get_mut(cpu.id as usize))
                {
                    *entry = fd;
                }
            }
            self.counters_epoch = self.counters_epoch.wrapping_add(1);
        }
        set_cpu_config(
            &mut self.ebpf,
            cpu.id,
            CpuConfig {
                lane,
                counters_epoch: self.counters_epoch,
            },
        )
    }

    /// Closes every online CPU's open slice. A CPU that went offline since the mask was read
    /// (ENXIO/ENODEV from the kernel) is dropped from this round, not an error.
    fn flush(&mut self) -> Result<(), SensorError> {
        self.epoch += 1;
        if let Some(globals) = self.globals.element(0) {
            // SAFETY: an aligned u64 inside the live mapping; the kernel only reads this field.
            unsafe { std::ptr::write_volatile(&raw mut (*globals).epoch, self.epoch) };
        }
        let prog = self
            .ebpf
            .program(FLUSH_PROGRAM)
            .ok_or_else(|| SensorError::Load(format!("program {FLUSH_PROGRAM} missing")))?;
        let fd = prog.fd().map_err(|e| SensorError::Load(e.to_string()))?;
        let mut went_offline = Vec::new();
        for cpu in &self.cpus {
            match bpf_sys::run_on_cpu(fd.as_fd(), cpu.id) {
                Ok(()) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ENODEV)) => {
                    went_offline.push(cpu.id);
                }
                Err(source) => {
                    return Err(SensorError::Flush {
                        cpu: cpu.id,
                        source,
                    });
                }
            }
        }
        if !went_offline.is_empty() {
            self.cpus.retain(|c| !went_offline.contains(&c.id));
            self.cpus_changed = true;
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
        self.refresh_cpus()?;
        self.flush()?;
        reading.taken_at_ns = monotonic_ns();
        // Marks first, closest to the flush: they bound this interval on each CPU.
        self.read_cpu_marks(&mut reading.cpu_marks)?;
        reading.exited.clear();
        reading.cpus.clone_from(&self.cpus);
        reading.lane_sockets.clear();
        reading.lane_sockets.extend_from_slice(self.lanes.sockets());
        reading.cpus_changed = std::mem::take(&mut self.cpus_changed);

        // Exits first: a task that dies after this point is still in its slot (or in the next
        // read). Exits held back by the previous reading belong to this one.
        reading.live.clear();
        reading.exited.append(&mut self.pending_exits);
        let closed = self.closed_epoch();
        while let Some(item) = self.exits.next() {
            if item.len() >= size_of::<ExitEvent>() {
                // SAFETY: the kernel wrote a whole ExitEvent; read_unaligned copes with alignment.
                let event: ExitEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                let entry = TaskEntry {
                    slot: event.slot,
                    key: event.key,
                    totals: event.totals,
                };
                match as_of_epoch(&entry, closed) {
                    EpochView::Whole => reading.exited.push(entry),
                    view => {
                        if let EpochView::Closed(before) = view {
                            reading.live.push(before);
                        }
                        self.pending_exits.push(entry);
                    }
                }
            }
        }

        self.read_slots(reading)?;

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
            reading.stats.stale_slices += s.stale_slices;
            reading.stats.counter_read_errors += s.counter_read_errors;
        }
        Ok(())
    }
}

impl Sensor {
    /// One lookup returns every CPU's open slice (per-CPU map); read right after the flush, so
    /// online CPUs show the flush instant and offline ones their last switch.
    fn read_cpu_marks(&mut self, marks: &mut Vec<CpuMark>) -> Result<(), SensorError> {
        let closed = self.closed_epoch();
        let map: PerCpuArray<&mut MapData, CpuSlice> = typed_map(&mut self.ebpf, CPU_SLICE_MAP)?;
        let slices = map.get(&0, 0).map_err(|e| SensorError::Map {
            name: CPU_SLICE_MAP,
            detail: e.to_string(),
        })?;
        marks.clear();
        marks.extend(
            slices
                .iter()
                .enumerate()
                .filter(|(_, s)| s.start_ns != 0)
                .map(|(cpu, s)| cpu_mark(cpu as u32, s, closed)),
        );
        Ok(())
    }
}

/// A CPU's mark at the end of epoch `closed`: a CPU that has moved past it (its flush ran)
/// kept its figures at the move; one that has not (offline through the round) books nothing.
fn cpu_mark(cpu: u32, slice: &CpuSlice, closed: u64) -> CpuMark {
    let (booked_ns, lost_ns) = if slice.epoch > closed {
        (slice.closed_booked_ns, slice.closed_lost_ns)
    } else {
        (slice.booked_ns, slice.lost_ns)
    };
    CpuMark {
        cpu,
        booked_ns,
        lost_ns,
    }
}

/// What a task's totals were at the end of drain epoch `closed`. (Built once per slot and
/// consumed at once: the size of the variant does not matter.)
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
enum EpochView {
    /// Everything in them was booked by then.
    Whole,
    /// Part of them was booked later: these are the totals as of then.
    Closed(TaskEntry),
    /// The task was first booked later.
    Unborn,
}

fn as_of_epoch(entry: &TaskEntry, closed: u64) -> EpochView {
    if entry.totals.epoch <= closed {
        return EpochView::Whole;
    }
    if entry.totals.closed_lane_ns.iter().all(|&ns| ns == 0) {
        return EpochView::Unborn;
    }
    let mut before = *entry;
    before.totals.lane_ns = entry.totals.closed_lane_ns;
    EpochView::Closed(before)
}

fn set_cpu_config(ebpf: &mut Ebpf, cpu: u32, config: CpuConfig) -> Result<(), SensorError> {
    let mut lanes: Array<&mut MapData, CpuConfig> = typed_map(ebpf, CPU_LANES_MAP)?;
    lanes.set(cpu, config, 0).map_err(|e| SensorError::Map {
        name: CPU_LANES_MAP,
        detail: format!("CPU {cpu}: {e}"),
    })
}

/// Puts every slot on the free stack (0 on top) and maps the slot array.
fn init_slots(ebpf: &Ebpf, max_tasks: u32) -> Result<bpf_sys::MappedArray<TaskSlot>, SensorError> {
    let free = map_data(ebpf, FREE_SLOTS_MAP)?;
    for index in (0..max_tasks).rev() {
        bpf_sys::push(free.fd().as_fd(), index).map_err(|e| SensorError::Map {
            name: FREE_SLOTS_MAP,
            detail: format!("filling the free-slot stack: {e}"),
        })?;
    }
    let totals = map_data(ebpf, TASK_TOTALS_MAP)?;
    let slots =
        bpf_sys::MappedArray::map(totals.fd().as_fd(), max_tasks as usize).map_err(|e| {
            SensorError::Map {
                name: TASK_TOTALS_MAP,
                detail: format!("mmap of the task slots failed ({e}); Linux ≥ 5.5 is needed"),
            }
        })?;
    slots.prefault();
    Ok(slots)
}

/// Copies a slot consistently: retries while the kernel is writing it (odd or changed `seq`).
/// Kernel writers run with preemption off, so a write lasts nanoseconds unless the hypervisor
/// deschedules that vCPU; the bound counts attempts, not wall time, because under overload this
/// thread itself is descheduled for milliseconds between attempts (a wall-clock bound then gave
/// up spuriously). `None` only defers the slot's figures to the next interval.
///
/// Ordering: the writer's `seq` increments are fully ordered atomics (see the kernel program), so
/// its data stores cannot be seen outside the odd window; the acquire fences here keep this
/// side's loads between the two reads of `seq` on arm64 as well as x86.
fn read_slot(slot: *mut TaskSlot) -> Option<TaskSlot> {
    use std::sync::atomic::{Ordering, fence};
    const ATTEMPTS: u32 = 1 << 20;
    for attempt in 0..ATTEMPTS {
        // SAFETY: `slot` points into the live mapping; volatile reads because the kernel writes
        // it concurrently, and the seq check below rejects torn copies.
        let before = unsafe { std::ptr::read_volatile(&raw const (*slot).seq) };
        if before % 2 == 0 {
            fence(Ordering::Acquire);
            // SAFETY: as above.
            let copy = unsafe { std::ptr::read_volatile(slot) };
            fence(Ordering::Acquire);
            // SAFETY: as above.
            let after = unsafe { std::ptr::read_volatile(&raw const (*slot).seq) };
            if before == after {
                return Some(copy);
            }
        }
        std::hint::spin_loop();
        if attempt % 256 == 255 {
            std::thread::yield_now();
        }
    }
    None
}

impl Sensor {
    /// Reads every used slot straight from the mapped array: no syscall per task.
    fn read_slots(&mut self, reading: &mut SensorReading) -> Result<(), SensorError> {
        let hwm: PerCpuArray<&mut MapData, u32> = typed_map(&mut self.ebpf, SLOT_HWM_MAP)?;
        let used = hwm
            .get(&0, 0)
            .map_err(|e| SensorError::Map {
                name: SLOT_HWM_MAP,
                detail: e.to_string(),
            })?
            .iter()
            .copied()
            .max()
            .unwrap_or(0) as usize;
        let closed = self.closed_epoch();
        let mut dead = Vec::new();
        for index in 0..used {
            let Some(ptr) = self.slots.element(index) else {
                break;
            };
            let Some(slot) = read_slot(ptr) else { continue };
            if slot.totals.first_seen_ns == 0 {
                continue;
            }
            let mut entry = TaskEntry {
                slot: index as u32,
                key: slot.key,
                totals: slot.totals,
            };
            match as_of_epoch(&entry, closed) {
                // Booked since the epoch being read closed: that part waits for the next
                // reading, and so does freeing a dead slot.
                EpochView::Closed(before) => reading.live.push(before),
                EpochView::Unborn => {}
                EpochView::Whole if slot.totals.flags & FLAG_DEAD != 0 => {
                    // An exec that took over this task's key ended it without a clock.
                    if entry.totals.exit_ns == 0 {
                        entry.totals.exit_ns = reading.taken_at_ns;
                    }
                    dead.push((ptr, entry));
                }
                EpochView::Whole => reading.live.push(entry),
            }
        }
        // Exits that did not fit on the ring buffer. The kernel removed their keys before
        // flagging them, so nothing but this code can reach these slots: report, then free.
        let free = map_data(&self.ebpf, FREE_SLOTS_MAP)?;
        for (ptr, entry) in dead {
            reading.exited.push(entry);
            // SAFETY: the slot is in the mapping and unreachable by the kernel until pushed.
            unsafe { std::ptr::write_volatile(&raw mut (*ptr).totals.first_seen_ns, 0) };
            bpf_sys::push(free.fd().as_fd(), entry.slot).map_err(|e| SensorError::Map {
                name: FREE_SLOTS_MAP,
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// Zeroes every CPU's slice (the kernel fills in CPU id and lane at its first switch there).
fn init_cpu_slices(ebpf: &mut Ebpf, possible: usize) -> Result<(), SensorError> {
    let err = |detail: String| SensorError::Map {
        name: CPU_SLICE_MAP,
        detail,
    };
    let slices = vec![CpuSlice::default(); possible];
    let mut map: PerCpuArray<&mut MapData, CpuSlice> = typed_map(ebpf, CPU_SLICE_MAP)?;
    let values = PerCpuValues::try_from(slices).map_err(|e| err(e.to_string()))?;
    map.set(0, values, 0).map_err(|e| err(e.to_string()))
}

/// Which build of the switch path to attach (the object has one per combination, so that the
/// choices cost nothing per switch). The `tp_btf` builds always have the cache.
fn switch_program(path: SwitchPath, counters: bool, recent_cache: bool) -> &'static str {
    match (path, counters, recent_cache) {
        (SwitchPath::RqClock, true, _) => SCHED_SWITCH_BTF_PROGRAM,
        (SwitchPath::RqClock, false, _) => SCHED_SWITCH_BTF_TIME_ONLY_PROGRAM,
        (SwitchPath::Ktime, true, true) => SCHED_SWITCH_PROGRAM,
        (SwitchPath::Ktime, false, true) => SCHED_SWITCH_TIME_ONLY_PROGRAM,
        (SwitchPath::Ktime, true, false) => SCHED_SWITCH_UNCACHED_PROGRAM,
        (SwitchPath::Ktime, false, false) => SCHED_SWITCH_TIME_ONLY_UNCACHED_PROGRAM,
    }
}

/// Loads only the empty `sched_switch` program (or, with `clock`, one that only reads the clock)
/// and attaches it: the floors of the overhead benchmark. Keep the returned object alive as long
/// as it should stay attached.
pub fn attach_noop(root: &Path, clock: bool) -> Result<Ebpf, SensorError> {
    if !privilege::can_trace(root) {
        return Err(SensorError::NotPrivileged);
    }
    let mut ebpf = load_object(0, 1024, 4096, SlotLookup::Hash, None)?;
    let program = if clock { CLOCK_PROGRAM } else { NOOP_PROGRAM };
    attach(&mut ebpf, program, "sched_switch")?;
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_handed_out_in_order_and_shared_beyond_the_last() {
        let mut lanes = Lanes::default();
        assert_eq!(
            (lanes.lane_of(3), lanes.lane_of(1), lanes.lane_of(3)),
            (0, 1, 0)
        );
        for socket in 10..16 {
            lanes.lane_of(socket);
        }
        assert!(!lanes.overflowed);
        assert_eq!(lanes.lane_of(99), (MAX_SOCKETS - 1) as u32);
        assert!(lanes.overflowed);
        assert_eq!(lanes.sockets().len(), MAX_SOCKETS);
    }

    fn entry(epoch: u64, lane_ns: [u64; 2], closed: [u64; 2]) -> TaskEntry {
        let mut totals = TaskTotals {
            first_seen_ns: 5,
            epoch,
            ..TaskTotals::default()
        };
        totals.lane_ns[..2].copy_from_slice(&lane_ns);
        totals.closed_lane_ns[..2].copy_from_slice(&closed);
        TaskEntry {
            slot: 3,
            key: TaskKey::default(),
            totals,
        }
    }

    #[test]
    fn a_task_booked_after_the_epoch_closed_reports_what_it_had_by_then() {
        // Last booked in the epoch being read, or earlier: all of it.
        assert_eq!(as_of_epoch(&entry(7, [10, 0], [0, 0]), 7), EpochView::Whole);
        assert_eq!(as_of_epoch(&entry(2, [10, 0], [0, 0]), 7), EpochView::Whole);
        // Booked again since: the totals as they stood at the close, on every lane.
        let EpochView::Closed(before) = as_of_epoch(&entry(8, [10, 30], [4, 20]), 7) else {
            panic!("a task booked since the close is reported as of the close");
        };
        assert_eq!(before.totals.lane_ns[..2], [4, 20]);
        assert_eq!((before.slot, before.totals.first_seen_ns), (3, 5));
        // First booked after the close: not yet there.
        assert_eq!(
            as_of_epoch(&entry(8, [10, 0], [0, 0]), 7),
            EpochView::Unborn
        );
    }

    #[test]
    fn a_cpu_mark_is_what_it_had_booked_when_it_left_the_closed_epoch() {
        let slice = CpuSlice {
            epoch: 8,
            booked_ns: 900,
            closed_booked_ns: 700,
            lost_ns: 50,
            closed_lost_ns: 20,
            ..CpuSlice::default()
        };
        assert_eq!(
            cpu_mark(1, &slice, 7),
            CpuMark {
                cpu: 1,
                booked_ns: 700,
                lost_ns: 20
            }
        );
        // A CPU that missed the flush (offline) books nothing after: its running figures, also
        // when the epoch it is in is the one being closed.
        let in_closed = CpuSlice { epoch: 7, ..slice };
        assert_eq!(cpu_mark(1, &in_closed, 7).booked_ns, 900);
        let offline = CpuSlice { epoch: 6, ..slice };
        assert_eq!(
            cpu_mark(1, &offline, 7),
            CpuMark {
                cpu: 1,
                booked_ns: 900,
                lost_ns: 50
            }
        );
    }

    #[test]
    fn kernels_older_than_the_minimum_are_refused_in_one_line() {
        assert!(check_kernel("6.18.44-fc").is_ok());
        assert!(check_kernel("5.18.0").is_ok());
        let err = check_kernel("5.15.0-91-generic").expect_err("too old");
        assert_eq!(
            err.to_string(),
            "Linux 5.15.0-91-generic is too old: powerapi needs Linux ≥ 5.18 (sched_switch's prev_state argument); upgrade the kernel"
        );
        assert!(
            check_kernel("garbage").is_ok(),
            "unparsable: the attach says what is wrong"
        );
    }
}
