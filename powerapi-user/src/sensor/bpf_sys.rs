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
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
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
/// entries instead of two per entry, so the drain scales with the task count.
///
/// `K` and `V` must be the map's exact key and value types (plain `#[repr(C)]` integers).
pub fn lookup_batch<K: Copy + Default, V: Copy + Default>(
    map: BorrowedFd<'_>,
    capacity: usize,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
) -> io::Result<()> {
    keys.clear();
    values.clear();
    let chunk = capacity.clamp(1, 4096);
    let mut key_buf = vec![K::default(); chunk];
    let mut value_buf = vec![V::default(); chunk];
    // Hash maps use a 32-bit bucket cursor; 8 bytes leaves room.
    let (mut in_batch, mut out_batch) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = zeroed_attr();
        // The buffers hold `count` keys and values and outlive the call.
        attr.batch.map_fd = map.as_raw_fd() as u32;
        attr.batch.in_batch = if first { 0 } else { &in_batch as *const u64 as u64 };
        attr.batch.out_batch = &mut out_batch as *mut u64 as u64;
        attr.batch.keys = key_buf.as_mut_ptr() as u64;
        attr.batch.values = value_buf.as_mut_ptr() as u64;
        attr.batch.count = key_buf.len() as u32;
        let result = sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: the kernel wrote back how many entries it copied.
        let got = unsafe { attr.batch.count } as usize;
        let got = got.min(key_buf.len());
        keys.extend_from_slice(&key_buf[..got]);
        values.extend_from_slice(&value_buf[..got]);
        match result {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // A bucket larger than the chunk: grow and retry from the same cursor.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                let bigger = key_buf.len() * 2;
                key_buf.resize(bigger, K::default());
                value_buf.resize(bigger, V::default());
                continue;
            }
            Err(e) => return Err(e),
        }
        in_batch = out_batch;
        first = false;
    }
}
