//! The three `bpf(2)` commands aya 0.14 does not wrap: storing perf event fds in a
//! `PERF_EVENT_ARRAY`, batch lookups, and running a program on a chosen CPU.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya_obj::generated::{BPF_F_TEST_RUN_ON_CPU, bpf_attr, bpf_cmd};

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-initialised bpf_attr whose relevant member the caller filled in;
    // the kernel reads (and for some commands writes) at most size_of::<bpf_attr>() bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union of integers; all-zero is its documented initial state.
    unsafe { std::mem::zeroed() }
}

/// `PERF_EVENT_ARRAY[cpu] = perf_fd`.
pub fn set_perf_event(map: BorrowedFd<'_>, cpu: u32, perf_fd: BorrowedFd<'_>) -> io::Result<()> {
    let key = cpu;
    let value = perf_fd.as_raw_fd() as u32;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_2.map_fd = map.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = &key as *const u32 as u64;
    attr.__bindgen_anon_2.__bindgen_anon_1.value = &value as *const u32 as u64;
    sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Runs a raw-tracepoint program once on `cpu` (in an IPI when it is not this CPU), so that
/// `current` and `BPF_F_CURRENT_CPU` in the program refer to that CPU.
pub fn run_on_cpu(prog: BorrowedFd<'_>, cpu: u32) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.test.prog_fd = prog.as_raw_fd() as u32;
    attr.test.flags = BPF_F_TEST_RUN_ON_CPU;
    attr.test.cpu = cpu;
    sys_bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr).map(drop)
}

/// Reads every entry of a hash map with `BPF_MAP_LOOKUP_BATCH`: one syscall per few thousand
/// entries instead of two per entry, so the drain scales with the task count. Entries are written
/// straight into `keys`/`values`, whose capacity is kept from call to call (fresh megabyte-sized
/// buffers every interval cost more in page faults than the copy itself).
pub fn lookup_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
) -> io::Result<()> {
    keys.clear();
    values.clear();
    let mut chunk: usize = 4096;
    // Hash maps use a 32-bit bucket cursor; 8 bytes leaves room.
    let (mut in_batch, mut out_batch) = (0u64, 0u64);
    let mut first = true;
    loop {
        keys.reserve(chunk);
        values.reserve(chunk);
        let mut attr = zeroed_attr();
        attr.batch.map_fd = map.as_raw_fd() as u32;
        attr.batch.in_batch = if first {
            0
        } else {
            &in_batch as *const u64 as u64
        };
        attr.batch.out_batch = &mut out_batch as *mut u64 as u64;
        // The spare capacity holds at least `chunk` keys and values and outlives the call.
        attr.batch.keys = keys.spare_capacity_mut().as_mut_ptr() as u64;
        attr.batch.values = values.spare_capacity_mut().as_mut_ptr() as u64;
        attr.batch.count = chunk as u32;
        let result = sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: reading back the count the kernel wrote into the batch member.
        let got = (unsafe { attr.batch.count } as usize).min(chunk);
        // SAFETY: the kernel initialised `got` keys and values in the spare capacity, and K and V
        // are Pod (any bit pattern is a valid value).
        unsafe {
            keys.set_len(keys.len() + got);
            values.set_len(values.len() + got);
        }
        match result {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // A bucket larger than the chunk: grow and retry from the same cursor.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                chunk *= 2;
                continue;
            }
            Err(e) => return Err(e),
        }
        in_batch = out_batch;
        first = false;
    }
}
