//! Types that cross the kernel/user boundary of powerapi.
//!
//! Every struct here is `#[repr(C)]` and laid out by hand without implicit padding, because the
//! kernel program and userspace read the same bytes out of BPF maps. No logic lives here.
#![no_std]

/// How many hardware (or software) counters one sensor can follow at once.
///
/// Four is what a PMU offers without multiplexing on most x86 parts (besides the fixed counters);
/// each slot costs one `bpf_perf_event_read_value` per context switch, so it stays small.
pub const MAX_COUNTERS: usize = 4;

/// Which slot of [`TASK_TOTALS_MAP`] holds a thread: `TaskKey` → `u32`.
pub const TASK_SLOTS_MAP: &str = "TASK_SLOTS";
/// Per-thread accumulators: an mmap-able array of [`TaskSlot`], read by userspace straight from
/// memory (no syscall per task). The kernel frees a slot when its task dies, after sending the
/// final totals on [`EXITS_MAP`].
pub const TASK_TOTALS_MAP: &str = "TASK_TOTALS";
/// Free slot indexes (a stack, so freed slots are reused first and the used range stays dense).
pub const FREE_SLOTS_MAP: &str = "FREE_SLOTS";
/// Per-CPU: one past the highest slot index this CPU ever handed out; userspace scans up to the
/// maximum over CPUs.
pub const SLOT_HWM_MAP: &str = "SLOT_HWM";
/// Per-CPU open slice: `u32` 0 → [`CpuSlice`].
pub const CPU_SLICE_MAP: &str = "CPU_SLICE";
/// `u32` CPU id → socket lane (`u32`): written by userspace at start and on CPU hotplug; the
/// kernel copies it into [`CpuSlice::lane`] when a CPU's slice is (re)opened or flushed.
pub const CPU_LANES_MAP: &str = "CPU_LANES";
/// One [`Globals`] at index 0, shared by every CPU.
pub const GLOBALS_MAP: &str = "GLOBALS";
/// Hotplug steps seen per CPU (`u64` by CPU id, mmapable): a CPU that went offline and came back
/// between two readings is noticed by its count, not only by the online mask.
pub const CPU_HOTPLUG_MAP: &str = "CPU_HOTPLUG";
/// By CPU id (`u64`): when a step of the CPU's bring-up last ran on another CPU; an open slice
/// older than that spans the CPU's absence and is dropped.
pub const CPU_UP_NS_MAP: &str = "CPU_UP_NS";
/// Ring buffer of [`ExitEvent`]s.
pub const EXITS_MAP: &str = "EXITS";
/// Per-CPU loss counters: `u32` 0 → [`SensorStats`].
pub const SENSOR_STATS_MAP: &str = "SENSOR_STATS";
/// One `PERF_EVENT_ARRAY` per counter slot, indexed by CPU.
pub const COUNTER_MAPS: [&str; MAX_COUNTERS] = ["COUNTER0", "COUNTER1", "COUNTER2", "COUNTER3"];
/// Global (`.rodata`) set at load time: how many counter slots are in use.
pub const NUM_COUNTERS_GLOBAL: &str = "NUM_COUNTERS";
/// Global: non-zero when the switch path finds slots through task-local storage.
pub const USE_TASK_STORAGE_GLOBAL: &str = "USE_TASK_STORAGE";
/// Global: non-zero where the CPU keeps stores in program order (x86's TSO), so the slot's
/// sequence counter needs no atomic instruction.
pub const STORES_ORDERED_GLOBAL: &str = "STORES_ORDERED";

/// Globals (`u64`) set at load time for the `tp_btf` switch programs: byte offsets of
/// `task_struct.pid`, `task_struct.se.cfs_rq`, `cfs_rq.rq` and `rq.clock`, read from the kernel's
/// BTF (aya has no CO-RE for Rust programs; the verifier checks each load against the BTF).
pub const LAYOUT_GLOBALS: [&str; 4] = [
    "OFF_TASK_PID",
    "OFF_SE_CFS_RQ",
    "OFF_CFS_RQ_RQ",
    "OFF_RQ_CLOCK",
];

/// Entries in each CPU's cache of recently switched-out threads ([`CpuSlice::recent`]): a power
/// of two, indexed by a hash of the `task_struct` address.
pub const RECENT_TASKS: usize = 16;

/// Program names in the object file.
///
/// The switch path comes in four builds, one attached: with or without counter reads, with or
/// without the CPU's cache of recent threads ([`CpuSlice::recent`]; off only to measure it).
pub const SCHED_SWITCH_PROGRAM: &str = "sched_switch";
pub const SCHED_SWITCH_TIME_ONLY_PROGRAM: &str = "sched_switch_time_only";
pub const SCHED_SWITCH_UNCACHED_PROGRAM: &str = "sched_switch_uncached";
pub const SCHED_SWITCH_TIME_ONLY_UNCACHED_PROGRAM: &str = "sched_switch_time_only_uncached";
/// The `tp_btf` builds (kernels with BTF): the time comes from the run queue's clock, with the
/// cache; with and without counters.
pub const SCHED_SWITCH_BTF_PROGRAM: &str = "sched_switch_btf";
pub const SCHED_SWITCH_BTF_TIME_ONLY_PROGRAM: &str = "sched_switch_btf_time_only";
pub const SCHED_EXEC_PROGRAM: &str = "sched_process_exec";
/// Bumps [`Globals::identity_gen`] when a task is renamed (`prctl(PR_SET_NAME)`, exec).
pub const TASK_RENAME_PROGRAM: &str = "task_rename";
/// Bumps [`Globals::identity_gen`] when a task moves to another cgroup.
pub const CGROUP_ATTACH_PROGRAM: &str = "cgroup_attach_task";
pub const FLUSH_PROGRAM: &str = "flush_cpu";
/// On `cpuhp_enter`: counts hotplug steps per CPU in [`CPU_HOTPLUG_MAP`].
pub const CPU_HOTPLUG_PROGRAM: &str = "cpu_hotplug";
/// An empty `sched_switch` program: the floor for overhead benchmarks.
pub const NOOP_PROGRAM: &str = "noop_switch";
/// A `sched_switch` program that only reads the clock: the floor of any per-slice timing.
pub const CLOCK_PROGRAM: &str = "clock_switch";

/// `TaskKey::idle_cpu` of every task that is not an idle task.
pub const NOT_IDLE: u32 = u32::MAX;

/// Socket lanes per slot: on-CPU time is kept per lane, so a thread owns one slot whatever
/// sockets it runs on. Userspace numbers the sockets it sees 0, 1, … as lanes; hosts with more
/// packages than lanes share the last lane among the extra sockets (said at start).
pub const MAX_SOCKETS: usize = 8;

/// `TaskTotals::flags`: the task died but its final totals could not be sent on the ring buffer.
/// The kernel has already removed the slot's key, so only userspace can reach the slot: it reads
/// the totals, then frees the slot itself.
pub const FLAG_DEAD: u64 = 1;

/// `TaskTotals::flags`: someone has claimed the ending of this slot (set atomically, once): the
/// task's own last switch, or the exec of another thread of its process that takes over its
/// key. Whoever sets it first ends the slot; the other leaves it alone, so one exit is never
/// reported twice nor one slot freed twice.
pub const FLAG_ENDING: u64 = 2;

/// `TASK_DEAD` from `include/linux/sched.h`: the `prev_state` of a task's very last switch.
pub const TASK_DEAD: u64 = 0x80;

/// Which thread an accumulator belongs to.
///
/// Idle tasks all have pid 0, one per CPU running concurrently, so they are keyed by CPU
/// (`idle_cpu`) to keep a single writer per entry; every other task has `idle_cpu == NOT_IDLE`.
/// The socket is deliberately not part of the key: a thread that migrates between sockets keeps
/// one slot (and one exit), with its time split by socket lane inside [`TaskTotals`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    pub tgid: u32,
    pub pid: u32,
    pub idle_cpu: u32,
    pub _reserved: u32,
}

impl TaskKey {
    pub fn is_idle(&self) -> bool {
        self.idle_cpu != NOT_IDLE
    }
}

/// One counter's running totals, as `bpf_perf_event_read_value` reports them.
///
/// `enabled_ns`/`running_ns` let userspace scale a multiplexed counter
/// (`value × enabled / running`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterReading {
    pub value: u64,
    pub enabled_ns: u64,
    pub running_ns: u64,
}

/// Cumulative totals of one thread since the sensor first saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskTotals {
    /// `bpf_ktime_get_ns` when the entry was created: with the slot index, the identity of this
    /// incarnation (a reused pid or slot is a new task).
    pub first_seen_ns: u64,
    /// `first_seen_ns` of the thread-group leader's slot when this thread's slot was created (its
    /// own for a leader, or when the leader had no slot yet): tells two processes that reused
    /// one pid apart.
    pub group_first_seen_ns: u64,
    /// On-CPU time by socket lane. The total is their sum ([`TaskTotals::on_cpu_ns`]): the
    /// switch path adds each slice once, to its lane, and the drain derives the rest.
    pub lane_ns: [u64; MAX_SOCKETS],
    pub counters: [CounterReading; MAX_COUNTERS],
    /// cgroup v2 id (the cgroup directory's inode number): read at creation, exec, flush, and at
    /// the first switch after any task in the system moved cgroup.
    pub cgroup_id: u64,
    pub flags: u64,
    /// [`Globals::identity_gen`] when `comm` and `cgroup_id` were last read.
    pub identity_gen: u64,
    /// `task->comm` (NUL-padded), kept current like `cgroup_id`.
    pub comm: [u8; 16],
    /// `bpf_ktime_get_ns` at the task's death (0 while it lives): a thread first seen before its
    /// leader died belongs to the same process even if it then took the leader's pid (exec).
    pub exit_ns: u64,
    /// Real uid and gid, read with comm: a task that lived a few ms still has an owner, when
    /// `/proc` no longer knows it.
    pub uid: u32,
    pub gid: u32,
    /// The drain epoch ([`Globals::epoch`]) of the last slice booked here. A drain reads the
    /// epoch before the current one: a slot already booked in the current one reports
    /// `closed_lane_ns` instead of `lane_ns`, so a slice booked while the drain runs counts in
    /// the next interval for both busy time and capacity, never in two.
    pub epoch: u64,
    /// `lane_ns` as it stood at the end of the epoch before `epoch` (zero for a slot first
    /// booked in `epoch`).
    pub closed_lane_ns: [u64; MAX_SOCKETS],
}

impl TaskTotals {
    /// On-CPU time over all lanes. Wrapping, like every accumulator the kernel keeps.
    pub fn on_cpu_ns(&self) -> u64 {
        self.lane_ns
            .iter()
            .fold(0u64, |sum, &ns| sum.wrapping_add(ns))
    }
}

impl Default for TaskTotals {
    fn default() -> Self {
        Self {
            first_seen_ns: 0,
            group_first_seen_ns: 0,
            lane_ns: [0; MAX_SOCKETS],
            counters: [CounterReading::default(); MAX_COUNTERS],
            cgroup_id: 0,
            flags: 0,
            identity_gen: 0,
            comm: [0; 16],
            exit_ns: 0,
            uid: 0,
            gid: 0,
            epoch: 0,
            closed_lane_ns: [0; MAX_SOCKETS],
        }
    }
}

/// One slot of the task array. `seq` is a sequence counter: odd while the kernel writes the slot,
/// so a reader that sees it odd, or changed across its copy, reads again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskSlot {
    pub seq: u64,
    pub key: TaskKey,
    /// `first_seen_ns == 0` marks a free slot.
    pub totals: TaskTotals,
}

/// The slice a CPU has open: when it started and the counters at that moment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSlice {
    /// 0 until the first switch or flush on this CPU.
    pub start_ns: u64,
    pub counters: [CounterReading; MAX_COUNTERS],
    /// Bit `i` set: `counters[i]` is a valid start. A failed read clears it, so the next
    /// successful read only restarts the counter instead of charging the failed slice's counts
    /// to whichever task runs next.
    pub counters_valid: u32,
    /// This CPU's socket lane, from [`CPU_LANES_MAP`].
    pub lane: u32,
    /// This CPU's id (from the kernel, so a CPU brought online later is never confused with 0).
    pub cpu: u32,
    /// The `CpuConfig::counters_epoch` the counter starts were read under.
    pub counters_epoch: u32,
    /// The drain epoch this CPU books into ([`Globals::epoch`] as of its last flush or reopening).
    pub epoch: u64,
    /// Every nanosecond this CPU booked (into slots, or lost because the table was full), since
    /// load: the CPU's capacity. The time it was offline and stale slices are not in it.
    pub booked_ns: u64,
    /// `booked_ns` at the end of the CPU's previous epoch (taken when it moved to `epoch`).
    pub closed_booked_ns: u64,
    /// The lost part of `booked_ns`, and its value at the end of the previous epoch.
    pub lost_ns: u64,
    pub closed_lost_ns: u64,
    /// Threads this CPU switched out recently and where their slots are: most switches on a
    /// CPU are between the same few threads, and this finds them without a helper call.
    pub recent: [RecentTask; RECENT_TASKS],
    /// Scheduler-clock builds: CLOCK_MONOTONIC minus the run queue's clock (wrapping), measured
    /// at `calibrated_rq_ns`; a switch books `rq clock + offset` instead of calling the clock
    /// helper. 0 in `calibrated_rq_ns`: re-measure at the next switch (after a flush, or when
    /// the slice was reopened).
    pub clock_offset: u64,
    pub calibrated_rq_ns: u64,
}

/// One entry of [`CpuSlice::recent`]. Valid only while the slot still holds the same
/// incarnation (`first_seen_ns`) and is not flagged dead: a `task_struct` address is reused
/// after its task is freed, and by then its slot has been freed or flagged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentTask {
    /// The thread's `task_struct` address (the tracepoint's `prev`); 0: empty.
    pub task: u64,
    pub first_seen_ns: u64,
    pub index: u32,
    pub _reserved: u32,
}

/// What userspace tells one CPU's programs ([`CPU_LANES_MAP`], indexed by CPU id); read at
/// flushes and slice reopenings only, never per switch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuConfig {
    /// The CPU's socket lane (`TaskTotals::lane_ns` index).
    pub lane: u32,
    /// Bumped when userspace installs new counter events for this CPU (it came back online:
    /// the kernel leaves an offlined CPU's events switched off for good). The next flush there
    /// then restarts the counters instead of subtracting an old event's reading from a new one's.
    pub counters_epoch: u32,
}

/// State shared by all CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    /// Bumped (atomically) whenever any task is renamed or moves cgroup; a slot whose
    /// `identity_gen` differs re-reads comm and cgroup at its next switch. One compare per switch
    /// instead of two helper calls.
    pub identity_gen: u64,
    /// The drain epoch: raised by userspace right before each flush round. Each CPU moves to it
    /// at its flush (or when it comes back online), so everything a CPU books before its flush
    /// belongs to the epoch being closed and everything after to the new one.
    pub epoch: u64,
}

/// The final totals of a thread that died.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub key: TaskKey,
    /// The slot the totals came from: with `first_seen_ns`, the task's identity.
    pub slot: u32,
    pub _reserved: u32,
    pub totals: TaskTotals,
}

/// Losses the kernel side counts, per CPU, since load. None of them is ever silent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SensorStats {
    /// Slices that could not be stored because every task slot was in use.
    pub lost_slices: u64,
    /// Their on-CPU time.
    pub lost_ns: u64,
    /// Exits that did not fit on the ring buffer (their totals stay in the slot, flagged dead).
    pub exit_overflow: u64,
    /// Slices discarded because the CPU had been offline (its open slice was stale).
    pub stale_slices: u64,
    /// `bpf_perf_event_read_value` failures (the counter delta of that slice is missing).
    pub counter_read_errors: u64,
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are #[repr(C)], contain only integers and have no padding bytes.
    unsafe impl aya::Pod for TaskKey {}
    unsafe impl aya::Pod for TaskTotals {}
    unsafe impl aya::Pod for TaskSlot {}
    unsafe impl aya::Pod for CpuSlice {}
    unsafe impl aya::Pod for ExitEvent {}
    unsafe impl aya::Pod for SensorStats {}
    unsafe impl aya::Pod for Globals {}
    unsafe impl aya::Pod for CpuConfig {}
}
