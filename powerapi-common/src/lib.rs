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
/// Ring buffer of [`ExitEvent`]s.
pub const EXITS_MAP: &str = "EXITS";
/// Per-CPU loss counters: `u32` 0 → [`SensorStats`].
pub const SENSOR_STATS_MAP: &str = "SENSOR_STATS";
/// One `PERF_EVENT_ARRAY` per counter slot, indexed by CPU.
pub const COUNTER_MAPS: [&str; MAX_COUNTERS] = ["COUNTER0", "COUNTER1", "COUNTER2", "COUNTER3"];
/// Global (`.rodata`) set at load time: how many counter slots are in use.
pub const NUM_COUNTERS_GLOBAL: &str = "NUM_COUNTERS";

/// Program names in the object file.
pub const SCHED_SWITCH_PROGRAM: &str = "sched_switch";
pub const SCHED_EXEC_PROGRAM: &str = "sched_process_exec";
pub const FLUSH_PROGRAM: &str = "flush_cpu";
/// An empty `sched_switch` program: the floor for overhead benchmarks.
pub const NOOP_PROGRAM: &str = "noop_switch";

/// `TaskKey::idle_cpu` of every task that is not an idle task.
pub const NOT_IDLE: u32 = u32::MAX;

/// `TaskTotals::flags`: the task died but its final totals could not be sent on the ring buffer;
/// userspace reads them from the map and deletes the entry.
pub const FLAG_DEAD: u64 = 1;

/// `TASK_DEAD` from `include/linux/sched.h`: the `prev_state` of a task's very last switch.
pub const TASK_DEAD: u64 = 0x80;

/// Which thread an accumulator belongs to, and on which socket it ran.
///
/// Idle tasks all have pid 0, one per CPU running concurrently, so they are keyed by CPU
/// (`idle_cpu`) to keep a single writer per entry; every other task has `idle_cpu == NOT_IDLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    pub tgid: u32,
    pub pid: u32,
    pub socket: u32,
    pub idle_cpu: u32,
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
    /// `bpf_ktime_get_ns` when the entry was created: tells two incarnations of a reused pid apart.
    pub first_seen_ns: u64,
    pub on_cpu_ns: u64,
    pub slices: u64,
    pub counters: [CounterReading; MAX_COUNTERS],
    /// cgroup v2 id (the cgroup directory's inode number) at the last switch.
    pub cgroup_id: u64,
    pub flags: u64,
    /// `task->comm` when first seen and after each exec; NUL-padded.
    pub comm: [u8; 16],
}

impl Default for TaskTotals {
    fn default() -> Self {
        Self {
            first_seen_ns: 0,
            on_cpu_ns: 0,
            slices: 0,
            counters: [CounterReading::default(); MAX_COUNTERS],
            cgroup_id: 0,
            flags: 0,
            comm: [0; 16],
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
    /// Written once by userspace before attaching.
    pub socket: u32,
    pub cpu: u32,
}

/// The final totals of a thread that died.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    pub key: TaskKey,
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
    /// Exits that did not fit on the ring buffer (their totals stay in the map, flagged dead).
    pub exit_overflow: u64,
    /// Totals overwritten because a pid was reused before userspace read the dead entry.
    pub overwritten_dead: u64,
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
}
