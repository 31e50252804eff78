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
#![no_std]
#![no_main]

use core::ptr::{addr_of, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_CPU, BPF_NOEXIST, bpf_perf_event_value},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_perf_event_read_value},
    },
    macros::{map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerfEventArray, RingBuf, Stack},
    programs::RawTracePointContext,
};
use powerapi_common::{
    CounterReading, CpuSlice, ExitEvent, FLAG_DEAD, MAX_COUNTERS, NOT_IDLE, SensorStats, TASK_DEAD,
    TaskKey, TaskSlot, TaskTotals,
};

/// How many counter slots are in use; set by the loader. Volatile reads keep LLVM from folding it,
/// and the verifier prunes the unused slots because the value is known at load time.
#[unsafe(no_mangle)]
static NUM_COUNTERS: u32 = 0;

/// `BPF_F_MMAPABLE`: userspace maps the task array and reads it without syscalls.
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

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
    //          unsigned int prev_state): the previous task's state is argument 3.
    let prev_state: u64 = ctx.arg(3);
    close_slice(prev_state & TASK_DEAD != 0, false);
    0
}

/// Closes the current slice without a switch. Never attached: run by userspace on each CPU.
#[raw_tracepoint]
pub fn flush_cpu(_ctx: RawTracePointContext) -> i32 {
    close_slice(false, true);
    0
}

/// After exec the thread keeps its pid but gets a new name, and often a new cgroup: container
/// runtimes and `powerapi run` move a process into its cgroup right before exec.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    let Some(slice) = CPU_SLICE.get_ptr(0) else {
        return 0;
    };
    // SAFETY: per-CPU value of this CPU; nothing else runs on it while we do.
    let socket = unsafe { (*slice).socket };
    let key = task_key(bpf_get_current_pid_tgid(), socket, 0);
    let Some((_, slot)) = existing_slot(&key) else {
        return 0;
    };
    // SAFETY: the slot has a single writer: the CPU its thread runs on, which is this one.
    let slot = unsafe { &mut *slot };
    begin_write(slot);
    if let Ok(comm) = bpf_get_current_comm() {
        slot.totals.comm = comm;
    }
    // SAFETY: helper without arguments.
    slot.totals.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    end_write(slot);
    0
}

/// Does nothing: attached to `sched_switch` by `cargo xtask bench overhead` to measure the floor.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn noop_switch(_ctx: RawTracePointContext) -> i32 {
    0
}

#[inline(always)]
fn task_key(pid_tgid: u64, socket: u32, cpu: u32) -> TaskKey {
    let pid = pid_tgid as u32;
    TaskKey {
        tgid: (pid_tgid >> 32) as u32,
        pid,
        socket,
        idle_cpu: if pid == 0 { cpu } else { NOT_IDLE },
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
        if rc != 0 {
            // Keep the old start: the next successful read covers this slice too.
            count(|s| s.counter_read_errors += 1);
            continue;
        }
        let start = &mut slice.counters[slot];
        if let Some(totals) = totals.as_deref_mut() {
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
        *start = CounterReading {
            value: value.counter,
            enabled_ns: value.enabled,
            running_ns: value.running,
        };
    }
}

/// Resets `totals` for a task first seen at `now`.
#[inline(always)]
fn init_totals(totals: &mut TaskTotals, now: u64) {
    // SAFETY: TaskTotals is plain integers; all-zero is a valid value.
    unsafe { core::ptr::write_bytes(totals as *mut TaskTotals, 0, 1) };
    totals.first_seen_ns = now;
    // SAFETY: helper without arguments.
    totals.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if let Ok(comm) = bpf_get_current_comm() {
        totals.comm = comm;
    }
}

/// The slot (index and pointer) of a thread already tracked.
#[inline(always)]
fn existing_slot(key: &TaskKey) -> Option<(u32, *mut TaskSlot)> {
    // SAFETY: the value is a plain u32 copied out at once.
    let index = unsafe { *TASK_SLOTS.get_ptr(key)? };
    Some((index, TASK_TOTALS.get_ptr_mut(index)?))
}

/// Seqcount writer side: `seq` is odd while the slot is being written. Volatile, so LLVM keeps
/// the stores in order around the update (x86 and arm64 readers pair it with their own fences).
#[inline(always)]
fn begin_write(slot: &mut TaskSlot) {
    // SAFETY: a valid, exclusively written slot.
    unsafe { write_volatile(&mut slot.seq, read_volatile(&slot.seq) + 1) };
}

#[inline(always)]
fn end_write(slot: &mut TaskSlot) {
    // SAFETY: as in begin_write.
    unsafe { write_volatile(&mut slot.seq, read_volatile(&slot.seq) + 1) };
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

/// `refresh_cgroup`: also re-read the task's cgroup. Done at creation, at exec and on every flush
/// (once per interval for running tasks), not on every switch: that helper call was a measurable
/// part of the switch path.
#[inline(always)]
fn close_slice(dead: bool, refresh_cgroup: bool) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(slice) = CPU_SLICE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value of this CPU. sched_switch runs with interrupts off and flush_cpu with
    // preemption off (or in the IPI), so nothing else touches it meanwhile.
    let slice = unsafe { &mut *slice };
    if slice.start_ns == 0 || now <= slice.start_ns {
        roll_counters(slice, None);
        slice.start_ns = now;
        return;
    }
    let key = task_key(bpf_get_current_pid_tgid(), slice.socket, slice.cpu);
    let slice_ns = now - slice.start_ns;
    let (index, slot, is_new) = match existing_slot(&key) {
        Some((index, slot)) => (index, slot, false),
        None => match allocate_slot() {
            Some((index, slot)) => (index, slot, true),
            None => {
                // Every slot is in use: the slice is lost, and counted.
                roll_counters(slice, None);
                slice.start_ns = now;
                count(|s| {
                    s.lost_slices += 1;
                    s.lost_ns += slice_ns;
                });
                return;
            }
        },
    };
    // SAFETY: single writer per slot (see the module comment).
    let slot = unsafe { &mut *slot };
    begin_write(slot);
    if is_new {
        slot.key = key;
        init_totals(&mut slot.totals, now);
    } else if slot.totals.flags & FLAG_DEAD != 0 {
        // A reused pid found its predecessor's unread final totals: start over, counted.
        count(|s| s.overwritten_dead += 1);
        init_totals(&mut slot.totals, now);
    } else if refresh_cgroup {
        // SAFETY: helper without arguments.
        slot.totals.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
    slot.totals.on_cpu_ns += slice_ns;
    slot.totals.slices += 1;
    roll_counters(slice, Some(&mut slot.totals));
    slice.start_ns = now;
    if dead && !send_exit(&key, &slot.totals) {
        // The ring buffer is full: leave the totals in the slot, flagged, for userspace.
        slot.totals.flags |= FLAG_DEAD;
        count(|s| s.exit_overflow += 1);
        end_write(slot);
        if is_new {
            insert_slot(&key, index, slot, slice_ns);
        }
        return;
    }
    end_write(slot);
    if dead {
        if !is_new {
            let _ = TASK_SLOTS.remove(&key);
        }
        free_slot(index, slot);
    } else if is_new {
        insert_slot(&key, index, slot, slice_ns);
    }
}

/// Publishes a new slot under its key; if the key map is full, gives the slot back (counted).
#[inline(always)]
fn insert_slot(key: &TaskKey, index: u32, slot: &mut TaskSlot, slice_ns: u64) {
    if TASK_SLOTS.insert(key, &index, BPF_NOEXIST as u64).is_err() {
        free_slot(index, slot);
        count(|s| {
            s.lost_slices += 1;
            s.lost_ns += slice_ns;
        });
    }
}

/// Sends a dead task's final totals on the ring buffer; false when it is full.
#[inline(always)]
fn send_exit(key: &TaskKey, totals: &TaskTotals) -> bool {
    let Some(mut event) = EXITS.reserve::<ExitEvent>(0) else {
        return false;
    };
    let event_ptr = event.as_mut_ptr();
    // SAFETY: `event_ptr` points at a reserved ExitEvent-sized ring buffer record; copying in
    // place keeps the 160-byte event off the BPF stack.
    unsafe {
        (*event_ptr).key = *key;
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
