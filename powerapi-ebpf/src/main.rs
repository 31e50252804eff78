//! Kernel side of the task sensor.
//!
//! Every context switch closes the slice of the task that is switching out (it is still `current`
//! when `sched_switch` fires, so no tracepoint argument offsets are needed) and opens a new one for
//! the CPU. `flush_cpu` does the same without a switch; userspace runs it on every CPU right before
//! each drain (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_RUN_ON_CPU`), so a busy loop that is never
//! switched out is still attributed to every interval, and idle time up to the drain is counted.
//!
//! Accumulators are cumulative and never reset: userspace computes deltas, so nothing is lost
//! between a read and a delete, and the first slice after a drain is just another addition.
//! They live in slots of an mmap-able array (userspace reads them straight from memory, guarded
//! by a per-slot sequence counter); a hash map gives each thread its slot. Each slot has a single
//! writer (a thread runs on one CPU at a time; idle tasks are keyed by CPU), so plain adds are
//! race-free.
//!
//! Slot ownership, by construction:
//! - a live slot is reachable from exactly one key; the kernel frees it when that task dies;
//! - a dead task whose exit did not fit on the ring keeps its slot, flagged, but its key is
//!   removed first: from then on only userspace can reach the slot, and it frees it after reading
//!   the final totals. Kernel and userspace therefore never both free one slot.
#![no_std]
#![no_main]
// Atomic read-modify-write: the bpf target has no `AtomicU64::fetch_add` (core reports no
// atomic RMW for it), but LLVM lowers the intrinsic to BPF_ATOMIC instructions. The eBPF crate
// is always built with nightly (build-std), so the feature is available.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::{
    intrinsics::{AtomicOrdering, atomic_or, atomic_xadd},
    ptr::{addr_of, read_volatile, write_volatile},
    sync::atomic::{Ordering, compiler_fence},
};

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_CURRENT_CPU, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE,
        bpf_map_type, bpf_perf_event_value,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_get_smp_processor_id,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_ktime_get_ns,
            bpf_perf_event_read_value, bpf_task_storage_get,
        },
    },
    macros::{btf_map, btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerfEventArray, RingBuf, Stack},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use powerapi_common::{
    CounterReading, CpuConfig, CpuSlice, ExitEvent, FLAG_DEAD, FLAG_ENDING, Globals, MAX_COUNTERS,
    MAX_SOCKETS, NOT_IDLE, RECENT_TASKS, RecentTask, SensorStats, TASK_DEAD, TaskKey, TaskSlot,
    TaskTotals,
};

/// Non-zero: the switch path finds a thread's slot through task-local storage (`SLOT_OF_TASK`)
/// instead of hashing its key. Set by the loader where the kernel has BTF (it always has task
/// storage: it predates our 5.18 minimum); with 0 the verifier prunes that path unvisited.
#[unsafe(no_mangle)]
static USE_TASK_STORAGE: u32 = 0;

/// Non-zero where the CPU keeps stores in program order (x86): the sequence counter is then
/// written with plain stores, not fully ordered atomics (two locked instructions per switch).
/// Set by the loader from its own architecture, which is the kernel's.
#[unsafe(no_mangle)]
static STORES_ORDERED: u32 = 0;

/// Byte offsets in this kernel's structures, set by the loader from its BTF for the `tp_btf`
/// builds (see `LAYOUT_GLOBALS`): `task_struct.pid`, `task_struct.se.cfs_rq`, `cfs_rq.rq`,
/// `rq.clock`. Constants to the verifier, which checks every load made with them.
#[unsafe(no_mangle)]
static OFF_TASK_PID: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SE_CFS_RQ: u64 = 0;
#[unsafe(no_mangle)]
static OFF_CFS_RQ_RQ: u64 = 0;
#[unsafe(no_mangle)]
static OFF_RQ_CLOCK: u64 = 0;

/// How long a CPU books `rq clock + offset` before measuring the offset again, besides after
/// every flush: bounds what the drift between the TSC and NTP-disciplined CLOCK_MONOTONIC
/// (≤ 500 ppm) can add up to with long intervals, to 25 µs.
const RECALIBRATE_NS: u64 = 50_000_000;

/// How many counter slots are in use; set by the loader. Volatile reads keep LLVM from folding it,
/// and the verifier prunes the unused slots because the value is known at load time.
#[unsafe(no_mangle)]
static NUM_COUNTERS: u32 = 0;

/// `BPF_F_MMAPABLE`: userspace maps the task array and reads it without syscalls (and writes one
/// field of `GLOBALS` without clobbering the kernel's atomic counter beside it).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// These three are resized by the loader (`--max-tasks`), which also fills `FREE_SLOTS`.
#[map]
static TASK_SLOTS: HashMap<TaskKey, u32> = HashMap::with_max_entries(65536, 0);
#[map]
static TASK_TOTALS: Array<TaskSlot> = Array::with_max_entries(65536, BPF_F_MMAPABLE);
#[map]
static FREE_SLOTS: Stack<u32> = Stack::with_max_entries(65536, 0);
#[map]
static SLOT_HWM: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CPU_SLICE: PerCpuArray<CpuSlice> = PerCpuArray::with_max_entries(1, 0);
/// Resized by the loader to the number of possible CPUs.
#[map]
static CPU_LANES: Array<CpuConfig> = Array::with_max_entries(4096, 0);
#[map]
static GLOBALS: Array<Globals> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Resized by the loader to the number of possible CPUs.
#[map]
static CPU_HOTPLUG: Array<u64> = Array::with_max_entries(4096, BPF_F_MMAPABLE);
/// By CPU id (resized by the loader): when a step of the CPU's bring-up last ran on another CPU,
/// i.e. before the CPU itself runs again. An open slice older than that spans the CPU's absence.
/// (Its own bring-up steps cannot say so: tracepoints do not fire on a CPU not yet online.)
#[map]
static CPU_UP_NS: Array<u64> = Array::with_max_entries(4096, 0);
#[map]
static EXITS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);
#[map]
static SENSOR_STATS: PerCpuArray<SensorStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static COUNTER0: PerfEventArray<u32> = PerfEventArray::new(0);
#[map]
static COUNTER1: PerfEventArray<u32> = PerfEventArray::new(0);
#[map]
static COUNTER2: PerfEventArray<u32> = PerfEventArray::new(0);
#[map]
static COUNTER3: PerfEventArray<u32> = PerfEventArray::new(0);

/// Where a thread's slot is, kept in the thread's own `task_struct` (task-local storage): found
/// without hashing a key, and freed by the kernel with the task. `first_seen_ns` is the slot's
/// incarnation: a slot freed and reused since (an exec'ing thread ends its old leader's slot
/// from another task) no longer matches, and the hash map decides.
#[repr(C)]
#[derive(Clone, Copy)]
struct SlotRef {
    index: u32,
    _pad: u32,
    first_seen_ns: u64,
}

/// A BTF-defined `BPF_MAP_TYPE_TASK_STORAGE` map. aya-ebpf 0.2.1 has BTF wrappers for inode and
/// socket storage but none for task storage, and its definition macro is private: this is the
/// same layout (the loader reads type, key, value and flags from these fields' BTF types).
#[repr(C)]
struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader replaces by the map; never dereferenced from Rust.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// The current task's value, created zeroed when `create`; null when absent (or, without
    /// `create`, when storage is busy on this CPU).
    #[inline(always)]
    fn current(&self, create: bool) -> *mut T {
        let flags = if create {
            u64::from(BPF_LOCAL_STORAGE_GET_F_CREATE)
        } else {
            0
        };
        // SAFETY: helper calls with the map's own address and the current task's trusted BTF
        // pointer; a null value pointer asks for a zeroed value on creation.
        unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                bpf_get_current_task_btf(),
                core::ptr::null_mut(),
                flags,
            )
        }
        .cast()
    }
}

#[btf_map]
static SLOT_OF_TASK: TaskStorage<SlotRef> = TaskStorage::new();

// Four builds of the switch path; the loader attaches one. Whether counters are read and
// whether the CPU's cache of recent threads is used are compile-time choices, so the time-only
// path carries no counter code and no flag tests: each global read and test on this path costs
// a few instructions on every switch of every CPU. The uncached builds exist for the overhead
// benchmark, which measures what the cache saves.

/// With counters, and the cache of recent threads: the default when counters are followed.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    on_switch::<true, true>(&ctx)
}

/// Time-only, with the cache: the default when no counter is followed.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_time_only(ctx: RawTracePointContext) -> i32 {
    on_switch::<false, true>(&ctx)
}

/// With counters, without the cache (benchmark only).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_uncached(ctx: RawTracePointContext) -> i32 {
    on_switch::<true, false>(&ctx)
}

/// Time-only, without the cache (benchmark only).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_time_only_uncached(ctx: RawTracePointContext) -> i32 {
    on_switch::<false, false>(&ctx)
}

#[inline(always)]
fn on_switch<const COUNTERS: bool, const RECENT: bool>(ctx: &RawTracePointContext) -> i32 {
    // TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
    //          unsigned int prev_state): the previous task's state is argument 3 (Linux ≥ 5.18).
    let prev: u64 = ctx.arg(1);
    let prev_state: u64 = ctx.arg(3);
    close_slice::<COUNTERS, RECENT, false>(prev_state & TASK_DEAD != 0, false, prev, 0);
    0
}

// The `tp_btf` builds, for kernels with BTF: `prev` is a typed pointer, so its pid and its run
// queue's clock are plain loads, and a switch makes no helper call at all once its thread is in
// the cache. (Every helper call costs 35–40 ns inside BPF on a VM with the usual Spectre
// mitigations; the clock helper was most of the switch path's cost.)

/// With counters, the run queue's clock and the cache: the default when counters are followed
/// and the kernel has BTF.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    on_switch_btf::<true>(&ctx)
}

/// Time-only, the run queue's clock and the cache: the default when no counter is followed and
/// the kernel has BTF.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf_time_only(ctx: BtfTracePointContext) -> i32 {
    on_switch_btf::<false>(&ctx)
}

#[inline(always)]
fn on_switch_btf<const COUNTERS: bool>(ctx: &BtfTracePointContext) -> i32 {
    let prev: *const u8 = ctx.arg(1);
    let prev_state: u64 = ctx.arg(3);
    // SAFETY: `prev` is the tracepoint's trusted task pointer and the offsets come from this
    // kernel's BTF; the verifier checks each load against it (a faulting load reads 0).
    let (pid, rq_clock) = unsafe {
        let pid: u32 = field(prev, &OFF_TASK_PID);
        let cfs_rq: *const u8 = field(prev, &OFF_SE_CFS_RQ);
        let rq: *const u8 = if cfs_rq.is_null() {
            cfs_rq
        } else {
            field(cfs_rq, &OFF_CFS_RQ_RQ)
        };
        (
            pid,
            if rq.is_null() {
                0
            } else {
                field(rq, &OFF_RQ_CLOCK)
            },
        )
    };
    // The cache is keyed by pid here (a typed pointer cannot be hashed): unique among live
    // threads, and per CPU, so pid 0 is this CPU's idle task; the bit keeps the key non-zero.
    // A pid outlives its thread's use of a slot (a non-leader thread that execs hands its tid
    // back while its slot lives on under the leader's), so a hit is checked against the slot's
    // own key (`PID_KEYED`).
    let key = (1u64 << 32) | u64::from(pid);
    close_slice::<COUNTERS, true, true>(prev_state & TASK_DEAD != 0, false, key, rq_clock);
    0
}

/// The `T` at `base` + the loader-set `offset`.
///
/// # Safety
/// `base` is a BTF-typed kernel pointer and `offset` a field offset of its type, from the BTF.
#[inline(always)]
unsafe fn field<T>(base: *const u8, offset: &u64) -> T {
    // SAFETY: per the contract; the verifier checks the load against the kernel's BTF.
    unsafe { read_volatile(base.add(read_volatile(offset) as usize).cast::<T>()) }
}

/// Closes the current slice without a switch, then moves this CPU to the drain epoch userspace
/// has just raised. Never attached: run by userspace on each CPU.
#[raw_tracepoint]
pub fn flush_cpu(_ctx: RawTracePointContext) -> i32 {
    close_slice::<true, false, false>(false, true, 0, 0);
    if let (Some(slice), Some(globals)) = (CPU_SLICE.get_ptr_mut(0), GLOBALS.get_ptr(0)) {
        // SAFETY: per-CPU value of this CPU, which runs nothing else now (see close_slice);
        // an aligned u64 of the globals, written by userspace before this round.
        unsafe { enter_epoch(&mut *slice, read_volatile(&(*globals).epoch)) };
    }
    0
}

/// Moves a CPU to drain epoch `epoch`, keeping what it had booked by the end of the previous
/// one: the drain of that epoch reads these, whatever the CPU books meanwhile.
#[inline(always)]
fn enter_epoch(slice: &mut CpuSlice, epoch: u64) {
    if slice.epoch != epoch {
        slice.closed_booked_ns = slice.booked_ns;
        slice.closed_lost_ns = slice.lost_ns;
        slice.epoch = epoch;
    }
}

/// Counts every hotplug step of a CPU. The online mask read each interval misses a CPU that
/// went offline and came back in between; the kernel leaves such a CPU's counter events
/// switched off, so userspace must notice it to install new ones. Never on the switch path.
///
/// A step of a CPU's bring-up that runs on another CPU (before the CPU itself runs again) is
/// timed in `CPU_UP_NS`: the CPU's open slice began before it went away, and its next close
/// must not book the time the CPU was offline to anyone.
#[raw_tracepoint(tracepoint = "cpuhp_enter")]
pub fn cpu_hotplug(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(unsigned int cpu, int target, int idx, int (*fun)(unsigned int)).
    let cpu = ctx.arg::<u64>(0) as u32;
    if let Some(steps) = CPU_HOTPLUG.get_ptr_mut(cpu) {
        // SAFETY: an aligned u64 of the map value; steps of one CPU may run on several CPUs.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(steps, 1) };
    }
    let (target, state) = (ctx.arg::<u64>(1) as i32, ctx.arg::<u64>(2) as i32);
    // SAFETY: helper without arguments.
    if target > state && unsafe { bpf_get_smp_processor_id() } != cpu {
        if let Some(up) = CPU_UP_NS.get_ptr_mut(cpu) {
            // SAFETY: an aligned u64 of the map value, one store; helper without arguments.
            unsafe { write_volatile(up, bpf_ktime_get_ns()) };
        }
    }
    0
}

/// After exec the thread gets a new name, and often a new cgroup: container runtimes and
/// `powerapi run` move a process into its cgroup right before exec. An exec from a thread other
/// than the leader also changes the thread's pid: the kernel gives it the leader's (`old_pid` is
/// the one it had), so its slot moves to the new key here, or it would never see its exit.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm).
    let old_pid = ctx.arg::<u64>(1) as u32;
    let key = task_key(bpf_get_current_pid_tgid(), 0);
    if old_pid != key.pid {
        rekey_after_exec(&key, old_pid);
        return 0;
    }
    let Some((_, slot)) = existing_slot(&key) else {
        return 0;
    };
    // SAFETY: the slot has a single writer: the CPU its thread runs on, which is this one.
    let slot = unsafe { &mut *slot };
    begin_write(slot);
    refresh_identity(&mut slot.totals);
    end_write(slot);
    0
}

/// A non-leader thread exec'd: it now has pid `key.pid` (the leader's), and its slot is still
/// under its old pid.
#[inline(always)]
fn rekey_after_exec(key: &TaskKey, old_pid: u32) {
    let old_key = TaskKey {
        pid: old_pid,
        ..*key
    };
    let Some((index, slot)) = existing_slot(&old_key) else {
        return;
    };
    // The old leader is dead by now (exec waits for it), but its last switch may not have ended
    // its slot yet, and may be running on another CPU right now: this CPU must not write that
    // slot. It claims the ending instead and flags the slot dead, so userspace reports and frees
    // it at the next drain; if the leader's last switch claimed it first, that switch ends it.
    // Either way the key is taken over below by the exec'ing thread's slot.
    if let Some((leader_index, leader_slot)) = existing_slot(key) {
        if leader_index != index {
            set_flags(leader_slot, FLAG_ENDING | FLAG_DEAD);
        }
    }
    // SAFETY: this thread's own slot, written from the CPU it runs on.
    let slot = unsafe { &mut *slot };
    begin_write(slot);
    slot.key = *key;
    refresh_identity(&mut slot.totals);
    end_write(slot);
    let _ = TASK_SLOTS.remove(&old_key);
    let _ = TASK_SLOTS.insert(key, &index, BPF_ANY as u64);
}

/// `prctl(PR_SET_NAME)`, `pthread_setname_np`, exec: some task's comm changed.
#[raw_tracepoint(tracepoint = "task_rename")]
pub fn task_rename(_ctx: RawTracePointContext) -> i32 {
    bump_identity_gen();
    0
}

/// `cgclassify`, systemd, container runtimes: some task moved to another cgroup.
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn cgroup_attach_task(_ctx: RawTracePointContext) -> i32 {
    bump_identity_gen();
    0
}

/// Tells every slot to re-read comm and cgroup at its next switch. The tracepoints do not say
/// which task changed without reading `task_struct` fields at kernel-specific offsets, and both
/// events are rare, so a global generation is the cheap exact answer.
#[inline(always)]
fn bump_identity_gen() {
    if let Some(globals) = GLOBALS.get_ptr_mut(0) {
        // SAFETY: a valid, 8-byte aligned u64 inside the map value; every writer uses atomics.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                &raw mut (*globals).identity_gen,
                1,
            )
        };
    }
}

/// Does nothing: attached to `sched_switch` by `cargo xtask bench overhead` to measure the floor.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn noop_switch(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Reads the clock and nothing else: the floor of any design that times each slice (one clock
/// read per switch), measured by `cargo xtask bench overhead` beside the empty program.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn clock_switch(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    core::hint::black_box(now);
    0
}

#[inline(always)]
fn task_key(pid_tgid: u64, cpu: u32) -> TaskKey {
    let pid = pid_tgid as u32;
    TaskKey {
        tgid: (pid_tgid >> 32) as u32,
        pid,
        idle_cpu: if pid == 0 { cpu } else { NOT_IDLE },
        _reserved: 0,
    }
}

#[inline(always)]
fn count(f: impl FnOnce(&mut SensorStats)) {
    if let Some(stats) = SENSOR_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value; only this CPU writes it, and not re-entrantly.
        f(unsafe { &mut *stats });
    }
}

/// Reads every counter in use, adds its change since the slice opened to `totals` (when given),
/// and stores the reading as the start of the next slice. Works in place: the BPF stack is 512
/// bytes and these structs are large.
#[inline(always)]
fn roll_counters(slice: &mut CpuSlice, mut totals: Option<&mut TaskTotals>) {
    // SAFETY: a global written only by the loader.
    let n = unsafe { read_volatile(&NUM_COUNTERS) } as usize;
    let maps = [
        addr_of!(COUNTER0) as *mut _,
        addr_of!(COUNTER1) as *mut _,
        addr_of!(COUNTER2) as *mut _,
        addr_of!(COUNTER3) as *mut _,
    ];
    for slot in 0..MAX_COUNTERS {
        if slot >= n {
            break;
        }
        let mut value = bpf_perf_event_value {
            counter: 0,
            enabled: 0,
            running: 0,
        };
        // SAFETY: `maps[slot]` is a PERF_EVENT_ARRAY definition (PerfEventArray is a
        // repr(transparent) map definition); `value` is a stack buffer of the size we pass.
        let rc = unsafe {
            bpf_perf_event_read_value(
                maps[slot],
                BPF_F_CURRENT_CPU,
                &mut value,
                size_of::<bpf_perf_event_value>() as u32,
            )
        };
        let bit = 1u32 << slot;
        if rc != 0 {
            // This slice's counts are unknown: count the miss and make the next successful read
            // a fresh start, rather than charge this slice's counts to the next task.
            slice.counters_valid &= !bit;
            count(|s| s.counter_read_errors += 1);
            continue;
        }
        let start = &mut slice.counters[slot];
        if slice.counters_valid & bit != 0 {
            if let Some(totals) = totals.as_deref_mut() {
                // A CPU-bound event's enabled time grows with the clock. Frozen: the kernel
                // switched it off (its CPU went offline and came back, and userspace has not
                // installed a new one yet), so this slice's counts are missing, not zero. Gone
                // back: a new event replaced it and the flush that restarts it has not run yet.
                if value.enabled <= start.enabled_ns {
                    count(|s| s.counter_read_errors += 1);
                    *start = CounterReading {
                        value: value.counter,
                        enabled_ns: value.enabled,
                        running_ns: value.running,
                    };
                    continue;
                }
                let acc = &mut totals.counters[slot];
                acc.value = acc
                    .value
                    .wrapping_add(value.counter.wrapping_sub(start.value));
                acc.enabled_ns = acc
                    .enabled_ns
                    .wrapping_add(value.enabled.wrapping_sub(start.enabled_ns));
                acc.running_ns = acc
                    .running_ns
                    .wrapping_add(value.running.wrapping_sub(start.running_ns));
            }
        }
        *start = CounterReading {
            value: value.counter,
            enabled_ns: value.enabled,
            running_ns: value.running,
        };
        slice.counters_valid |= bit;
    }
}

/// Re-reads the current task's comm, cgroup and owner into its totals.
#[inline(always)]
fn refresh_identity(totals: &mut TaskTotals) {
    // SAFETY: helper without arguments.
    totals.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if let Ok(comm) = bpf_get_current_comm() {
        totals.comm = comm;
    }
    let uid_gid = bpf_get_current_uid_gid();
    totals.uid = uid_gid as u32;
    totals.gid = (uid_gid >> 32) as u32;
}

/// Resets `totals` for a task first seen at `now`.
#[inline(always)]
fn init_totals(totals: &mut TaskTotals, key: &TaskKey, now: u64, identity_gen: u64, epoch: u64) {
    // SAFETY: TaskTotals is plain integers; all-zero is a valid value.
    unsafe { core::ptr::write_bytes(totals as *mut TaskTotals, 0, 1) };
    totals.first_seen_ns = now;
    // Born in this epoch: nothing of it belongs to the one before (`closed_lane_ns` stays 0).
    totals.epoch = epoch;
    totals.group_first_seen_ns = now;
    if key.pid != key.tgid {
        let leader = TaskKey {
            pid: key.tgid,
            ..*key
        };
        if let Some((_, slot)) = existing_slot(&leader) {
            // SAFETY: a slot in the map; a torn read of this one u64 is impossible (aligned).
            totals.group_first_seen_ns = unsafe { read_volatile(&(*slot).totals.first_seen_ns) };
        }
    }
    totals.identity_gen = identity_gen;
    refresh_identity(totals);
}

/// The slot (index and pointer) of a thread already tracked: only while the slot is live and
/// still holds that key (an exec re-keys slots, and a key can outlive its slot's ending by a
/// moment when an exec and a last switch race on two CPUs).
#[inline(always)]
fn existing_slot(key: &TaskKey) -> Option<(u32, *mut TaskSlot)> {
    // SAFETY: the value is a plain u32 copied out at once.
    let index = unsafe { *TASK_SLOTS.get_ptr(key)? };
    let slot = TASK_TOTALS.get_ptr_mut(index)?;
    live_incarnation(slot)?;
    // SAFETY: an aligned key of a slot in the map, copied out.
    let slot_key = unsafe { read_volatile(&(*slot).key) };
    (slot_key == *key).then_some((index, slot))
}

/// Seqcount writer side: `seq` is odd while the slot is being written. Atomic read-modify-writes,
/// not volatile stores: LLVM may not move the slot's plain stores across them, and the kernel's
/// BPF memory model makes fetching atomics fully ordered, so on arm64 (where the JIT emits
/// `ldaddal`) the CPU cannot reorder them either; on x86 every store is ordered anyway. The
/// reader pairs this with acquire fences (see `read_slot` in userspace).
///
/// Where stores are kept in program order (x86: `STORES_ORDERED`), a plain increment with a
/// compiler fence on the right side is enough: a slot has one writer at a time, and the fence
/// keeps LLVM from moving the slot's stores across it (the JIT does not reorder).
#[inline(always)]
fn begin_write(slot: &mut TaskSlot) {
    bump_seq(slot);
    compiler_fence(Ordering::SeqCst);
}

#[inline(always)]
fn end_write(slot: &mut TaskSlot) {
    compiler_fence(Ordering::SeqCst);
    bump_seq(slot);
}

#[inline(always)]
fn bump_seq(slot: &mut TaskSlot) {
    // SAFETY: a global written only by the loader.
    if unsafe { read_volatile(&STORES_ORDERED) } != 0 {
        // SAFETY: an aligned u64 of a valid slot, written only by this CPU now.
        unsafe { write_volatile(&raw mut slot.seq, read_volatile(&slot.seq).wrapping_add(1)) };
        return;
    }
    // SAFETY: an aligned u64 of a valid slot; the only concurrent accessor is the reader.
    let old = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut slot.seq, 1) };
    // Using the old value makes LLVM emit the fetching (fully ordered) form.
    core::hint::black_box(old);
}

/// Takes a free slot (most recently freed first) and raises this CPU's high-water mark.
#[inline(always)]
fn allocate_slot() -> Option<(u32, *mut TaskSlot)> {
    let index = FREE_SLOTS.pop().ok().flatten()?;
    let slot = TASK_TOTALS.get_ptr_mut(index)?;
    if let Some(hwm) = SLOT_HWM.get_ptr_mut(0) {
        // SAFETY: per-CPU value of this CPU.
        unsafe {
            if *hwm <= index {
                *hwm = index + 1;
            }
        }
    }
    Some((index, slot))
}

/// Marks a slot free (first_seen 0) and returns it to the stack.
#[inline(always)]
fn free_slot(index: u32, slot: &mut TaskSlot) {
    begin_write(slot);
    slot.totals.first_seen_ns = 0;
    end_write(slot);
    let _ = FREE_SLOTS.push(index, 0);
}

/// Ends a dead task's slot: its final totals go out on the ring and the slot is freed, or, with
/// the ring full, they stay in the slot flagged dead for userspace. Either way its key goes
/// first. `fresh`: the key was never published (the task's only slice was its last). Nothing
/// happens if the ending was already claimed (an exec in the task's process took its key).
#[inline(always)]
fn finish_dead(key: &TaskKey, index: u32, slot: &mut TaskSlot, fresh: bool, now: u64) {
    // See `rekey_after_exec` for the other claimant.
    if set_flags(slot, FLAG_ENDING) & FLAG_ENDING != 0 {
        return;
    }
    // Only while the key still leads here: an exec may have handed it to another slot.
    if !fresh
        && TASK_SLOTS.get_ptr(key).is_some_and(|i| {
            // SAFETY: the value is a plain u32.
            (unsafe { *i }) == index
        })
    {
        let _ = TASK_SLOTS.remove(key);
    }
    begin_write(slot);
    slot.totals.exit_ns = now;
    end_write(slot);
    if send_exit(key, index, &slot.totals) {
        free_slot(index, slot);
    } else {
        set_flags(slot, FLAG_DEAD);
        count(|s| s.exit_overflow += 1);
    }
}

/// Sets `bits` in a slot's flags and returns the flags before. Atomic: an exec on another CPU may
/// flag a slot while its own thread's last switch writes it, so no writer of `flags` outside
/// the slot's seqcount may use a plain read-modify-write.
#[inline(always)]
fn set_flags(slot: *mut TaskSlot, bits: u64) -> u64 {
    // SAFETY: an aligned u64 of a slot in the map.
    unsafe {
        atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*slot).totals.flags, bits)
    }
}

/// The slot's incarnation (`first_seen_ns`) while it is in use and not flagged dead (a dead slot
/// is userspace's to free: nothing books into it again).
#[inline(always)]
fn live_incarnation(slot: *const TaskSlot) -> Option<u64> {
    // SAFETY: aligned u64s of a slot in the map; their writers are this CPU's current task, or
    // atomic (flags).
    let (first_seen_ns, flags) = unsafe {
        (
            read_volatile(&(*slot).totals.first_seen_ns),
            read_volatile(&(*slot).totals.flags),
        )
    };
    (first_seen_ns != 0 && flags & FLAG_DEAD == 0).then_some(first_seen_ns)
}

/// Opens a fresh slice on this CPU without charging anyone: the first switch seen on a CPU, or a
/// CPU back from being offline.
#[inline(always)]
fn open_slice(slice: &mut CpuSlice, now: u64, epoch: u64) {
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    slice.cpu = cpu;
    if let Some(config) = CPU_LANES.get(cpu) {
        slice.lane = config.lane;
        slice.counters_epoch = config.counters_epoch;
    }
    roll_counters(slice, None);
    slice.start_ns = now;
    // A CPU that was offline missed the flushes meanwhile: it joins the current epoch now.
    enter_epoch(slice, epoch);
}

/// `task`: the switching-out thread's cache key (its `task_struct` address, or its pid with bit
/// 32 set; 0 from a flush, which has none). `rq_clock`: the run queue's clock (`tp_btf`
/// builds), else 0: the time is then the clock helper's.
/// `flush`: also re-read the task's identity and the CPU's lane. Done at creation, at exec, on
/// every flush (once per interval for running tasks) and after an identity change anywhere, not
/// on every switch: those helper calls were a measurable part of the switch path.
#[inline(always)]
fn close_slice<const COUNTERS: bool, const RECENT: bool, const PID_KEYED: bool>(
    dead: bool,
    flush: bool,
    task: u64,
    rq_clock: u64,
) {
    let Some(slice) = CPU_SLICE.get_ptr_mut(0) else {
        return;
    };
    let Some(globals) = GLOBALS.get_ptr(0) else {
        return;
    };
    // SAFETY: per-CPU value of this CPU. sched_switch runs with interrupts off and flush_cpu with
    // preemption off (or in the IPI), so nothing else touches it meanwhile.
    let slice = unsafe { &mut *slice };
    let now = slice_clock(slice, rq_clock);
    // SAFETY: an aligned u64 of the map value, written atomically.
    let identity_gen = unsafe { read_volatile(&(*globals).identity_gen) };
    // Stale: the CPU was brought up again since this slice opened, so the slice spans its
    // absence and is nobody's time. (An array lookup: the verifier inlines it, no helper call.)
    let brought_up = CPU_UP_NS.get(slice.cpu).copied().unwrap_or(0);
    if slice.start_ns == 0 || brought_up > slice.start_ns {
        if slice.start_ns != 0 {
            count(|s| s.stale_slices += 1);
        }
        // SAFETY: an aligned u64 of the globals, written by userspace.
        open_slice(slice, now, unsafe { read_volatile(&(*globals).epoch) });
        slice.calibrated_rq_ns = 0;
        // A dying task's last switch must still end its slot (with nothing more to book).
        if !dead {
            return;
        }
    }
    // An estimate from the run queue's clock may sit a few µs ahead of a flush's fresh time
    // (its clock can lag the switch by a wakeup's length): book nothing then, but go on, so a
    // dying task's last switch still ends its slot, and never move the slice start backwards.
    let now = now.max(slice.start_ns);
    if flush {
        // The next switch measures the offset again, from this fresh time on.
        slice.calibrated_rq_ns = 0;
        if let Some(config) = CPU_LANES.get(slice.cpu) {
            slice.lane = config.lane;
            if slice.counters_epoch != config.counters_epoch {
                // New counter events on this CPU: the starts came from the old ones.
                slice.counters_epoch = config.counters_epoch;
                slice.counters_valid = 0;
            }
        }
    }
    let slice_ns = now - slice.start_ns;
    let by_recent = RECENT && task != 0;
    // SAFETY: a global written only by the loader.
    let by_task = unsafe { read_volatile(&USE_TASK_STORAGE) } != 0;
    let recent = if by_recent {
        recent_slot::<PID_KEYED>(slice, task)
    } else {
        None
    };
    let stored = if recent.is_none() && by_task {
        slot_of_current_task()
    } else {
        None
    };
    let found = recent.or(stored);
    // A slot found already holds its thread's key (exec re-keys it), so the pid helper runs
    // only when the cache and the task storage did not know the thread. (The key is not carried
    // out of this match in an Option: LLVM may spill an undefined payload from a clobbered
    // register, which the verifier rejects.)
    let (index, slot, is_new) = match found {
        Some((index, slot)) => (index, slot, false),
        None => {
            let key = task_key(bpf_get_current_pid_tgid(), slice.cpu);
            match existing_slot(&key) {
                Some((index, slot)) => (index, slot, false),
                None => match allocate_slot() {
                    Some((index, slot)) => {
                        // SAFETY: a free slot, taken by this CPU: nothing else writes it.
                        unsafe { (*slot).key = key };
                        (index, slot, true)
                    }
                    None => {
                        // Every slot is in use: the slice is lost, and counted.
                        if COUNTERS {
                            roll_counters(slice, None);
                        }
                        slice.start_ns = now;
                        slice.booked_ns += slice_ns;
                        slice.lost_ns += slice_ns;
                        count(|s| {
                            s.lost_slices += 1;
                            s.lost_ns += slice_ns;
                        });
                        return;
                    }
                },
            }
        }
    };
    // SAFETY: single writer per slot (see the module comment).
    let slot = unsafe { &mut *slot };
    begin_write(slot);
    let epoch = slice.epoch;
    if is_new {
        let key = slot.key;
        init_totals(&mut slot.totals, &key, now, identity_gen, epoch);
    } else if flush || slot.totals.identity_gen != identity_gen {
        slot.totals.identity_gen = identity_gen;
        refresh_identity(&mut slot.totals);
    }
    // Lanes past the last share it (userspace assigns none beyond).
    let lane = (slice.lane as usize).min(MAX_SOCKETS - 1);
    if slot.totals.epoch != epoch {
        if slot.totals.epoch < epoch {
            // The slot's first slice of a new epoch: keep where it stood at the end of the
            // previous one for the drain that closes it.
            for l in 0..MAX_SOCKETS {
                slot.totals.closed_lane_ns[l] = slot.totals.lane_ns[l];
            }
            slot.totals.epoch = epoch;
        } else {
            // This CPU has not flushed into the slot's epoch yet: the slice belongs to the
            // closing epoch (the thread ran on a flushed CPU a moment ago).
            slot.totals.closed_lane_ns[lane] += slice_ns;
        }
    }
    slot.totals.lane_ns[lane] += slice_ns;
    slice.booked_ns += slice_ns;
    if COUNTERS {
        roll_counters(slice, Some(&mut slot.totals));
    }
    slice.start_ns = now;
    end_write(slot);
    if dead {
        let key = slot.key;
        finish_dead(&key, index, slot, is_new, now);
        return;
    }
    if recent.is_some() {
        return;
    }
    if is_new {
        let key = slot.key;
        if !insert_slot(slice, &key, index, slot, slice_ns) {
            return;
        }
        if by_task {
            remember_slot(index, slot.totals.first_seen_ns);
        }
    } else if by_task && stored.is_none() {
        // Tracked before its task storage was: a thread already running when the meter started.
        remember_slot(index, slot.totals.first_seen_ns);
    }
    if by_recent {
        // Newest first: the set's other way keeps the thread it held, so two threads that
        // alternate on a CPU and hash to one set both stay cached.
        let way0 = recent_set(task);
        let way1 = (way0 + 1) & (RECENT_TASKS - 1);
        slice.recent[way1] = slice.recent[way0];
        slice.recent[way0] = RecentTask {
            task,
            first_seen_ns: slot.totals.first_seen_ns,
            index,
            _reserved: 0,
        };
    }
}

/// The time of this switch: the run queue's clock plus this CPU's offset to CLOCK_MONOTONIC when
/// it has one (`rq_clock` non-zero) and measured it recently, else the clock helper's, from
/// which the offset is measured again. Monotonic per CPU either way: the run queue's clock is.
#[inline(always)]
fn slice_clock(slice: &mut CpuSlice, rq_clock: u64) -> u64 {
    if rq_clock != 0
        && slice.calibrated_rq_ns != 0
        && rq_clock.wrapping_sub(slice.calibrated_rq_ns) < RECALIBRATE_NS
    {
        return rq_clock.wrapping_add(slice.clock_offset);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if rq_clock != 0 {
        slice.clock_offset = now.wrapping_sub(rq_clock);
        slice.calibrated_rq_ns = rq_clock;
    }
    now
}

/// The first of the two entries (ways) where `task` may be cached. Fibonacci hashing of the
/// `task_struct` address: its low bits are the slab's alignment and carry little, the product's
/// top bits mix in all of them. Two ways per set: with one, two threads ping-ponging on a CPU
/// evicted each other whenever they hashed alike (1 pair in 8 sets), and every switch missed.
#[inline(always)]
fn recent_set(task: u64) -> usize {
    let sets = RECENT_TASKS / 2;
    let set = (task.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - sets.trailing_zeros())) as usize;
    (set * 2) & (RECENT_TASKS - 1)
}

/// The slot of `task` from this CPU's cache, if the slot still holds the incarnation cached and
/// is not flagged dead. A reused `task_struct` address cannot match a live slot of its previous
/// owner: that task's last switch freed its slot (`first_seen_ns` 0) or flagged it dead. A pid
/// can (`PID_KEYED`): a thread that execs takes its leader's pid and keeps its slot, and its old
/// tid goes to the next new task; so the slot's own key must still hold that pid.
#[inline(always)]
fn recent_slot<const PID_KEYED: bool>(slice: &CpuSlice, task: u64) -> Option<(u32, *mut TaskSlot)> {
    let way0 = recent_set(task);
    let entry = if slice.recent[way0].task == task {
        slice.recent[way0]
    } else {
        slice.recent[(way0 + 1) & (RECENT_TASKS - 1)]
    };
    let RecentTask {
        task: cached,
        first_seen_ns,
        index,
        ..
    } = entry;
    if cached != task || first_seen_ns == 0 {
        return None;
    }
    let slot = TASK_TOTALS.get_ptr_mut(index)?;
    if live_incarnation(slot)? != first_seen_ns {
        return None;
    }
    // SAFETY: an aligned u32 of the slot; rewritten only by an exec of its own thread.
    if PID_KEYED && unsafe { read_volatile(&(*slot).key.pid) } != task as u32 {
        return None;
    }
    Some((index, slot))
}

/// The current thread's slot through its task storage, if it still holds that incarnation.
#[inline(always)]
fn slot_of_current_task() -> Option<(u32, *mut TaskSlot)> {
    let slot_ref = SLOT_OF_TASK.current(false);
    if slot_ref.is_null() {
        return None;
    }
    // SAFETY: a non-null storage value of the current task, plain integers.
    let SlotRef {
        index,
        first_seen_ns,
        ..
    } = unsafe { *slot_ref };
    let slot = TASK_TOTALS.get_ptr_mut(index)?;
    (live_incarnation(slot)? == first_seen_ns).then_some((index, slot))
}

#[inline(always)]
fn remember_slot(index: u32, first_seen_ns: u64) {
    let slot_ref = SLOT_OF_TASK.current(true);
    if !slot_ref.is_null() {
        // SAFETY: the current task's storage value, just looked up or created.
        unsafe {
            *slot_ref = SlotRef {
                index,
                _pad: 0,
                first_seen_ns,
            }
        };
    }
}

/// Publishes a new slot under its key; if the key map is full, gives the slot back (counted)
/// and returns false.
#[inline(always)]
fn insert_slot(
    slice: &mut CpuSlice,
    key: &TaskKey,
    index: u32,
    slot: &mut TaskSlot,
    slice_ns: u64,
) -> bool {
    // Any value under this key leads to a slot that is no longer this thread's (`existing_slot`
    // found none), e.g. one an exec flagged dead: replace it.
    if TASK_SLOTS.insert(key, &index, BPF_ANY as u64).is_err() {
        free_slot(index, slot);
        slice.lost_ns += slice_ns;
        count(|s| {
            s.lost_slices += 1;
            s.lost_ns += slice_ns;
        });
        return false;
    }
    true
}

/// Sends a dead task's final totals on the ring buffer; false when it is full.
#[inline(always)]
fn send_exit(key: &TaskKey, index: u32, totals: &TaskTotals) -> bool {
    let Some(mut event) = EXITS.reserve::<ExitEvent>(0) else {
        return false;
    };
    let event_ptr = event.as_mut_ptr();
    // SAFETY: `event_ptr` points at a reserved ExitEvent-sized ring buffer record; copying in
    // place keeps the event off the BPF stack.
    unsafe {
        (*event_ptr).key = *key;
        (*event_ptr).slot = index;
        (*event_ptr)._reserved = 0;
        core::ptr::copy_nonoverlapping(totals as *const TaskTotals, &mut (*event_ptr).totals, 1);
    }
    event.submit(0);
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
